"""Multi-exit (BranchyNet-style) models: a backbone of stages with a classifier exit after several.

Edgent (Li et al., 2019) right-sizes inference by stopping at an earlier exit when the deadline is
tight, and partitions the path to that exit between the terminal and the edge server. This module
holds the model side of that:

- :class:`MultiExitCNN`: a VGG-like backbone of ``len(channels)`` stages (conv-BN-ReLU twice, then
  2x2 max-pooling) with one exit head after every stage; ``forward`` returns the last exit's logits
  (so it trains and evaluates like any zoo model) and :meth:`MultiExitCNN.forward_exits` returns
  every exit's logits from one pass through the backbone.
- :func:`exit_path`: the path to one exit as a model honouring the split contract
  (:mod:`fedsplit.models.contract`): ``trunk`` (the stages up to the exit, shared with the model, not
  copied) then ``head``. Its blocks are single layers (Conv2d, BatchNorm2d, ReLU, MaxPool2d, ...), so
  :func:`fedsplit.split.split_model` cuts it at any layer boundary.
- :func:`joint_exit_loss`: the weighted sum of the exits' cross-entropy losses (BranchyNet's joint
  training objective), and :func:`train_multiexit` / :func:`evaluate_exits` to train centrally and
  measure per-exit accuracy on a held-out set.

Federated training of a multi-exit model needs a client whose local step minimises
:func:`joint_exit_loss` over :meth:`MultiExitCNN.forward_exits`; the stock FL client trains
``forward`` (last exit only) with plain cross-entropy, which leaves the early exits untrained.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

#: Multi-exit models this module builds, with a one-line description.
MULTIEXIT_MODELS: dict[str, str] = {
    "multiexit-cnn": "VGG-like CNN, 4 stages (32-64-128-256 channels x width), an exit after every stage",
}

#: Default joint-loss weights (one per exit, deepest last); BranchyNet weighs exits about equally.
DEFAULT_EXIT_WEIGHTS: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)


def _stage(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
        nn.MaxPool2d(2),
    )


def _exit_head(channels: int, num_classes: int, hidden: int) -> nn.Sequential:
    # Pool to 2x2 first: the tensor sent to the edge from inside the head is then 4*channels floats.
    return nn.Sequential(
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * channels, hidden),
        nn.ReLU(),
        nn.Linear(hidden, num_classes),
    )


class MultiExitCNN(nn.Module):
    """A CNN with an exit classifier after each backbone stage.

    Parameters
    ----------
    input_shape : tuple of int
        ``(channels, height, width)`` of one input, in pixels; height and width must be divisible by
        ``2 ** len(channels)`` (each stage halves them).
    num_classes : int
        Number of output classes.
    channels : sequence of int
        Output channels of each stage (one exit per stage).
    hidden : int
        Hidden units of every exit head.

    Attributes
    ----------
    stages : nn.Sequential
        The backbone: ``stages[i]`` is stage ``i`` (an ``nn.Sequential`` of single layers).
    exits : nn.ModuleList
        ``exits[i]`` maps the output of stage ``i`` to logits.
    """

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        num_classes: int,
        channels: Sequence[int] = (32, 64, 128, 256),
        hidden: int = 64,
    ) -> None:
        super().__init__()
        in_channels, height, width = input_shape
        if not channels:
            raise ValueError("channels = (): a multi-exit model needs at least one stage")
        factor = 2 ** len(channels)
        if height % factor or width % factor:
            raise ValueError(
                f"input_shape = {tuple(input_shape)}: height and width must be divisible by {factor} "
                f"({len(channels)} stages halve them); resize the inputs (e.g. resolution=32)"
            )
        self.input_shape = tuple(input_shape)
        stages, exits = [], []
        for out_channels in channels:
            stages.append(_stage(in_channels, out_channels))
            exits.append(_exit_head(out_channels, num_classes, hidden))
            in_channels = out_channels
        self.stages = nn.Sequential(*stages)
        self.exits = nn.ModuleList(exits)

    @property
    def num_exits(self) -> int:
        """Number of exits (one per stage)."""
        return len(self.exits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the last (deepest) exit."""
        return self.exits[-1](self.stages(x))

    def forward_exit(self, x: torch.Tensor, exit_index: int) -> torch.Tensor:
        """Logits of exit ``exit_index`` (runs only the stages it needs)."""
        index = check_exit(self, exit_index)
        for stage in self.stages[: index + 1]:
            x = stage(x)
        return self.exits[index](x)

    def forward_exits(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Logits of every exit, shallowest first, from one pass through the backbone."""
        outputs = []
        for stage, head in zip(self.stages, self.exits):
            x = stage(x)
            outputs.append(head(x))
        return outputs


def check_exit(model: MultiExitCNN, exit_index: int) -> int:
    """``exit_index`` as a non-negative index (negative counts from the end), or ValueError naming it."""
    n = model.num_exits
    if isinstance(exit_index, bool) or not isinstance(exit_index, int) or not -n <= exit_index < n:
        raise ValueError(f"exit = {exit_index!r}: expected an integer in 0..{n - 1} (the model has {n} exits)")
    return exit_index % n


class ExitPath(nn.Module):
    """The path from the input to one exit, as a split-contract model.

    ``forward(x) == model.forward_exit(x, exit_index)``. The modules are the multi-exit model's own
    (shared parameters); :func:`fedsplit.split.split_model` deep-copies them when it cuts.
    """

    #: Split contract (:mod:`fedsplit.models.contract`): ``forward`` applies these children in order.
    split_sequence = ("trunk", "head")

    def __init__(self, model: MultiExitCNN, exit_index: int) -> None:
        super().__init__()
        self.exit_index = check_exit(model, exit_index)
        self.trunk = nn.Sequential(*model.stages[: self.exit_index + 1])
        self.head = model.exits[self.exit_index]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))


def exit_path(model: MultiExitCNN, exit_index: int) -> ExitPath:
    """The path to exit ``exit_index`` (see :class:`ExitPath`)."""
    return ExitPath(model, exit_index)


def build_multiexit(
    name: str,
    input_shape: tuple[int, int, int],
    num_classes: int,
    *,
    width: float = 1.0,
    seed: int | None = None,
) -> MultiExitCNN:
    """Build a multi-exit model by name (see :data:`MULTIEXIT_MODELS`).

    Parameters
    ----------
    name : str
        ``multiexit-cnn``.
    input_shape : tuple of int
        ``(channels, height, width)`` of one input, in pixels.
    num_classes : int
        Number of classes.
    width : float
        Channel multiplier of the stages.
    seed : int, optional
        Seed of the initial weights.
    """
    if name not in MULTIEXIT_MODELS:
        raise ValueError(f"model = {name!r}: unknown multi-exit model (allowed: {', '.join(MULTIEXIT_MODELS)})")
    if not width > 0:
        raise ValueError(f"width = {width!r}: expected a number > 0")
    if seed is not None:
        torch.manual_seed(seed)
    channels = tuple(max(4, int(round(c * width))) for c in (32, 64, 128, 256))
    return MultiExitCNN(input_shape, num_classes, channels)


def joint_exit_loss(
    logits: Sequence[torch.Tensor], target: torch.Tensor, weights: Sequence[float] | None = None
) -> torch.Tensor:
    """BranchyNet's joint objective: ``sum_i weights[i] * cross_entropy(logits[i], target)``.

    Parameters
    ----------
    logits : sequence of torch.Tensor
        Each exit's logits ``[N, classes]``, shallowest first (:meth:`MultiExitCNN.forward_exits`).
    target : torch.Tensor
        Class indices ``[N]``.
    weights : sequence of float, optional
        One non-negative weight per exit (default: all 1).
    """
    weights = [1.0] * len(logits) if weights is None else list(weights)
    if len(weights) != len(logits):
        raise ValueError(f"weights = {weights!r}: expected {len(logits)} values, one per exit")
    if any(w < 0 for w in weights) or not any(w > 0 for w in weights):
        raise ValueError(f"weights = {weights!r}: expected non-negative values, at least one > 0")
    return sum(w * nn.functional.cross_entropy(out, target) for w, out in zip(weights, logits))


@dataclass(frozen=True)
class MultiExitTrainResult:
    """What :func:`train_multiexit` did: optimiser steps and the last epoch's mean joint loss."""

    steps: int
    loss: float


def train_multiexit(
    model: MultiExitCNN,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    batch_size: int = 64,
    lr: float = 0.05,
    momentum: float = 0.9,
    weights: Sequence[float] | None = None,
    seed: int = 0,
) -> MultiExitTrainResult:
    """Train every exit jointly (SGD on :func:`joint_exit_loss`), in place.

    Parameters
    ----------
    model : MultiExitCNN
        The model, trained in place.
    x, y : torch.Tensor
        Inputs ``[N, C, H, W]`` and labels ``[N]``.
    epochs, batch_size : int
        Passes over the data and mini-batch size (samples).
    lr, momentum : float
        SGD hyper-parameters.
    weights : sequence of float, optional
        Joint-loss weight of each exit (default: all 1).
    seed : int
        Seed of the batch order.
    """
    n = int(x.shape[0])
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    model.train()
    steps, epoch_loss = 0, float("nan")
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        total, seen = 0.0, 0
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = joint_exit_loss(model.forward_exits(x[idx]), y[idx], weights)
            loss.backward()
            optimizer.step()
            steps += 1
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
        epoch_loss = total / max(seen, 1)
    return MultiExitTrainResult(steps, epoch_loss)


@torch.no_grad()
def evaluate_exits(model: MultiExitCNN, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> list[float]:
    """Accuracy of every exit on ``(x, y)`` (fractions in [0, 1], shallowest exit first)."""
    model.eval()
    correct = [0] * model.num_exits
    for start in range(0, int(x.shape[0]), batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        for i, out in enumerate(model.forward_exits(xb)):
            correct[i] += int((out.argmax(dim=1) == yb).sum())
    n = max(int(x.shape[0]), 1)
    return [c / n for c in correct]


__all__ = [
    "DEFAULT_EXIT_WEIGHTS",
    "ExitPath",
    "MULTIEXIT_MODELS",
    "MultiExitCNN",
    "MultiExitTrainResult",
    "build_multiexit",
    "check_exit",
    "evaluate_exits",
    "exit_path",
    "joint_exit_loss",
    "train_multiexit",
]
