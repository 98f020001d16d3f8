"""Member folders for the family, catalog and serve-sim tests, without a federated run.

A folder has the shape ``fedsplit simulate`` writes (``config.toml`` + ``checkpoints/final.pt``);
its weights come from a few epochs of plain SGD on the federation's training pool (seconds on
digits with a narrow CNN), so the tests measure real, different models.
"""

from __future__ import annotations

from pathlib import Path

import torch

from fedsplit.config import dump_config, load_config
from fedsplit.learning import Task
from fedsplit.learning.local import train_local
from fedsplit.report.members import training_pool


def member_config(out_dir: Path, name: str, resolution: int, width: float, **extra: object):
    """A digits configuration of a ``cnn`` family member (4 terminals)."""
    overrides = {
        "out_dir": str(out_dir), "run_name": name, "model.name": "cnn", "model.width": width,
        "data.resolution": resolution, "devices": "{raspberry-pi-4 = 2, laptop = 2}", "progress": "false",
        "rounds": 1, **extra,
    }
    return load_config(None, [f"{k}={v}" for k, v in overrides.items()])


def make_member(out_dir: Path, name: str, resolution: int, width: float, epochs: int = 2) -> Path:
    """Write a trained member's folder; return it."""
    cfg = member_config(out_dir, name, resolution, width)
    task = Task.from_config(cfg)
    if epochs:
        x, y = training_pool(task)
        train_local(task.model, x, y, epochs=epochs, batch_size=32, lr=0.05, momentum=0.9, seed=0)
    folder = out_dir / name
    (folder / "checkpoints").mkdir(parents=True)
    dump_config(cfg, folder / "config.toml")
    torch.save(task.model.state_dict(), folder / "checkpoints" / "final.pt")
    return folder

