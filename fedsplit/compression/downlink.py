"""Downlink compression of the global model delta, with server-side error feedback.

The server keeps a broadcast reference ``R`` (the model every synced client
holds) and a residual ``e``. Each round, with ``G`` the new global model::

    intended = (G_r - G_{r-1}) + e_{r-1}        sent = decode(encode(intended))
    R_r = R_{r-1} + sent                        e_r = intended - sent

so ``R_r + e_r == G_r`` (up to float32 rounding): nothing is lost, only delayed.
Clients apply the same ``sent`` to their replica with the same function
(:func:`apply_downlink`), so replicas stay bit-identical to ``R``. A client whose
replica is not at round ``r - 1`` needs a dense copy of ``R_r``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fedsplit.compression.codec import Codec, EncodeContext
from fedsplit.compression.delta import apply_update, model_update, specs_of
from fedsplit.compression.feedback import compress_with_feedback
from fedsplit.compression.payload import decode_update

__all__ = ["DownlinkStep", "BroadcastReference", "apply_downlink"]


@dataclass(frozen=True)
class DownlinkStep:
    """What the server broadcasts for one round.

    Attributes
    ----------
    server_round : int
        Round whose reference this step produces.
    base_round : int or None
        Round a replica must be at to apply ``payload``; ``None``: everyone
        needs the dense reference (first round, changed model layout, or a
        payload that could not be decoded finitely).
    payload : bytes or None
        Compressed delta ``R_r - R_{base}``; ``len(payload)`` bytes.
    reference : dict[str, np.ndarray]
        ``R_r``, the model clients train from this round.
    """

    server_round: int
    base_round: int | None
    payload: bytes | None
    reference: dict[str, np.ndarray]


class BroadcastReference:
    """Server-side state of downlink compression (reference model and residual)."""

    def __init__(self, codec: Codec, *, error_feedback: bool = True, seed: int = 0) -> None:
        self.codec = codec
        self.error_feedback = error_feedback
        self._ctx = EncodeContext(rng=np.random.default_rng([seed, 0xD0E1]), state={})
        self.round: int | None = None
        self.reference: dict[str, np.ndarray] | None = None
        self.residual: dict[str, np.ndarray] = {}
        self._previous_global: dict[str, np.ndarray] | None = None

    def advance(self, server_round: int, global_arrays: Mapping[str, np.ndarray]) -> DownlinkStep:
        """Move the reference towards ``global_arrays`` and return the broadcast."""
        current = {k: np.array(v, copy=True) for k, v in global_arrays.items()}
        previous = self._previous_global
        self._previous_global = current
        if self.reference is None or previous is None or specs_of(previous) != specs_of(current):
            return self._reset(server_round, current)
        step = compress_with_feedback(
            model_update(current, previous),
            self.codec,
            residual=self.residual,
            error_feedback=self.error_feedback,
            ctx=self._ctx,
        )
        if step.sent is None:
            return self._reset(server_round, current)
        base = self.round
        self.reference = apply_update(self.reference, step.sent)
        self.residual = step.residual
        self.round = server_round
        return DownlinkStep(server_round, base, step.payload, self.reference)

    def _reset(self, server_round: int, current: dict[str, np.ndarray]) -> DownlinkStep:
        self.reference = {k: v.copy() for k, v in current.items()}
        self.residual = {}
        self.round = server_round
        return DownlinkStep(server_round, None, None, self.reference)


def apply_downlink(replica: Mapping[str, np.ndarray], payload: bytes) -> dict[str, np.ndarray]:
    """Client side: the replica after applying a downlink payload.

    Raises
    ------
    PayloadError
        If the payload does not match the replica's names and shapes or is malformed.
    """
    decoded = decode_update(payload, expected=specs_of(replica))
    return apply_update(replica, decoded.tensors)
