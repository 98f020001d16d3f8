"""Orchestration (issue #16): FedCS selection, adaptive local work, FedBuff/FedAsync, gossip.

Runs on the in-process engine of ``tests/test_metered_grid.py`` (the real ClientApp on real Flower
messages, no Ray), with the MLP on digits: seconds in all; then each mode class once through
``fedsplit simulate`` on fedsplit's Ray engine (async, gossip, FedCS + adaptive under a budget).
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord
from flwr.serverapp.strategy import FedAvg

from fedsplit.clients.app import make_client_app
from fedsplit.clients.arrays import array_record_from_state
from fedsplit.config import ConfigError, load_config
from fedsplit.devices import Population, builtin_profiles
from fedsplit.learning import config_to_json, task_for
from fedsplit.ledger import Ledger
from fedsplit.simulation.checkpoint import capture_protocol, restore_protocol
from fedsplit.simulation.engine import EngineGrid
from fedsplit.simulation.loop import LoopSettings, run_protocol
from fedsplit.simulation.metered_grid import MeteredGrid
from fedsplit.simulation.runner import simulate
from fedsplit.simulation.server_app import build_protocol
from fedsplit.simulation.wire_size import array_record_wire_bytes
from fedsplit.strategies.adaptive_local import AdaptiveLocalStrategy, BudgetController, fednova_average
from fedsplit.strategies.async_protocol import AsyncProtocol, AsyncSettings
from fedsplit.strategies.fedavg_protocol import StrategyProtocol
from fedsplit.strategies.fedcs import FedCSStrategy, completion_predictor
from fedsplit.strategies.gossip_protocol import GossipProtocol, GossipSettings, build_graph, consensus_distance, dpsgd_average, mixing_matrix
from fedsplit.strategies.protocol import ProtocolRun
from tests.conftest import small_overrides
from tests.test_metered_grid import InProcessEngine

ALL_CLASSES = "{raspberry-pi-4 = 2, smartphone-mid = 2, smartphone-low = 2, jetson-nano = 1, laptop = 2}"


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The in-process engine trains in this process: one torch thread (the tiny MLP gains nothing
    from more, and on a loaded 2-core machine two threads made its steps ~80x slower: 13.4 s vs
    0.16 s for two adaptive rounds of three terminals)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_grid(devices: str = ALL_CLASSES, *extra: str):
    cfg = load_config(None, [f"devices={devices}", "model.name=mlp", "train.local_epochs=1", "data.partitioner=dirichlet", *extra])
    population = Population(cfg.devices, builtin_profiles())
    engine = InProcessEngine(make_client_app(config_json=config_to_json(cfg)), population)
    ledger = Ledger()
    grid = MeteredGrid(EngineGrid(engine), population, ledger, seed=0, partition_of=engine.partition_of, emulate_availability=False, round_deadline_s=cfg.clock.round_deadline_s)
    return cfg, grid, ledger


def protocol_run(cfg, grid, rounds: int) -> ProtocolRun:  # noqa: ANN001
    task = task_for(config_to_json(cfg))
    t = cfg.train
    return ProtocolRun(grid=grid, num_rounds=rounds, initial_state=task.initial_state(), train_config=ConfigRecord({"lr": t.lr, "local-epochs": t.local_epochs, "batch-size": t.batch_size}))


# --- 1. FedCS ---------------------------------------------------------------------------------------
def test_fedcs_predictions_match_the_simulated_exchanges_within_5_percent():
    cfg, grid, ledger = make_grid()
    predictor = completion_predictor(config_to_json(cfg), grid.population.profile_of)
    strategy = FedCSStrategy(FedAvg(fraction_evaluate=0.0), predictor, deadline_s=1e6)
    run_protocol(StrategyProtocol(strategy), protocol_run(cfg, grid, 1), settings=LoopSettings(eval_every=0))
    assert {grid.population.device_of(r.partition_id) for r in strategy.reports} == set(grid.population.names)
    assert len(strategy.reports) == grid.population.size
    for report in strategy.reports:
        assert report.actual_s is not None and report.rel_err < 0.05, report


def test_fedcs_keeps_only_terminals_predicted_within_the_deadline():
    cfg, grid, ledger = make_grid()
    predictor = completion_predictor(config_to_json(cfg), grid.population.profile_of)
    probe = FedCSStrategy(FedAvg(fraction_evaluate=0.0), predictor, deadline_s=1e6)
    run_protocol(StrategyProtocol(probe), protocol_run(cfg, grid, 1), settings=LoopSettings(eval_every=0))
    times = sorted(r.predicted_s for r in probe.reports)
    deadline = (times[3] + times[4]) / 2  # four terminals fit
    cfg, grid, ledger = make_grid(ALL_CLASSES, f"clock.round_deadline_s={deadline}")
    fedcs = FedCSStrategy(FedAvg(fraction_evaluate=0.0), completion_predictor(config_to_json(cfg), grid.population.profile_of), deadline_s=deadline)
    run_protocol(StrategyProtocol(fedcs), protocol_run(cfg, grid, 2), settings=LoopSettings(eval_every=0))
    for server_round in (1, 2):
        rows = [r for r in ledger.rows_of(server_round) if r.phase == "train"]
        assert len(rows) == 4 and all(r.status == "ok" for r in rows)  # no straggler: the prediction held
    with pytest.raises(ValueError, match="round_deadline_s"):
        FedCSStrategy(FedAvg(), predictor, deadline_s=0.0)


def test_config_selects_fedcs_and_adaptive_wrappers():
    cfg, grid, _ = make_grid(ALL_CLASSES, "strategy.selection=fedcs", "strategy.local_work=adaptive", "clock.round_deadline_s=5")
    protocol = build_protocol(cfg, grid)
    adaptive = protocol.strategy.inner
    assert isinstance(adaptive, AdaptiveLocalStrategy) and isinstance(adaptive.inner, FedCSStrategy)


# --- 2. Adaptive local work --------------------------------------------------------------------------
def test_fednova_equals_fedavg_for_equal_steps_and_normalises_unequal_ones():
    w = {"a": np.zeros(3, np.float32)}
    locals_ = [{"a": np.full(3, 1.0, np.float32)}, {"a": np.full(3, 4.0, np.float32)}]
    same = fednova_average(w, locals_, [1, 3], [2, 2])
    assert np.allclose(same["a"], (1 * 1 + 3 * 4) / 4)
    # Terminal 2 took 4x the steps: FedNova counts its per-step progress (1.0), not its total (4.0).
    nova = fednova_average(w, locals_, [1, 1], [1, 4])
    assert np.allclose(nova["a"], 2.5 * 1.0)  # tau_eff = 2.5, mean direction per step = 1
    with pytest.raises(ValueError, match="steps"):
        fednova_average(w, locals_, [1, 1], [0, 1])


def test_adaptive_local_work_gives_fast_terminals_more_epochs_and_equalises_finish_times():
    cfg, grid, ledger = make_grid("{smartphone-low = 2, laptop = 2}")
    predictor = completion_predictor(config_to_json(cfg), grid.population.profile_of)
    strategy = AdaptiveLocalStrategy(FedAvg(fraction_evaluate=0.0), predictor, max_epochs=4)
    run_protocol(StrategyProtocol(strategy), protocol_run(cfg, grid, 1), settings=LoopSettings(eval_every=0))
    epochs = strategy.epochs_history[0]
    # The low-end phones set the round's time; the laptops fill it up to the cap (the MLP's epoch
    # is short next to a phone's uplink, so they never catch up with it).
    assert min(epochs[0], epochs[1]) == 1 and epochs[2] == epochs[3] == 4, epochs
    rows = {r.client_id: r for r in ledger.rows_of(1) if r.phase == "train"}
    assert max(r.end_s for r in rows.values()) == pytest.approx(max(rows[0].end_s, rows[1].end_s))
    assert all(rows[p].flops == predictor.flops(p, cfg.train.batch_size, 4) for p in (2, 3))


def test_budget_controller_prefers_more_local_work_when_aggregation_is_expensive():
    controller = BudgetController(budget=1000.0, max_tau=10, eta=0.05)
    assert controller.choose(lambda t: 1.0 + t) == 1  # no estimates yet
    controller.observe(beta=1.0, delta=0.5, rho=1.0)
    controller.spent = 2.0
    cheap = controller.choose(lambda t: 0.01 + t)
    costly = controller.choose(lambda t: 100.0 + t)
    assert costly > cheap >= 1 and costly <= 10
    controller.spent = 1000.0 - 105.0  # 105 left: a round of 100 + tau pays for tau <= 5 only
    assert controller.choose(lambda t: 100.0 + t) <= 5
    assert controller.stop_reason(100.0 + 1) is None
    controller.spent = 1000.0 - 100.0
    assert "resource budget spent: 900 of 1000 s of time used" in controller.stop_reason(100.0 + 1)
    with pytest.raises(ValueError, match="resource"):
        BudgetController(budget=1.0, max_tau=2, eta=0.1, resource="money")


@pytest.mark.parametrize("resource", ["time", "energy"])
def test_budget_ends_the_run_cleanly_when_no_further_round_fits(resource):
    """Wang et al.'s controller under a time or energy budget: the run ends after the round past
    which the budget pays for no other, that round evaluated and closed, within the budget."""
    cfg, grid, ledger = make_grid("{smartphone-low = 1, laptop = 2}")
    predictor = completion_predictor(config_to_json(cfg), grid.population.profile_of)
    probe = AdaptiveLocalStrategy(FedAvg(fraction_evaluate=0.0), predictor, max_epochs=4)
    run_protocol(StrategyProtocol(probe), protocol_run(cfg, grid, 1), settings=LoopSettings(eval_every=0))
    one_round = grid.resources_used()[0 if resource == "time" else 1]  # a round at one epoch
    budget = 3.5 * one_round
    cfg, grid, ledger = make_grid("{smartphone-low = 1, laptop = 2}")
    controller = BudgetController(budget=budget, max_tau=4, eta=cfg.train.lr, resource=resource)
    strategy = AdaptiveLocalStrategy(FedAvg(fraction_evaluate=0.0), predictor, max_epochs=4, controller=controller)
    stops, evaluated, protocol = [], [], StrategyProtocol(strategy)
    run_protocol(
        protocol, protocol_run(cfg, grid, 10), settings=LoopSettings(eval_every=5),
        evaluate=lambda state: evaluated.append(grid.current_round) or {"accuracy": 0.0}, on_stop=lambda r, why: stops.append((r, why)),
    )
    ((last, why),) = stops
    assert 2 <= last < 10 and sorted(ledger.rounds) == list(range(1, last + 1)) and evaluated == [last]
    assert why.startswith("resource budget spent") and f"of {resource} used" in why
    seconds = sum(r.sim_s for r in ledger.rounds.values())
    joules = sum(r.energy_j + r.server_energy_j for r in ledger.rounds.values())
    used = seconds if resource == "time" else joules
    assert (seconds, joules) == pytest.approx(grid.resources_used(), rel=1e-12)
    assert used <= budget and budget - used < one_round, (used, budget, one_round)  # within it, and no round of one epoch left in it
    assert {r.round for r in ledger.rows} == set(range(1, last + 1))
    # Its resume point holds the controller (not the predictor, which a run rebuilds); resumed, the
    # stopped run runs no further round and stops again for the same reason.
    saved = capture_protocol(protocol, grid)
    fresh = AdaptiveLocalStrategy(FedAvg(fraction_evaluate=0.0), predictor, max_epochs=4, controller=BudgetController(budget=budget, max_tau=4, eta=cfg.train.lr, resource=resource))
    again, resumed = [], StrategyProtocol(fresh)
    final = run_protocol(
        resumed, protocol_run(cfg, grid, 10), settings=LoopSettings(eval_every=5),
        resume=lambda: restore_protocol(resumed, saved, grid) or last, on_stop=lambda r, why: again.append((r, why)),
    )
    assert again == stops and fresh.controller.history == controller.history and fresh.predictor is predictor
    assert all(torch.equal(final[k], protocol.global_state()[k]) for k in final)
    assert sorted(ledger.rounds) == list(range(1, last + 1))


# --- 3. FedBuff / FedAsync ---------------------------------------------------------------------------
def run_async(mode: str, rounds: int = 3):
    cfg, grid, ledger = make_grid()
    protocol = AsyncProtocol(AsyncSettings(mode=mode, concurrency=6, buffer_size=3, seed=7))
    sims = []
    final = run_protocol(protocol, protocol_run(cfg, grid, rounds), on_round=lambda r: sims.append(r.sim_s), settings=LoopSettings(eval_every=0))
    return protocol, final, sims, ledger


@pytest.mark.parametrize("mode", ["fedbuff", "fedasync"])
def test_async_runs_are_deterministic_for_a_seed(mode):
    (p1, f1, s1, l1), (p2, f2, s2, l2) = run_async(mode), run_async(mode)
    assert p1.events == p2.events and s1 == s2
    assert all(torch.equal(f1[k], f2[k]) for k in f1)
    assert [(r.client_id, r.start_s, r.end_s) for r in l1.rows] == [(r.client_id, r.start_s, r.end_s) for r in l2.rows]


def test_fedbuff_orders_events_by_simulated_completion_and_rounds_sum_to_the_clock():
    protocol, _, sims, ledger = run_async("fedbuff")
    times = [e[3] for e in protocol.events]
    assert times == sorted(times) and len(protocol.events) == 3 * 3
    assert sum(sims) == pytest.approx(protocol.now_s, rel=1e-12)
    # Each round lasts until its K-th completion plus aggregation: the clock is never behind an event.
    ends = np.cumsum(sims)
    for r in range(3):
        assert max(t for (rnd, _, _, t) in protocol.events if rnd == r + 1) <= ends[r] + 1e-12
    # Laptops (fast) report more often than low-end phones (slow).
    counts = {name: sum(1 for e in protocol.events if ledger.rows and e[1] in range(*_block(protocol, name))) for name in ("laptop", "smartphone-low")}
    assert counts["laptop"] >= counts["smartphone-low"]
    assert max(e[2] for e in protocol.events) >= 1  # later aggregations use updates of newer models


def _block(protocol, name: str) -> tuple[int, int]:  # noqa: ANN001
    population = Population(load_config(None, [f"devices={ALL_CLASSES}"]).devices, builtin_profiles())
    ids = [p for p in range(population.size) if population.device_of(p) == name]
    return ids[0], ids[-1] + 1


def test_async_settings_name_the_bad_input():
    with pytest.raises(ValueError, match="buffer_size"):
        AsyncSettings(mode="fedbuff", concurrency=2, buffer_size=3)
    with pytest.raises(ValueError, match="training.mode"):
        AsyncSettings(mode="fedavg")


# --- 4. Gossip ---------------------------------------------------------------------------------------
def test_gossip_reaches_consensus_on_a_convex_toy_problem():
    rng = np.random.default_rng(0)
    n, dim = 8, 5
    targets = rng.normal(size=(n, dim)) + 3.0  # node i minimises ||x - c_i||^2 / 2
    graph = build_graph("ring", n)
    weights = mixing_matrix(graph)
    models = [{"x": rng.normal(size=dim)} for _ in range(n)]
    for t in range(2000):
        lr = 0.5 / (1 + t) ** 0.75
        models = [{"x": m["x"] - lr * (m["x"] - c)} for m, c in zip(models, targets)]
        models = dpsgd_average(models, weights)
    dist, norm = consensus_distance(models)
    assert dist < 1e-3 * norm
    assert np.allclose(np.mean([m["x"] for m in models], axis=0), targets.mean(axis=0), atol=1e-2)


def test_graphs_are_checked():
    assert build_graph("regular", 6, degree=3, seed=1).number_of_edges() == 9
    with pytest.raises(ValueError, match="not connected"):
        build_graph("edges", 4, edges="0-1,2-3")
    with pytest.raises(ValueError, match="graph_degree"):
        build_graph("regular", 5, degree=3)


@pytest.mark.parametrize("kind", ["dpsgd", "gosgd"])
def test_gossip_protocol_trains_and_meters_every_link(kind):
    cfg, grid, ledger = make_grid("{raspberry-pi-4 = 2, laptop = 2}")
    protocol = GossipProtocol(GossipSettings(graph="ring", gossip=kind))
    metrics = []
    run_protocol(protocol, protocol_run(cfg, grid, 2), on_round=lambda r: metrics.append(r.metrics), settings=LoopSettings(eval_every=0))
    links = [r for r in ledger.rows if r.phase == "gossip"]
    per_round = 2 * 4  # ring of 4: D-PSGD uses its 4 edges, GoSGD 4 pairs; one row per direction
    assert len(links) == 2 * per_round
    assert all(r.bytes_up > 0 and r.reason.startswith("link ") and r.message_type == f"gossip.{kind}" for r in links)
    # Bytes travel over node-to-neighbour links only: local training is on the device (no bytes,
    # no link time), and each link carries one model each way per exchange over it.
    train = [r for r in ledger.rows if r.phase == "train"]
    assert len(train) == 2 * 4 and all(r.bytes_up == r.bytes_down == 0 and r.comm_s == 0.0 and r.flops > 0 for r in train)
    model_bytes = array_record_wire_bytes(array_record_from_state(protocol.models[0]))
    per_link: dict[tuple[int, int], int] = {}
    for r in links:
        a, b = (int(x) for x in r.reason.removeprefix("link ").split("-"))
        assert r.client_id == a and r.bytes_down == 0
        per_link[(min(a, b), max(a, b))] = per_link.get((min(a, b), max(a, b)), 0) + r.bytes_up
    assert sum(protocol.link_uses.values()) == 2 * 4  # 2 steps x (4 edges | 4 initiating nodes)
    if kind == "dpsgd":
        assert dict(protocol.link_uses) == {(0, 1): 2, (1, 2): 2, (2, 3): 2, (0, 3): 2}  # every ring edge, every step
    assert per_link == {link: 2 * model_bytes * uses for link, uses in protocol.link_uses.items()}
    assert sum(r.bytes_up + r.bytes_down for r in ledger.rows) == sum(per_link.values())
    assert all(m["consensus-dist"] >= 0 for m in metrics)
    state = protocol.global_state()
    key = next(iter(state))
    assert np.allclose(state[key].numpy(), np.mean([m[key] for m in protocol.models], axis=0), atol=1e-6)


# --- 5. Budget settings and the modes through `fedsplit simulate` on fedsplit's Ray engine -------------
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["strategy.local_work=adaptive", "strategy.resource_budget_s=5", "strategy.resource_budget_j=5"], "set one budget"),
        (["strategy.resource_budget_j=5"], r"strategy.resource_budget_j = 5.0: .* needs strategy.local_work = 'adaptive'"),
        (["strategy.local_work=adaptive", "strategy.resource_budget_s=5", "training.mode=gossip"], "training.mode = 'fl'"),
    ],
)
def test_budget_settings_are_refused_naming_the_field(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def read_run(run_dir):  # noqa: ANN001, ANN201
    """summary.json, rounds.csv and clients.csv of a run folder."""
    summary = json.loads((run_dir / "summary.json").read_text())
    with open(run_dir / "rounds.csv", newline="") as fh:
        rounds = list(csv.DictReader(fh))
    with open(run_dir / "clients.csv", newline="") as fh:
        clients = list(csv.DictReader(fh))
    return summary, rounds, clients


@pytest.mark.slow
def test_fedbuff_simulates_on_the_ray_engine(tmp_path, ray_session, fedsplit_main):
    """The asynchronous class (FedAsync is FedBuff with K = 1 and mixing: tested in-process above)."""
    mode = "fedbuff"
    extra = {"training.mode": mode, "orchestration.concurrency": 3, "orchestration.buffer_size": 2, "rounds": 2}
    result = fedsplit_main("simulate", *[a for kv in small_overrides(tmp_path, **extra) for a in ("--set", kv)])
    assert result.returncode == 0, result.stderr
    summary, rounds, clients = read_run(tmp_path / "run")
    k = 2
    assert summary["rounds"] == len(rounds) == 2 and summary["engine"] == "fedsplit" and 0 <= summary["final_metrics"]["accuracy"] <= 1
    train = [r for r in clients if r["phase"] == "train"]
    # 3 dispatched at time 0, then each aggregation of K frees K slots that are refilled at once
    assert len(train) == 3 + 2 * k and all(r["status"] == "ok" and int(r["bytes_up"]) > 0 for r in train)
    assert [int(r["round"]) for r in train].count(1) == 3 + k
    assert summary["sim_time_s"] == pytest.approx(sum(float(r["sim_s"]) for r in rounds))
    assert summary["server_flops"] > 0  # the aggregations were metered


@pytest.mark.slow
def test_gossip_simulates_on_the_ray_engine_with_bytes_on_links_only(tmp_path, ray_session, fedsplit_main):
    extra = {"training.mode": "gossip", "orchestration.graph": "ring", "rounds": 2}
    result = fedsplit_main("simulate", *[a for kv in small_overrides(tmp_path, **extra) for a in ("--set", kv)])
    assert result.returncode == 0, result.stderr
    summary, rounds, clients = read_run(tmp_path / "run")
    assert summary["rounds"] == len(rounds) == 2 and "consensus-dist" in rounds[-1]
    train = [r for r in clients if r["phase"] == "train"]
    links = [r for r in clients if r["phase"] == "gossip"]
    assert len(train) == 2 * 4 and all(int(r["bytes_up"]) == int(r["bytes_down"]) == 0 for r in train)
    assert len(links) == 2 * 4 * 2 and len({int(r["bytes_up"]) for r in links}) == 1  # ring of 4: 4 links, both ways, 2 steps
    assert summary["bytes_up"] == sum(int(r["bytes_up"]) for r in links) and summary["bytes_down"] == 0


@pytest.mark.slow
def test_fedcs_adaptive_under_a_time_budget_stops_cleanly_on_the_ray_engine(tmp_path, ray_session, fedsplit_main):
    common = {"strategy.selection": "fedcs", "clock.round_deadline_s": 10, "strategy.local_work": "adaptive", "strategy.max_local_epochs": 2}
    probe = simulate(load_config(None, small_overrides(tmp_path, run_name="probe", rounds=1, **{"engine.name": "serial", **common})), write=False)
    one_round = probe.summary["sim_time_s"]  # one epoch: the controller has no estimates before round 3
    extra = {**common, "rounds": 5, "strategy.resource_budget_s": 2.5 * one_round}
    result = fedsplit_main("simulate", *[a for kv in small_overrides(tmp_path, **extra) for a in ("--set", kv)])
    assert result.returncode == 0, result.stderr
    assert "stopped after round 2 of 5: resource budget spent" in result.stdout
    summary, rounds, clients = read_run(tmp_path / "run")
    assert summary["stopped"]["after_round"] == 2 and summary["stopped"]["of_rounds"] == 5
    assert summary["stopped"]["reason"].startswith("resource budget spent") and "s of time used" in summary["stopped"]["reason"]
    assert summary["rounds"] == len(rounds) == 2 and {int(r["round"]) for r in clients} == {1, 2}
    assert summary["sim_time_s"] <= 2.5 * one_round and "accuracy" in rounds[-1] and rounds[-1]["accuracy"] != ""
    train = [r for r in clients if r["phase"] == "train"]
    assert len(train) == 2 * 4 and all(r["status"] == "ok" for r in train)  # FedCS kept all four: no straggler
    assert (tmp_path / "run" / "checkpoints" / "resume.pt").exists()  # FedCS + adaptive state is resumable
