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
    calibrate_reps,
    held_out_mdape,
    profile_layer_sets,
    profile_layers,
    random_layer_calls,
    time_calls,
    trial_samples,
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
    class ThreadsSeen(torch.nn.ReLU):  # an activation that notes torch's thread count at each call
        seen: set = set()

        def forward(self, x):
            ThreadsSeen.seen.add(torch.get_num_threads())
            return super().forward(x)

    train_calls, held_calls = random_layer_calls(8, seed=0), random_layer_calls(4, seed=1)
    held_calls.append((ThreadsSeen(), (1, 8, 16, 16)))
    threads = torch.get_num_threads()
    train, held = profile_layer_sets(train_calls, held_calls, trials=5)
    assert ThreadsSeen.seen == {1}  # pinned to one thread while timing ...
    assert torch.get_num_threads() == threads  # ... and restored after
    assert [t.label for t in train] == [f"{type(m).__name__}{s}" for m, s in train_calls]
    assert [t.label for t in held] == [f"{type(m).__name__}{s}" for m, s in held_calls]
    assert all(t.seconds > 0 for t in train + held)
    model = LatencyModel.fit(train)
    assert model.host_flops_per_s > 1e8
    assert held_out_mdape(model, held)["all"] < 60.0
    assert [t.label for t in profile_layers(held_calls[:3], trials=2)] == [t.label for t in held[:3]]


class FakeClock:
    """A clock that only moves when a fake call runs: a call costs its base seconds times the
    slowdown in force when it starts (``bursts``: ``(start, end, factor)`` windows of fake time)."""

    def __init__(self, bursts=()):
        self.now = 0.0
        self.bursts = list(bursts)
        self.log = []  # the names of the calls run, in order

    def __call__(self):
        return self.now

    def call(self, name, seconds):
        def run():
            factor = 1.0
            for start, end, slow in self.bursts:
                if start <= self.now < end:
                    factor *= slow
            self.log.append(name)
            self.now += seconds * factor
        return run


def test_calibrate_reps_fills_the_trial_and_ignores_one_slow_loop():
    clock = FakeClock()
    assert calibrate_reps(clock.call("a", 10e-6), 1e-3, timer=clock) == 100
    assert calibrate_reps(clock.call("b", 30e-6), 1e-3, timer=clock) == 34
    assert calibrate_reps(clock.call("c", 5e-3), 1e-3, timer=clock) == 1  # longer than a trial: one call
    # a preemption (x200) lands in the first, one-call loop: the doubling stops there, but the two
    # re-timed loops see the true 10 us, so a trial still gets 100 calls, not 1
    clock = FakeClock(bursts=[(0.0, 1e-9, 200.0)])
    assert calibrate_reps(clock.call("d", 10e-6), 1e-3, timer=clock) == 100


def _trial_order(log, reps, trials):
    """The calls' names in the order their trials ran, read off the end of a FakeClock's log
    (a trial is one untimed call and a loop of ``reps[name]`` calls)."""
    n = trials * sum(1 + r for r in reps.values())
    tail, order, i = log[-n:], [], 0
    while i < len(tail):
        name = tail[i]
        assert tail[i:i + 1 + reps[name]] == [name] * (1 + reps[name])
        order.append(name)
        i += 1 + reps[name]
    return order


def test_time_calls_interleaves_rounds_and_times_a_loop_per_trial():
    clock = FakeClock()
    costs = {"a": 10e-6, "b": 40e-6, "c": 200e-6}
    calls = [clock.call(name, cost) for name, cost in costs.items()]
    samples = trial_samples(calls, trials=4, min_trial_s=1e-3, warmup=2, timer=clock)
    assert [len(s) for s in samples] == [4, 4, 4]
    for s, cost in zip(samples, costs.values()):
        assert np.allclose(s, cost)
    assert clock.log[:2] == ["a", "a"]  # warm-up
    order = _trial_order(clock.log, {"a": 100, "b": 25, "c": 5}, trials=4)
    assert len(order) == 12
    for r in range(4):  # every round runs every call once before any call's next trial
        assert sorted(order[3 * r:3 * r + 3]) == ["a", "b", "c"]
    assert order[:3] != order[3:6] or order[3:6] != order[6:9]  # the order is shuffled per round
    assert time_calls(calls, trials=3, timer=clock) == pytest.approx(list(costs.values()))


COSTS_A = [20e-6, 50e-6, 80e-6]  # "training" calls
COSTS_B = [30e-6, 60e-6, 90e-6]  # "held-out" calls


def _sets(clock):
    return ([clock.call(f"a{i}", c) for i, c in enumerate(COSTS_A)],
            [clock.call(f"b{i}", c) for i, c in enumerate(COSTS_B)])


def _profile_length(trials):
    clock = FakeClock()
    a, b = _sets(clock)
    time_calls(a + b, trials=trials, timer=clock)
    return clock.now


def test_a_load_burst_in_part_of_the_profile_does_not_bias_one_set_against_another():
    """The defect: training calls timed, then held-out calls; a burst of other work while the
    held-out ones ran made them all look 1.6x slower. Interleaved, every call has trials outside the
    burst, and the fastest of them is its own cost."""
    clock = FakeClock()
    a, b = _sets(clock)
    got_a = time_calls(a, trials=5, timer=clock)
    clock.bursts.append((clock.now, clock.now + 10.0, 1.6))  # one set after the other: the burst hits b only
    got_b = time_calls(b, trials=5, timer=clock)
    assert got_a == pytest.approx(COSTS_A) and got_b == pytest.approx([1.6 * c for c in COSTS_B])

    total = _profile_length(trials=5)
    for statistic in ("min", "median"):  # a burst over 40 % of the profile, starting part way through
        clock = FakeClock(bursts=[(0.3 * total, 0.7 * total, 1.6)])
        a, b = _sets(clock)
        got = time_calls(a + b, trials=5, statistic=statistic, timer=clock)
        assert got == pytest.approx(COSTS_A + COSTS_B), statistic


def test_min_sees_through_a_load_that_slows_most_trials_and_the_median_does_not():
    total = _profile_length(trials=5)
    clock = FakeClock(bursts=[(0.45 * total, 100.0, 1.6)])  # from round 2 on, to the end
    a, b = _sets(clock)
    assert time_calls(a + b, trials=5, timer=clock) == pytest.approx(COSTS_A + COSTS_B)
    clock = FakeClock(bursts=[(0.45 * total, 100.0, 1.6)])
    a, b = _sets(clock)
    assert time_calls(a + b, trials=5, statistic="median", timer=clock) == pytest.approx(
        [1.6 * c for c in COSTS_A + COSTS_B])


def test_time_calls_refuses_bad_arguments():
    clock = FakeClock()
    call = clock.call("a", 1e-4)
    with pytest.raises(ValueError, match="statistic = 'mean'"):
        time_calls([call], statistic="mean", timer=clock)
    with pytest.raises(ValueError, match="trials = 0"):
        time_calls([call], trials=0, timer=clock)
    with pytest.raises(ValueError, match="min_trial_s = 0.0"):
        time_calls([call], min_trial_s=0.0, timer=clock)


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
