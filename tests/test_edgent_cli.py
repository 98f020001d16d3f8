"""``fedsplit edgent``: the plan for a requirement and a bandwidth, and bad input."""

from __future__ import annotations

import json

from fedsplit.cli import main
from fedsplit.inference.edgent.latency import LatencyModel


def _calibration(tmp_path):
    import numpy as np

    latency = LatencyModel({"conv": np.array([2e-5, 1e-5, 0, 0, 0, 0, 0]), "linear": np.array([5e-6, 2e-5, 0, 0]),
                            "pool": np.array([3e-6, 0, 0, 0, 0]), "activation": np.array([2e-6, 0]),
                            "norm": np.array([4e-6, 0]), "other": np.array([1e-6])}, 2e10)
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps({"latency_model": latency.to_dict(), "accuracies": [0.8, 0.88, 0.93, 0.95],
                                "width": 0.5}), encoding="utf-8")
    return path


def test_edgent_prints_plan(tmp_path, capsys):
    path = _calibration(tmp_path)
    assert main(["edgent", "--latency-ms", "100", "--bandwidth-mbps", "5", "--calibration", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("feasible=true exit=3 ") and "accuracy=0.9500" in out
    assert main(["edgent", "--latency-ms", "0.001", "--bandwidth-mbps", "5", "--calibration", str(path), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["feasible"] is False and "no configuration meets" in result["reason"]


def test_edgent_bad_input(tmp_path, capsys):
    path = _calibration(tmp_path)
    assert main(["edgent", "--latency-ms", "100", "--bandwidth-mbps", "0", "--calibration", str(path)]) == 2
    assert "--bandwidth-mbps" in capsys.readouterr().err
    assert main(["edgent", "--latency-ms", "100", "--bandwidth-mbps", "5", "--calibration", str(path),
                 "--device", "toaster"]) == 2
    assert "toaster" in capsys.readouterr().err
    assert main(["edgent", "--latency-ms", "100", "--bandwidth-mbps", "5", "--calibration", str(path), "--width", "0"]) == 2
    assert capsys.readouterr().err.strip() == "fedsplit edgent: error: --width: got 0.0; expected a finite number > 0 (the channel multiplier)"


def test_calibrated_accuracies_are_used_only_for_the_model_they_were_measured_on(tmp_path, capsys):
    path = _calibration(tmp_path)
    assert main(["edgent", "--latency-ms", "100", "--bandwidth-mbps", "5", "--calibration", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy_measured"] is True
    assert main(["edgent", "--latency-ms", "100", "--bandwidth-mbps", "5", "--calibration", str(path), "--width", "1", "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["accuracy_measured"] is False
    assert "measured on multiexit-cnn at width 0.5, not multiexit-cnn at width 1: exits are ranked by depth instead" in captured.err


def test_a_calibration_without_a_latency_model_is_named(tmp_path, capsys):
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps({"accuracies": [0.9]}), encoding="utf-8")
    assert main(["edgent", "--latency-ms", "100", "--bandwidth-mbps", "5", "--calibration", str(path)]) == 2
    assert capsys.readouterr().err.strip() == (f"fedsplit edgent: error: --calibration {path}: no 'latency_model' entry; "
                                               "expected the calibration.json that experiments/edgent.py writes")
