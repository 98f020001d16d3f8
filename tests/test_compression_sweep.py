"""The compression sweep experiment (smoke mode) and ``fedsplit simulate`` with top-k compression end to end."""

from __future__ import annotations

import csv
import importlib.util
import json
import re
import sys

import pytest

from fedsplit.compression import TrafficRecord, summarize_traffic
from fedsplit.config import load_config
from fedsplit.simulation.runner import compression_extra, simulate
from tests.conftest import REPO, small_overrides

SWEEP = REPO / "experiments" / "compression_sweep.py"
NUM = r"[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?|nan|inf"


def _fields(line: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in line.split() if "=" in item)


def _load_sweep():
    """The sweep script as a module (its ``main(argv)`` is what ``python compression_sweep.py`` runs)."""
    spec = importlib.util.spec_from_file_location("compression_sweep", SWEEP)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_sweep_smoke_prints_codec_lines_checks_and_writes_files(tmp_path, ray_session, capsys):
    # In this process, on the test's Ray (the sweep reuses a running one): no interpreter, torch
    # and Ray start-up of its own.
    assert _load_sweep().main(["--smoke", "--out", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    pattern = re.compile(
        rf"^codec=(\S+) partition=iid ratio=({NUM}) ledger_ratio=({NUM}) final_acc=({NUM}) delta_acc_pp=({NUM})"
    )
    rows = {m.group(1): m for m in map(pattern.match, lines) if m}
    assert set(rows) == {"identity", "topk-ef"}, lines
    assert float(rows["identity"].group(5)) == 0.0
    assert 0.9 < float(rows["identity"].group(2)) <= 1.0  # fp32 payload plus framing
    assert float(rows["topk-ef"].group(2)) > 100
    assert float(rows["topk-ef"].group(3)) > 50  # whole messages, metrics included
    assert 0.0 <= float(rows["topk-ef"].group(4)) <= 1.0

    costs = {f["codec"]: float(f["codec_cost_share"]) for f in map(_fields, lines) if "codec_cost_share" in f}
    assert set(costs) == {"identity", "topk-ef"} and all(0 < c < 1 for c in costs.values())
    checks = [line for line in lines if line.startswith("check ")]
    assert any(line.startswith("check topk-ef ratio >= 100: PASS") for line in checks), checks
    assert all(re.search(r": (PASS \(.+\)|SKIP \(smoke: .+\))$", line) for line in checks), checks
    assert any(line.startswith("check baseline converges") and ": SKIP (smoke: " in line for line in checks), checks

    for name in ("curves.csv", "summary.csv", "accuracy_vs_uplink.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    with open(tmp_path / "curves.csv", newline="") as fh:
        curves = list(csv.DictReader(fh))
    assert [(r["codec"], int(r["round"])) for r in curves] == [("identity", 1), ("identity", 2), ("topk-ef", 1), ("topk-ef", 2)]
    top = [r for r in curves if r["codec"] == "topk-ef"]
    assert int(top[1]["cum_uplink_payload_bytes"]) == sum(int(r["uplink_payload_bytes"]) for r in top)


def _train_bytes_up(run_dir) -> list[int]:
    with open(run_dir / "clients.csv", newline="") as fh:
        return [int(r["bytes_up"]) for r in csv.DictReader(fh) if r["phase"] == "train" and r["status"] == "ok"]


@pytest.mark.slow
def test_simulate_with_topk_reports_the_ratio_and_shrinks_ledger_uplink(tmp_path, ray_session, fedsplit_main):
    common = {"model.name": "fedavg-cnn", "rounds": 2, "devices": "{raspberry-pi-4 = 2, laptop = 2}"}
    args = ["simulate"]
    for item in small_overrides(tmp_path, run_name="topk", progress="true", **common):
        args += ["--set", item]
    args += ["--set", "compression={uplink='topk', density=0.01}"]
    proc = fedsplit_main(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "uplink compression ratio vs fp32" in proc.stdout  # the closing table
    summary = json.loads((tmp_path / "topk" / "summary.json").read_text())
    assert summary["compression_ratio"] > 50
    assert summary["uplink_dense_bytes"] / summary["uplink_payload_bytes"] == summary["compression_ratio"]
    assert summary["rejected"] == 0

    plain = simulate(load_config(None, small_overrides(tmp_path, run_name="plain", **common)))
    plain_summary = json.loads((plain.run_dir / "summary.json").read_text())
    assert "compression_ratio" not in plain_summary
    compressed_up, plain_up = _train_bytes_up(tmp_path / "topk"), _train_bytes_up(plain.run_dir)
    assert compressed_up and plain_up
    # Whole messages (protobuf, metrics included) per client and round: fp32 weights vs top-1 %.
    assert max(compressed_up) * 50 < min(plain_up)
    assert sum(compressed_up) / len(compressed_up) * 50 < sum(plain_up) / len(plain_up)


def test_compression_extra_reads_the_strategy_traffic():
    class Wrapped:
        traffic = [
            TrafficRecord(1, 1, "up", 100, 10_000, "topk"),
            TrafficRecord(1, 1, "down", 10_000, 10_000, "dense"),
            TrafficRecord(2, 1, "up", 300, 10_000, "topk"),
        ]

        def traffic_summary(self):
            return summarize_traffic(self.traffic)

    extra = compression_extra(Wrapped())
    assert extra == {"compression_ratio": 50.0, "uplink_payload_bytes": 400, "uplink_dense_bytes": 20_000}
    assert compression_extra(None) == {}
    assert compression_extra(object()) == {}


def test_smoke_keeps_an_explicit_round_count(tmp_path, monkeypatch, capsys):
    # --smoke replaced --rounds by 2 without a word; it only fills in what was not given
    module = _load_sweep()

    class Stop(Exception):
        pass

    def stop(*args, **kwargs):
        raise Stop

    monkeypatch.setattr(module, "ray_session", stop)  # the settings line comes before any run
    for argv, rounds in ((["--smoke", "--rounds", "3"], 3), (["--smoke"], 2)):
        with pytest.raises(Stop):
            module.main([*argv, "--out", str(tmp_path)])
        settings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("settings:")]
        assert len(settings) == 1 and f" rounds={rounds} " in settings[0], settings
