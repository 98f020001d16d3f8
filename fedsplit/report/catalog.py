"""The model catalog: trained models with measured accuracy, FLOPs, input size and per-device latency.

``catalog.json`` is what training hands to the inference scheduler (``fedsplit scenario --catalog``)::

    {"models": [{"name", "accuracy", "flops", "input_shape": [C, H, W], "input_bits", "params",
                 "latency_s": {"<device profile>": seconds, ...}, "run_dir"}]}

Accuracy is measured on the run's held-out server test set with the run's final checkpoint; FLOPs
are counted for one inference (batch of one) with ``torch.utils.flop_counter``; ``input_bits`` is
the raw input a terminal would upload (``C * H * W * bits_per_value``); latency is
``flops / flops_per_s`` on every known device profile.

The catalog measures trained runs, so it comes after :mod:`fedsplit.learning` in the data flow
(config -> data/models -> learning -> report); it lives with the other readers and writers of run
folders rather than in :mod:`fedsplit.models`, which training itself imports.
"""

from __future__ import annotations

import json
import math
import tomllib
from pathlib import Path
from typing import Any

import torch

from fedsplit.config import config_from_dict
from fedsplit.devices import resolve_profiles
from fedsplit.learning import Task, evaluate
from fedsplit.models.flops import inference_flops
from fedsplit.models.zoo import count_parameters


def catalog_entry(run_dir: str | Path, bits_per_value: int = 8) -> dict[str, Any]:
    """Measure one finished run folder (``config.toml`` + ``checkpoints/final.pt``)."""
    run_dir = Path(run_dir)
    config_path, weights_path = run_dir / "config.toml", run_dir / "checkpoints" / "final.pt"
    for path in (config_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(f"{run_dir}: not a finished run folder ({path.name} is missing)")
    cfg = config_from_dict(tomllib.loads(config_path.read_text(encoding="utf-8")))
    task = Task.from_config(cfg)
    task.model.load_state_dict(torch.load(weights_path, weights_only=True))
    test = task.data.server_test
    accuracy = evaluate(task.model, test.x, test.y).accuracy
    input_shape = tuple(int(d) for d in task.data.input_shape)
    flops = inference_flops(task.model, input_shape)
    profiles = resolve_profiles(cfg.profiles)
    return {
        "name": cfg.run_name or run_dir.name,
        "accuracy": accuracy,
        "flops": flops,
        "input_shape": list(input_shape),
        "input_bits": math.prod(input_shape) * bits_per_value,
        "params": count_parameters(task.model),
        "latency_s": {name: flops / p.flops_per_s for name, p in sorted(profiles.items())},
        "run_dir": str(run_dir),
    }


def write_catalog(run_dirs: list[str | Path], out: str | Path, bits_per_value: int = 8) -> dict[str, Any]:
    """Build ``catalog.json`` from run folders, sorted by FLOPs (smallest model first)."""
    models = sorted((catalog_entry(d, bits_per_value) for d in run_dirs), key=lambda m: m["flops"])
    names = [m["name"] for m in models]
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        raise ValueError(f"catalog: model names must be unique, got {sorted(duplicates)} (set run_name)")
    catalog = {"models": models}
    Path(out).write_text(json.dumps(catalog, indent=2), encoding="utf-8")
    return catalog
