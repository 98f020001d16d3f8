"""The server loop: it owns the rounds of a run, whatever the training protocol.

:func:`run_protocol` drives a :class:`~fedsplit.strategies.protocol.TrainingProtocol` over a
:class:`~fedsplit.simulation.metered_grid.MeteredGrid`: it begins each round on the grid (one
round counter, the grid's), asks the protocol for a step, evaluates the global model when due,
closes the round in the ledger, reports progress, checkpoints when due, and stops the run when
rounds keep aggregating nothing (a run that trains nothing must not end as if it had). A protocol
may end the run early and cleanly (:meth:`~fedsplit.strategies.protocol.TrainingProtocol.stop_reason`,
e.g. a resource budget spent): the round is then evaluated, closed, reported and saved as a last
round is, and the loop stops after it, handing the reason to ``on_stop``.

The server's evaluation of a round's model does not hold up the next round: on fedsplit's engine
it runs in the driver during the next round's first exchange, once that exchange's batches are
on their way to the actors (:meth:`MeteredGrid.run_while_training`), and the round is reported
when it has run. The model it evaluates is a copy taken when the round ended, so the metrics are
those of the round's model; the round's ``wall_s`` then leaves the evaluation out.

A round that keeps fewer updates than ``LoopSettings.min_clients`` (terminals that crashed, died,
missed the deadline or were rejected leave it to the rest) is either tried again, from the
protocol's state before the round, up to ``max_retries`` times, or stops the run
(:class:`TooFewUpdatesError`). A run resumed from a resume point
(:mod:`fedsplit.simulation.checkpoint`) continues after the saved round.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Callable

import torch

from fedsplit.ledger import RoundRecord
from fedsplit.simulation.metered_grid import MeteredGrid
from fedsplit.strategies.protocol import ProtocolRun, TrainingProtocol

log = logging.getLogger("fedsplit")

StateDict = Mapping[str, torch.Tensor]
"""A model's weights by ``state_dict`` key."""


class EmptyRoundsError(RuntimeError):
    """The run stopped because too many consecutive rounds aggregated no update."""


class TooFewUpdatesError(EmptyRoundsError):
    """The run stopped because a round kept fewer updates than ``faults.min_clients``."""


@dataclass
class LoopSettings:
    """When the loop evaluates, checkpoints and gives up.

    Attributes
    ----------
    eval_every : int
        Evaluate the global model every this many rounds (and always after the last); 0 = never.
    checkpoint_every : int
        Call ``checkpoint`` every this many rounds (0 = never; the runner saves the final model).
    max_empty_rounds : int
        Stop with :class:`EmptyRoundsError` after this many consecutive rounds in which
        terminals were asked to train and nothing was aggregated (0 = never stop).
    resume_every : int
        Call ``save_resume_point`` every this many rounds and after the last (0 = never).
    min_clients : int
        Fewest updates a round must keep (0 = no minimum).
    too_few : str
        ``stop`` (raise :class:`TooFewUpdatesError`) or ``retry`` (the round again from the
        protocol's state before it) when a round keeps fewer than ``min_clients``.
    max_retries : int
        With ``retry``: attempts after the first before the run stops.
    """

    eval_every: int = 1
    checkpoint_every: int = 0
    max_empty_rounds: int = 2
    resume_every: int = 0
    min_clients: int = 0
    too_few: str = "stop"
    max_retries: int = 2


def most_common_reason(grid: MeteredGrid, rounds: list[int], attempt: int | None = None) -> str:
    """The most frequent reason of the non-``ok`` train exchanges of ``rounds`` (of one attempt)."""
    reasons = Counter(
        f"{r.status}: {r.reason}" if r.reason else r.status
        for rnd in rounds
        for r in grid.ledger.rows_of(rnd)
        if r.phase == "train" and r.status != "ok" and (attempt is None or r.attempt == attempt)
    )
    if not reasons:
        return "no update was kept"
    reason, count = reasons.most_common(1)[0]
    return f"{reason} ({count} of {sum(reasons.values())} failed exchanges)"


def trailing_empty_rounds(grid: MeteredGrid, last_round: int) -> list[int]:
    """The consecutive rounds up to ``last_round`` that aggregated nothing (from the ledger)."""
    empty: list[int] = []
    for rnd in range(last_round, 0, -1):
        record = grid.ledger.rounds.get(rnd)
        if record is None or not record.empty:
            break
        empty.insert(0, rnd)
    return empty


def step_round(protocol: TrainingProtocol, run: ProtocolRun, server_round: int, settings: LoopSettings) -> dict[str, float]:
    """Begin ``server_round`` and run its step, again while it keeps too few updates (by policy).

    Raises
    ------
    TooFewUpdatesError
        The round kept fewer than ``settings.min_clients`` updates and may not be retried (again).
    """
    from fedsplit.simulation.checkpoint import NotResumable, capture_protocol, restore_protocol

    grid: MeteredGrid = run.grid  # type: ignore[assignment]
    grid.begin_round(server_round)
    retry = settings.min_clients > 0 and settings.too_few == "retry"
    while True:
        before = None
        if retry:
            try:
                before = capture_protocol(protocol, grid)
            except NotResumable as exc:
                raise NotResumable(f"faults.too_few = 'retry' needs a protocol whose state can be saved: {exc}") from exc
        metrics = dict(protocol.step(run, server_round) or {})
        kept = grid.kept_terminals("train")
        if settings.min_clients <= 0 or kept >= settings.min_clients:
            return metrics
        short = f"{kept} update(s) kept, fewer than faults.min_clients = {settings.min_clients}"
        if retry and grid.attempt < settings.max_retries:
            log.warning("round %d: %s (%s); trying the round again (attempt %d of %d)", server_round, short,
                        most_common_reason(grid, [server_round], grid.attempt), grid.attempt + 2, settings.max_retries + 1)
            grid.retry_round(f"round retried: {short}")
            restore_protocol(protocol, before, grid)  # type: ignore[arg-type]
            continue
        tries = f" after {grid.attempt + 1} attempts" if retry else ""
        raise TooFewUpdatesError(
            f"stopped in round {server_round}{tries}: {short}; most common reason: "
            f"{most_common_reason(grid, [server_round], grid.attempt)}"
        )


class _RoundEvaluation:
    """A round's evaluation that runs during the next round's first exchange: it evaluates
    ``state``, adds the metrics to the round's record (closed already), reports the round and
    writes its resume point (``then``). An exception is kept in ``error`` for the loop to raise
    (the engine runs this mid-exchange)."""

    def __init__(self, evaluate: Callable[[StateDict], dict[str, float]], state: StateDict, on_round: Callable[[RoundRecord], None] | None) -> None:
        self.evaluate, self.state, self.on_round = evaluate, state, on_round
        self.record: RoundRecord | None = None  # set when the round is closed, before any exchange
        self.then: Callable[[], None] | None = None  # the round's resume point's writer, if one is due
        self.error: Exception | None = None

    def __call__(self) -> None:
        if self.record is None:  # the loop stopped before the round closed: nothing to report
            return
        try:
            self.record.metrics.update(self.evaluate(self.state))
            if self.on_round is not None:
                self.on_round(self.record)
            if self.then is not None:
                self.then()
        except Exception as exc:  # noqa: BLE001 - raised by the loop after the exchange (a BaseException, e.g. Ctrl-C, goes through)
            self.error = exc
        finally:
            self.state = {}  # the model's copy is not kept past its evaluation


def run_protocol(
    protocol: TrainingProtocol,
    run: ProtocolRun,
    *,
    evaluate: Callable[[StateDict], dict[str, float]] | None = None,
    settings: LoopSettings | None = None,
    on_round: Callable[[RoundRecord], None] | None = None,
    checkpoint: Callable[[int, StateDict], None] | None = None,
    resume: Callable[[], int] | None = None,
    save_resume_point: Callable[[int], None] | None = None,
    resume_point: Callable[[int], Callable[[], None] | None] | None = None,
    on_stop: Callable[[int, str], None] | None = None,
) -> StateDict:
    """Run ``protocol`` for ``run.num_rounds`` rounds on ``run.grid``; return the final weights.

    Parameters
    ----------
    protocol : TrainingProtocol
        The server side of the training method.
    run : ProtocolRun
        Grid (a :class:`MeteredGrid`), rounds, initial weights and configs.
    evaluate : callable, optional
        ``state_dict -> metrics`` (e.g. accuracy on the server's held-out set); its metrics are
        stored with the round. It is given a copy of the round's global state and, where the grid
        offers it (:meth:`MeteredGrid.run_while_training`), runs during the next round's first
        exchange, while the terminals train: the last round, a checkpointed round, a round whose
        resume point ``save_resume_point`` writes at once, and every round on other grids are
        evaluated before the round closes.
    settings : LoopSettings, optional
        Evaluation / checkpoint cadence and the empty-round limit.
    on_round : callable, optional
        Called with each closed round's :class:`RoundRecord` (progress display), in round order,
        once its evaluation's metrics are in it (for an overlapped evaluation: during the next
        round's first exchange).
    checkpoint : callable, optional
        ``(round, state_dict) -> None``, called every ``settings.checkpoint_every`` rounds.
    resume : callable, optional
        Called once after ``protocol.start``: restores a saved state and returns the last round
        it completed (0 = start from round 1).
    save_resume_point : callable, optional
        ``(round) -> None``, called after a round every ``settings.resume_every`` rounds and
        after the last, once the round is closed, evaluated and reported (such rounds are then
        evaluated before they close).
    resume_point : callable, optional
        Instead of ``save_resume_point``: ``(round) -> write``, called at the same points, after
        the round closed, to capture what the round ended with; ``write()`` (None: nothing to
        write) is called once the round is evaluated and reported, which for an overlapped
        evaluation is during the next round's first exchange. The ledger a resume point holds
        then has the round's metrics.
    on_stop : callable, optional
        ``(round, reason) -> None``, called when the protocol ended the run early after
        ``round`` (its :meth:`~fedsplit.strategies.protocol.TrainingProtocol.stop_reason`); a
        resumed run that had stopped so runs no further round and calls it again.

    Raises
    ------
    EmptyRoundsError
        ``settings.max_empty_rounds`` consecutive rounds aggregated nothing, or the run ended
        without a single round that aggregated something (fewer rounds than that limit); the
        message names the most common reason.
    TooFewUpdatesError
        A round kept fewer than ``settings.min_clients`` updates (see :func:`step_round`).
    """
    settings = settings or LoopSettings()
    grid: MeteredGrid = run.grid  # type: ignore[assignment]
    protocol.start(run)
    done = resume() if resume is not None else 0
    stop = protocol.stop_reason(run) if done > 0 else None  # resumed after the round it stopped in
    if stop:
        log.info("stopped after round %d of %d: %s", done, run.num_rounds, stop)
        if on_stop is not None:
            on_stop(done, stop)
        protocol.finish(run)
        return protocol.global_state()
    deferred: _RoundEvaluation | None = None
    try:
        for server_round in range(done + 1, run.num_rounds + 1):
            try:
                metrics = step_round(protocol, run, server_round, settings)
            finally:
                grid.run_deferred_work()  # the last round's evaluation, where no exchange of this one ran it
            if deferred is not None and deferred.error is not None:
                raise deferred.error
            stop = protocol.stop_reason(run)
            last = server_round == run.num_rounds or bool(stop)
            due = settings.eval_every > 0 and (server_round % settings.eval_every == 0 or last)
            checkpoint_due = checkpoint is not None and settings.checkpoint_every > 0 and server_round % settings.checkpoint_every == 0
            saves = resume_point is not None or save_resume_point is not None
            resume_due = saves and settings.resume_every > 0 and (server_round % settings.resume_every == 0 or last)
            deferred = None
            if evaluate is not None and due:
                state = protocol.global_state()
                # The evaluation of this round's model overlaps the next round's training where the
                # grid offers it; the run's last round, a checkpointed one, and one whose resume
                # point is written at once (``save_resume_point``) are evaluated before they close.
                if not (last or checkpoint_due or (resume_due and resume_point is None)):
                    # a copy: a protocol may train its tensors in place in the next round (split learning's server part)
                    deferred = _RoundEvaluation(evaluate, {k: v.detach().clone() for k, v in state.items()}, on_round)
                    if not grid.run_while_training(deferred):
                        deferred = None
                if deferred is None:
                    metrics.update(evaluate(state))
            record = grid.close_round(metrics)
            if deferred is not None:
                deferred.record = record
            empty = trailing_empty_rounds(grid, server_round)
            if record.empty:
                log.warning("round %d: nothing aggregated (%s)", server_round, most_common_reason(grid, [server_round]))
            if on_round is not None and deferred is None:
                on_round(record)
            if checkpoint_due:
                checkpoint(server_round, protocol.global_state())  # type: ignore[misc]
            if settings.max_empty_rounds > 0 and len(empty) >= settings.max_empty_rounds:
                raise EmptyRoundsError(
                    f"stopped after round {server_round}: {len(empty)} consecutive rounds aggregated no update; "
                    f"most common reason: {most_common_reason(grid, empty)}"
                )
            if settings.max_empty_rounds > 0 and last and len(empty) == server_round:  # fewer rounds than the limit, all empty
                raise EmptyRoundsError(
                    f"the run ended after round {server_round} without aggregating any update; "
                    f"most common reason: {most_common_reason(grid, empty)}"
                )
            # After the stop check: a run resumed from here is one that had not stopped.
            if resume_due and resume_point is not None:
                write = resume_point(server_round)  # what the round ended with, captured now
                if write is not None and deferred is not None:
                    deferred.then = write  # once the round's metrics are in the ledger
                elif write is not None:
                    write()
            elif resume_due:
                save_resume_point(server_round)  # type: ignore[misc]
            if stop:
                log.info("stopped after round %d of %d: %s", server_round, run.num_rounds, stop)
                if on_stop is not None:
                    on_stop(server_round, stop)
                break
    finally:
        grid.run_deferred_work()  # a round's evaluation is never lost, whatever ended the loop
    protocol.finish(run)
    return protocol.global_state()


__all__ = ["EmptyRoundsError", "LoopSettings", "TooFewUpdatesError", "most_common_reason", "run_protocol", "step_round", "trailing_empty_rounds"]
