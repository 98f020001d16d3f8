"""The server's rounds run with the objects alive at their start frozen out of the cyclic collector."""

from __future__ import annotations

import gc

import torch

from fedsplit.clients.app import make_client_app
from fedsplit.config import load_config
from fedsplit.learning import config_to_json
from fedsplit.simulation.engine import EngineGrid, SerialEngine
from fedsplit.simulation.server_app import RunSession, long_lived_objects_frozen, run_server
from tests.conftest import small_overrides


def _tracked(obj: object, generation: int | None = None) -> bool:
    """Whether the collector's generations (or one of them) hold ``obj`` (by identity)."""
    return any(o is obj for o in gc.get_objects(generation))


def test_objects_alive_at_the_start_are_frozen_until_the_end() -> None:
    assert gc.get_freeze_count() == 0
    before = object.__new__(type("Before", (), {}))  # a tracked object that exists at the start
    with long_lived_objects_frozen():
        assert gc.get_freeze_count() > 0
        assert not _tracked(before)  # frozen objects are in no generation
        during = type("During", (), {})()
        assert _tracked(during, 0)  # new objects are collected as usual
    assert gc.get_freeze_count() == 0 and _tracked(before)


def test_a_process_that_froze_objects_or_disabled_the_collector_keeps_its_policy() -> None:
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        with long_lived_objects_frozen():
            pass
        assert gc.get_freeze_count() == frozen  # not unfrozen behind the caller's back
    finally:
        gc.unfreeze()
    gc.disable()
    try:
        with long_lived_objects_frozen():
            assert gc.get_freeze_count() == 0
    finally:
        gc.enable()


def test_run_server_trains_every_round_frozen_and_unfreezes_after(tmp_path) -> None:
    torch.set_num_threads(1)
    cfg = load_config(None, small_overrides(tmp_path, rounds=3))
    session = RunSession.from_config(cfg)
    seen: list[int] = []
    session.on_round = lambda record, elapsed_s: seen.append(gc.get_freeze_count())
    run_server(EngineGrid(SerialEngine(make_client_app(config_json=config_to_json(cfg)), session.population)), session)
    assert len(seen) == 3 and min(seen) > 0
    assert gc.get_freeze_count() == 0
