"""Model zoo and exact FLOP counting."""

from fedsplit.models.flops import inference_flops, step_flops
from fedsplit.models.zoo import MODELS, build_model, count_parameters

__all__ = ["MODELS", "build_model", "count_parameters", "inference_flops", "step_flops"]
