"""The whole data flow: trained runs -> catalog.json -> scenario -> scheduler."""

from __future__ import annotations

import json

import pytest

from fedsplit.config import load_config
from fedsplit.simulation.runner import simulate
from tests.conftest import small_overrides


@pytest.mark.slow
def test_trained_runs_feed_the_scheduler(tmp_path, ray_session, fedsplit_main):
    runs = []
    for name, hidden in (("mlp-small", 8), ("mlp-large", 64)):
        overrides = small_overrides(tmp_path, run_name=name, **{"model.hidden": hidden})  # 2 rounds: accuracy 0.44 and 0.90
        runs.append(str(simulate(load_config(None, overrides)).run_dir))
    catalog = tmp_path / "catalog.json"
    proc = fedsplit_main("catalog", "build", *runs, "--out", str(catalog), "--latency-repeats", "3")
    assert proc.returncode == 0, proc.stderr[-2000:]
    models = json.loads(catalog.read_text())["models"]
    assert [m["name"] for m in models] == ["mlp-small", "mlp-large"]  # sorted by FLOPs
    small, large = models
    assert small["flops"] == 2 * (64 * 8 + 8 * 10) and large["flops"] == 2 * (64 * 64 + 64 * 10)
    assert small["input_bits"] == 64 * 8 and 0.3 < small["accuracy"] <= 1 and 0.3 < large["accuracy"] <= 1
    assert large["devices"]["raspberry-pi-4"]["latency_s"] > large["devices"]["laptop"]["latency_s"]

    scenario = tmp_path / "scenario.json"
    proc = fedsplit_main("scenario", "--terminals", "4", "--seed", "1", "--catalog", str(catalog), "--accuracy-target", "0.3", "--out", str(scenario))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [m["name"] for m in json.loads(scenario.read_text())["models"]] == ["mlp-small", "mlp-large"]
    proc = fedsplit_main("schedule", "--scenario", str(scenario), "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert result["feasible"] is True
    assert {a["model"] for a in result["assignments"]} <= {"mlp-small", "mlp-large"}
    assert len(result["assignments"]) == 4


def test_catalog_rejects_an_unfinished_run(tmp_path, fedsplit_main):
    proc = fedsplit_main("catalog", "build", str(tmp_path))
    assert proc.returncode == 2
    assert "not a finished run folder (config.toml is missing)" in proc.stderr
