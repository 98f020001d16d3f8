"""Smoke tests of ``experiments/split_vs_fl.py`` and ``experiments/bench_split.py`` (tiny settings).

Both scripts run in this process on the shared test Ray (``ray_session``): starting Ray and its
actors once keeps the two smoke runs within a minute.
"""

from __future__ import annotations

import csv
import importlib.util
import re
import sys

import pytest
import torch

from tests.conftest import REPO

NUM = r"[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?|nan|inf"
CHECK = re.compile(r"^check .+: ((PASS|FAIL) \(.+\)|SKIP \(smoke: .+\))$")


def _load(name: str):  # noqa: ANN202
    path = REPO / "experiments" / f"{name}.py"
    sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(f"_smoke_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_split_vs_fl_smoke(tmp_path, capsys, ray_session, keep_threads):
    module = _load("split_vs_fl")
    methods = "fedavg,splitfed-v1,sl-vanilla"
    # a failed check would be exit status 1; --smoke skips the claims one round of 4 terminals cannot show
    assert module.main(["--smoke", "--rounds", "1", "--terminals", "4", "--methods", methods, "--out", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    pattern = re.compile(rf"^method=(\S+) final_acc=({NUM}) bytes=(\d+) sim_time_s=({NUM}) client_flops=(\d+)")
    rows = {m.group(1): m for m in map(pattern.match, lines) if m}
    assert set(rows) == set(methods.split(",")), lines
    for m in rows.values():
        assert 0.0 <= float(m.group(2)) <= 1.0
        assert int(m.group(3)) > 0 and float(m.group(4)) > 0 and int(m.group(5)) > 0
    # SplitFed v1 averages whole models: at equal epochs it is FedAvg (same accuracy), and the
    # terminal computes only its first conv block.
    assert float(rows["splitfed-v1"].group(2)) == pytest.approx(float(rows["fedavg"].group(2)))
    assert int(rows["splitfed-v1"].group(5)) < 0.1 * int(rows["fedavg"].group(5))
    checks = [line for line in lines if line.startswith("check ")]
    assert len(checks) == 4 and all(CHECK.match(line) for line in checks), checks
    skipped = {line.split(": SKIP")[0] for line in checks if ": SKIP (smoke: " in line}
    assert skipped == {"check sl-vanilla within 2 pp of fedavg", "check splitfed-v1 sim_time <= 1/3 of sl-vanilla"}, checks
    for name in ("curves.csv", "summary.csv", "split_vs_fl.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    with open(tmp_path / "summary.csv", newline="") as fh:
        assert [r["method"] for r in csv.DictReader(fh)] == methods.split(",")


def test_bench_split_smoke(tmp_path, capsys, ray_session, keep_threads):
    module = _load("bench_split")
    assert module.main(["--smoke", "--passes", "1", "--terminals", "2", "--workloads", "cnn8", "--out", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    pattern = re.compile(rf"^workload=cnn8 terminals=2 .*engine_s=({NUM}) loop_s=({NUM}) split_overhead=({NUM})")
    found = [m for m in map(pattern.match, lines) if m]
    assert len(found) == 1, lines
    engine_s, loop_s, overhead = (float(g) for g in found[0].groups())
    assert engine_s > 0 and loop_s > 0 and overhead == pytest.approx(engine_s / loop_s, rel=1e-2)
    checks = [line for line in lines if line.startswith("check ")]
    assert len(checks) == 2 and all(CHECK.match(line) for line in checks), checks
    assert any(line.startswith("check cnn8 same weights: PASS") for line in checks), checks
    assert any(line.startswith("check cnn8 split_overhead <= 1.5: SKIP (smoke: ") for line in checks), checks
    for name in ("bench_split.csv", "bench_split.png"):
        assert (tmp_path / name).stat().st_size > 0, name
