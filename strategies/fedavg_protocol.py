"""The FedAvg family as a training protocol: any Flower strategy, one round per step.

:class:`StrategyProtocol` runs one Flower round per :meth:`~StrategyProtocol.step` with the
strategy's own ``configure_train`` / ``aggregate_train`` / ``configure_evaluate`` /
``aggregate_evaluate`` (the body of Flower's ``Strategy.start`` loop), so every Flower strategy,
fedsplit's validation and compression wrappers and a user's strategy by import path behave as
under ``Strategy.start``. Aggregation is metered as server work after every update arrived.

A strategy whose class overrides ``start()`` has its own loop. :class:`StartDrivenProtocol` runs
that ``start()`` unchanged on a worker thread and takes its calls of ``evaluate_fn`` (after every
round, as Flower's contract says) as the round boundaries: the server loop still begins and closes
each round, evaluates and checkpoints.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import OrderedDict
from typing import Any, Callable

import torch
from flwr.app import ArrayRecord, MetricRecord
from flwr.serverapp.strategy import Strategy

from fedsplit.clients.arrays import state_dict_of
from fedsplit.devices import aggregation_flops
from fedsplit.simulation.metered_grid import accepts_keyword
from fedsplit.strategies.protocol import ProtocolRun, TrainingProtocol

log = logging.getLogger("fedsplit")

_NOT_ROUND_METRICS = ("num-examples", "flops", "partition-id")
"""Per-client bookkeeping a strategy's weighted average would make meaningless."""


def round_metrics(*records: MetricRecord | None) -> dict[str, float]:
    """Aggregated client metrics worth keeping with a round (scalars, bookkeeping dropped)."""
    out: dict[str, float] = {}
    for record in records:
        for key, value in (record or {}).items():
            if key not in _NOT_ROUND_METRICS and isinstance(value, (int, float)):
                out[key] = float(value)
    return out


def unwrap(strategy: Strategy) -> Strategy:
    """The innermost strategy of fedsplit's delegating wrappers (those with an ``inner``)."""
    while isinstance(getattr(strategy, "inner", None), Strategy):
        strategy = strategy.inner
    return strategy


def overrides_start(strategy: Strategy) -> bool:
    """Whether the (unwrapped) strategy's class has its own ``start()`` loop."""
    return type(unwrap(strategy)).start is not Strategy.start


ROUTED_METHODS = ("configure_train", "aggregate_train", "configure_evaluate", "aggregate_evaluate")


class _ClassMethods:
    """``strategy`` as its class defines it: instance attributes that shadow methods are ignored."""

    def __init__(self, strategy: Strategy) -> None:
        self._strategy = strategy

    def __getattr__(self, name: str) -> Any:
        attr = getattr(type(self._strategy), name, None)
        if callable(attr) and hasattr(attr, "__get__"):
            return attr.__get__(self._strategy)
        return getattr(self._strategy, name)


def route_through_wrappers(strategy: Strategy) -> Strategy:
    """The innermost strategy, with its per-round methods going through ``strategy``'s wrappers.

    The innermost wrapper then reaches the strategy's own (class) methods, so nothing recurses.
    Returns ``strategy`` itself when it is not wrapped.
    """
    inner = unwrap(strategy)
    if inner is strategy:
        return strategy
    wrapper = strategy
    while wrapper.inner is not inner:  # type: ignore[attr-defined]
        wrapper = wrapper.inner  # type: ignore[attr-defined]
    wrapper.inner = _ClassMethods(inner)  # type: ignore[attr-defined]
    for name in ROUTED_METHODS:
        setattr(inner, name, getattr(strategy, name))
    return inner


def _num_values(state: "OrderedDict[str, torch.Tensor]") -> int:
    return sum(int(v.numel()) for v in state.values())


class StrategyProtocol(TrainingProtocol):
    """One Flower round per step, with the strategy's per-round methods.

    Parameters
    ----------
    strategy : Strategy
        Any Flower strategy (possibly wrapped by fedsplit's validation/compression wrappers).
    """

    name = "fl"

    def __init__(self, strategy: Strategy) -> None:
        self.strategy = strategy
        self.arrays: ArrayRecord | None = None
        self._num_values = 0

    def start(self, run: ProtocolRun) -> None:
        self.arrays = ArrayRecord(run.initial_state)
        self._num_values = _num_values(run.initial_state)

    def step(self, run: ProtocolRun, server_round: int) -> dict[str, float]:
        assert self.arrays is not None, "start() first"
        grid = run.grid
        messages = self.strategy.configure_train(server_round, self.arrays, run.train_config, grid)
        precheck = getattr(self.strategy, "precheck_reply", None)  # checks each update as it arrives
        if precheck is not None and accepts_keyword(getattr(grid, "send_and_receive", None), "on_reply"):
            replies = grid.send_and_receive(messages, timeout=run.timeout_s, on_reply=precheck)
        else:
            replies = grid.send_and_receive(messages, timeout=run.timeout_s)
        arrays, train_metrics = self.strategy.aggregate_train(server_round, replies)
        grid.server_work(aggregation_flops(self._num_values, grid.kept_terminals("train")))
        if arrays is not None:
            self.arrays = arrays
        replies = grid.send_and_receive(
            self.strategy.configure_evaluate(server_round, self.arrays, run.evaluate_config, grid), timeout=run.timeout_s
        )
        evaluate_metrics = self.strategy.aggregate_evaluate(server_round, replies)
        return round_metrics(train_metrics, evaluate_metrics)

    def global_state(self) -> "OrderedDict[str, torch.Tensor]":
        assert self.arrays is not None, "start() first"
        return state_dict_of(self.arrays)

    def stop_reason(self, run: ProtocolRun) -> str | None:
        """The first reason to stop given by a strategy of the wrapper chain that has a
        ``stop_reason(grid)`` (e.g. :class:`~fedsplit.strategies.adaptive_local.AdaptiveLocalStrategy`
        with a resource budget). The chain follows fedsplit's wrappers (``inner``) and Flower's
        (``strategy``, e.g. its differential-privacy wrappers)."""
        strategy: object = self.strategy
        while strategy is not None:
            ask = getattr(type(strategy), "stop_reason", None)
            if callable(ask):
                reason = ask(strategy, run.grid)
                if reason:
                    return reason
            own = vars(strategy) if hasattr(strategy, "__dict__") else {}
            strategy = own.get("inner", own.get("strategy"))
        return None


class StartDrivenProtocol(TrainingProtocol):
    """A strategy's own ``start()`` loop, paced round by round by the server loop.

    ``start()`` runs on the user's strategy object itself (so ``super()`` and its own attributes
    work), but that object's per-round methods are routed through fedsplit's wrappers
    (:func:`route_through_wrappers`), so its calls of ``self.aggregate_train`` etc. are still
    validated and decompressed. It runs on a worker thread; each of its ``evaluate_fn``
    calls after round ``r`` ends step ``r``, and it continues only when the loop asks for step
    ``r + 1`` (after the grid began that round).

    Parameters
    ----------
    strategy : Strategy
        A strategy whose class overrides ``start()``.
    """

    name = "fl-start"

    def __init__(self, strategy: Strategy) -> None:
        self.strategy = strategy
        self._name = type(unwrap(strategy)).__name__
        self._start: Callable[..., Any] = route_through_wrappers(strategy).start
        self._events: queue.Queue = queue.Queue()
        self._resume = threading.Semaphore(0)
        self._thread: threading.Thread | None = None
        self._arrays: ArrayRecord | None = None
        self._stopping = False

    def start(self, run: ProtocolRun) -> None:
        self._arrays = ArrayRecord(run.initial_state)
        self._num_values = _num_values(run.initial_state)

    def _evaluate_fn(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if server_round == 0:
            return None
        self._events.put(("round", server_round, arrays))
        self._resume.acquire()
        return None

    def _body(self, run: ProtocolRun) -> None:
        try:
            result = self._start(
                grid=run.grid,
                initial_arrays=ArrayRecord(run.initial_state),
                num_rounds=run.num_rounds,
                train_config=run.train_config,
                evaluate_config=run.evaluate_config,
                evaluate_fn=self._evaluate_fn,
            )
        except BaseException as exc:  # noqa: BLE001 - handed to the loop's thread
            self._events.put(("error", exc))
        else:
            self._events.put(("done", result))

    def step(self, run: ProtocolRun, server_round: int) -> dict[str, float]:
        if self._thread is None:
            self._thread = threading.Thread(target=self._body, args=(run,), name="fedsplit-strategy-start", daemon=True)
            self._thread.start()
        else:
            self._resume.release()
        kind, *payload = self._events.get()
        if kind == "error":
            raise payload[0]
        if kind == "done":
            raise RuntimeError(
                f"{self._name}.start() returned before round {server_round} ended: a start() "
                "must call evaluate_fn(round, arrays) after every round (as Flower's Strategy.start does) for "
                "fedsplit to see its rounds"
            )
        reported_round, arrays = payload
        if reported_round != server_round:
            raise RuntimeError(
                f"{self._name}.start() reported round {reported_round} where fedsplit expected {server_round}"
            )
        self._arrays = arrays
        # The aggregation inside start() is not visible from here: it is metered (same FLOPs as
        # StrategyProtocol's) at the end of the round, which gives the round the same duration.
        run.grid.server_work(aggregation_flops(self._num_values, run.grid.kept_terminals("train")))
        return {}

    def global_state(self) -> "OrderedDict[str, torch.Tensor]":
        assert self._arrays is not None, "start() first"
        return state_dict_of(self._arrays)

    def finish(self, run: ProtocolRun) -> None:
        if self._thread is None:
            return
        self._resume.release()
        kind, *payload = self._events.get()
        self._thread.join()
        if kind == "error":
            raise payload[0]
        if kind == "round":
            raise RuntimeError(f"{self._name}.start() ran more than {run.num_rounds} rounds")


def strategy_protocol(strategy: Strategy) -> TrainingProtocol:
    """The protocol that runs ``strategy``: step-wise, or its own ``start()`` where it has one."""
    return StartDrivenProtocol(strategy) if overrides_start(strategy) else StrategyProtocol(strategy)


__all__ = ["StartDrivenProtocol", "StrategyProtocol", "overrides_start", "round_metrics", "strategy_protocol", "unwrap"]
