"""Injected faults: terminals that raise, die, miss the deadline or are offline leave the round to
the rest; the ledgers count them; ``faults.min_clients`` stops or retries a round."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode

from fedsplit.config import ConfigError, load_config
from fedsplit.devices import Population, builtin_profiles
from fedsplit.faults import FaultPlan
from fedsplit.simulation.engine import KILLED_REASON, RayEngine, SerialEngine
from fedsplit.ledger import Ledger
from fedsplit.simulation.engine import EngineGrid
from fedsplit.simulation.faults import FaultInjector, attach_faults
from fedsplit.simulation.loop import LoopSettings, TooFewUpdatesError, run_protocol
from fedsplit.simulation.metered_grid import MeteredGrid
from fedsplit.strategies.protocol import ProtocolRun, TrainingProtocol
from fedsplit.simulation.runner import simulate
from tests.conftest import small_overrides


# --- the draws ------------------------------------------------------------------------------------
def test_fault_draws_are_seeded_per_terminal_round_and_attempt_and_honour_the_rates():
    plan = FaultPlan(crash_rate=0.3, kill_rate=0.1, seed=7)
    draws = [plan.fault_of(pid, rnd) for pid in range(200) for rnd in range(1, 21)]
    assert draws == [plan.fault_of(pid, rnd) for pid in range(200) for rnd in range(1, 21)]  # a pure function
    counts = {kind: draws.count(kind) / len(draws) for kind in ("crash", "kill", None)}
    assert counts["crash"] == pytest.approx(0.3, abs=0.02) and counts["kill"] == pytest.approx(0.1, abs=0.015)
    retried = [plan.fault_of(pid, 1, attempt=1) for pid in range(200)]
    assert retried != [plan.fault_of(pid, 1) for pid in range(200)]  # a retried round draws afresh
    assert [FaultPlan(0.3, 0.1, seed=8).fault_of(p, 1) for p in range(200)] != [plan.fault_of(p, 1) for p in range(200)]
    assert FaultPlan().fault_of(0, 1) is None and not FaultPlan().active


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["faults={crash_rate=0.7, kill_rate=0.4}"], "faults.crash_rate + faults.kill_rate = 1.1"),
        (["faults.crash_rate=1.5"], "faults.crash_rate = 1.5: must be >= 0 and <= 1"),
        (["faults.crash_rate=0.2", "engine.name=flower"], "need engine.name = fedsplit or serial"),
        (["faults.min_clients=11"], "faults.min_clients = 11: more than the 10 terminals"),
        (["faults.too_few=wait"], "faults.too_few = 'wait': unknown (allowed: stop, retry)"),
    ],
)
def test_bad_fault_settings_are_refused_naming_the_field(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("+", r"\+")):
        load_config(None, overrides)


# --- the engines carry them out ----------------------------------------------------------------------
def counting_app() -> ClientApp:
    """Counts the messages each terminal handled in its Context.state."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        record = context.state.config_records.get("counter", ConfigRecord({"n": 0}))
        record["n"] = int(record["n"]) + 1
        context.state["counter"] = record
        return Message(RecordDict({"metrics": MetricRecord({"n": record["n"]})}), reply_to=msg)

    return app


def send(engine, nodes, server_round=1):  # noqa: ANN001, ANN201
    grid = engine.grid()
    msgs = [Message(RecordDict({"config": ConfigRecord({"server-round": server_round})}), dst_node_id=n, message_type="train", group_id="1") for n in nodes]
    return {r.metadata.src_node_id: r for r in grid.send_and_receive(msgs)}


def faults_for(engine, plan: FaultPlan, server_round: int = 1) -> FaultInjector:  # noqa: ANN001
    engine.faults = FaultInjector(plan, lambda: (server_round, 0), engine.partition_of)
    return engine.faults


def test_serial_engine_injects_crashes_and_kills_and_leaves_the_context_alone():
    population = Population({"laptop": 12}, builtin_profiles())
    engine = SerialEngine(counting_app(), population)
    nodes = [engine.node_id_of(p) for p in range(12)]
    plan = FaultPlan(crash_rate=0.3, kill_rate=0.3, seed=1)
    faults_for(engine, plan)
    replies = send(engine, nodes)
    expected = {engine.node_id_of(p): plan.fault_of(p, 1) for p in range(12)}
    assert {"crash", "kill", None} <= set(expected.values())  # this seed draws every kind
    for node, fault in expected.items():
        reply = replies[node]
        if fault == "crash":
            assert reply.error.code == ErrorCode.CLIENT_APP_RAISED_EXCEPTION and "InjectedCrash" in reply.error.reason
        elif fault == "kill":
            assert reply.error.code == ErrorCode.CLIENT_APP_CRASHED and reply.error.reason == KILLED_REASON
        else:
            assert reply.content["metrics"]["n"] == 1
        counter = engine.context_of(node).state.config_records.get("counter")
        assert (counter is None) == (fault is not None)  # a failed terminal's state did not move


def test_ray_engine_replaces_a_killed_actor_and_the_rest_of_the_round_goes_on(ray_session):
    population = Population({"laptop": 6}, builtin_profiles())
    plan = FaultPlan(kill_rate=0.34, seed=3)
    killed = {p for p in range(6) if plan.fault_of(p, 1) == "kill"}
    assert 0 < len(killed) < 6
    with RayEngine(counting_app(), population, num_actors=2) as engine:
        faults_for(engine, plan)
        replies = send(engine, [engine.node_id_of(p) for p in range(6)])
        assert engine.actor_restarts >= 1
        for p in range(6):
            reply = replies[engine.node_id_of(p)]
            if p in killed:
                assert reply.error.code == ErrorCode.CLIENT_APP_CRASHED and reply.error.reason == KILLED_REASON
            else:
                assert not reply.has_error() and reply.content["metrics"]["n"] == 1
        engine.faults = None  # the replaced actors serve the next round
        again = send(engine, [engine.node_id_of(p) for p in range(6)], server_round=2)
        assert all(not r.has_error() for r in again.values())


# --- a run with faults ------------------------------------------------------------------------------
def run_serial(tmp_path, **extra):  # noqa: ANN001, ANN003, ANN201
    base = {"engine.name": "serial", "rounds": 3, "devices": "{raspberry-pi-4 = 3, laptop = 3}", "training.max_empty_rounds": 0}
    return simulate(load_config(None, small_overrides(tmp_path, **{**base, **extra})))


def test_crashes_kills_stragglers_and_offline_terminals_are_counted_and_the_rest_aggregate(tmp_path):
    outcome = run_serial(tmp_path, **{"faults": "{crash_rate = 0.25, kill_rate = 0.15, seed = 2}", "clock.round_deadline_s": 0.03})
    ledger = outcome.session.ledger
    plan = FaultPlan(0.25, 0.15, seed=2)
    train = [r for r in ledger.rows if r.phase == "train"]
    for row in train:
        fault = plan.fault_of(row.client_id, row.round)
        if fault == "crash":
            assert row.status == "failed" and row.reason.startswith("InjectedCrash")
        elif fault == "kill":
            assert row.status == "failed" and row.reason == KILLED_REASON
        else:
            assert row.status in ("ok", "straggler")
    statuses = {r.status for r in train}
    assert {"ok", "failed", "straggler"} <= statuses
    population = outcome.session.population.size
    for rnd, record in ledger.rounds.items():
        rows = [r for r in train if r.round == rnd]
        assert record.failed == sum(r.status == "failed" for r in rows)
        assert record.stragglers == sum(r.status == "straggler" for r in rows)
        assert record.aggregated == sum(r.status == "ok" for r in rows) == record.selected - record.failed - record.stragglers
        assert record.offline == population - record.online
    assert sum(r.offline for r in ledger.rounds.values()) > 0  # raspberry-pi-4 availability 0.9, laptop 0.95
    header = (outcome.run_dir / "rounds.csv").read_text().splitlines()[0].split(",")
    assert {"failed", "stragglers", "offline", "retries"} <= set(header)


def test_too_few_updates_stop_the_run_with_a_clear_message(tmp_path, fedsplit_main):
    result = fedsplit_main("simulate", *[a for kv in small_overrides(tmp_path, **{
        "engine.name": "serial", "devices": "{laptop = 4}", "faults": "{crash_rate = 0.6, seed = 1, min_clients = 3}",
    }) for a in ("--set", kv)])
    assert result.returncode == 3
    assert "fedsplit simulate: error: run: stopped in round 1: " in result.stderr
    assert "fewer than faults.min_clients = 3; most common reason: failed: InjectedCrash" in result.stderr


ALWAYS_ONLINE = {"profiles": "{always = {base = 'laptop', availability = 1.0}}", "devices": "{always = 4}"}
"""Four terminals online in every round: all of them are sampled."""


def first_seed_needing_one_retry(crash_rate: float, terminals: int, min_clients: int) -> int:
    """A fault seed whose round 1 keeps too few updates at attempt 0 and enough at attempt 1, and
    whose rounds 2 and 3 keep enough at once."""
    def kept(plan, rnd, attempt):  # noqa: ANN001, ANN202
        return sum(plan.fault_of(p, rnd, attempt) is None for p in range(terminals))

    for seed in range(1000):
        plan = FaultPlan(crash_rate=crash_rate, seed=seed)
        if kept(plan, 1, 0) < min_clients <= kept(plan, 1, 1) and all(kept(plan, r, 0) >= min_clients for r in (2, 3)):
            return seed
    raise AssertionError("no such seed")


def test_a_round_with_too_few_updates_is_retried_from_the_same_model(tmp_path):
    seed = first_seed_needing_one_retry(0.5, 4, 3)
    outcome = run_serial(tmp_path, **ALWAYS_ONLINE, **{"faults": f"{{crash_rate = 0.5, seed = {seed}, min_clients = 3, too_few = 'retry'}}"})
    ledger = outcome.session.ledger
    first = ledger.rounds[1]
    assert first.retries == 1 and first.aggregated >= 3 and [ledger.rounds[r].retries for r in (2, 3)] == [0, 0]
    discarded = [r for r in ledger.rows_of(1) if r.attempt == 0 and r.phase == "train"]
    kept = [r for r in ledger.rows_of(1) if r.attempt == 1 and r.phase == "train"]
    assert discarded and kept
    assert all(r.status in ("failed", "rejected") for r in discarded)
    assert any(r.status == "rejected" and r.reason.startswith("round retried: ") for r in discarded)
    assert first.exchanges == len(ledger.rows_of(1)) and first.sim_s > max(r.end_s for r in discarded)  # both attempts took time


class CountingProtocol(TrainingProtocol):
    """Sends a train message to every online terminal; its state counts the steps it took."""

    def start(self, run: ProtocolRun) -> None:
        self.steps = 0
        self.state = OrderedDict((k, v.clone()) for k, v in run.initial_state.items())

    def step(self, run: ProtocolRun, server_round: int) -> dict[str, float]:
        config = ConfigRecord({"server-round": server_round})
        msgs = [Message(RecordDict({"config": config}), dst_node_id=n, message_type="train", group_id=str(server_round)) for n in run.grid.get_node_ids()]
        run.grid.send_and_receive(msgs)
        self.steps += 1
        return {}

    def global_state(self):  # noqa: ANN201
        return self.state


def test_a_retried_round_starts_from_the_protocol_state_before_it():
    seed = first_seed_needing_one_retry(0.5, 4, 3)
    population = Population({"laptop": 4}, builtin_profiles())
    engine = SerialEngine(counting_app(), population)
    ledger = Ledger()
    grid = MeteredGrid(EngineGrid(engine), population, ledger, seed=0, partition_of=engine.partition_of, emulate_availability=False)
    attach_faults(engine.grid(), FaultPlan(crash_rate=0.5, seed=seed), grid)
    protocol = CountingProtocol()
    run = ProtocolRun(grid=grid, num_rounds=3, initial_state=OrderedDict(w=torch.zeros(2)))
    run_protocol(protocol, run, settings=LoopSettings(min_clients=3, too_few="retry", max_retries=2))
    assert [ledger.rounds[r].retries for r in (1, 2, 3)] == [1, 0, 0]
    assert protocol.steps == 3  # four steps ran; the discarded one was undone
    counters = [engine.context_of(n).state.config_records["counter"]["n"] for n in sorted(engine.contexts)]
    assert sum(counters) == sum(r.status in ("ok", "rejected") for r in ledger.rows)  # terminals keep what they did


def test_retries_run_out_and_then_the_run_stops(tmp_path):
    with pytest.raises(TooFewUpdatesError, match=r"stopped in round 1 after 2 attempts: .* fewer than faults.min_clients = 4"):
        run_serial(tmp_path, **{"devices": "{laptop = 4}", "faults": "{crash_rate = 0.9, seed = 0, min_clients = 4, too_few = 'retry', max_retries = 1}"})


def test_the_faults_experiment_smoke_runs(tmp_path, capsys):
    import importlib.util
    import sys

    from tests.conftest import REPO

    spec = importlib.util.spec_from_file_location("faults_experiment", REPO / "experiments" / "faults.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    argv = ["--rounds", "2", "--engine", "serial", "--faults", "crash_rate=0.3", "--out", str(tmp_path),
            "--set", "devices={laptop = 4}", "--set", "model.name=mlp", "--set", "train.local_epochs=1"]
    assert module.main(argv) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("faults=")]
    assert [line.split()[0] for line in lines] == ["faults=none", "faults=crash_rate=0.3"]
    assert "delta_pp=0.0 failed=0 " in lines[0] and " failed=0 " not in lines[1]
    assert (tmp_path / "faults.csv").read_text().count("\n") == 3
