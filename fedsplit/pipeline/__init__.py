"""``fedsplit pipeline``: train a model family federatedly, catalog it, schedule and serve it."""

from fedsplit.pipeline.config import PipelineConfig, load_pipeline, pipeline_from_dict
from fedsplit.pipeline.run import PipelineResult, run_pipeline

__all__ = ["PipelineConfig", "PipelineResult", "load_pipeline", "pipeline_from_dict", "run_pipeline"]
