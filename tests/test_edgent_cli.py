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
