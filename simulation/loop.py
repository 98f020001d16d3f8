"""The server loop: it owns the rounds of a run, whatever the training protocol.

:func:`run_protocol` drives a :class:`~fedsplit.strategies.protocol.TrainingProtocol` over a
:class:`~fedsplit.simulation.metered_grid.MeteredGrid`: it begins each round on the grid (one
round counter, the grid's), asks the protocol for a step, evaluates the global model when due,
closes the round in the ledger, reports progress, checkpoints when due, and stops the run when
rounds keep aggregating nothing (a run that trains nothing must not end as if it had).
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
    """

    eval_every: int = 1
    checkpoint_every: int = 0
    max_empty_rounds: int = 2


def most_common_reason(grid: MeteredGrid, rounds: list[int]) -> str:
    """The most frequent reason of the non-``ok`` train exchanges of ``rounds``."""
    reasons = Counter(
        f"{r.status}: {r.reason}" if r.reason else r.status
        for rnd in rounds
        for r in grid.ledger.rows_of(rnd)
        if r.phase == "train" and r.status != "ok"
    )
    if not reasons:
        return "no update was kept"
    reason, count = reasons.most_common(1)[0]
    return f"{reason} ({count} of {sum(reasons.values())} failed exchanges)"


def run_protocol(
    protocol: TrainingProtocol,
    run: ProtocolRun,
    *,
    evaluate: Callable[[StateDict], dict[str, float]] | None = None,
    settings: LoopSettings | None = None,
    on_round: Callable[[RoundRecord], None] | None = None,
    checkpoint: Callable[[int, StateDict], None] | None = None,
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
        stored with the round.
    settings : LoopSettings, optional
        Evaluation / checkpoint cadence and the empty-round limit.
    on_round : callable, optional
        Called with each closed round's :class:`RoundRecord` (progress display).
    checkpoint : callable, optional
        ``(round, state_dict) -> None``, called every ``settings.checkpoint_every`` rounds.

    Raises
    ------
    EmptyRoundsError
        ``settings.max_empty_rounds`` consecutive rounds aggregated nothing; the message names
        the most common reason.
    """
    settings = settings or LoopSettings()
    grid: MeteredGrid = run.grid  # type: ignore[assignment]
    protocol.start(run)
    empty: list[int] = []
    for server_round in range(1, run.num_rounds + 1):
        grid.begin_round(server_round)
        metrics = dict(protocol.step(run, server_round) or {})
        due = settings.eval_every > 0 and (server_round % settings.eval_every == 0 or server_round == run.num_rounds)
        if evaluate is not None and due:
            metrics.update(evaluate(protocol.global_state()))
        record = grid.close_round(metrics)
        empty = empty + [server_round] if record.empty else []
        if record.empty:
            log.warning("round %d: nothing aggregated (%s)", server_round, most_common_reason(grid, [server_round]))
        if on_round is not None:
            on_round(record)
        if checkpoint is not None and settings.checkpoint_every > 0 and server_round % settings.checkpoint_every == 0:
            checkpoint(server_round, protocol.global_state())
        if settings.max_empty_rounds > 0 and len(empty) >= settings.max_empty_rounds:
            raise EmptyRoundsError(
                f"stopped after round {server_round}: {len(empty)} consecutive rounds aggregated no update; "
                f"most common reason: {most_common_reason(grid, empty)}"
            )
    protocol.finish(run)
    return protocol.global_state()


__all__ = ["EmptyRoundsError", "LoopSettings", "most_common_reason", "run_protocol"]
