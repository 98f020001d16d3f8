"""Making a model trainable with Opacus (DP-SGD, :mod:`fedsplit.privacy`): layers it cannot use are replaced.

BatchNorm mixes the samples of a batch, so per-sample gradients do not exist for it; Opacus's
:meth:`~opacus.validators.ModuleValidator.fix` replaces it by GroupNorm (and fixes the other
layers Opacus refuses). Both sides of a run must apply it, since the server's global model and
the terminals' models must have the same parameters: :class:`fedsplit.learning.Task` does it
whenever ``privacy.mode = "local"``.
"""

from __future__ import annotations

import logging

from torch import nn

log = logging.getLogger("fedsplit")


def incompatibilities(model: nn.Module) -> list[str]:
    """Why Opacus would refuse ``model``, one line per offending layer (empty: it is compatible)."""
    from opacus.validators import ModuleValidator

    return [str(err).split(".")[0] for err in ModuleValidator.validate(model, strict=False)]


def opacus_compatible(model: nn.Module, name: str = "model") -> nn.Module:
    """``model`` if Opacus accepts it, else a fixed copy (BatchNorm -> GroupNorm), with a log line.

    Parameters
    ----------
    model : nn.Module
        The model to train with DP-SGD (not modified).
    name : str
        How the log line calls it (e.g. the model's configured name).

    Raises
    ------
    ValueError
        When the fixed model still has layers Opacus refuses.
    """
    from opacus.validators import ModuleValidator

    errors = ModuleValidator.validate(model, strict=False)
    if not errors:
        return model
    kinds = sorted({type(m).__name__ for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)})
    fixed = ModuleValidator.fix(model)
    remaining = incompatibilities(fixed)
    if remaining:
        raise ValueError(f"{name}: Opacus cannot train it even after ModuleValidator.fix: {'; '.join(remaining)}")
    replaced = f"{', '.join(kinds)} -> GroupNorm" if kinds else "layers Opacus refuses replaced"
    log.info("privacy: %s made Opacus-compatible for DP-SGD (%s; %d layer(s) fixed)", name, replaced, len(errors))
    return fixed
