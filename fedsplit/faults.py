"""Seeded fault draws for emulated terminals: which terminal crashes, or loses its process, when.

A :class:`FaultPlan` decides, for one terminal in one attempt of one round, whether its ClientApp
raises (``crash``), whether the process running it dies (``kill``), or neither. The draw is a pure
function of ``(seed, terminal, round, attempt)``: a run and its resumed continuation inject the
same faults, and a retried round (``faults.too_few = "retry"``) draws afresh. The engines carry
the faults out (:mod:`fedsplit.simulation.faults`); nothing here imports Flower or Ray.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FAULT_KINDS: tuple[str, ...] = ("crash", "kill")

_STREAM = 0xFA17  # separates these draws from every other seeded stream of a run


class InjectedCrash(RuntimeError):
    """Raised in place of running a terminal's ClientApp: an injected ``crash`` fault."""


@dataclass(frozen=True)
class FaultPlan:
    """Probabilities of the injected faults, per terminal and round.

    Attributes
    ----------
    crash_rate : float
        Probability that a terminal's ClientApp raises in a round (every message of that terminal in
        that round attempt gets an error reply; the terminal's state is unchanged).
    kill_rate : float
        Probability that the process running the terminal dies while handling its message (the
        engine replaces it; the reply is lost).
    seed : int
        Seed of the draws.
    """

    crash_rate: float = 0.0
    kill_rate: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("crash_rate", "kill_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"faults.{name} = {value!r}: must be >= 0 and <= 1")
        if self.crash_rate + self.kill_rate > 1.0:
            raise ValueError(
                f"faults.crash_rate + faults.kill_rate = {self.crash_rate + self.kill_rate!r}: must be <= 1 "
                "(one draw decides crash, kill or neither)"
            )

    @property
    def active(self) -> bool:
        """Whether any fault can be drawn."""
        return self.crash_rate > 0.0 or self.kill_rate > 0.0

    def fault_of(self, partition_id: int, server_round: int, attempt: int = 0) -> str | None:
        """``"crash"``, ``"kill"`` or None for terminal ``partition_id`` in this round attempt.

        One uniform draw ``u`` from a generator seeded by ``(seed, terminal, round, attempt)``:
        ``u < crash_rate`` is a crash, ``u < crash_rate + kill_rate`` a kill.
        """
        if not self.active:
            return None
        key = [self.seed % 2**63, int(partition_id), int(server_round), int(attempt), _STREAM]
        u = np.random.default_rng(key).random()
        if u < self.crash_rate:
            return "crash"
        if u < self.crash_rate + self.kill_rate:
            return "kill"
        return None


__all__ = ["FAULT_KINDS", "FaultPlan", "InjectedCrash"]
