"""The server's evaluation of a round's model overlaps the next round's training.

On fedsplit's engine the loop hands the evaluation to the grid (``MeteredGrid.run_while_training``)
and the engine runs it once the next exchange's batches are on their way; the round's record
gets the metrics of its own model and is reported, in order, when they are in. Rounds that end
the run, checkpoint or save a resume point are evaluated at once, and a failing evaluation
still stops the run.
"""

from __future__ import annotations

import time
from collections import OrderedDict

import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedsplit.devices import Population, builtin_profiles
from fedsplit.ledger import Ledger, RoundRecord
from fedsplit.simulation.engine import EngineGrid, RayEngine, SerialEngine
from fedsplit.simulation.loop import LoopSettings, run_protocol
from fedsplit.simulation.metered_grid import MeteredGrid
from fedsplit.strategies.protocol import ProtocolRun, TrainingProtocol


def sleeping_app() -> ClientApp:
    """Each terminal sleeps ``sleep_s`` seconds and replies with when it started and ended
    (wall clock seconds, comparable across processes)."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:  # noqa: ARG001 - Flower's signature
        started = time.time()
        time.sleep(float(msg.content["config"]["sleep_s"]))
        return Message(RecordDict({"metrics": MetricRecord({"started_at": started, "ended_at": time.time()})}), reply_to=msg)

    return app


class InPlaceProtocol(TrainingProtocol):
    """Trains every online terminal each round and writes the round number into its model in
    place (as split learning's server part trains its tensors): an evaluation that read the
    live tensors after the next round began would see the next round's number."""

    def __init__(self, sleep_s: float, fail_in_round: int = 0) -> None:
        self.sleep_s, self.fail_in_round = sleep_s, fail_in_round
        self.replies: dict[int, list[Message]] = {}

    def start(self, run: ProtocolRun) -> None:
        self.state = OrderedDict(w=torch.zeros(1))

    def step(self, run: ProtocolRun, server_round: int) -> dict[str, float]:
        if server_round == self.fail_in_round:
            raise RuntimeError(f"step {server_round} failed before its exchange")
        self.state["w"].fill_(float(server_round))
        config = ConfigRecord({"sleep_s": self.sleep_s})
        msgs = [Message(RecordDict({"config": config}), dst_node_id=n, message_type="train", group_id=str(server_round)) for n in run.grid.get_node_ids()]
        self.replies[server_round] = list(run.grid.send_and_receive(msgs))
        return {"trained": float(len(self.replies[server_round]))}

    def global_state(self):  # noqa: ANN201
        return self.state


class Recorder:
    """The loop's ``evaluate`` and ``on_round``: when each ran, in which round of the grid, and
    with what."""

    def __init__(self, grid: MeteredGrid, fail_on: int = 0) -> None:
        self.grid, self.fail_on = grid, fail_on
        self.evaluated: dict[int, dict[str, float]] = {}  # round of the model -> when and where
        self.reported: list[tuple[int, dict[str, float]]] = []

    def evaluate(self, state) -> dict[str, float]:  # noqa: ANN001
        model_round = int(state["w"].item())
        started = time.time()
        if model_round == self.fail_on:
            raise ValueError(f"evaluation of round {model_round} failed")
        time.sleep(0.05)
        self.evaluated[model_round] = {"started_at": started, "ended_at": time.time(), "grid_round": self.grid.current_round}
        return {"accuracy": float(model_round) / 10}

    def on_round(self, record: RoundRecord) -> None:
        self.reported.append((record.round, dict(record.metrics)))


def metered(engine: RayEngine, population: Population, ledger: Ledger) -> MeteredGrid:
    return MeteredGrid(EngineGrid(engine), population, ledger, seed=0, partition_of=engine.partition_of, emulate_availability=False)


def serial_grid(**recorder) -> tuple[MeteredGrid, Ledger, Recorder]:  # noqa: ANN003
    """A metered grid over two terminals on the serial engine, its ledger and a Recorder."""
    population = Population({"laptop": 2}, builtin_profiles())
    return grid_of(SerialEngine(sleeping_app(), population), **recorder)


def grid_of(engine: RayEngine, **recorder) -> tuple[MeteredGrid, Ledger, Recorder]:  # noqa: ANN003
    ledger = Ledger()
    grid = metered(engine, engine.population, ledger)
    return grid, ledger, Recorder(grid, **recorder)


def run_rounds(engine: RayEngine, rounds: int, settings: LoopSettings | None = None, sleep_s: float = 0.0, **recorder) -> tuple[InPlaceProtocol, Recorder, Ledger, dict]:  # noqa: ANN003
    grid, ledger, record = grid_of(engine, **recorder)
    protocol = InPlaceProtocol(sleep_s)
    saved: dict = {}
    run = ProtocolRun(grid=grid, num_rounds=rounds, initial_state=OrderedDict(w=torch.zeros(1)))
    run_protocol(
        protocol, run, evaluate=record.evaluate, settings=settings, on_round=record.on_round,
        checkpoint=lambda r, state: saved.setdefault("checkpoint", []).append(r),
        save_resume_point=lambda r: saved.setdefault("resume", []).append(r),
    )
    return protocol, record, ledger, saved


def test_a_rounds_evaluation_runs_while_the_next_round_trains_on_ray_actors(ray_session):
    population = Population({"laptop": 2}, builtin_profiles())
    with RayEngine(sleeping_app(), population, num_actors=1) as engine:
        protocol, record, ledger, _ = run_rounds(engine, rounds=3, sleep_s=0.2)
    for model_round in (1, 2):
        nxt = [r.content["metrics"] for r in protocol.replies[model_round + 1]]
        first_started = min(float(m["started_at"]) for m in nxt)
        last_ended = max(float(m["ended_at"]) for m in nxt)
        evaluated = record.evaluated[model_round]
        # evaluated in the driver (0.05 s) while the actor trained the next round's terminals (0.4 s):
        # the actor had started well before the evaluation ended, and went on after it
        assert first_started < evaluated["ended_at"] - 0.03 and evaluated["ended_at"] < last_ended
        assert evaluated["grid_round"] == model_round + 1
    assert record.evaluated[3]["grid_round"] == 3  # the last round: at once
    # each round's metrics are its own model's, though the protocol changed it in place since
    assert [ledger.rounds[r].metrics for r in (1, 2, 3)] == [{"trained": 2.0, "accuracy": r / 10} for r in (1, 2, 3)]
    assert record.reported == [(r, {"trained": 2.0, "accuracy": r / 10}) for r in (1, 2, 3)]  # in order, metrics in


def test_rounds_that_end_the_run_checkpoint_or_save_a_resume_point_are_evaluated_at_once():
    population = Population({"laptop": 2}, builtin_profiles())
    engine = SerialEngine(sleeping_app(), population)
    _, record, ledger, saved = run_rounds(engine, rounds=6, settings=LoopSettings(checkpoint_every=2, resume_every=3))
    grid_round = {r: e["grid_round"] for r, e in record.evaluated.items()}
    assert grid_round == {1: 2, 2: 2, 3: 3, 4: 4, 5: 6, 6: 6}
    assert saved == {"checkpoint": [2, 4, 6], "resume": [3, 6]}
    assert [m["accuracy"] for _, m in record.reported] == [r / 10 for r in range(1, 7)]
    assert all(ledger.rounds[r].metrics["accuracy"] == r / 10 for r in range(1, 7))


def test_without_overlap_every_round_is_evaluated_before_it_closes(monkeypatch):
    monkeypatch.setattr(MeteredGrid, "overlap_server_work", False)
    engine = SerialEngine(sleeping_app(), Population({"laptop": 2}, builtin_profiles()))
    _, record, _, _ = run_rounds(engine, rounds=3)
    assert {r: e["grid_round"] for r, e in record.evaluated.items()} == {1: 1, 2: 2, 3: 3}


def test_an_overlapped_evaluation_that_fails_stops_the_run_with_its_error():
    engine = SerialEngine(sleeping_app(), Population({"laptop": 2}, builtin_profiles()))
    with pytest.raises(ValueError, match="evaluation of round 1 failed"):
        run_rounds(engine, rounds=3, fail_on=1)


def test_a_rounds_evaluation_is_not_lost_when_the_next_step_fails():
    grid, ledger, record = serial_grid()
    run = ProtocolRun(grid=grid, num_rounds=3, initial_state=OrderedDict(w=torch.zeros(1)))
    with pytest.raises(RuntimeError, match="step 2 failed before its exchange"):
        run_protocol(InPlaceProtocol(0.0, fail_in_round=2), run, evaluate=record.evaluate, on_round=record.on_round)
    assert record.reported == [(1, {"trained": 2.0, "accuracy": 0.1})]
    assert ledger.rounds[1].metrics["accuracy"] == 0.1


def test_a_resume_point_captured_as_its_round_ends_is_written_with_the_rounds_metrics():
    grid, ledger, record = serial_grid()
    protocol = InPlaceProtocol(0.0)
    captured, written = {}, {}

    def resume_point(server_round: int):  # noqa: ANN202
        captured[server_round] = (grid.current_round, float(protocol.state["w"].item()))

        def write() -> None:
            written[server_round] = (grid.current_round, dict(ledger.rounds[server_round].metrics))

        return write

    run = ProtocolRun(grid=grid, num_rounds=3, initial_state=OrderedDict(w=torch.zeros(1)))
    run_protocol(protocol, run, evaluate=record.evaluate, on_round=record.on_round, resume_point=resume_point, settings=LoopSettings(resume_every=1))
    assert captured == {1: (1, 1.0), 2: (2, 2.0), 3: (3, 3.0)}  # as each round ended
    # written once the round's metrics were in: during the next round's first exchange, the last at once
    assert written == {r: (min(r + 1, 3), {"trained": 2.0, "accuracy": r / 10}) for r in (1, 2, 3)}
    assert {r: e["grid_round"] for r, e in record.evaluated.items()} == {1: 2, 2: 3, 3: 3}
