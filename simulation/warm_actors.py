"""Warm actors: Ray actors that outlive one run and host the next run's ClientApp.

Starting an actor costs a Python process that imports torch, Flower and the app, and the app's
first call then loads its data: seconds each on a small machine (~25 s for a 4-terminal, 2-round
MLP run on 2 loaded cores, where the same run on warm actors takes under a second). A sweep, a
pipeline that trains a family of models, or a test suite runs many short simulations in one Ray
session; inside :func:`warm_actors` the engine hands its actors back here when a run ends, and the
next run with the same Ray budget takes them instead of starting new ones::

    with warm_actors():
        for cfg in sweep:
            simulate(cfg)  # the second run on starts in milliseconds

Nothing of a run stays in the actor that could change the next: each call carries its terminal's
:class:`~flwr.app.Context`, the next run's ClientApp replaces the last one
(``ClientAppActor.load_app``), and the ClientApp seeds its own randomness per call (the serial
engine reuses its one process the same way). Idle actors still hold their Ray resources, so they
are released when the context ends, when Ray restarts, when a run needs other budgets (those it
cannot use are killed before its own actors start), and before Flower's engine starts its own
actors (:func:`release_idle`). Outside the context (the default) a run's actors die with it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import ray

Budget = tuple[float, float]  # (num_cpus, num_gpus)

_depth = 0
_idle: dict[Budget, list] = {}
_job: tuple[str, str] | None = None  # the Ray node and job (driver connection) of the idle actors


@contextmanager
def warm_actors() -> Iterator[None]:
    """Keep the runs' actors between runs inside this block (nestable); release them at its end."""
    global _depth
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0:
            release_idle()


def enabled() -> bool:
    """Whether a run's actors are kept for the next run when it ends."""
    return _depth > 0


def _current_job() -> tuple[str, str] | None:
    """This driver's Ray connection: a restarted Ray counts jobs from 1 again, its node id is new."""
    if not ray.is_initialized():
        return None
    context = ray.get_runtime_context()
    return context.get_node_id(), context.get_job_id()


def _forget_stale() -> None:
    """Drop actors of an earlier Ray session: they died with it."""
    global _job
    job = _current_job()
    if job != _job:
        _idle.clear()
        _job = job


def idle_actors() -> list:
    """The idle actors' handles (in this Ray session), oldest budget first."""
    _forget_stale()
    return [actor for actors in _idle.values() for actor in actors]


def idle_count() -> int:
    """Number of idle actors held (in this Ray session)."""
    return len(idle_actors())


def take(budget: Budget) -> object | None:
    """An idle actor of ``budget``, or ``None``."""
    _forget_stale()
    actors = _idle.get(budget)
    return actors.pop() if actors else None


def give_back(budget: Budget, actor: object) -> bool:
    """Keep ``actor`` for a later run; ``False`` (the caller kills it) outside :func:`warm_actors`."""
    if not enabled() or not ray.is_initialized():
        return False
    _forget_stale()
    _idle.setdefault(budget, []).append(actor)
    return True


def release_idle(keep: dict[Budget, int] | None = None) -> None:
    """Kill the idle actors, except up to ``keep[budget]`` of each budget (their resources return
    to Ray at once: call before starting actors that need them)."""
    _forget_stale()
    keep = keep or {}
    for budget in list(_idle):
        actors, kept = _idle[budget], keep.get(budget, 0)
        spare, actors[kept:] = actors[kept:], []
        for actor in spare:
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
        if not actors:
            del _idle[budget]
