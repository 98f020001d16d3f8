"""Central pretraining of a backbone on a source task, and server-side distillation of a student.

Both read the same :class:`~fedsplit.config.RunConfig` as a federated run (``data.*``,
``model.*``, ``train.*``, ``seed``): the source task is the configured dataset, filtered with
``data.classes`` (digits ``0-4``), or ``synthetic``. The data are the whole client pool (one
partition, less its ``data.val_fraction``), the held-out test set is the server's. The result is
a checkpoint (:mod:`fedsplit.models.checkpoint`) a run starts from with ``model.pretrained``,
or a teacher for ``transfer.teacher``.
"""

from __future__ import annotations

from dataclasses import dataclass
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


def _source(cfg: RunConfig) -> tuple[Any, Any, Any]:
    """(train set, test set, FederatedData) of the source task: the whole pool as one partition."""
    from fedsplit.data import make_federated_data

    data = make_federated_data(cfg, num_partitions=1)
    train, _ = data.partition(0)
    return train, data.server_test, data


def pretrain(cfg: RunConfig, out: str | Path, *, epochs: int, batch_size: int | None = None, lr: float | None = None) -> PretrainResult:
    """Train ``cfg.model`` centrally on ``cfg.data`` and save a checkpoint to ``out``.

    Parameters
    ----------
    cfg : RunConfig
        The source task and model (``model.pretrained`` chains: start from that checkpoint).
    out : str or Path
        Checkpoint file to write.
    epochs : int
        Passes over the source data.
    batch_size, lr : optional
        Default ``train.batch_size`` and ``train.lr``; momentum and weight decay are ``train.*``'s.
    """
    from fedsplit.learning import evaluate, train_local
    from fedsplit.learning.task import source_classes
    from fedsplit.models import build_model

    train, test, data = _source(cfg)
    shape = tuple(int(d) for d in data.input_shape)
    m = cfg.model
    model = build_model(m.name, shape, data.num_classes, hidden=m.hidden, width=m.width, seed=cfg.seed)
    classes = source_classes(cfg)
    if m.pretrained:
        load_pretrained(model, m.pretrained, target={"dataset": cfg.data.name, "classes": classes})
    t = cfg.train
    result = train_local(
        model, train.x, train.y, epochs=epochs, batch_size=batch_size or t.batch_size, lr=lr or t.lr,
        momentum=t.momentum, weight_decay=t.weight_decay, seed=cfg.seed,
    )
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
) -> PretrainResult:
    """Distil ``cfg.model`` (the student) from a teacher checkpoint on ``cfg.data``'s inputs, unlabeled.

    The student gets the teacher's outputs (and class metadata): it learns the teacher's task
    from inputs alone, so the public set may come from other classes than the teacher's (the
    source digits, ``synthetic``). Its test accuracy is measured when ``cfg.data`` is the
    teacher's task, else left out of the metadata.
    """
    from fedsplit.learning import evaluate
    from fedsplit.learning.task import source_classes
    from fedsplit.models import build_model
    from fedsplit.learning.distill import distill

    teacher_ckpt = read_checkpoint(teacher_path)
    teacher = model_from_checkpoint(teacher_ckpt)
    public, test, data = _source(cfg)
    shape = tuple(int(d) for d in data.input_shape)
    outputs = int(teacher_ckpt.meta["num_classes"])
    m = cfg.model
    student = build_model(m.name, shape, outputs, hidden=m.hidden, width=m.width, seed=cfg.seed)
    t = cfg.train
    result = distill(
        student, teacher, public.x, epochs=epochs, batch_size=batch_size or t.batch_size, lr=lr or t.lr,
        momentum=t.momentum, temperature=temperature, seed=cfg.seed,
    )
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


__all__ = ["PretrainResult", "distill_student", "pretrain"]
