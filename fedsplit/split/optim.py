"""SGD per part, and its momentum state as named tensors a process can store and reload.

SGD (with momentum and weight decay) updates each parameter from its own gradient and its own
momentum buffer, so one ``torch.optim.SGD`` per part takes exactly the step that one SGD over the
whole model would (``tests/test_split_core.py`` checks it). The optimiser is built as
:func:`fedsplit.learning.train_local` builds it (``foreach=True``).

A terminal whose messages may be handled by different processes cannot keep the optimiser object;
it keeps :func:`sgd_state` (momentum buffers named like the part's parameters, i.e. the full
model's key names) and rebuilds the optimiser with :func:`load_sgd_state`.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
from torch import nn


def make_sgd(part: nn.Module, *, lr: float, momentum: float = 0.0, weight_decay: float = 0.0) -> torch.optim.SGD | None:
    """SGD over the trainable parameters of ``part``, or ``None`` if it has none.

    Parameters
    ----------
    part : nn.Module
        A part made by :func:`fedsplit.split.split_model` (or any module).
    lr, momentum, weight_decay : float
        SGD hyper-parameters (learning rate, momentum factor, L2 coefficient).
    """
    params = [p for p in part.parameters() if p.requires_grad]
    if not params:
        return None
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, foreach=True)


def sgd_state(optimizer: torch.optim.SGD | None, part: nn.Module) -> dict[str, torch.Tensor]:
    """The momentum buffers of ``optimizer``, named like ``part``'s parameters (detached copies).

    Parameters without a buffer yet (before the first step, or with ``momentum=0``) are absent.
    """
    if optimizer is None:
        return {}
    out: dict[str, torch.Tensor] = {}
    for name, param in part.named_parameters():
        buffer = optimizer.state.get(param, {}).get("momentum_buffer")
        if buffer is not None:
            out[name] = buffer.detach().clone()
    return out


def load_sgd_state(optimizer: torch.optim.SGD | None, part: nn.Module, state: Mapping[str, Any]) -> None:
    """Restore momentum buffers saved by :func:`sgd_state` (tensors or numpy arrays) into ``optimizer``.

    Raises
    ------
    KeyError
        If ``state`` names a tensor that is not a parameter of ``part``.
    """
    if optimizer is None:
        if state:
            raise KeyError(f"the part has no trainable parameter, but the state holds {sorted(state)[:3]}")
        return
    params = dict(part.named_parameters())
    for name, value in state.items():
        if name not in params:
            raise KeyError(f"{name!r} is not a parameter of the part (parameters: {', '.join(params)})")
        param = params[name]
        tensor = value if isinstance(value, torch.Tensor) else torch.from_numpy(np.array(value))
        optimizer.state[param]["momentum_buffer"] = tensor.detach().clone().to(param.device, param.dtype)


__all__ = ["load_sgd_state", "make_sgd", "sgd_state"]
