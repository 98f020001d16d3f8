"""Model zoo and exact FLOP counting."""

from fedsplit.models.contract import blocks, cut_points, trainable_names
from fedsplit.models.flops import inference_flops, step_flops
from fedsplit.models.zoo import MODELS, build_model, count_parameters

__all__ = [
    "MODELS",
    "blocks",
    "build_model",
    "count_parameters",
    "cut_points",
    "inference_flops",
    "step_flops",
    "trainable_names",
]
