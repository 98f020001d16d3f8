"""Transfer learning and distillation (plain PyTorch, no Flower): one place to import them from.

The parts live in the layer that owns them, so that the core imports one way (the model layer
knows nothing of training, training nothing of configuration):

* :mod:`~fedsplit.models.checkpoint` - checkpoints with metadata; loading a local checkpoint
  (``model.pretrained``, also a plain state_dict such as torchvision weights on disk), the head
  re-initialised when the classes differ.
* :mod:`~fedsplit.models.freezing` - ``transfer.trainable`` (``last:N`` or module names): what
  trains, what travels, BatchNorm statistics frozen or local.
* :mod:`~fedsplit.learning.distill` - the distillation loss, and server-side distillation of a
  student on unlabeled data.
* :mod:`~fedsplit.transfer.pretrain` - central pretraining on a source task (``fedsplit pretrain``).
"""

from typing import TYPE_CHECKING

from fedsplit.lazy_exports import lazy_exports

if TYPE_CHECKING:
    from fedsplit.models.checkpoint import (
        Checkpoint, CheckpointError, head_keys, load_pretrained, model_from_checkpoint, read_checkpoint, save_checkpoint,
    )
    from fedsplit.learning.distill import distill, distillation_loss, kd_term
    from fedsplit.models.freezing import FreezePlan, apply_freezing, freeze_batchnorm, plan_freezing, resolve_trainable

# imported on first use (fedsplit.lazy_exports): this package's light submodules stay light
__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "Checkpoint": "fedsplit.models.checkpoint",
        "CheckpointError": "fedsplit.models.checkpoint",
        "FreezePlan": "fedsplit.models.freezing",
        "apply_freezing": "fedsplit.models.freezing",
        "distill": "fedsplit.learning.distill",
        "distillation_loss": "fedsplit.learning.distill",
        "freeze_batchnorm": "fedsplit.models.freezing",
        "head_keys": "fedsplit.models.checkpoint",
        "kd_term": "fedsplit.learning.distill",
        "load_pretrained": "fedsplit.models.checkpoint",
        "model_from_checkpoint": "fedsplit.models.checkpoint",
        "plan_freezing": "fedsplit.models.freezing",
        "read_checkpoint": "fedsplit.models.checkpoint",
        "resolve_trainable": "fedsplit.models.freezing",
        "save_checkpoint": "fedsplit.models.checkpoint",
    },
)

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
