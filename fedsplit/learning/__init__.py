"""Local training and evaluation (plain PyTorch)."""

from fedsplit.learning.local import EvalResult, TrainResult, evaluate, train_local

__all__ = ["EvalResult", "TrainResult", "evaluate", "train_local"]
