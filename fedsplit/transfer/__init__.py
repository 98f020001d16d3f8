"""Transfer learning and distillation (plain PyTorch, no Flower).

* :mod:`~fedsplit.transfer.checkpoint` - checkpoints with metadata; loading a local checkpoint
  (``model.pretrained``, also a plain state_dict such as torchvision weights on disk), the head
  re-initialised when the classes differ.
* :mod:`~fedsplit.transfer.freezing` - ``transfer.trainable`` (``last:N`` or module names): what
  trains, what travels, BatchNorm statistics frozen or local.
* :mod:`~fedsplit.transfer.distill` - the distillation loss, and server-side distillation of a
  student on unlabeled data.
* :mod:`~fedsplit.transfer.pretrain` - central pretraining on a source task (``fedsplit pretrain``).
"""

from fedsplit.transfer.checkpoint import (
    Checkpoint,
    CheckpointError,
    head_keys,
    load_pretrained,
    model_from_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from fedsplit.transfer.distill import distill, distillation_loss, kd_term
from fedsplit.transfer.freezing import FreezePlan, apply_freezing, freeze_batchnorm, plan_freezing, resolve_trainable

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "FreezePlan",
    "apply_freezing",
    "distill",
    "distillation_loss",
    "freeze_batchnorm",
    "head_keys",
    "kd_term",
    "load_pretrained",
    "model_from_checkpoint",
    "plan_freezing",
    "read_checkpoint",
    "resolve_trainable",
    "save_checkpoint",
]
