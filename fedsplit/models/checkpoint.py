"""Model checkpoints for transfer: a state_dict plus what it was trained on, saved and loaded locally.

A ``fedsplit pretrain`` checkpoint is a ``torch.save`` of::

    {"format": "fedsplit.checkpoint/1",
     "state_dict": {key: tensor, ...},
     "meta": {"model": "cnn", "hidden": 64, "width": 1.0, "input_shape": [C, H, W],
              "num_classes": k, "dataset": "digits", "classes": [0, 1, 2, 3, 4], ...}}

``classes`` are the source dataset's own labels of output ``0 .. k-1`` (after any
``data.classes`` filter). :func:`load_pretrained` also accepts a plain state_dict (a torchvision
weights file the user has on disk, or ``torch.save(model.state_dict())``): then nothing is known
beyond the tensors. Files are read with ``weights_only=True``; nothing is ever downloaded.

Loading into a model (:func:`load_pretrained`) takes every tensor whose key and shape match. The
classifier head (the last block of the split contract that has parameters, see
:func:`head_keys`) is re-initialised, with a log line saying so, when its shape differs (another
number of classes) or when the checkpoint's metadata names other classes than the target task's.
Any other missing, unexpected or mis-shaped tensor raises :class:`CheckpointError` naming them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

log = logging.getLogger("fedsplit")

FORMAT = "fedsplit.checkpoint/1"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or does not fit the model it is loaded into."""


@dataclass
class Checkpoint:
    """A loaded checkpoint: tensors and (for fedsplit's own files) metadata."""

    state_dict: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)
    path: str = ""


def save_checkpoint(path: str | Path, state_dict: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> Path:
    """Write a fedsplit checkpoint (tensors copied to the CPU) atomically; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "state_dict": {k: v.detach().cpu().clone() for k, v in state_dict.items()},
        "meta": dict(meta),
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def read_checkpoint(path: str | Path, *, mmap: bool = False) -> Checkpoint:
    """Read a fedsplit checkpoint or a plain state_dict file.

    With ``mmap`` the file's tensors are memory-mapped (``torch.load(mmap=True)``), not read: their
    bytes are read only where a tensor is used, so checking what a large checkpoint is (its
    metadata, its keys) costs next to nothing. A file in torch's legacy format, which cannot be
    mapped, is read as without ``mmap``.

    Raises
    ------
    CheckpointError
        If the file is missing, unreadable, or holds neither form.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r}: no such file")
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except RuntimeError:
            if not mmap:
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)  # the legacy format cannot be mapped
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means "not a checkpoint"
        raise CheckpointError(f"checkpoint {str(path)!r}: cannot be read as torch weights ({type(exc).__name__}: {exc})") from None
    if isinstance(obj, Mapping) and obj.get("format") == FORMAT:
        return Checkpoint(dict(obj["state_dict"]), dict(obj.get("meta", {})), str(path))
    if isinstance(obj, Mapping) and obj and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        return Checkpoint(dict(obj), {}, str(path))
    raise CheckpointError(f"checkpoint {str(path)!r}: neither a fedsplit checkpoint nor a state_dict of tensors")


def head_keys(model: nn.Module) -> list[str]:
    """State-dict keys of the classifier head: the last block (split contract) with parameters.

    Falls back to the last module with parameters when the model has no split contract.
    """
    from fedsplit.models.contract import blocks

    try:
        named = blocks(model)
    except ValueError:
        named = []
    for name, block in reversed(named):
        if any(True for _ in block.parameters()):
            keys = list(block.state_dict())
            # contract blocks use their own names; torchvision (fx) blocks use the model's keys
            return keys if all(k in model.state_dict() for k in keys) else [f"{name}.{k}" for k in keys]
    leaf = [n for n, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))]
    if not leaf:
        return []
    prefix = leaf[-1] + "."
    return [k for k in model.state_dict() if k.startswith(prefix)]


def load_pretrained(
    model: nn.Module,
    checkpoint: Checkpoint | str | Path,
    *,
    target: Mapping[str, Any] | None = None,
) -> list[str]:
    """Load a checkpoint into ``model`` (in place); return the keys left at their fresh init.

    Parameters
    ----------
    model : nn.Module
        The freshly built model of the run.
    checkpoint : Checkpoint, str or Path
        A checkpoint or its file.
    target : mapping, optional
        The run's task, ``{"dataset": name, "classes": [labels]}``: with checkpoint metadata
        naming other classes, the head is re-initialised even when its shape fits.

    Raises
    ------
    CheckpointError
        Tensors other than the head's missing, unexpected or of another shape; the message
        names the file, the model and up to five keys of each kind.
    """
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else read_checkpoint(checkpoint)
    own = model.state_dict()
    head = set(head_keys(model))
    source = ckpt.state_dict
    missing = [k for k in own if k not in source]
    unexpected = [k for k in source if k not in own]
    reshaped = [k for k in own if k in source and tuple(source[k].shape) != tuple(own[k].shape)]
    wrong = [k for k in missing + reshaped if k not in head] + unexpected
    if wrong:
        def show(keys: list[str]) -> str:
            return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")

        parts = []
        if [k for k in missing if k not in head]:
            parts.append(f"missing {show([k for k in missing if k not in head])}")
        if unexpected:
            parts.append(f"unexpected {show(unexpected)}")
        if [k for k in reshaped if k not in head]:
            k = next(k for k in reshaped if k not in head)
            parts.append(f"shape of {k} is {tuple(source[k].shape)} in the checkpoint, {tuple(own[k].shape)} in the model")
        made_by = f" (made for model {ckpt.meta['model']!r})" if "model" in ckpt.meta else ""
        raise CheckpointError(
            f"checkpoint {ckpt.path!r}{made_by} does not fit model {type(model).__name__}: " + "; ".join(parts)
        )
    reinit = sorted(set(k for k in missing + reshaped if k in head), key=list(own).index)
    reason = ""
    if reinit:
        reason = "its shape differs (another number of classes)"
    elif target is not None and ckpt.meta.get("classes") is not None:
        same = ckpt.meta.get("dataset") == target.get("dataset") and list(ckpt.meta["classes"]) == list(target.get("classes", []))
        if not same:
            reinit = [k for k in own if k in head]
            reason = (
                f"the checkpoint's classes ({ckpt.meta.get('dataset')} {list(ckpt.meta['classes'])}) are not the "
                f"task's ({target.get('dataset')} {list(target.get('classes', []))})"
            )
    state = {k: (own[k] if k in reinit else source[k]) for k in own}
    model.load_state_dict(state, strict=True)
    if reinit:
        log.info("model.pretrained %s: head re-initialised (%s): %s", ckpt.path, reason, ", ".join(reinit))
    return reinit


def model_meta(name: str, input_shape: tuple[int, ...], num_classes: int, *, hidden: int, width: float) -> dict[str, Any]:
    """The metadata that rebuilds a zoo model: its name, size knobs, input shape and outputs."""
    return {"model": name, "hidden": int(hidden), "width": float(width), "input_shape": [int(d) for d in input_shape], "num_classes": int(num_classes)}


def model_from_checkpoint(checkpoint: Checkpoint | str | Path) -> nn.Module:
    """Build the model a fedsplit checkpoint describes and load its weights (eval mode).

    Raises
    ------
    CheckpointError
        For a plain state_dict (no metadata to build the model from) or weights that do not fit.
    """
    from fedsplit.models.zoo import build_model

    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else read_checkpoint(checkpoint)
    meta = ckpt.meta
    if not {"model", "input_shape", "num_classes"} <= set(meta):
        raise CheckpointError(
            f"checkpoint {ckpt.path!r}: no model metadata (a plain state_dict); a teacher must be a `fedsplit pretrain` checkpoint"
        )
    model = build_model(
        str(meta["model"]), tuple(int(d) for d in meta["input_shape"]), int(meta["num_classes"]),
        hidden=int(meta.get("hidden", 64)), width=float(meta.get("width", 1.0)), seed=0,
    )
    try:
        model.load_state_dict(ckpt.state_dict, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {ckpt.path!r}: weights do not fit its own metadata ({exc})") from None
    return model.eval()


__all__ = [
    "Checkpoint", "CheckpointError", "FORMAT", "head_keys", "load_pretrained", "model_from_checkpoint", "model_meta",
    "read_checkpoint", "save_checkpoint",
]
