"""Exact FLOP counts of training and inference, measured with ``torch.utils.flop_counter``.

Counting under :class:`~torch.utils.flop_counter.FlopCounterMode` is slow, so a count is taken
once per (architecture, which parameters require gradients, input shape, batch size) on a copy of
the model and cached; the training loop then adds up the cached count of every batch it really ran.

Frozen parameters (``requires_grad = False``, :mod:`fedsplit.models.freezing`) are counted as
autograd runs them: no weight-gradient FLOPs for a frozen layer, and the backward stops at the
first layer that has a trainable parameter (nothing before it needs an input gradient).
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def architecture_key(model: nn.Module) -> tuple:
    """A hashable key that identifies a model's architecture (class and tensor shapes)."""
    return (type(model).__qualname__, tuple((k, tuple(v.shape)) for k, v in model.state_dict().items()))


def trainable_key(model: nn.Module) -> tuple[bool, ...]:
    """Which parameters require gradients, in ``named_parameters`` order (part of the cache key)."""
    return tuple(bool(p.requires_grad) for p in model.parameters())


_CACHE: dict[tuple, int] = {}


def _measure(model: nn.Module, input_shape: tuple[int, ...], batch_size: int, train: bool) -> int:
    probe = copy.deepcopy(model)
    probe.train(train)
    device = next((t.device for t in probe.parameters()), torch.device("cpu"))
    x = torch.zeros((batch_size, *input_shape), device=device)  # where the model is: a GPU terminal's too
    counter = FlopCounterMode(display=False)
    with counter:
        if train:
            out = probe(x)
            target = torch.zeros(batch_size, dtype=torch.long, device=device)
            loss = nn.functional.cross_entropy(out, target)
            if loss.requires_grad:  # False when every parameter is frozen: no backward at all
                loss.backward()
        else:
            with torch.no_grad():
                probe(x)
    return int(counter.get_total_flops())


def step_flops(model: nn.Module, input_shape: tuple[int, ...], batch_size: int, train: bool = True) -> int:
    """FLOPs of one forward (and, if ``train``, backward) pass on a batch of ``batch_size`` inputs.

    Parameters
    ----------
    model : nn.Module
        The model (not modified: a copy is measured, with its ``requires_grad`` flags).
    input_shape : tuple of int
        Shape of one input, ``(C, H, W)``.
    batch_size : int
        Samples in the batch.
    train : bool
        Count forward + backward (True) or forward only (False).

    Returns
    -------
    int
        Floating-point operations (multiply and add counted separately, as torch does).
    """
    key = (architecture_key(model), trainable_key(model) if train else (), tuple(input_shape), int(batch_size), bool(train))
    if key not in _CACHE:
        _CACHE[key] = _measure(model, tuple(input_shape), int(batch_size), train)
    return _CACHE[key]


def warm_flop_counter() -> None:
    """Pay now what the first count in a process costs beyond counting: ``FlopCounterMode``'s first
    use imports ``torch._dynamo`` (about 1.1 s on this project's 2-core machine)."""
    probe = nn.Linear(1, 1)
    with FlopCounterMode(display=False), torch.no_grad():
        probe(torch.zeros(1, 1))


def inference_flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """FLOPs of one inference on one input (forward pass, batch of 1)."""
    return step_flops(model, input_shape, 1, train=False)
