"""Local training and evaluation on one terminal: plain PyTorch, no Flower.

Batches are drawn from in-memory tensors (no ``DataLoader`` worker machinery: on small edge
datasets it costs more than the training). The FLOPs of every batch actually run are added up
from exact per-batch counts (:func:`fedsplit.models.step_flops`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fedsplit.models.flops import step_flops


@dataclass(frozen=True)
class TrainResult:
    """What one local training run did.

    Attributes
    ----------
    num_examples : int
        Training samples in the local set.
    steps : int
        Optimiser steps taken.
    flops : int
        FLOPs executed (forward + backward of every batch).
    loss : float
        Mean training loss over the last epoch.
    """

    num_examples: int
    steps: int
    flops: int
    loss: float


@dataclass(frozen=True)
class EvalResult:
    """Loss, accuracy and FLOPs of an evaluation pass."""

    num_examples: int
    loss: float
    accuracy: float
    flops: int


def train_local(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    proximal_mu: float = 0.0,
    seed: int = 0,
) -> TrainResult:
    """Train ``model`` in place with SGD on ``(x, y)``.

    Parameters
    ----------
    model : nn.Module
        Model holding the received global weights; trained in place.
    x, y : torch.Tensor
        Inputs ``[N, C, H, W]`` and labels ``[N]``.
    epochs, batch_size : int
        Local epochs and mini-batch size (samples).
    lr, momentum, weight_decay : float
        SGD hyper-parameters.
    proximal_mu : float
        FedProx proximal coefficient: adds ``mu/2 * ||w - w_global||^2`` to the loss.
    seed : int
        Seed of the batch order.
    """
    n = int(x.shape[0])
    if n == 0:
        return TrainResult(0, 0, 0, float("nan"))
    model.train()
    # foreach: one fused update per step instead of a Python loop over the parameters.
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay, foreach=True)
    global_params = [p.detach().clone() for p in model.parameters()] if proximal_mu > 0 else None
    generator = torch.Generator().manual_seed(seed)
    input_shape = tuple(x.shape[1:])
    batch_flops = {b: step_flops(model, input_shape, b, train=True) for b in {min(batch_size, n), n % batch_size} if b}
    steps = flops = 0
    epoch_loss = 0.0
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator).to(x.device)
        # One gather per epoch; the mini-batches are then views (same values as gathering each).
        x_epoch, y_epoch = x.index_select(0, order), y.index_select(0, order)
        epoch_loss, seen = 0.0, 0
        for start in range(0, n, batch_size):
            xb, yb = x_epoch[start : start + batch_size], y_epoch[start : start + batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(model(xb), yb)
            if global_params is not None:
                prox = sum(((p - g) ** 2).sum() for p, g in zip(model.parameters(), global_params))
                loss = loss + 0.5 * proximal_mu * prox
            loss.backward()
            optimizer.step()
            steps += 1
            flops += batch_flops[len(yb)]
            epoch_loss += float(loss.detach()) * len(yb)
            seen += len(yb)
        epoch_loss /= max(seen, 1)
    return TrainResult(num_examples=n, steps=steps, flops=flops, loss=epoch_loss)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> EvalResult:
    """Mean cross-entropy loss and accuracy of ``model`` on ``(x, y)``."""
    n = int(x.shape[0])
    if n == 0:
        return EvalResult(0, float("nan"), float("nan"), 0)
    model.eval()
    input_shape = tuple(x.shape[1:])
    total_loss = 0.0
    correct = flops = 0
    for start in range(0, n, batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        out = model(xb)
        total_loss += float(nn.functional.cross_entropy(out, yb, reduction="sum"))
        correct += int((out.argmax(dim=1) == yb).sum())
        flops += step_flops(model, input_shape, len(xb), train=False)
    return EvalResult(num_examples=n, loss=total_loss / n, accuracy=correct / n, flops=flops)
