"""experiments/transfer.py --smoke: every method runs, one key=value line each, CSV and PNG written."""

from __future__ import annotations

import csv
import re
import sys

import pytest

from tests.conftest import REPO, run_child


@pytest.mark.slow
def test_transfer_experiment_smoke(tmp_path):
    result = run_child([sys.executable, str(REPO / "experiments" / "transfer.py"), "--smoke", "--out", str(tmp_path)], 600, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = {m.group(1): m for m in re.finditer(r"^method=(\S+) final_acc=([\d.]+) uplink_bytes=(\d+) client_flops=(\d+)$", result.stdout, re.M)}
    assert set(lines) == {"scratch", "finetune", "student-scratch", "student-distilled"}
    up = {m: int(v.group(3)) for m, v in lines.items()}
    flops = {m: int(v.group(4)) for m, v in lines.items()}
    # only the trainable tensors (7% of the weights) and the BatchNorm statistics travel; at the
    # smoke's width 0.25 the framing of ~50 small tensors is a large share of each message
    assert up["finetune"] * 2 <= up["scratch"]
    assert flops["finetune"] < flops["scratch"]  # no weight gradients for the frozen backbone
    # same student, same messages (but for a byte or so of the larger "flops" varint in each reply)
    assert abs(up["student-distilled"] - up["student-scratch"]) <= 8
    assert flops["student-distilled"] > flops["student-scratch"]  # + the teacher's inference on the terminals
    checks = [line for line in result.stdout.splitlines() if line.startswith("check ")]
    assert len(checks) == 3 and all(": SKIP (smoke: " in line for line in checks), checks  # one round: all need the full run
    with open(tmp_path / "transfer_summary.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["method"] for r in rows] == ["scratch", "finetune", "student-scratch", "student-distilled"]
    assert int(rows[1]["uplink_bytes"]) == up["finetune"]
    assert (tmp_path / "transfer.png").stat().st_size > 10_000


def test_smoke_fills_in_only_what_was_not_given():
    import importlib.util

    spec = importlib.util.spec_from_file_location("transfer_experiment", REPO / "experiments" / "transfer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    args = module.parse_args(["--smoke", "--rounds", "3", "--terminals", "5"])
    assert (args.rounds, args.terminals, args.local_epochs, args.width) == (3, 5, 1, 0.25)  # --smoke overwrote the first two
    args = module.parse_args([])
    assert (args.rounds, args.terminals, args.local_epochs, args.width, args.pretrain_epochs) == (5, 4, 2, 1.0, 20)
