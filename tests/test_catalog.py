"""The hardened catalog: measured entries, the shipped JSON schema, refusals naming entry and field."""

from __future__ import annotations

import copy
import json
import math

import pytest

from fedsplit.devices import compute_cost, resolve_profiles
from fedsplit.inference.catalog import (
    CatalogCosts,
    catalog_schema,
    models_from_catalog,
    read_catalog,
    validate_catalog,
)
from fedsplit.inference.errors import ScenarioError
from fedsplit.report.catalog import build_catalog, catalog_rows
from fedsplit.report.members import derive_pruned, load_member


@pytest.fixture(scope="module")
def measured(small_family):
    """The shared members, measured into a catalog (given out of FLOPs order)."""
    return build_catalog([small_family["large"], small_family["int8"], small_family["small"]], latency_repeats=5)


def test_entries_are_measured_and_sorted_by_flops(measured):
    validate_catalog(measured)
    assert measured["schema"] == "fedsplit-catalog/1" and measured["dataset"] == "digits"
    small, large, int8 = measured["models"]
    assert [small["name"], small["kind"]] == ["cnn-5px-w0.25", "trained"]
    assert small["input_shape"] == [1, 5, 5] and large["input_shape"] == [1, 8, 8]
    assert small["input_bits"] == 25 * 8 and large["input_bits"] == 64 * 8
    assert small["flops"] < large["flops"] == int8["flops"]
    assert (int8["kind"], int8["parent"]) == ("int8", "cnn-8px-w0.5")
    # accuracy: the model run on the held-out set at its own resolution, an exact fraction of it
    member = load_member(small["run_dir"])
    test = member.task.data.server_test
    assert tuple(test.x.shape[1:]) == (1, 5, 5) and small["test_samples"] == test.y.shape[0] == 360
    correct = int((member.model(test.x).argmax(1) == test.y).sum())
    assert small["accuracy"] == correct / 360
    assert large["accuracy"] > small["accuracy"]
    assert abs(int8["accuracy"] - large["accuracy"]) < 0.02
    profiles = resolve_profiles()
    assert set(large["devices"]) == set(profiles)
    pi = large["devices"]["raspberry-pi-4"]
    cost = compute_cost(profiles["raspberry-pi-4"], large["flops"])
    assert pi == {"latency_s": cost.compute_s, "energy_j": cost.energy_j}
    assert large["devices"]["laptop"]["latency_s"] < pi["latency_s"]
    assert all(m["cpu_latency_s"] > 0 and m["cpu_latency_repeats"] == 5 for m in measured["models"])
    assert large["params"] == large["nonzero_params"] > small["params"]


def test_pruned_member_keeps_its_shape_and_reports_its_non_zeros(measured, tmp_path):
    parent = measured["models"][1]["run_dir"]
    pruned = derive_pruned(parent, tmp_path, amount=0.7, finetune_epochs=1)
    parent_entry, pruned_entry = build_catalog([parent, pruned], latency_repeats=3)["models"]
    assert pruned_entry["kind"] == "pruned" and pruned_entry["flops"] == parent_entry["flops"]
    assert pruned_entry["params"] == parent_entry["params"]
    assert pruned_entry["nonzero_params"] < 0.5 * parent_entry["nonzero_params"]


@pytest.mark.parametrize(
    "mutate, field, fragment",
    [
        (lambda c: c["models"][1].pop("flops"), "catalog.models[1].flops (model 'cnn-8px-w0.5')", "missing"),
        (lambda c: c["models"][2]["devices"]["laptop"].update(energy_j=-1.0), "catalog.models[2].devices.laptop.energy_j (model 'cnn-8px-w0.5-int8')", ">= 0"),
        (lambda c: c["models"][0].update(cpu_latency_s=-0.001), "catalog.models[0].cpu_latency_s (model 'cnn-5px-w0.25')", "> 0"),
        (lambda c: c["models"][1].update(accuracy=1.2), "catalog.models[1].accuracy (model 'cnn-8px-w0.5')", "[0, 1]"),
        (lambda c: c["models"][0].update(accuracy=-0.1), "catalog.models[0].accuracy (model 'cnn-5px-w0.25')", "-0.1"),
        (lambda c: c["models"][2].update(name=c["models"][0]["name"]), "catalog.models[2].name (model 'cnn-5px-w0.25')", "not used by catalog.models[0]"),
        (lambda c: c["models"][0].update(input_shape=[8, 8]), "catalog.models[0].input_shape (model 'cnn-5px-w0.25')", "3 items"),
        (lambda c: c["models"][0].update(acuracy=0.5), "catalog.models[0].acuracy (model 'cnn-5px-w0.25')", "no such field"),
        (lambda c: c["models"][1].update(kind="quantum"), "catalog.models[1].kind (model 'cnn-8px-w0.5')", '"distilled"'),
        (lambda c: c["models"][1].update(flops=True), "catalog.models[1].flops (model 'cnn-8px-w0.5')", "True"),
        (lambda c: c.update(models=[]), "catalog.models", "[]"),
        (lambda c: c.pop("schema"), "catalog.schema", "missing"),
    ],
)
def test_bad_catalogs_are_refused_naming_entry_and_field(measured, mutate, field, fragment):
    catalog = copy.deepcopy(measured)
    mutate(catalog)
    with pytest.raises(ScenarioError) as info:
        validate_catalog(catalog)
    assert info.value.field == field
    assert str(info.value).startswith(field + ":") and fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_the_first_bad_entry_is_reported_first(measured):
    catalog = copy.deepcopy(measured)
    catalog["models"][2]["accuracy"] = 3.0
    catalog["models"][0]["flops"] = -1
    with pytest.raises(ScenarioError, match=r"^catalog\.models\[0\]\.flops"):
        validate_catalog(catalog)


def test_scheduler_reads_catalogs_only_through_the_schema(measured, tmp_path):
    costs = CatalogCosts(local_cycles_per_bit=3.0, edge_cycles_per_flop=0.5)
    specs = models_from_catalog(measured, costs)
    assert [s.name for s in specs] == [m["name"] for m in measured["models"]]
    small = measured["models"][0]
    assert specs[0].input_bits == small["input_bits"] and specs[0].local_cycles == 3.0 * small["input_bits"]
    assert specs[0].edge_cycles == 0.5 * small["flops"] and specs[0].accuracy == small["accuracy"]
    old_format = {"models": [{k: small[k] for k in ("name", "accuracy", "flops", "input_shape", "input_bits")}]}
    with pytest.raises(ScenarioError, match=r"^catalog\.schema: missing"):
        models_from_catalog(old_format)
    path = tmp_path / "catalog.json"
    path.write_text("{not json")
    with pytest.raises(ScenarioError, match=r"^--catalog: .*valid JSON"):
        read_catalog(path)


def test_schema_ships_with_the_package_and_says_what_each_field_is():
    schema = catalog_schema()
    model = schema["$defs"]["model"]
    for key in ("name", "input_shape", "input_bits", "params", "flops", "accuracy", "cpu_latency_s", "devices"):
        assert key in model["required"] and model["properties"][key].get("description") or key in ("params",)
    assert model["properties"]["accuracy"]["minimum"] == 0 and model["properties"]["accuracy"]["maximum"] == 1


def test_catalog_rows_flatten_every_device(measured):
    rows = catalog_rows(measured)
    assert rows[0]["resolution"] == "5x5" and rows[0]["channels"] == 1
    assert math.isclose(rows[1]["laptop_ms"], 1e3 * measured["models"][1]["devices"]["laptop"]["latency_s"])


def test_catalog_build_and_show_commands(measured, tmp_path, fedsplit_main):
    runs = [m["run_dir"] for m in measured["models"] if m["kind"] == "trained"]
    out = tmp_path / "catalog.json"
    proc = fedsplit_main("catalog", "build", *runs, "--out", str(out), "--latency-repeats", "3")
    assert proc.returncode == 0, proc.stderr
    assert "model=cnn-5px-w0.25 kind=trained" in proc.stdout and f"wrote {out}" in proc.stdout
    assert [m["name"] for m in json.loads(out.read_text())["models"]] == ["cnn-5px-w0.25", "cnn-8px-w0.5"]
    proc = fedsplit_main("catalog", "show", str(out), "--width", "200")
    assert proc.returncode == 0, proc.stderr
    assert "cnn-5px-w0.25" in proc.stdout and "1x5x5" in proc.stdout and "raspberry-pi-4" in proc.stdout
    bad = json.loads(out.read_text())
    bad["models"][1]["accuracy"] = 1.5
    out.write_text(json.dumps(bad))
    proc = fedsplit_main("catalog", "show", str(out))
    assert proc.returncode == 2
    assert proc.stderr.strip() == "fedsplit catalog show: error: catalog.models[1].accuracy (model 'cnn-8px-w0.5'): got 1.5; expected a number in [0, 1]"


def test_catalog_show_off_a_terminal_prints_every_cell_in_full(measured, tmp_path, fedsplit_main):
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(measured))
    proc = fedsplit_main("catalog", "show", str(path))  # no --width; stdout is captured, not a terminal
    assert proc.returncode == 0, proc.stderr
    assert "…" not in proc.stdout
    cells = {c.strip() for line in proc.stdout.splitlines() for c in line.replace("┃", "│").split("│")}
    for m in measured["models"]:
        assert {m["name"], m["kind"], f"{m['flops']:,.0f}", f"{m['nonzero_params']:,}"} <= cells
    assert {"accuracy", "nonzero", "FLOPs"} <= cells and set(measured["models"][0]["devices"]) <= cells


def test_catalog_build_refuses_an_unfinished_run(tmp_path, fedsplit_main):
    proc = fedsplit_main("catalog", "build", str(tmp_path))
    assert proc.returncode == 2
    assert "not a finished run folder (config.toml is missing)" in proc.stderr


def test_two_members_of_one_name_are_refused_naming_their_folders(small_family):
    folder = small_family["small"]
    with pytest.raises(ValueError, match=f"{folder}, {folder} are all named '[^']+' \\(a member is named by its run's run_name"):
        build_catalog([folder, folder], latency_repeats=1)
