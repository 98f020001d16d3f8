"""Warm-up schedule for sparsifying codecs (Deep Gradient Compression, Lin et al., 2018)."""

from __future__ import annotations

__all__ = ["warmup_density"]


def warmup_density(server_round: int, target: float, warmup_rounds: int, start: float = 0.25) -> float:
    """Density for ``server_round`` (1-based), decaying exponentially to ``target``.

    Round 1 uses ``start``; the density shrinks by the same factor each round and
    reaches ``target`` at round ``warmup_rounds + 1`` (DGC's 25%, 6.25%, 1.56%,
    0.4%, 0.1% for ``start = 0.25``, ``target = 0.001``, 4 warm-up rounds).
    Without warm-up (``warmup_rounds == 0``) or once it is over, ``target``.
    """
    if warmup_rounds <= 0 or server_round > warmup_rounds or start <= target:
        return target
    t = (max(server_round, 1) - 1) / warmup_rounds
    return float(start ** (1.0 - t) * target**t)
