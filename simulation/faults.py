"""Injected faults on fedsplit's engines: the hook that tells the engine which message fails how.

:func:`attach_faults` gives an engine (:class:`~fedsplit.simulation.engine.RayEngine` or
:class:`~fedsplit.simulation.engine.SerialEngine`) a :class:`FaultInjector`; the engine asks it
about every message it runs and carries the fault out (a ``crash`` is an exception in place of the
ClientApp, a ``kill`` ends the actor process). The draw is :meth:`fedsplit.faults.FaultPlan.fault_of`
for the message's terminal, the grid's current round and its attempt, so a terminal's fault holds
for all its messages of that round attempt, and discovery (``query``) messages never fail.
"""

from __future__ import annotations

from collections.abc import Callable

from flwr.app import Message

from fedsplit.faults import FaultPlan


class FaultInjector:
    """``message -> "crash" | "kill" | None`` for an engine's ``faults`` hook.

    Parameters
    ----------
    plan : FaultPlan
        Fault probabilities and seed.
    round_of : callable
        ``() -> (server_round, attempt)`` of the message being sent (the metered grid's).
    partition_of : callable
        ``node_id -> terminal (partition) id``.
    """

    def __init__(self, plan: FaultPlan, round_of: Callable[[], tuple[int, int]], partition_of: Callable[[int], int]) -> None:
        self.plan = plan
        self.round_of = round_of
        self.partition_of = partition_of

    def __call__(self, msg: Message) -> str | None:
        if msg.metadata.message_type == "query":
            return None
        server_round, attempt = self.round_of()
        return self.plan.fault_of(self.partition_of(msg.metadata.dst_node_id), server_round, attempt)


def attach_faults(grid: object, plan: FaultPlan, metered: object) -> FaultInjector | None:
    """Give the engine behind ``grid`` a :class:`FaultInjector` for ``plan`` (None when inactive).

    ``metered`` is the run's :class:`~fedsplit.simulation.metered_grid.MeteredGrid` (its
    ``current_round`` and ``attempt`` date each message).

    Raises
    ------
    ValueError
        ``plan`` injects faults but ``grid`` is not one of fedsplit's engines.
    """
    engine = getattr(grid, "engine", None)
    if not plan.active:
        if engine is not None and hasattr(engine, "faults"):
            engine.faults = None
        return None
    if engine is None or not hasattr(engine, "faults"):
        raise ValueError(
            f"faults.crash_rate / faults.kill_rate > 0 need fedsplit's engine (engine.name = fedsplit or serial), "
            f"not a {type(grid).__name__}"
        )
    injector = FaultInjector(
        plan,
        lambda: (metered.current_round, metered.attempt),  # type: ignore[attr-defined]
        engine.partition_of,
    )
    engine.faults = injector
    return injector


__all__ = ["FaultInjector", "attach_faults"]
