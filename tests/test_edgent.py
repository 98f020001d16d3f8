"""Edgent (issue #15): multi-exit model, latency regression, optimiser, traces, states, real execution."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from fedsplit.devices.profile import builtin_profiles
from fedsplit.inference.edgent.configs import build_config_table
from fedsplit.inference.edgent.devices import get_profile
from fedsplit.inference.edgent.latency import (
    LatencyModel,
    LayerTiming,
    held_out_mdape,
    layer_features,
    profile_layers,
    random_layer_calls,
)
from fedsplit.inference.edgent.optimizer import plan
from fedsplit.inference.edgent.replay import replay
from fedsplit.inference.edgent.runtime import EdgeServer, reference_output
from fedsplit.inference.edgent.states import OnlineStateDetector, fit_states
from fedsplit.inference.edgent.traces import generate_trace, load_throughput_log
from fedsplit.models.contract import blocks
from fedsplit.models.multiexit import (
    build_multiexit,
    evaluate_exits,
    exit_path,
    joint_exit_loss,
    train_multiexit,
)

WIDTH = 0.5
ACC = [0.80, 0.88, 0.93, 0.95]


def _model():
    return build_multiexit("multiexit-cnn", (1, 32, 32), 10, width=WIDTH, seed=0)


def _synthetic_latency() -> LatencyModel:
    """A latency model fitted on synthetic timings: a known linear law per kind, +-5 % noise."""
    rng = np.random.default_rng(0)
    truth = {"conv": [2e-5, 1e-5, 1e-7, 1e-7, 1e-7, 0.0, 0.0], "linear": [5e-6, 2e-5, 1e-7, 1e-7],
             "pool": [3e-6, 1e-7, 1e-7, 5e-8, 5e-8], "activation": [2e-6, 5e-8], "norm": [4e-6, 8e-8],
             "other": [1e-6]}
    timings = []
    for kind, coef in truth.items():
        for _ in range(40):
            features = np.concatenate([[1.0], rng.uniform(0.1, 50, len(coef) - 1)])
            seconds = float(np.dot(coef, features)) * rng.uniform(0.95, 1.05)
            timings.append(LayerTiming(kind, tuple(features), int(features[1] * 1e6) if kind == "conv" else 0, seconds))
    return LatencyModel.fit(timings, host_flops_per_s=2e10)


def test_exit_paths_compose_to_forward_exit_and_forward_is_last_exit():
    model = _model().eval()
    x = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        outs = model.forward_exits(x)
        assert len(outs) == model.num_exits == 4
        assert torch.equal(model(x), outs[-1])
        for e in range(4):
            assert torch.allclose(exit_path(model, e)(x), outs[e])
            assert torch.allclose(model.forward_exit(x, e), outs[e])
    with pytest.raises(ValueError, match="exit = 4"):
        exit_path(model, 4)
    with pytest.raises(ValueError, match="divisible by 16"):
        build_multiexit("multiexit-cnn", (1, 8, 8), 10)
    with pytest.raises(ValueError, match="unknown multi-exit model"):
        build_multiexit("nope", (1, 32, 32), 10)


def test_joint_loss_trains_every_exit():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 1, 32, 32, generator=g)
    y = (x.mean(dim=(1, 2, 3)) > 0).long()
    model = build_multiexit("multiexit-cnn", (1, 32, 32), 2, width=0.25, seed=0)
    logits = model.forward_exits(x)
    loss = joint_exit_loss(logits, y, [1, 0, 0, 2])
    expected = torch.nn.functional.cross_entropy(logits[0], y) + 2 * torch.nn.functional.cross_entropy(logits[3], y)
    assert torch.allclose(loss, expected)
    with pytest.raises(ValueError, match="one per exit"):
        joint_exit_loss(logits, y, [1, 1])
    result = train_multiexit(model, x, y, epochs=3, batch_size=32, lr=0.05, seed=0)
    assert result.steps == 6 and np.isfinite(result.loss)
    accuracies = evaluate_exits(model, x, y)
    assert len(accuracies) == 4 and all(0 <= a <= 1 for a in accuracies)


def test_regression_recovers_synthetic_law_and_scales_by_profile():
    model = _synthetic_latency()
    rng = np.random.default_rng(1)
    features = (1.0, *rng.uniform(0.1, 50, 3))
    truth = float(np.dot([5e-6, 2e-5, 1e-7, 1e-7], features))
    assert model.predict_host("linear", features) == pytest.approx(truth, rel=0.05)
    profiles = builtin_profiles()
    assert model.predict("linear", features, profiles["edge-server"]) == pytest.approx(
        model.predict_host("linear", features) * 2e10 / 1e11)
    again = LatencyModel.from_dict(model.to_dict())
    assert again.predict_host("conv", (1, 2, 3, 4, 5, 0, 0)) == model.predict_host("conv", (1, 2, 3, 4, 5, 0, 0))
    with pytest.raises(ValueError, match="no regression fitted"):
        LatencyModel({"conv": np.zeros(7)}, 1e9).predict_host("linear", (1, 1, 1, 1))


def test_real_profile_predicts_held_out_shapes():
    """One real profile on this machine, generous bound (the experiment reports the tight number)."""
    train = profile_layers(random_layer_calls(8, seed=0), trials=5)
    held = profile_layers(random_layer_calls(4, seed=1), trials=5)
    model = LatencyModel.fit(train)
    assert model.host_flops_per_s > 1e8
    assert held_out_mdape(model, held)["all"] < 60.0


def _table():
    profiles = {"device": get_profile("iot-camera"), "edge": get_profile("edge-server")}
    return build_config_table(_model(), _synthetic_latency(), profiles["device"], profiles["edge"], ACC)


def test_optimiser_special_cases_infeasibility_and_speed():
    table = _table()
    n_final = len(blocks(exit_path(_model(), 3)))
    assert len(table) == sum(len(blocks(exit_path(_model(), e))) + 1 for e in range(4))
    fast = plan(table, 1.0, 100e6)
    assert fast.feasible and fast.exit == 3
    device = plan(table, 1.0, 1.0, mode="device-only")
    assert device.partition == n_final and device.cut_bytes == 0 and device.transfer_s == 0
    edge = plan(table, 1.0, 100e6, mode="edge-only")
    assert edge.partition == 0 and edge.cut_bytes == 4 * 32 * 32
    tight = plan(table, 1e-9, 1e6)
    assert not tight.feasible and "no configuration meets" in tight.reason
    # every feasible choice is the most accurate meeting the requirement
    for req in (0.02, 0.05, 0.1):
        for bw in (0.1e6, 1e6, 10e6):
            p = plan(table, req, bw)
            lat = table.latency_s(bw)
            if p.feasible:
                assert p.latency_s <= req and p.accuracy == table.accuracy[lat <= req].max()
    with pytest.raises(ValueError, match="bandwidth"):
        plan(table, 0.1, 0.0)
    with pytest.raises(ValueError, match="mode"):
        plan(table, 0.1, 1e6, mode="cloud")
    start = time.perf_counter()
    for _ in range(100):
        plan(table, 0.1, 5e6)
    assert (time.perf_counter() - start) / 100 < 0.010


def test_trace_generator_loader_and_states(tmp_path):
    trace = generate_trace(400, seed=3)
    assert len(trace) == 400 and np.all(trace.bps > 0)
    assert np.array_equal(trace.bps, generate_trace(400, seed=3).bps)
    states = fit_states(trace.bps)
    assert 2 <= len(states) <= 6
    assert np.all(np.diff(states.centers_log) > 0)
    detector = OnlineStateDetector(states)
    seen = [detector.update(b) for b in trace.bps]
    true_switches = int(np.sum(np.diff(trace.regime) != 0))
    assert abs(len(detector.changes) - true_switches) <= max(3, true_switches // 2)
    assert seen[-1] == states.nearest(float(np.log(trace.bps[-20:]).mean())) or len(states) > 1
    log = tmp_path / "report.log"
    log.write_text("1453121790686 51.03 3.77 125000 1000\n1453121791686 51.03 3.77 62500 1000\n", encoding="utf-8")
    loaded = load_throughput_log(log)
    assert np.allclose(loaded.bps, [1e6, 0.5e6]) and loaded.step_s == 1.0
    three = tmp_path / "short.csv"
    three.write_text("0,250000,2000\n", encoding="utf-8")
    assert np.allclose(load_throughput_log(three).bps, [1e6])
    bad = tmp_path / "bad.log"
    bad.write_text("1 2 3 4\n", encoding="utf-8")
    with pytest.raises(ValueError, match="bad.log:1"):
        load_throughput_log(bad)


def test_replay_dynamic_beats_static_on_misses():
    table = _table()
    train, test = generate_trace(600, seed=1), generate_trace(300, seed=2)
    states = fit_states(train.bps)
    median = float(np.median(train.bps))
    results = {p: replay(p, table, test, 0.1, states, median) for p in
               ("edgent-dynamic", "edgent-static", "device-only", "edge-only")}
    assert results["edgent-dynamic"].miss_rate <= results["edgent-static"].miss_rate
    assert results["edgent-dynamic"].miss_rate <= results["edge-only"].miss_rate
    assert results["edgent-dynamic"].mean_accuracy >= results["device-only"].mean_accuracy


def test_partitioned_execution_is_exact_for_every_exit_and_partition():
    model = _model().eval()
    x = torch.randn(1, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    checked = 0
    with EdgeServer(model, width=WIDTH, link_latency_s=0.01, emulate="clock") as server:
        for e in range(model.num_exits):
            reference = reference_output(model, x, e)
            for p in range(len(blocks(exit_path(model, e))) + 1):
                out, timing = server.infer(x, e, p, 1e6)
                assert torch.equal(out, reference), (e, p)
                assert (timing.cut_bytes == 0) == (p == len(blocks(exit_path(model, e))))
                checked += 1
    assert checked == 94
