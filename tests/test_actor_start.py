"""An engine whose actors cannot start the ClientApp stops at once, naming the cause.

A ClientApp whose code the Ray workers cannot import (defined in a module only the driver's
``sys.path`` reaches: a script's folder, a notebook's) fails the same way on every actor. The
engine used to replace each dead actor and retry each message alone on a new one, so such a run
started an actor per message, round after round, until every terminal had failed; a warm actor
kept the previous run's app and answered with it.
"""

from __future__ import annotations

import sys

import pytest
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedsplit.config.errors import ActorStartError
from fedsplit.devices import Population, builtin_profiles
from fedsplit.simulation.engine import RayEngine
from tests.test_engine import send_round

DRIVER_ONLY_APP = '''
from flwr.app import Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.train()
def train(msg, context):
    return Message(RecordDict({"metrics": MetricRecord({"app": 2, "num-examples": 1})}), reply_to=msg)
'''


@pytest.fixture
def driver_only_app(tmp_path, monkeypatch) -> ClientApp:
    """A ClientApp defined in a module that only this process can import (Ray's workers do not
    see a folder put on the driver's ``sys.path`` at run time)."""
    module = f"driver_only_app_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{module}.py").write_text(DRIVER_ONLY_APP)
    monkeypatch.syspath_prepend(str(tmp_path))
    __import__(module)
    yield sys.modules[module].app
    sys.modules.pop(module, None)


def labelled_app(label: int) -> ClientApp:
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        return Message(RecordDict({"metrics": MetricRecord({"app": label, "num-examples": 1})}), reply_to=msg)

    return app


def test_new_actors_that_cannot_load_the_app_stop_the_run_with_its_cause(ray_session, driver_only_app):
    population = Population({"laptop": 4}, builtin_profiles())
    # a budget no warm actor has: the engine starts new actors, which fail in their creation
    with RayEngine(driver_only_app, population, num_actors=2, cpus_per_actor=0.5) as engine:
        grid = engine.grid()
        with pytest.raises(ActorStartError, match=r"could not start the ClientApp.*No module named 'driver_only_app_"):
            send_round(grid, 1, list(grid.get_node_ids()))
        assert engine.actor_restarts == 0  # no actor was started in place of one that cannot start
    # the failed actors are not kept for a later run
    from fedsplit.simulation import warm_actors

    assert warm_actors.take((0.5, 0.0)) is None


def test_a_warm_actor_that_cannot_load_the_app_is_refused_not_run_with_the_last_app(ray_session, driver_only_app):
    population = Population({"laptop": 2}, builtin_profiles())
    with RayEngine(labelled_app(1), population, num_actors=1, cpus_per_actor=1.0) as engine:  # leaves a warm actor of (1, 0)
        grid = engine.grid()
        replies = send_round(grid, 1, list(grid.get_node_ids()))
        assert {int(r.content["metrics"]["app"]) for r in replies.values()} == {1}
    with pytest.raises(ActorStartError, match=r"could not load the ClientApp.*No module named 'driver_only_app_"):
        with RayEngine(driver_only_app, population, num_actors=1, cpus_per_actor=1.0):
            pass
    # the next run on that budget gets a working actor with its own app
    with RayEngine(labelled_app(3), population, num_actors=1, cpus_per_actor=1.0) as engine:
        grid = engine.grid()
        replies = send_round(grid, 2, list(grid.get_node_ids()))
        assert {int(r.content["metrics"]["app"]) for r in replies.values()} == {3}


def test_a_warm_actor_that_died_while_idle_gives_its_place_to_a_new_one(ray_session):
    import ray

    from fedsplit.simulation import warm_actors

    population = Population({"laptop": 2}, builtin_profiles())
    with RayEngine(labelled_app(4), population, num_actors=1, cpus_per_actor=1.0):
        pass
    for actor in warm_actors.idle_actors():
        ray.kill(actor, no_restart=True)
    with RayEngine(labelled_app(5), population, num_actors=1, cpus_per_actor=1.0) as engine:
        grid = engine.grid()
        replies = send_round(grid, 1, list(grid.get_node_ids()))
        assert {int(r.content["metrics"]["app"]) for r in replies.values()} == {5}
        assert engine.actor_restarts == 0  # replaced before the run, not after a failed batch


def test_the_command_names_an_actor_start_failure_and_exits_3(monkeypatch, capsys):
    import fedsplit.simulation.runner as runner
    from fedsplit.cli import main

    def fail(*args, **kwargs):
        raise ActorStartError("a Ray actor could not start the ClientApp: ModuleNotFoundError: No module named 'mine'")

    monkeypatch.setattr(runner, "simulate", fail)
    assert main(["simulate", "--set", "rounds=1"]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["fedsplit simulate: error: engine: a Ray actor could not start the ClientApp: ModuleNotFoundError: No module named 'mine'"]
