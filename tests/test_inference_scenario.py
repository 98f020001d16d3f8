"""Scenario and catalog files, the paper's generator, and the baselines."""

import json

import numpy as np
import pytest

from fedsplit.inference.baselines import equal_resource, greedy_accuracy, greedy_latency, random_models
from fedsplit.inference.catalog import CatalogCosts, load_catalog, models_from_catalog
from fedsplit.inference.errors import ScenarioError
from fedsplit.inference.paper_scenario import PaperScenarioConfig, generate_paper_scenario, pathloss_gain
from fedsplit.inference.scenario import problem_from_dict, problem_to_dict
from fedsplit.inference.solve import solve


def scenario_dict():
    return problem_to_dict(generate_paper_scenario(3, 0))


def test_round_trip_preserves_every_number():
    p = generate_paper_scenario(4, 9)
    q = problem_from_dict(json.loads(json.dumps(problem_to_dict(p))))
    for name in ("gain", "cpu_hz", "tx_power_w", "energy_budget_j", "deadline_s", "kappa",
                 "input_bits", "local_cycles", "edge_cycles", "accuracy"):
        assert np.array_equal(getattr(p, name), getattr(q, name))
    assert q.model_names == p.model_names and q.bandwidth_hz == p.bandwidth_hz


@pytest.mark.parametrize(
    "mutate, field, fragment",
    [
        (lambda d: d["terminals"][1].pop("gain"), "terminals[1].gain", "missing"),
        (lambda d: d.update(bandwidth_hz=-1.0), "bandwidth_hz", "-1.0"),
        (lambda d: d.update(bandwidth_hz=0), "bandwidth_hz", "> 0"),
        (lambda d: d["models"][2].update(accuracy=1.2), "models[2].accuracy", "[0, 1]"),
        (lambda d: d.update(accuracy_target=-0.1), "accuracy_target", "[0, 1]"),
        (lambda d: d.update(models=[]), "models", "non-empty"),
        (lambda d: d.pop("models"), "models", "missing"),
        (lambda d: d["terminals"][0].update(deadline_s=True), "terminals[0].deadline_s", "True"),
        (lambda d: d["models"][1].update(name=d["models"][0]["name"]), "models[1].name", "not used"),
        (lambda d: d["terminals"][0].update(cpu_hz="fast"), "terminals[0].cpu_hz", "'fast'"),
    ],
)
def test_bad_fields_are_named_with_value_and_allowed_range(mutate, field, fragment):
    data = scenario_dict()
    mutate(data)
    with pytest.raises(ScenarioError) as info:
        problem_from_dict(data)
    assert info.value.field == field
    assert str(info.value).startswith(field + ":")
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def catalog_model(name: str, accuracy: float, flops: float) -> dict:
    """A complete catalog entry (every field the shipped schema requires) of a 28x28 grey model."""
    return {
        "name": name, "kind": "trained", "architecture": "cnn", "input_shape": [1, 28, 28], "input_bits": 6272,
        "bits_per_value": 8, "params": 1000, "nonzero_params": 1000, "flops": flops, "accuracy": accuracy,
        "test_samples": 100, "cpu_latency_s": 1e-4, "cpu_latency_repeats": 5,
        "devices": {"laptop": {"latency_s": flops / 5e10, "energy_j": 1e-6}}, "run_dir": f"runs/{name}",
    }


def test_catalog_mapping_uses_explicit_constants(tmp_path):
    catalog = {"schema": "fedsplit-catalog/1", "models": [catalog_model("tiny", 0.8, 2e6), catalog_model("wide", 0.9, 9e6)]}
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(catalog))
    models = load_catalog(path, CatalogCosts(local_cycles_per_bit=3.0, edge_cycles_per_flop=0.5))
    assert [m.name for m in models] == ["tiny", "wide"]
    assert models[0].input_bits == 6272 and models[0].local_cycles == 3.0 * 6272
    assert models[1].edge_cycles == 0.5 * 9e6 and models[1].accuracy == 0.9
    bad = {**catalog, "models": [dict(catalog["models"][0], input_shape=[28, 28])]}
    with pytest.raises(ScenarioError, match=r"catalog.models\[0\].input_shape"):
        models_from_catalog(bad)


def test_paper_generator_is_seeded_and_follows_the_path_loss_law():
    a, b = generate_paper_scenario(5, 42), generate_paper_scenario(5, 42)
    assert np.array_equal(a.gain, b.gain) and not np.array_equal(a.gain, generate_paper_scenario(5, 43).gain)
    config = PaperScenarioConfig(rayleigh_fading=False)
    p = generate_paper_scenario(200, 1, config)
    d_min, d_max = 10.0, np.hypot(500, 500)
    assert np.all(p.gain <= pathloss_gain(np.array([d_min]), config)[0])
    assert np.all(p.gain >= pathloss_gain(np.array([d_max]), config)[0])
    assert pathloss_gain(np.array([1000.0]), config)[0] == pytest.approx(10 ** -12.81)
    assert np.all((p.cpu_hz >= 1e9) & (p.cpu_hz <= 2e9))
    assert p.noise_w_per_hz == pytest.approx(3.981e-21, rel=1e-3)


def test_baselines_follow_their_policies_and_never_beat_the_optimum():
    checked = 0
    for seed in range(6):
        p = generate_paper_scenario(6, seed)
        best = solve(p, "exact")
        if not best.feasible:
            continue
        gl = greedy_latency(p)
        assert np.all(gl.models == np.argmin(p.input_bits))
        assert gl.accuracy < p.accuracy_target and not gl.feasible
        ga = greedy_accuracy(p)
        assert np.all(ga.models == np.argmax(p.accuracy)) and ga.total_latency_s > best.total_latency_s
        er = equal_resource(p)
        assert np.allclose(er.bandwidth_hz, p.bandwidth_hz / 6) and np.allclose(er.edge_cycles_per_s, p.edge_cycles_per_s / 6)
        r1, r2 = random_models(p, seed=5), random_models(p, seed=5)
        assert np.array_equal(r1.models, r2.models)
        for other in (er, r1):
            if other.feasible:
                assert best.total_latency_s <= other.total_latency_s * (1 + 1e-9)
        checked += 1
    assert checked >= 4
