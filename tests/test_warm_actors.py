"""Warm actors: a run inside ``warm_actors()`` leaves its actors to the next run, which ends the same."""

from __future__ import annotations

import pytest
import ray
import torch

from fedsplit.config import load_config
from fedsplit.simulation.runner import simulate
from fedsplit.simulation.warm_actors import idle_actors, idle_count, release_idle, warm_actors
from tests.conftest import small_overrides


def ledger(outcome):
    return [(r.round, r.phase, r.client_id, r.status, r.flops, r.bytes_up, r.bytes_down, r.compute_s, r.energy_j)
            for r in outcome.session.ledger.rows]


def pids() -> list[int]:
    return sorted(ray.get([actor.pid.remote() for actor in idle_actors()]))


@pytest.mark.parametrize("transport", ["ray", "channel"])
def test_the_next_run_takes_the_same_actors_and_ends_the_same(tmp_path, ray_session, transport):
    # with channels, an actor answers its channel until the run closes it, then takes calls again
    overrides = [f"engine.transport={transport}"]
    with warm_actors():
        first = simulate(load_config(None, small_overrides(tmp_path, run_name="first") + overrides))
        after_first = pids()
        second = simulate(load_config(None, small_overrides(tmp_path, run_name="second") + overrides))
        after_second = pids()
    assert len(after_first) == 2 and after_first == after_second  # one actor per CPU, reused
    assert ledger(first) == ledger(second) and ledger(first)
    assert first.summary["final_metrics"] == second.summary["final_metrics"]
    for key, value in first.session.final_state.items():
        assert torch.equal(value, second.session.final_state[key]), key


def test_release_empties_the_cache(tmp_path, ray_session):
    with warm_actors():
        simulate(load_config(None, small_overrides(tmp_path, run_name="r")))
        held = idle_actors()
        assert held and idle_count() == len(held)
        release_idle()
        assert idle_count() == 0 and idle_actors() == []
