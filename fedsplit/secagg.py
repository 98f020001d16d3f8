"""Secure aggregation (SecAgg / SecAgg+), the crypto-free part: who shares with whom, how many
shares unmask, and when a round can no longer be unmasked.

The protocol (Bonawitz et al. 2017; SecAgg+: Bell et al. 2020), as Flower's
``SecAggPlusWorkflow`` / ``secaggplus_mod`` run it and fedsplit drives it
(:mod:`fedsplit.strategies.secagg_protocol` on the server, :mod:`fedsplit.clients.secagg_client`
on the terminals):

0. *setup*: every sampled terminal makes two key pairs and advertises the public keys;
1. *share keys*: each terminal gets its neighbours' public keys, splits its self-mask seed and its
   first private key into Shamir shares (``threshold`` of ``num_shares`` reconstruct), and sends
   one share pair to each neighbour, encrypted for it (the server only forwards ciphertexts);
2. *masked upload*: each terminal trains, quantizes ``weight * update`` to integers, adds its
   self-mask and the pairwise masks agreed with its surviving neighbours (modulo
   ``modulus_range``), and sends that;
3. *unmask*: survivors send the shares the server needs: the self-mask seed of every terminal
   whose vector arrived, the first private key of every terminal that dropped after sharing keys
   (its pairwise masks are then recomputed and removed). The server learns the sum only.

This module holds the settings, the neighbour graph and the survivor rules (:func:`check_survivors`),
with the reasons a round fails in one line. The names follow Flower's (``num_shares``,
``threshold``, ``clipping_range``, ``quantization_range``, ``modulus_range``, ``max_weight``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["MASKED_KEY", "STAGE_ACTIONS", "WEIGHT_KEY", "SecAggSettings", "check_survivors", "neighbour_graph", "quantization_error_bound"]


MASKED_KEY = "fedsplit.secagg-masked"
"""Reply record of the masked vector (``uint32`` arrays by the model's keys, plus :data:`WEIGHT_KEY`)."""

WEIGHT_KEY = "fedsplit.secagg-weight"
"""Entry of the masked record holding the masked quantized weight (Flower's leading factor)."""

STAGE_ACTIONS: dict[str, str] = {
    "setup": "secagg_setup",
    "share_keys": "secagg_share",
    "unmask": "secagg_unmask",
}
"""Flower's SecAgg+ stage names (``flwr.common.secure_aggregation.secaggplus_constants.Stage``) ->
the ``train.<action>`` message type of each stage without training (the masked upload is ``train``)."""

@dataclass(frozen=True)
class SecAggSettings:
    """Parameters of secure aggregation (``secagg.*`` of the run configuration).

    Attributes
    ----------
    num_shares : int
        Shares each terminal's secrets are split into, i.e. its neighbourhood size, itself
        included; 0 = every sampled terminal (SecAgg: a complete graph). Fewer (odd, >= 3) is
        SecAgg+: each terminal shares with its ``num_shares - 1`` nearest in a seeded ring.
    threshold : int
        Shares that reconstruct a secret (>= 2); 0 = a majority of the shares
        (``shares // 2 + 1``). Up to ``shares - threshold`` neighbours of a terminal may drop; a
        server colluding with fewer than ``threshold`` terminals learns no individual update.
    clipping_range : float
        Weighted update values are clipped to ``[-clipping_range, clipping_range]`` (weight units)
        before quantization.
    quantization_range : int
        Integers per clipping interval: a value is quantized to ``[0, quantization_range)``.
    modulus_range : int
        Masks and sums are modulo this power of two (at most 2**32: masked values travel as
        ``uint32``).
    max_weight : float
        The largest weight (``num-examples``) a terminal may report; its update is scaled by
        ``num-examples / max_weight`` before quantization.
    """

    num_shares: int = 0
    threshold: int = 0
    clipping_range: float = 8.0
    quantization_range: int = 2**22
    modulus_range: int = 2**32
    max_weight: float = 1000.0

    def __post_init__(self) -> None:
        if self.num_shares < 0 or self.num_shares in (1, 2):
            raise ValueError(f"secagg.num_shares = {self.num_shares}: 0 (every sampled terminal) or >= 3")
        if self.threshold < 0 or self.threshold == 1:
            raise ValueError(f"secagg.threshold = {self.threshold}: 0 (a majority of the shares) or >= 2")
        if self.num_shares and self.threshold > self.num_shares:
            raise ValueError(f"secagg.threshold = {self.threshold}: more than secagg.num_shares = {self.num_shares}")
        if not self.clipping_range > 0:
            raise ValueError(f"secagg.clipping_range = {self.clipping_range}: must be > 0")
        if self.modulus_range > 2**32 or self.modulus_range & (self.modulus_range - 1):
            raise ValueError(f"secagg.modulus_range = {self.modulus_range}: a power of two <= 2**32")
        if not 0 < self.quantization_range < self.modulus_range:
            raise ValueError(f"secagg.quantization_range = {self.quantization_range}: must be in (0, modulus_range = {self.modulus_range})")
        if not self.max_weight > 0:
            raise ValueError(f"secagg.max_weight = {self.max_weight}: must be > 0")

    def shares_for(self, sampled: int) -> int:
        """Shares per terminal in a round with ``sampled`` terminals (never more than sampled)."""
        return sampled if self.num_shares == 0 else min(self.num_shares, sampled)

    def threshold_for(self, shares: int) -> int:
        """Shares that reconstruct a secret when each terminal has ``shares`` (at least 2)."""
        return max(2, shares // 2 + 1) if self.threshold == 0 else self.threshold

    def max_summands(self) -> int:
        """Most terminals whose quantized vectors sum without wrapping around ``modulus_range``."""
        return self.modulus_range // self.quantization_range


def neighbour_graph(ids: Sequence[int], num_shares: int, seed: Sequence[int]) -> dict[int, frozenset[int]]:
    """Each terminal's neighbourhood (itself included), as Flower's SecAgg+ workflow builds it:
    the ids in a seeded random ring, each with the ``num_shares // 2`` nearest on either side.

    Parameters
    ----------
    ids : sequence of int
        Secure ids of the sampled terminals.
    num_shares : int
        Neighbourhood size (:meth:`SecAggSettings.shares_for`); ``len(ids)`` = complete graph.
    seed : sequence of int
        Seed of the ring order (e.g. ``[run seed, round, attempt]``).
    """
    order = [int(i) for i in np.random.default_rng([int(s) % 2**32 for s in seed]).permutation(sorted(ids))]
    n, half = len(order), num_shares // 2
    return {nid: frozenset(order[(k + off) % n] for off in range(-half, half + 1)) for k, nid in enumerate(order)}


def check_survivors(
    stage: str,
    needed: Iterable[int],
    alive: Iterable[int],
    neighbours: Mapping[int, frozenset[int]],
    threshold: int,
) -> str | None:
    """Why the protocol cannot go on after ``stage``, or None when it can.

    At least ``threshold`` terminals must be left, and every terminal in ``needed`` (whose secret
    the server may have to reconstruct, or who must still take part) needs at least
    ``threshold`` neighbours in ``alive`` (itself included), as Flower's
    ``SecAggPlusWorkflow._check_threshold`` requires.

    Returns
    -------
    str or None
        One line: the stage, how many terminals are left (or the first terminal short of
        neighbours and how many it has), and the threshold.
    """
    alive = set(alive) & set(neighbours)
    if len(alive) < threshold:
        return (
            f"secure aggregation failed after {stage}: {len(alive)} of {len(neighbours)} sampled terminals left, "
            f"fewer than the threshold {threshold}"
        )
    for nid in sorted(needed):
        have = len(neighbours[nid] & alive)
        if have < threshold:
            dropped = len(set(neighbours) - alive)
            return (
                f"secure aggregation failed after {stage}: terminal with secure id {nid} has {have} surviving "
                f"neighbour(s), fewer than the threshold {threshold} ({dropped} of {len(neighbours)} sampled dropped out)"
            )
    return None


def quantization_error_bound(settings: SecAggSettings, weights: Sequence[float]) -> float:
    """Largest error, per value, of a securely aggregated weighted average against the exact one.

    Each terminal's ``weight / max_weight * value`` is rounded stochastically to a step of
    ``2 * clipping_range / quantization_range``, so the sum is off by less than one step per
    terminal; the sum is divided by the total quantized weight. The weights themselves are
    quantized to ``1 / quantization_range`` of ``max_weight`` (relative error of the average
    ``<= len(weights) / (quantization_range * min ratio)`` times the largest value, not included).
    Values beyond ``clipping_range`` (after weighting) are clipped, not bounded here.
    """
    step = 2.0 * settings.clipping_range / settings.quantization_range
    total_ratio = sum(round(w / settings.max_weight * settings.quantization_range) for w in weights) / settings.quantization_range
    return len(weights) * step / total_ratio if total_ratio > 0 else math.inf
