"""Shared fixtures: a small configuration and a Ray session that tests reuse."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Quiet, deterministic, CPU-only test runs.
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")


@pytest.fixture
def ray_session():
    """A local Ray with 2 CPUs (started if none is running; left running for later tests)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    yield ray


def small_overrides(tmp_path: Path, **extra: object) -> list[str]:
    """``--set`` overrides of a seconds-long run on digits."""
    base = {
        "rounds": 2,
        "out_dir": str(tmp_path),
        "run_name": "run",
        "devices": "{raspberry-pi-4 = 2, laptop = 2}",
        "model.name": "mlp",
        "train.local_epochs": 1,
        "progress": "false",
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def fedsplit_cmd(*args: str) -> list[str]:
    """The ``fedsplit`` console command, run with this interpreter."""
    return [sys.executable, "-m", "fedsplit.cli", *args]
