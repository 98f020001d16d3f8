"""The server's run and the engine's actors keep what they already hold out of the cyclic collector
(simulation/frozen_heap.py), and still collect the garbage cycles they make."""

from __future__ import annotations

import gc
import weakref

import pytest
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedsplit.config import load_config
from fedsplit.devices import Population, builtin_profiles
from fedsplit.learning import config_to_json
from fedsplit.simulation.frozen_heap import frozen_heap


class Node:
    """An object that can sit in a reference cycle."""

    def __init__(self) -> None:
        self.other: object = None


def cycle_is_collected() -> bool:
    """Make a garbage cycle, collect, and say whether the collector freed it."""
    a, b = Node(), Node()
    a.other, b.other = b, a
    probe = weakref.ref(a)
    del a, b
    gc.collect()
    return probe() is None


@pytest.fixture
def unfrozen():
    """Each test starts and ends with nothing frozen (the test process's own state)."""
    assert gc.get_freeze_count() == 0
    yield
    gc.unfreeze()


def test_the_block_freezes_what_exists_and_still_collects_new_cycles(unfrozen):
    before = object.__new__(Node)  # tracked by the collector before the block
    with frozen_heap():
        assert gc.get_freeze_count() > 0
        assert gc.is_tracked(before) and before not in gc.get_objects()  # frozen: in no generation the collector walks
        assert cycle_is_collected()
    assert gc.get_freeze_count() == 0 and before in gc.get_objects(generation=2)


def test_only_the_outer_block_unfreezes_and_an_error_unfreezes_too(unfrozen):
    with pytest.raises(RuntimeError, match="boom"):
        with frozen_heap():
            with frozen_heap():
                pass
            assert gc.get_freeze_count() > 0  # the inner block did not unfreeze the outer one's objects
            raise RuntimeError("boom")
    assert gc.get_freeze_count() == 0
    gc.freeze()  # someone else froze first: the block leaves it to them
    with frozen_heap():
        pass
    assert gc.get_freeze_count() > 0


def test_the_server_runs_its_rounds_frozen_and_unfreezes_after(unfrozen):
    from fedsplit.clients.app import make_client_app
    from fedsplit.simulation.engine import SerialEngine
    from fedsplit.simulation.server_app import RunSession, run_server

    cfg = load_config(None, ["rounds=2", "devices={laptop=2}", "progress=false", "model.name=mlp", "train.local_epochs=1"])
    session = RunSession.from_config(cfg)
    seen: list[tuple[int, bool]] = []
    session.on_round = lambda record, elapsed: seen.append((gc.get_freeze_count(), cycle_is_collected()))
    run_server(SerialEngine(make_client_app(config_json=config_to_json(cfg)), session.population).grid(), session)
    assert len(seen) == 2 and all(frozen > 0 and collected for frozen, collected in seen)
    assert gc.get_freeze_count() == 0
    assert sorted(session.ledger.rounds) == [1, 2] and session.final_state


def gc_reporting_app() -> ClientApp:
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:  # noqa: ARG001 - Flower's signature
        metrics = {"frozen": gc.get_freeze_count(), "collected": int(cycle_is_collected()), "num-examples": 1}
        return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)

    return app


def test_actors_freeze_what_they_start_with_and_collect_the_cycles_apps_make(ray_session):
    from fedsplit.simulation.engine import RayEngine

    population = Population({"laptop": 2}, builtin_profiles())
    with RayEngine(gc_reporting_app(), population) as engine:
        grid = engine.grid()
        msgs = [Message(RecordDict({}), dst_node_id=n, message_type="train", group_id="1") for n in grid.get_node_ids()]
        replies = list(grid.send_and_receive(msgs))
    assert len(replies) == 2 and not any(r.has_error() for r in replies)
    for reply in replies:
        assert reply.content["metrics"]["frozen"] > 1000  # an actor's imports: torch, Flower, Ray
        assert reply.content["metrics"]["collected"] == 1
