"""serve-sim: a schedule over a real catalog, served by the models themselves."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest

from fedsplit.devices import resolve_profiles
from fedsplit.inference.catalog import CatalogCosts, read_catalog
from fedsplit.inference.device_scenario import device_scenario
from fedsplit.inference.errors import ScenarioError
from fedsplit.inference.paper_scenario import PaperScenarioConfig
from fedsplit.serving.serve_sim import serve
from fedsplit.inference.solve import solve
from fedsplit.report.catalog import write_catalog

DEVICES = {"raspberry-pi-4": 3, "smartphone-low": 2, "laptop": 2}


@pytest.fixture(scope="module")
def catalog_file(small_family, tmp_path_factory):
    """A catalog of the shared members (5 px, 8 px, and the 8 px one in int8)."""
    path = tmp_path_factory.mktemp("serve") / "catalog.json"
    write_catalog([small_family["small"], small_family["large"], small_family["int8"]], path, latency_repeats=3)
    return path


def scheduled(catalog: dict, costs: CatalogCosts, target: float | None = None):
    models = [costs.model_spec(m) for m in catalog["models"]]
    accuracies = [m.accuracy for m in models]
    config = replace(PaperScenarioConfig(), accuracy_target=target if target is not None else (min(accuracies) + max(accuracies)) / 2)
    problem, devices = device_scenario(DEVICES, resolve_profiles(), models, seed=3, config=config)
    return problem, devices, solve(problem)


def test_realised_accuracy_matches_the_catalog_within_one_point(catalog_file):
    catalog = read_catalog(catalog_file)
    costs = CatalogCosts()
    problem, devices, schedule = scheduled(catalog, costs)
    assert schedule.feasible
    assert len({problem.model_names[m] for m in schedule.models}) >= 2  # the target forces a mix of sizes
    report = serve(catalog, problem, schedule, costs=costs, devices=devices, latency_repeats=3)
    assert [t.device for t in report.terminals] == ["raspberry-pi-4"] * 3 + ["smartphone-low"] * 2 + ["laptop"] * 2
    assert report.catalog_mean_accuracy == pytest.approx(schedule.accuracy)
    # Same held-out images as the catalog (native, resized by the terminal): at most a rounding
    # flip of one image per model, so within 1 pp on the mean.
    assert abs(report.accuracy_gap_pp) <= 1.0
    for t in report.terminals:
        assert t.requests == 360 and abs(t.realised_accuracy - t.catalog_accuracy) <= 1 / 360 + 1e-12
    assert report.accuracy_stderr_pp == 0.0
    # Scenario made from this catalog with these constants: the promise is what the models cost.
    for t in report.terminals:
        assert t.modelled_latency_s == pytest.approx(t.promised_latency_s, rel=1e-9)
        entry = next(m for m in catalog["models"] if m["name"] == t.model)
        assert t.served_input_bits == entry["input_bits"] and t.served_flops == entry["flops"] and t.cpu_latency_s > 0
    assert report.notes == []


def test_a_scenario_made_with_other_constants_shows_in_the_latency(catalog_file):
    catalog = read_catalog(catalog_file)
    problem, _, schedule = scheduled(catalog, CatalogCosts(edge_cycles_per_flop=0.5))
    report = serve(catalog, problem, schedule, costs=CatalogCosts(edge_cycles_per_flop=1.0), latency_repeats=3)
    assert report.modelled_total_latency_s > report.promised_total_latency_s
    assert report.max_latency_rel_diff > 0.01


def test_sampled_requests_report_their_standard_error(catalog_file):
    catalog = read_catalog(catalog_file)
    problem, _, schedule = scheduled(catalog, CatalogCosts())
    report = serve(catalog, problem, schedule, requests=40, seed=1, latency_repeats=3)
    assert all(t.requests == 40 for t in report.terminals)
    assert report.accuracy_stderr_pp > 0
    assert abs(report.accuracy_gap_pp) < 4 * report.accuracy_stderr_pp + 1e-9
    with pytest.raises(ScenarioError, match="--requests"):
        serve(catalog, problem, schedule, requests=-1)


def test_catalog_runs_are_found_beside_the_catalog_whatever_the_working_directory(catalog_file, tmp_path, monkeypatch, small_family):
    stored = [m["run_dir"] for m in json.loads(catalog_file.read_text())["models"]]
    assert stored and not any(Path(d).is_absolute() for d in stored)  # relative to the catalog's folder
    monkeypatch.chdir(tmp_path)  # neither the catalog's folder nor where it was built
    resolved = {m["name"]: Path(m["run_dir"]).resolve() for m in read_catalog(catalog_file)["models"]}
    assert sorted(resolved.values()) == sorted(Path(small_family[k]).resolve() for k in ("small", "large", "int8"))
    moved = tmp_path / "moved"
    moved.mkdir()
    legacy = json.loads(catalog_file.read_text())
    for m in legacy["models"]:  # a catalog written before: paths relative to where it was built (here: cwd)
        m["run_dir"] = os.path.relpath(resolved[m["name"]], tmp_path)
    (moved / "catalog.json").write_text(json.dumps(legacy))
    assert {m["name"]: Path(m["run_dir"]).resolve() for m in read_catalog(moved / "catalog.json")["models"]} == resolved


def test_serve_sim_command(catalog_file, tmp_path, fedsplit_main, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the catalog's runs are found from any working directory
    scenario = tmp_path / "scenario.json"
    proc = fedsplit_main("scenario", "--terminals", "4", "--seed", "2", "--catalog", str(catalog_file),
                         "--accuracy-target", "0.3", "--out", str(scenario))
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "serve.json"
    proc = fedsplit_main("serve-sim", "--catalog", str(catalog_file), "--scenario", str(scenario),
                         "--latency-repeats", "2", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "realised_mean_accuracy=" in proc.stdout and "promised_total_latency_s=" in proc.stdout
    result = json.loads(out.read_text())
    assert len(result["assignments"]) == 4 and abs(result["accuracy_gap_pp"]) <= 1.0
    assert result["max_latency_rel_diff"] < 1e-9

    data = json.loads(scenario.read_text())
    data["models"][0]["name"] = "not-in-catalog"
    scenario.write_text(json.dumps(data))
    proc = fedsplit_main("serve-sim", "--catalog", str(catalog_file), "--scenario", str(scenario))
    assert proc.returncode == 2
    assert proc.stderr.startswith("fedsplit serve-sim: error: scenario.models: got 'not-in-catalog'; expected a model of the catalog")
