"""Run folders of model-family members: trained ones, and the ones derived from them.

A *trained* member is a run folder of ``fedsplit simulate`` (``config.toml`` +
``checkpoints/final.pt``). A *derived* member is a folder of the same shape written here, plus
``member.json`` saying how it was made:

* ``pruned``: the parent's weights, global magnitude pruning of ``amount`` of its Conv/Linear
  weights, ``finetune_epochs`` of SGD with the masks attached, masks made permanent
  (:mod:`fedsplit.models.compress`). The fine-tuning data is the federation's training pool (every
  terminal's training partition, never the server's test set): a simulation shortcut for the few
  rounds of federated fine-tuning a deployment would run;
* ``int8``: static int8 post-training quantization of the parent (FX graph mode), its observers
  calibrated on ``calibration_samples`` inputs of the same training pool; the checkpoint is the
  quantized graph's ``state_dict``, loaded back into a fresh quantized graph of the architecture.

Every member loads through :func:`load_member`, which is how the catalog measures it and how
``fedsplit serve-sim`` serves it.
"""

from __future__ import annotations

import json
import statistics
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fedsplit.config import RunConfig, config_from_dict, dump_config
from fedsplit.learning import Task
from fedsplit.models.compress import (
    count_nonzero_parameters,
    int8_skeleton,
    make_permanent,
    prune_magnitude,
    quantization_backend,
    quantize_int8,
    quiet_quantization,
    weight_sparsity,
)

MEMBER_FILE = "member.json"
CHECKPOINT = Path("checkpoints") / "final.pt"
#: How a member was made.
#: ``trained`` from scratch, ``finetuned`` from ``model.pretrained``, ``distilled`` with a
#: ``transfer.teacher`` (the three by ``fedsplit simulate``), or derived: ``pruned``, ``int8``.
KINDS: tuple[str, ...] = ("trained", "finetuned", "distilled", "pruned", "int8")


@dataclass
class Member:
    """A loaded member, ready to serve.

    Attributes
    ----------
    name : str
        Catalog name (the run's ``run_name``, else its folder name).
    kind : str
        One of :data:`KINDS`.
    run_dir : Path
        Its folder.
    task : Task
        The run's data (server test set at the member's own resolution) and float architecture.
    model : nn.Module
        What serves: the float model, or the quantized graph for ``int8`` (CPU, eval mode).
    float_model : nn.Module
        The float architecture with the member's weights where it has float ones (FLOPs are counted
        on it; for ``int8`` the parent's architecture).
    info : dict
        ``member.json`` (empty for a trained member).
    """

    name: str
    kind: str
    run_dir: Path
    task: Task
    model: nn.Module
    float_model: nn.Module
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def cfg(self) -> RunConfig:
        """The member's run configuration."""
        return self.task.cfg

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(channels, height, width)`` of one input [pixels]."""
        c, h, w = (int(d) for d in self.task.data.input_shape)
        return c, h, w


def read_run_config(run_dir: str | Path) -> RunConfig:
    """The resolved configuration of a run folder (``config.toml``)."""
    run_dir = Path(run_dir)
    for path in (run_dir / "config.toml", run_dir / CHECKPOINT):
        if not path.is_file():
            raise FileNotFoundError(f"{run_dir}: not a finished run folder ({path.name} is missing)")
    return config_from_dict(tomllib.loads((run_dir / "config.toml").read_text(encoding="utf-8")))


def _read_info(run_dir: Path, cfg: RunConfig) -> dict[str, Any]:
    path = run_dir / MEMBER_FILE
    if not path.is_file():
        if cfg.transfer.teacher:  # the pipeline names a teacher's checkpoint after its member
            return {"kind": "distilled", "parent": Path(cfg.transfer.teacher).stem}
        return {"kind": "finetuned" if cfg.model.pretrained else "trained"}
    info = json.loads(path.read_text(encoding="utf-8"))
    if info.get("kind") not in KINDS:
        raise ValueError(f"{path}: kind = {info.get('kind')!r}: expected one of {', '.join(KINDS)}")
    return info


def load_member(run_dir: str | Path) -> Member:
    """Load a member's model from its folder (any kind), on the CPU, in eval mode."""
    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir)
    info = _read_info(run_dir, cfg)
    task = Task.from_config(cfg)
    float_model = task.model.cpu().eval()
    if info["kind"] == "int8":
        with quiet_quantization():
            state = torch.load(run_dir / CHECKPOINT, weights_only=True, map_location="cpu")
            model = int8_skeleton(float_model, tuple(task.data.input_shape), backend=info["backend"])
            model.load_state_dict(state)
    else:
        state = torch.load(run_dir / CHECKPOINT, weights_only=True, map_location="cpu")
        float_model.load_state_dict(state)
        model = float_model
    return Member(
        name=cfg.run_name or run_dir.name, kind=info["kind"], run_dir=run_dir, task=task,
        model=model.eval(), float_model=float_model, info=info,
    )


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Predicted class of every input of ``x`` ``[N, C, H, W]`` (eval mode, CPU)."""
    model.eval()
    out = [model(x[s : s + batch_size]).argmax(dim=1) for s in range(0, int(x.shape[0]), batch_size)]
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of ``x`` that ``model`` classifies as ``y``."""
    if int(y.shape[0]) == 0:
        raise ValueError("accuracy of an empty set")
    return int((predict(model, x) == y).sum()) / int(y.shape[0])


@torch.no_grad()
def cpu_latency_s(model: nn.Module, example: torch.Tensor, *, repeats: int = 50, warmup: int = 5, threads: int = 1) -> float:
    """Median wall time of one batch-1 inference on this host's CPU [s].

    Parameters
    ----------
    model : nn.Module
        Run in eval mode on the CPU.
    example : torch.Tensor
        One input ``[1, C, H, W]``.
    repeats, warmup : int
        Timed runs (the median is returned) and untimed runs before them.
    threads : int
        Torch intra-op threads during the measurement (a terminal runs one request on one core);
        the previous setting is restored.
    """
    if repeats < 1:
        raise ValueError(f"repeats = {repeats}: must be >= 1")
    model.eval()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for _ in range(warmup):
            model(example)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(example)
            times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)
    return statistics.median(times)


def training_pool(task: Task) -> tuple[torch.Tensor, torch.Tensor]:
    """Every terminal's training partition, concatenated (inputs, labels)."""
    parts = [task.data.partition(i)[0] for i in range(task.cfg.num_terminals)]
    return torch.cat([p.x for p in parts]), torch.cat([p.y for p in parts])


def _new_folder(parent_dir: Path, out_dir: Path, name: str) -> tuple[Path, RunConfig]:
    cfg = read_run_config(parent_dir)
    cfg.run_name = name
    folder = Path(out_dir) / name
    if folder.exists() and any(folder.iterdir()):
        raise FileExistsError(f"{folder}: exists and is not empty")
    (folder / CHECKPOINT.parent).mkdir(parents=True, exist_ok=True)
    dump_config(cfg, folder / "config.toml")
    return folder, cfg


def _finish(folder: Path, state: dict[str, torch.Tensor], info: dict[str, Any]) -> Path:
    torch.save(state, folder / CHECKPOINT)
    (folder / MEMBER_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return folder


def derive_pruned(
    parent_dir: str | Path,
    out_dir: str | Path,
    *,
    amount: float,
    finetune_epochs: int = 1,
    lr: float | None = None,
    name: str | None = None,
) -> Path:
    """Write a pruned + fine-tuned member of a trained (or pruned) member's folder.

    Parameters
    ----------
    parent_dir : str or Path
        The member to prune (a float one).
    out_dir : str or Path
        Parent folder of the new member's folder.
    amount : float
        Fraction of the Conv/Linear weights set to zero, in ``[0, 1)``.
    finetune_epochs : int
        Epochs of SGD on the training pool with the masks attached (0: prune only).
    lr : float, optional
        Fine-tuning learning rate (default: a tenth of the parent run's ``train.lr``); batch
        size and momentum are the parent run's. At the full rate one epoch over the pool
        overshoots: 50 % of the digits ``cnn-8px-w1`` pruned gave 0.969 before fine-tuning,
        0.917 after an epoch at lr 0.05, 0.986 at 0.005 (80 %: 0.925 -> 0.986 at 0.005).
    name : str, optional
        Member name (default ``<parent>-pruned<percent>``).

    Returns
    -------
    Path
        The new member's folder.
    """
    from fedsplit.learning.local import train_local

    parent = load_member(parent_dir)
    if parent.kind == "int8":
        raise ValueError(f"{parent.name}: an int8 member cannot be pruned (prune its float parent)")
    if finetune_epochs < 0:
        raise ValueError(f"finetune_epochs = {finetune_epochs}: must be >= 0")
    name = name or f"{parent.name}-pruned{round(amount * 100)}"
    folder, cfg = _new_folder(parent.run_dir, Path(out_dir), name)
    model = prune_magnitude(parent.float_model, amount)
    if finetune_epochs:
        x, y = training_pool(parent.task)
        train_local(
            model, x, y, epochs=finetune_epochs, batch_size=cfg.train.batch_size,
            lr=cfg.train.lr / 10 if lr is None else lr, momentum=cfg.train.momentum, seed=cfg.seed,
        )
    make_permanent(model.eval())
    info = {
        "kind": "pruned", "parent": parent.name, "parent_dir": str(parent.run_dir), "amount": amount,
        "finetune_epochs": finetune_epochs, "finetune_lr": cfg.train.lr / 10 if lr is None else lr, "weight_sparsity": weight_sparsity(model),
        "nonzero_params": count_nonzero_parameters(model),
    }
    return _finish(folder, model.state_dict(), info)


def derive_int8(
    parent_dir: str | Path,
    out_dir: str | Path,
    *,
    calibration_samples: int = 512,
    name: str | None = None,
) -> Path:
    """Write an int8 post-training-quantized member of a float member's folder.

    Parameters
    ----------
    parent_dir : str or Path
        The member to quantize (trained or pruned).
    out_dir : str or Path
        Parent folder of the new member's folder.
    calibration_samples : int
        Training-pool inputs the activation observers see (>= 1).
    name : str, optional
        Member name (default ``<parent>-int8``).
    """
    parent = load_member(parent_dir)
    if parent.kind == "int8":
        raise ValueError(f"{parent.name}: already int8")
    if calibration_samples < 1:
        raise ValueError(f"calibration_samples = {calibration_samples}: must be >= 1")
    name = name or f"{parent.name}-int8"
    folder, _ = _new_folder(parent.run_dir, Path(out_dir), name)
    x, _ = training_pool(parent.task)
    backend = quantization_backend()
    quantized = quantize_int8(parent.float_model, x[:calibration_samples], backend=backend)
    info = {
        "kind": "int8", "parent": parent.name, "parent_dir": str(parent.run_dir), "backend": backend,
        "calibration_samples": int(min(calibration_samples, x.shape[0])),
        "nonzero_params": count_nonzero_parameters(parent.float_model),
    }
    return _finish(folder, quantized.state_dict(), info)


__all__ = [
    "CHECKPOINT",
    "KINDS",
    "MEMBER_FILE",
    "Member",
    "accuracy",
    "cpu_latency_s",
    "derive_int8",
    "derive_pruned",
    "load_member",
    "predict",
    "read_run_config",
    "training_pool",
]
