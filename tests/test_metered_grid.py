"""The simulated clock, the ledger and the metered Grid, tested directly (no Ray).

The Grid under test wraps fedsplit's own :class:`EngineGrid` over an in-process engine that runs
the real ClientApp on real Flower messages, one after the other, in this process.
"""

from __future__ import annotations

import random

import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp.strategy import FedAvg

from fedsplit.clients.app import make_client_app
from fedsplit.config import load_config
from fedsplit.devices import Population, RoundClock, builtin_profiles, exchange_cost
from fedsplit.learning import config_to_json, task_for
from fedsplit.ledger import Ledger, LedgerRow
from fedsplit.simulation.engine import EngineGrid, SerialEngine
from fedsplit.simulation.loop import LoopSettings, run_protocol
from fedsplit.simulation.metered_grid import MeteredGrid
from fedsplit.strategies.compression import GuardedStrategy
from fedsplit.strategies.fedavg_protocol import StartDrivenProtocol, StrategyProtocol, strategy_protocol
from fedsplit.strategies.protocol import ProtocolRun

EDGE = builtin_profiles()["edge-server"]


# --- RoundClock ----------------------------------------------------------------------------------
def test_chains_barriers_and_deadline():
    clock = RoundClock(deadline_s=1.0)
    a1 = clock.exchange(0, 0.3)
    a2 = clock.exchange(0, 0.4)  # terminal 0's chain: starts where its first exchange ended
    b = clock.exchange(1, 1.5)  # terminal 1 overruns the deadline
    failed = clock.exchange(2, 5.0, counts=False)
    assert (a1.start_s, a1.end_s) == (0.0, 0.3)
    assert a2.start_s == 0.3 and a2.end_s == pytest.approx(0.7)
    assert b.straggler and not a2.straggler and not failed.straggler
    assert clock.elapsed_s == 1.0  # the phase waits until the deadline, not for the straggler
    agg = clock.server_work(EDGE, 1e10)  # after a barrier
    assert agg.start_s == 1.0 and agg.end_s == pytest.approx(1.1)
    c = clock.exchange(0, 0.2)
    assert c.start_s == pytest.approx(1.1) and clock.elapsed_s == pytest.approx(1.3)
    assert clock.server_s == pytest.approx(0.1) and clock.server_flops == 10**10
    assert clock.server_energy_j == pytest.approx(EDGE.kappa * EDGE.cpu_hz**3 * 0.1)


def test_server_work_in_lanes_is_parallel_or_exclusive():
    parallel, exclusive = RoundClock(), RoundClock()
    for clock, only_one in ((parallel, False), (exclusive, True)):
        for lane in (0, 1, 2):
            clock.exchange(lane, 0.1)
            clock.server_work(EDGE, 1e10, lane=lane, exclusive=only_one)  # 0.1 s each
            clock.exchange(lane, 0.1)
    assert parallel.elapsed_s == pytest.approx(0.3)
    # One server for three terminals: their server steps queue up (0.1-0.2, 0.2-0.3, 0.3-0.4).
    assert exclusive.elapsed_s == pytest.approx(0.5)


def test_turns_separated_by_barriers_add_up():
    clock = RoundClock()
    for lane, duration in ((0, 0.2), (1, 0.5), (2, 0.1)):
        clock.exchange(lane, duration)
        clock.barrier()
    assert clock.elapsed_s == pytest.approx(0.8)


# --- Ledger ---------------------------------------------------------------------------------------
def row(client: int, status: str = "ok", phase: str = "train", seq: int = 0, flops: int = 10) -> LedgerRow:
    return LedgerRow(1, phase, client, "laptop", status, "", flops, 0.1, 5, 7, 0.2, 0.3, phase, seq, 0.0, 0.3, "reported")


def test_ledger_counts_terminals_not_exchanges():
    ledger = Ledger()
    ledger.online[1] = 4
    for r in (row(0, seq=0), row(0, seq=1), row(1, seq=0), row(1, "straggler", seq=1), row(2, "failed"), row(3, phase="evaluate")):
        ledger.add(r)
    assert ledger.mark(1, 0, "rejected", "NaN")  # the last train row of terminal 0
    record = ledger.close_round(1, sim_s=0.9, server_s=0.05, server_flops=123, metrics={"accuracy": 0.5})
    assert (record.online, record.selected, record.aggregated) == (4, 3, 0)
    assert (record.rejected, record.stragglers, record.failed) == (1, 1, 1)
    assert record.exchanges == 6 and record.flops == 60 and record.bytes_up == 30
    assert record.sim_s == 0.9 and record.server_flops == 123 and record.empty
    with pytest.raises(ValueError, match="status"):
        ledger.add(row(0, "lost"))
    assert [ledger.next_seq(1, 5) for _ in range(3)] == [0, 1, 2]


# --- MeteredGrid over an in-process engine --------------------------------------------------------
InProcessEngine = SerialEngine  # the in-process engine the other protocol tests import from here


@pytest.fixture
def setup(tmp_path):
    return metered_serial_grid(tmp_path)


def metered_serial_grid(tmp_path):
    """A MeteredGrid over the in-process engine: 2 Raspberry Pis and 2 laptops training the MLP."""
    cfg = load_config(None, ["devices={raspberry-pi-4 = 2, laptop = 2}", "model.name=mlp", "train.local_epochs=1", f"out_dir={tmp_path}"])
    population = Population(cfg.devices, builtin_profiles())
    engine = InProcessEngine(make_client_app(config_json=config_to_json(cfg)), population)
    ledger = Ledger()
    grid = MeteredGrid(EngineGrid(engine), population, ledger, seed=0, partition_of=engine.partition_of, emulate_availability=False)
    return cfg, grid, ledger, population


def test_metered_exchange_rows_equal_the_clock_arithmetic(setup):
    cfg, grid, ledger, population = setup
    task = task_for(config_to_json(cfg))
    grid.begin_round(1)
    config = ConfigRecord({"lr": 0.05, "local-epochs": 1, "batch-size": 32, "server-round": 1})
    msgs = [Message(RecordDict({"arrays": ArrayRecord(task.initial_state()), "config": config}), dst_node_id=n, message_type="train", group_id="1") for n in grid.get_node_ids()]
    bad = Message(RecordDict({"config": config}), dst_node_id=msgs[0].metadata.dst_node_id, message_type="train", group_id="1")
    replies = list(grid.send_and_receive(msgs))
    assert len(replies) == 4
    failed = list(grid.send_and_receive([bad]))  # no arrays: the ClientApp raises
    assert failed == []
    grid.server_work(1e9)
    record = grid.close_round()
    ok = [r for r in ledger.rows if r.status == "ok"]
    assert len(ok) == 4 and all(r.seq == 0 and r.message_type == "train" for r in ok)
    for r in ok:
        profile = population.profile_of(r.client_id)
        cost = exchange_cost(profile, r.flops, r.bytes_up, r.bytes_down)
        assert (r.compute_s, r.comm_s, r.energy_j) == (cost.compute_s, cost.comm_s, cost.energy_j)
        assert r.start_s == 0.0 and r.end_s == cost.total_s
    bad_row = ledger.rows[-1]
    assert bad_row.status == "failed" and bad_row.seq == 1 and bad_row.flops_method == "none"
    assert "KeyError" in bad_row.reason or "arrays" in bad_row.reason
    assert record.sim_s == pytest.approx(max(r.end_s for r in ok) + 1e9 / EDGE.flops_per_s, rel=1e-12)
    assert record.selected == 4 and record.failed == 1 and record.aggregated == 3


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "after-the-exchange"])
def test_reply_hook_sees_every_reply_before_the_rows_and_cannot_lose_one(tmp_path, caplog, monkeypatch, stream):
    """``on_reply`` is called once per reply as it arrives (or, with ``stream_replies = False``,
    after the exchange); a hook that raises is logged and the reply still counted; the uplink
    bytes read on arrival are the reply's payload bytes."""
    from fedsplit.simulation.metered_grid import payload_bytes

    monkeypatch.setattr(MeteredGrid, "stream_replies", stream)
    cfg, grid, ledger, _ = metered_serial_grid(tmp_path)  # after the switch: the grid reads it when made
    assert grid._streams is stream
    task = task_for(config_to_json(cfg))
    grid.begin_round(1)
    config = ConfigRecord({"lr": 0.05, "local-epochs": 1, "batch-size": 32, "server-round": 1})
    msgs = [Message(RecordDict({"arrays": ArrayRecord(task.initial_state()), "config": config}), dst_node_id=n, message_type="train", group_id="1")
            for n in grid.get_node_ids()]
    seen: list[tuple[int, int]] = []

    def hook(reply: Message) -> None:
        seen.append((grid.partition_of(reply.metadata.src_node_id), len(ledger.rows)))
        if grid.partition_of(reply.metadata.src_node_id) == 2:
            raise RuntimeError("a hook's own bug")

    with caplog.at_level("ERROR", logger="fedsplit"):
        replies = list(grid.send_and_receive(msgs, on_reply=hook))
    assert sorted(p for p, _ in seen) == [0, 1, 2, 3] and all(rows == 0 for _, rows in seen)  # before any row
    assert len(replies) == 4 and [r.status for r in ledger.rows] == ["ok"] * 4
    assert any("reply hook failed" in r.getMessage() for r in caplog.records)
    by_pid = {grid.partition_of(r.metadata.src_node_id): r for r in replies}
    assert {r.client_id: r.bytes_up for r in ledger.rows} == {p: payload_bytes(r.content) for p, r in by_pid.items()}


def test_row_facts_are_read_as_replies_arrive_and_the_rows_stay_the_same(tmp_path, monkeypatch):
    """Streamed, each delivered reply's row facts (bytes, FLOPs, metrics, cost) are read while the
    inner exchange still runs (on the Ray engine: while other terminals train), so that after the
    last reply only the clock places the rows; the rows are those of a grid that reads everything
    after the exchange, for a train exchange and an on-device one (no bytes), and read once."""
    import dataclasses

    rows, reads = {}, {}
    for stream in (True, False):
        monkeypatch.setattr(MeteredGrid, "stream_replies", stream)
        cfg, grid, ledger, _ = metered_serial_grid(tmp_path / str(stream))
        task = task_for(config_to_json(cfg))
        exchanging, read_while = [False], []
        inner_exchange, read_facts = grid.inner.send_and_receive, grid._facts

        def exchange(*args, **kwargs):
            exchanging[0] = True
            try:
                return inner_exchange(*args, **kwargs)
            finally:
                exchanging[0] = False

        def facts(*args, **kwargs):
            read_while.append(exchanging[0])
            return read_facts(*args, **kwargs)

        monkeypatch.setattr(grid.inner, "send_and_receive", exchange)
        monkeypatch.setattr(grid, "_facts", facts)
        grid.begin_round(1)
        config = ConfigRecord({"lr": 0.05, "local-epochs": 1, "batch-size": 32, "server-round": 1})
        for on_device in (False, True):
            msgs = [Message(RecordDict({"arrays": ArrayRecord(task.initial_state()), "config": config}), dst_node_id=n, message_type="train", group_id="1")
                    for n in grid.get_node_ids()]
            assert len(list(grid.send_and_receive(msgs, on_device=on_device))) == 4
        rows[stream], reads[stream] = [dataclasses.astuple(r) for r in ledger.rows], read_while
        on_device_rows = ledger.rows[4:]
        assert all(r.bytes_up == r.bytes_down == 0 and r.comm_s == 0.0 and r.flops > 0 for r in on_device_rows)
        assert all(r.bytes_up > 0 and r.bytes_down > 0 for r in ledger.rows[:4])
    assert reads[True] == [True] * 8  # on arrival, once per reply
    assert reads[False] == [False] * 8  # when the rows are written
    assert rows[True] == rows[False]


def test_auto_rounds_begin_at_each_train_batch(setup):
    """Round 1 trains and evaluates, round 2 only trains (fraction_evaluate = 0), round 3 trains."""
    cfg, grid, ledger, _ = setup
    grid.auto_rounds = True
    task = task_for(config_to_json(cfg))
    for server_round in (1, 2, 3):
        config = ConfigRecord({"server-round": server_round})
        msgs = [Message(RecordDict({"arrays": ArrayRecord(task.initial_state()), "config": config}), dst_node_id=n, message_type="train", group_id="x") for n in grid.get_node_ids()]
        grid.send_and_receive(msgs)
        if server_round == 1:
            evals = [Message(RecordDict({"arrays": ArrayRecord(task.initial_state())}), dst_node_id=n, message_type="evaluate", group_id="x") for n in grid.get_node_ids()]
            grid.send_and_receive(evals)
    grid.close_round()
    assert sorted(ledger.rounds) == [1, 2, 3]
    assert [len(ledger.rows_of(r)) for r in (1, 2, 3)] == [8, 4, 4]


class OwnLoopFedAvg(FedAvg):
    """A user's strategy with its own ``start()`` (it counts its calls and defers to FedAvg's)."""

    started = 0

    def start(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN201
        type(self).started += 1
        return super().start(*args, **kwargs)


def test_strategy_with_its_own_start_is_paced_by_the_loop_and_still_guarded(setup):
    cfg, grid, ledger, _ = setup
    task = task_for(config_to_json(cfg))
    rejected = []

    def on_reject(rnd: int, node: int, reason: str) -> None:
        rejected.append((rnd, node))
        grid.reject(rnd, node, reason)

    protocol = strategy_protocol(GuardedStrategy(OwnLoopFedAvg(fraction_evaluate=0.5), on_reject=on_reject))
    assert isinstance(protocol, StartDrivenProtocol)
    run = ProtocolRun(grid=grid, num_rounds=3, initial_state=task.initial_state(), train_config=ConfigRecord({"lr": 0.05}))
    seen = []
    final = run_protocol(protocol, run, on_round=lambda r: seen.append((r.round, r.aggregated, r.selected)), settings=LoopSettings())
    assert OwnLoopFedAvg.started == 1
    assert seen == [(1, 4, 4), (2, 4, 4), (3, 4, 4)]
    assert {r.round for r in ledger.rows} == {1, 2, 3}
    assert {r.phase for r in ledger.rows_of(2)} == {"train", "evaluate"}
    assert set(final) == set(task.initial_state()) and rejected == []
    assert all(record.server_flops > 0 for record in ledger.rounds.values())


def test_step_protocol_checks_each_update_as_it_arrives(setup):
    """StrategyProtocol hands the guard's precheck_reply to the grid: every train reply is checked
    on arrival, before the round's aggregation, and aggregate_train checks none again."""
    cfg, grid, _, _ = setup
    task = task_for(config_to_json(cfg))
    strategy = GuardedStrategy(FedAvg(), on_reject=grid.reject)
    events: list[str] = []
    precheck, check, aggregate = strategy.precheck_reply, strategy._check, strategy.inner.aggregate_train
    strategy.precheck_reply = lambda msg: events.append("precheck") or precheck(msg)
    strategy._check = lambda node, msg: events.append("check") or check(node, msg)
    strategy.inner.aggregate_train = lambda rnd, replies: events.append("aggregate") or aggregate(rnd, replies)
    run = ProtocolRun(grid=grid, num_rounds=1, initial_state=task.initial_state(), train_config=ConfigRecord({"lr": 0.05}))
    run_protocol(StrategyProtocol(strategy), run)
    assert events == ["precheck", "check"] * 4 + ["aggregate"]


def test_step_protocol_and_own_start_protocol_give_the_same_ledger(tmp_path):
    ledgers, durations, finals = [], [], []
    for protocol_of in (lambda s: StrategyProtocol(s), lambda s: StartDrivenProtocol(s)):
        cfg = load_config(None, ["devices={raspberry-pi-4 = 2, laptop = 2}", "model.name=mlp", "train.local_epochs=1"])
        population = Population(cfg.devices, builtin_profiles())
        engine = InProcessEngine(make_client_app(config_json=config_to_json(cfg)), population)
        ledger = Ledger()
        grid = MeteredGrid(EngineGrid(engine), population, ledger, seed=0, partition_of=engine.partition_of)
        task = task_for(config_to_json(cfg))
        run = ProtocolRun(grid=grid, num_rounds=2, initial_state=task.initial_state(), train_config=ConfigRecord({"lr": 0.05}))
        random.seed(0)  # Flower's strategies sample with the random module
        finals.append(run_protocol(protocol_of(GuardedStrategy(FedAvg(fraction_train=0.5), on_reject=grid.reject)), run))
        ledgers.append([(r.round, r.client_id, r.phase, r.bytes_up, r.end_s if r.phase == "train" else 0) for r in ledger.rows])
        durations.append([record.sim_s for record in ledger.rounds.values()])
    assert ledgers[0] == ledgers[1]
    assert durations[0] == pytest.approx(durations[1], rel=1e-12)  # aggregation placed elsewhere, same total
    assert all((finals[0][k] == finals[1][k]).all() for k in finals[0])


def test_summary_says_first_when_most_exchanges_failed():
    from fedsplit.report import summarize

    ledger = Ledger()
    ledger.add(row(0))
    for client in (1, 2):
        bad = row(client, "rejected")
        bad.reason = "tensor 'w' contains NaN/Inf"
        ledger.add(bad)
    ledger.close_round(1, sim_s=1.0, metrics={"accuracy": 0.1})
    summary = summarize(ledger, 1.0)
    assert next(iter(summary)) == "warning"
    assert summary["warning"].startswith("2 of 3 exchanges failed or were rejected")
    assert "NaN/Inf" in summary["warning"]
    healthy = Ledger()
    healthy.add(row(0))
    healthy.close_round(1, sim_s=1.0)
    assert "warning" not in summarize(healthy, 1.0)
