"""Central pretraining of a backbone on a source task, and server-side distillation of a student.

Both read the same :class:`~fedsplit.config.RunConfig` as a federated run (``data.*``,
``model.*``, ``train.*``, ``seed``): the source task is the configured dataset, filtered with
``data.classes`` (digits ``0-4``), or ``synthetic``. The data are the whole client pool (one
partition, less its ``data.val_fraction``), the held-out test set is the server's. The result is
a checkpoint (:mod:`fedsplit.models.checkpoint`) a run starts from with ``model.pretrained``,
or a teacher for ``transfer.teacher``.

Both check their numbers before any data are loaded (a ``ValueError`` naming the parameter: a
learning rate of 0 or NaN would otherwise train nothing, or write a checkpoint of NaNs), and
refuse to write a checkpoint whose training loss ended NaN or infinite (:class:`TrainingDiverged`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import torch

from fedsplit.config import RunConfig
from fedsplit.models.checkpoint import load_pretrained, model_from_checkpoint, model_meta, read_checkpoint, save_checkpoint


@dataclass(frozen=True)
class PretrainResult:
    """A written checkpoint and how it was made.

    Attributes
    ----------
    path : Path
        The checkpoint file.
    meta : dict
        Its metadata (model, input shape, classes, ``test_accuracy``, ``train_flops``, ...).
    """

    path: Path
    meta: dict[str, Any]


class TrainingDiverged(ValueError):
    """The training loss ended NaN or infinite (a learning rate too large): nothing was written."""


EpochCallback = Callable[[int, float, float], None]
"""``(epoch, loss, seconds) -> None``: called after each epoch with its number (from 1), its mean
training loss and its wall-clock seconds (the first epoch's include setting up the training)."""


def _timed(on_epoch: EpochCallback | None) -> Callable[[int, float], None] | None:
    """``on_epoch`` as the ``(epoch, loss)`` callback of the training loops, adding each epoch's
    seconds (counted from this call: made right before the training starts)."""
    if on_epoch is None:
        return None
    last = time.perf_counter()

    def report(epoch: int, loss: float) -> None:
        nonlocal last
        now = time.perf_counter()
        on_epoch(epoch, loss, now - last)
        last = now

    return report


def positive_int_problem(value: object) -> str | None:
    """Why ``value`` is not an integer >= 1 (an epoch or batch count), or None when it is."""
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        return "must be an integer >= 1"
    return None


def positive_float_problem(value: object) -> str | None:
    """Why ``value`` is not a finite number > 0 (a learning rate, a temperature), or None when it is."""
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value) or value <= 0:
        return "must be a finite number > 0"
    return None


def check_positive_int(name: str, value: object) -> int:
    """``value`` if it is an integer >= 1, else ``ValueError`` naming ``name``, the value and what is allowed."""
    if (problem := positive_int_problem(value)) is not None:
        raise ValueError(f"{name} = {value!r}: {problem}")
    return int(value)  # type: ignore[call-overload]


def check_positive_float(name: str, value: object) -> float:
    """``value`` if it is a finite number > 0, else ``ValueError`` naming ``name``, the value and what is allowed."""
    if (problem := positive_float_problem(value)) is not None:
        raise ValueError(f"{name} = {value!r}: {problem}")
    return float(value)  # type: ignore[arg-type]


def _hyper(cfg: RunConfig, epochs: int, batch_size: int | None, lr: float | None) -> tuple[int, int, float]:
    """Checked ``(epochs, batch_size, lr)``, the last two from ``cfg.train`` where None (not where 0)."""
    epochs = check_positive_int("epochs", epochs)
    batch_size = check_positive_int("batch_size", cfg.train.batch_size if batch_size is None else batch_size)
    lr = check_positive_float("lr", cfg.train.lr if lr is None else lr)
    return epochs, batch_size, lr


def _check_finite_loss(loss: float, steps: int, lr: float, what: str) -> None:
    """:class:`TrainingDiverged` if ``steps`` SGD steps ended with a NaN or infinite ``loss``."""
    if steps > 0 and not math.isfinite(loss):
        raise TrainingDiverged(
            f"{what} diverged: its loss is {loss} after the last epoch (lr = {lr:g} too large?); no checkpoint written"
        )


def _source(cfg: RunConfig) -> tuple[Any, Any, Any]:
    """(train set, test set, FederatedData) of the source task: the whole pool as one partition."""
    from fedsplit.data import make_federated_data

    data = make_federated_data(cfg, num_partitions=1)
    train, _ = data.partition(0)
    return train, data.server_test, data


def pretrain(
    cfg: RunConfig,
    out: str | Path,
    *,
    epochs: int,
    batch_size: int | None = None,
    lr: float | None = None,
    on_epoch: EpochCallback | None = None,
) -> PretrainResult:
    """Train ``cfg.model`` centrally on ``cfg.data`` and save a checkpoint to ``out``.

    Parameters
    ----------
    cfg : RunConfig
        The source task and model (``model.pretrained`` chains: start from that checkpoint).
    out : str or Path
        Checkpoint file to write.
    epochs : int
        Passes over the source data (>= 1).
    batch_size : int, optional
        Samples per SGD step (>= 1); None: ``train.batch_size``.
    lr : float, optional
        SGD learning rate (finite, > 0); None: ``train.lr``. Momentum and weight decay are ``train.*``'s.
    on_epoch : callable, optional
        ``(epoch, loss, seconds) -> None`` after each epoch (:data:`EpochCallback`; the mean
        cross-entropy loss).

    Raises
    ------
    ValueError
        ``epochs``, ``batch_size`` or ``lr`` out of range (checked before any data are loaded).
    TrainingDiverged
        The loss ended NaN or infinite; ``out`` is not written.
    """
    from fedsplit.learning import evaluate, train_local
    from fedsplit.learning.task import source_classes
    from fedsplit.models import build_model

    epochs, batch_size, lr = _hyper(cfg, epochs, batch_size, lr)
    train, test, data = _source(cfg)
    shape = tuple(int(d) for d in data.input_shape)
    m = cfg.model
    model = build_model(m.name, shape, data.num_classes, hidden=m.hidden, width=m.width, seed=cfg.seed)
    classes = source_classes(cfg)
    if m.pretrained:
        load_pretrained(model, m.pretrained, target={"dataset": cfg.data.name, "classes": classes})
    t = cfg.train
    result = train_local(
        model, train.x, train.y, epochs=epochs, batch_size=batch_size, lr=lr,
        momentum=t.momentum, weight_decay=t.weight_decay, seed=cfg.seed, on_epoch=_timed(on_epoch),
    )
    _check_finite_loss(result.loss, result.steps, lr, "pretraining")
    accuracy = evaluate(model, test.x, test.y).accuracy
    meta = {
        **model_meta(m.name, shape, data.num_classes, hidden=m.hidden, width=m.width),
        "dataset": cfg.data.name, "classes": classes, "resolution": cfg.data.resolution,
        "epochs": epochs, "train_samples": len(train), "train_flops": result.flops, "test_accuracy": accuracy,
        "made_by": "pretrain",
    }
    return PretrainResult(save_checkpoint(out, model.state_dict(), meta), meta)


def distill_student(
    cfg: RunConfig,
    teacher_path: str | Path,
    out: str | Path,
    *,
    epochs: int,
    temperature: float,
    batch_size: int | None = None,
    lr: float | None = None,
    on_epoch: EpochCallback | None = None,
) -> PretrainResult:
    """Distil ``cfg.model`` (the student) from a teacher checkpoint on ``cfg.data``'s inputs, unlabeled.

    The student gets the teacher's outputs (and class metadata): it learns the teacher's task
    from inputs alone, so the public set may come from other classes than the teacher's (the
    source digits, ``synthetic``). Its test accuracy is measured when ``cfg.data`` is the
    teacher's task, else left out of the metadata.

    Parameters
    ----------
    cfg : RunConfig
        The student model and the unlabeled public data.
    teacher_path : str or Path
        The teacher's checkpoint.
    out : str or Path
        Checkpoint file to write.
    epochs : int
        Passes over the public data (>= 1).
    temperature : float
        Softmax temperature of the distillation loss (finite, > 0).
    batch_size : int, optional
        Samples per SGD step (>= 1); None: ``train.batch_size``.
    lr : float, optional
        SGD learning rate (finite, > 0); None: ``train.lr``.
    on_epoch : callable, optional
        ``(epoch, loss, seconds) -> None`` after each epoch (:data:`EpochCallback`; the mean
        distillation loss).

    Raises
    ------
    ValueError
        ``epochs``, ``temperature``, ``batch_size`` or ``lr`` out of range (checked first).
    CheckpointError
        The teacher's checkpoint cannot be read.
    TrainingDiverged
        The loss ended NaN or infinite; ``out`` is not written.
    """
    from fedsplit.learning import evaluate
    from fedsplit.learning.task import source_classes
    from fedsplit.models import build_model
    from fedsplit.learning.distill import distill

    epochs, batch_size, lr = _hyper(cfg, epochs, batch_size, lr)
    temperature = check_positive_float("temperature", temperature)
    teacher_ckpt = read_checkpoint(teacher_path)
    teacher = model_from_checkpoint(teacher_ckpt)
    public, test, data = _source(cfg)
    shape = tuple(int(d) for d in data.input_shape)
    outputs = int(teacher_ckpt.meta["num_classes"])
    m = cfg.model
    student = build_model(m.name, shape, outputs, hidden=m.hidden, width=m.width, seed=cfg.seed)
    t = cfg.train
    result = distill(
        student, teacher, public.x, epochs=epochs, batch_size=batch_size, lr=lr,
        momentum=t.momentum, temperature=temperature, seed=cfg.seed, on_epoch=_timed(on_epoch),
    )
    _check_finite_loss(result.loss, result.steps, lr, "distillation")
    meta = {
        **model_meta(m.name, shape, outputs, hidden=m.hidden, width=m.width),
        "dataset": teacher_ckpt.meta.get("dataset"), "classes": teacher_ckpt.meta.get("classes"),
        "resolution": cfg.data.resolution, "epochs": epochs, "public_samples": len(public),
        "public_dataset": cfg.data.name, "public_classes": source_classes(cfg), "temperature": temperature,
        "train_flops": result.flops, "distill_loss": result.loss, "teacher": str(teacher_path), "made_by": "distill",
    }
    if cfg.data.name == meta["dataset"] and source_classes(cfg) == list(meta["classes"] or []):
        with torch.no_grad():
            meta["test_accuracy"] = evaluate(student, test.x, test.y).accuracy
            meta["teacher_test_accuracy"] = evaluate(teacher, test.x, test.y).accuracy
    return PretrainResult(save_checkpoint(out, student.state_dict(), meta), meta)


__all__ = [
    "EpochCallback",
    "PretrainResult",
    "TrainingDiverged",
    "check_positive_float",
    "check_positive_int",
    "distill_student",
    "positive_float_problem",
    "positive_int_problem",
    "pretrain",
]
