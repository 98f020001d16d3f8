"""Local training and evaluation (plain PyTorch), and the task a run trains."""

from fedsplit.learning.local import EvalResult, TrainResult, evaluate, train_local
from fedsplit.learning.task import Task, config_from_json, config_to_json, task_for

__all__ = ["EvalResult", "Task", "TrainResult", "config_from_json", "config_to_json", "evaluate", "task_for", "train_local"]
