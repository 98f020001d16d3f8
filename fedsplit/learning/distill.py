"""Knowledge distillation: the soft-label loss, and a student distilled from a teacher on unlabeled data.

The loss follows Hinton et al.'s form: with student logits ``s``, teacher logits ``t`` and
temperature ``T``, ``KD = T^2 * KL(softmax(t / T) || softmax(s / T))`` (``T^2`` keeps the
gradient scale comparable across temperatures), mixed with the hard-label cross-entropy as
``(1 - alpha) * CE + alpha * KD``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


def kd_term(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax(t/T) || softmax(s/T))``, averaged over the batch (a scalar)."""
    if temperature <= 0:
        raise ValueError(f"temperature = {temperature}: must be > 0")
    t = float(temperature)
    return F.kl_div(
        F.log_softmax(student_logits / t, dim=1), F.log_softmax(teacher_logits.detach() / t, dim=1),
        reduction="batchmean", log_target=True,
    ) * (t * t)


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor | None,
    *,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """``(1 - alpha) * CE(student, targets) + alpha * kd_term``; without targets, the KD term only.

    Parameters
    ----------
    student_logits, teacher_logits : torch.Tensor
        ``[N, classes]`` logits (the teacher's are detached).
    targets : torch.Tensor or None
        Hard labels ``[N]``; None for unlabeled data (then ``alpha`` is ignored).
    temperature : float
        Softmax temperature ``T`` > 0.
    alpha : float
        Weight of the distillation term, ``0 <= alpha <= 1``.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha = {alpha}: must be in [0, 1]")
    kd = kd_term(student_logits, teacher_logits, temperature)
    if targets is None:
        return kd
    ce = F.cross_entropy(student_logits, targets)
    return (1.0 - alpha) * ce + alpha * kd


@dataclass(frozen=True)
class DistillResult:
    """What a server-side distillation did: steps, FLOPs (student train + teacher inference) and
    the mean KD loss of the last epoch."""

    steps: int
    flops: int
    loss: float


def distill(
    student: nn.Module,
    teacher: nn.Module,
    x: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    momentum: float = 0.9,
    temperature: float = 4.0,
    seed: int = 0,
    on_epoch: Callable[[int, float], None] | None = None,
) -> DistillResult:
    """Train ``student`` in place to match ``teacher``'s soft labels on unlabeled inputs ``x``.

    Parameters
    ----------
    student, teacher : nn.Module
        Same number of outputs. The teacher is only evaluated (eval mode, no gradients).
    x : torch.Tensor
        Unlabeled inputs ``[N, C, H, W]`` (a public set; its labels, if any, are not used).
    epochs, batch_size : int
        Passes over ``x`` and samples per step.
    lr, momentum : float
        SGD hyper-parameters.
    temperature : float
        Softmax temperature of the KD term.
    seed : int
        Seed of the batch order.
    on_epoch : callable, optional
        ``(epoch, loss) -> None``, called after each epoch with its number (from 1) and its mean
        KD loss (progress reports; it does not change the training).
    """
    from fedsplit.models.flops import step_flops

    n = int(x.shape[0])
    if n == 0:
        raise ValueError("distill: the unlabeled set is empty")
    teacher.eval()
    student.train()
    optimizer = torch.optim.SGD([p for p in student.parameters() if p.requires_grad], lr=lr, momentum=momentum)
    generator = torch.Generator().manual_seed(seed)
    shape = tuple(x.shape[1:])
    steps = flops = 0
    epoch_loss = 0.0
    for epoch in range(1, epochs + 1):
        order = torch.randperm(n, generator=generator)
        epoch_loss, seen = 0.0, 0
        for start in range(0, n, batch_size):
            xb = x[order[start : start + batch_size]]
            with torch.no_grad():
                t_logits = teacher(xb)
            optimizer.zero_grad(set_to_none=True)
            loss = kd_term(student(xb), t_logits, temperature)
            loss.backward()
            optimizer.step()
            b = len(xb)
            flops += step_flops(student, shape, b, train=True) + step_flops(teacher, shape, b, train=False)
            steps += 1
            epoch_loss += float(loss.detach()) * b
            seen += b
        epoch_loss /= max(seen, 1)
        if on_epoch is not None:
            on_epoch(epoch, epoch_loss)
    return DistillResult(steps=steps, flops=flops, loss=epoch_loss)


__all__ = ["DistillResult", "distill", "distillation_loss", "kd_term"]
