"""End to end through the ``fedsplit`` command: scenario generation, scheduling, bad input."""

import json

import pytest

from fedsplit.cli import main


@pytest.fixture
def fedsplit(fedsplit_main):
    """``fedsplit ARGS...`` in this process (see conftest's ``fedsplit_main``)."""
    return fedsplit_main


@pytest.fixture(scope="module")
def scenario_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("sched") / "scenario.json"
    assert main(["scenario", "--terminals", "5", "--seed", "3", "--out", str(path)]) == 0
    data = json.loads(path.read_text())
    assert len(data["terminals"]) == 5 and len(data["models"]) == 3
    return path


def test_schedule_json_end_to_end(fedsplit, scenario_file):
    done = fedsplit("schedule", "--scenario", str(scenario_file), "--solver", "exact", "--json")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["feasible"] is True and out["gap"] == 0.0
    scenario = json.loads(scenario_file.read_text())
    names = {m["name"] for m in scenario["models"]}
    assert [a["terminal"] for a in out["assignments"]] == list(range(5))
    assert all(a["model"] in names for a in out["assignments"])
    assert sum(a["bandwidth_hz"] for a in out["assignments"]) <= scenario["bandwidth_hz"] * (1 + 1e-9)
    assert sum(a["edge_cycles_per_s"] for a in out["assignments"]) <= scenario["edge_cycles_per_s"] * (1 + 1e-9)
    assert out["total_latency_s"] == pytest.approx(sum(a["latency_s"] for a in out["assignments"]))
    assert out["accuracy"] >= scenario["accuracy_target"] - 1e-9
    for key in ("total_energy_j", "infeasible_pairs", "reasons"):
        assert key in out


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda d: d["terminals"][0].pop("tx_power_w"), "terminals[0].tx_power_w"),
        (lambda d: d.update(bandwidth_hz=-2e7), "bandwidth_hz"),
        (lambda d: d.update(bandwidth_hz=0.0), "bandwidth_hz"),
        (lambda d: d["models"][0].update(accuracy=1.7), "models[0].accuracy"),
        (lambda d: d.update(models=[]), "models"),
    ],
)
def test_bad_input_exits_nonzero_with_one_line(fedsplit, scenario_file, tmp_path, mutate, field):
    data = json.loads(scenario_file.read_text())
    mutate(data)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    done = fedsplit("schedule", "--scenario", str(bad), "--json")
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{field}:" in lines[0] and "expected" in lines[0]
    assert done.stdout == ""


def test_infeasible_scenario_answers_feasible_false_with_reasons(fedsplit, scenario_file, tmp_path):
    data = json.loads(scenario_file.read_text())
    data["accuracy_target"] = 0.99
    path = tmp_path / "hard.json"
    path.write_text(json.dumps(data))
    done = fedsplit("schedule", "--scenario", str(path), "--json")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["feasible"] is False and out["total_latency_s"] is None
    assert any("accuracy" in r for r in out["reasons"])


@pytest.mark.parametrize("command", [["scenario", "--terminals", "3"], ["schedule", "--scenario", "unused.json"]])
def test_a_negative_seed_is_refused_in_one_line(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    from fedsplit.cli import main

    with pytest.raises(SystemExit) as exit_:
        main([*command, "--seed", "-1"])
    assert exit_.value.code == 2
    assert "--seed: -1 is outside 0 .. 2**32 - 1" in capsys.readouterr().err


def test_exact_search_on_a_large_scenario_says_its_limit_and_stops_there(fedsplit, tmp_path):
    path = tmp_path / "forty.json"
    assert fedsplit("scenario", "--terminals", "40", "--seed", "1", "--out", str(path)).returncode == 0
    done = fedsplit("schedule", "--scenario", str(path), "--solver", "exact", "--time-limit", "0.5")
    assert done.returncode == 3
    notice, error = done.stderr.strip().splitlines()
    assert "exact search over up to 3^40 model choices; it gives up after 0.5 s (--time-limit)" in notice
    assert error == ("fedsplit schedule: error: --solver exact: branch and bound exceeded its time limit; "
                     "use --solver fast for this size (or a larger --time-limit)")


@pytest.mark.parametrize("limit", ["0", "-1", "nan", "inf", "soon"])
def test_time_limit_must_be_a_positive_number_of_seconds(fedsplit, scenario_file, limit):
    done = fedsplit("schedule", "--scenario", str(scenario_file), "--time-limit", limit)
    assert done.returncode == 2 and "argument --time-limit:" in done.stderr
