"""Local training and evaluation on one terminal: plain PyTorch, no Flower.

Batches are drawn from in-memory tensors (no ``DataLoader`` worker machinery: on small edge
datasets it costs more than the training). The FLOPs of every batch actually run are added up
from exact per-batch counts (:func:`fedsplit.models.step_flops`).

Only parameters with ``requires_grad`` are optimised (a frozen backbone, :mod:`fedsplit.transfer`,
stays as loaded, and costs no weight-gradient FLOPs). With a ``teacher`` the loss adds the
distillation term on its soft labels (:func:`fedsplit.learning.distill.distillation_loss`), and
the teacher's inference FLOPs count with the batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from fedsplit.models.flops import step_flops
from fedsplit.learning.distill import distillation_loss
from fedsplit.models.freezing import freeze_batchnorm


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
        FLOPs executed (forward + backward of every batch, plus the teacher's forward when
        distilling).
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
    teacher: nn.Module | None = None,
    temperature: float = 2.0,
    alpha: float = 0.5,
    batchnorm_eval: bool = False,
    on_epoch: Callable[[int, float], None] | None = None,
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
    teacher : nn.Module, optional
        Knowledge distillation: the loss becomes ``(1 - alpha) * CE + alpha * T^2 * KL`` to the
        teacher's soft labels (temperature ``T``); the teacher runs in eval mode, no gradients.
    temperature, alpha : float
        Distillation temperature (> 0) and weight of its term (0..1).
    batchnorm_eval : bool
        Keep every BatchNorm layer in eval mode (frozen pretrained statistics).
    on_epoch : callable, optional
        ``(epoch, loss) -> None``, called after each epoch with its number (from 1) and its mean
        training loss (progress reports; it does not change the training).
    """
    n = int(x.shape[0])
    if n == 0:
        return TrainResult(0, 0, 0, float("nan"))
    model.train()
    if batchnorm_eval:
        freeze_batchnorm(model)
    params = [p for p in model.parameters() if p.requires_grad]
    # foreach: one fused update per step instead of a Python loop over the parameters.
    optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, foreach=True)
    global_params = [p.detach().clone() for p in params] if proximal_mu > 0 else None
    if teacher is not None:
        teacher.eval()
    generator = torch.Generator().manual_seed(seed)
    input_shape = tuple(x.shape[1:])
    # BatchNorm in training mode has no batch statistics for one sample (torch raises where a layer
    # then sees one value per channel, e.g. 1x1 maps of a 4x4 input): a trailing batch of one is left out.
    drop_single = any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training for m in model.modules())
    sizes = {min(batch_size, n), n % batch_size} - ({1} if drop_single else set())
    batch_flops = {b: step_flops(model, input_shape, b, train=True) for b in sizes if b}
    if teacher is not None:
        batch_flops = {b: f + step_flops(teacher, input_shape, b, train=False) for b, f in batch_flops.items()}
    steps = flops = 0
    epoch_loss = 0.0
    for epoch in range(1, epochs + 1):
        order = torch.randperm(n, generator=generator).to(x.device)
        # One gather per epoch; the mini-batches are then views (same values as gathering each).
        x_epoch, y_epoch = x.index_select(0, order), y.index_select(0, order)
        epoch_loss, seen = 0.0, 0
        for start in range(0, n, batch_size):
            xb, yb = x_epoch[start : start + batch_size], y_epoch[start : start + batch_size]
            if drop_single and len(yb) == 1:
                continue
            optimizer.zero_grad(set_to_none=True)
            logits = model(xb)
            if teacher is not None:
                with torch.no_grad():
                    teacher_logits = teacher(xb)
                loss = distillation_loss(logits, teacher_logits, yb, temperature=temperature, alpha=alpha)
            else:
                loss = nn.functional.cross_entropy(logits, yb)
            if global_params is not None:
                prox = sum(((p - g) ** 2).sum() for p, g in zip(params, global_params))
                loss = loss + 0.5 * proximal_mu * prox
            loss.backward()
            optimizer.step()
            steps += 1
            flops += batch_flops[len(yb)]
            epoch_loss += float(loss.detach()) * len(yb)
            seen += len(yb)
        epoch_loss /= max(seen, 1)
        if on_epoch is not None:
            on_epoch(epoch, epoch_loss)
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
