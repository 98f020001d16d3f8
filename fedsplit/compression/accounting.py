"""Byte accounting: dense (fp32) reference sizes, per-message traffic records, ratios."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from fedsplit.compression.payload import TensorSpec, is_coded

__all__ = ["dense_nbytes", "TrafficRecord", "compression_ratio", "summarize_traffic"]


def dense_nbytes(tensors: Mapping[str, np.ndarray] | Mapping[str, TensorSpec]) -> int:
    """Uncompressed size in bytes: 4 per floating element (fp32), raw size for others."""
    total = 0
    for value in tensors.values():
        if isinstance(value, TensorSpec):
            numel, dtype = value.numel, np.dtype(value.dtype)
        else:
            arr = np.asarray(value)
            numel, dtype = arr.size, arr.dtype
        total += numel * (4 if is_coded(dtype) else dtype.itemsize)
    return total


def compression_ratio(dense_bytes: int, payload_bytes: int) -> float:
    """``dense_bytes / payload_bytes`` (inf for an empty payload)."""
    return dense_bytes / payload_bytes if payload_bytes else float("inf")


@dataclass(frozen=True)
class TrafficRecord:
    """Bytes of one model transfer.

    Attributes
    ----------
    server_round : int
        Round of the transfer.
    node_id : int
        Flower node id of the client.
    direction : str
        ``"up"`` (client to server) or ``"down"``.
    payload_bytes : int
        Bytes actually sent: ``len(payload)``, or the dense size for a dense transfer.
    dense_bytes : int
        Size of the same tensors as fp32 (raw size for non-float buffers).
    codec : str
        Codec name, or ``"dense"`` for an uncompressed transfer.
    """

    server_round: int
    node_id: int
    direction: str
    payload_bytes: int
    dense_bytes: int
    codec: str

    @property
    def ratio(self) -> float:
        """Compression ratio against fp32."""
        return compression_ratio(self.dense_bytes, self.payload_bytes)


def summarize_traffic(records: Iterable[TrafficRecord]) -> dict[str, float]:
    """Totals per direction: ``{up,down}-bytes``, ``{up,down}-dense-bytes``, ``{up,down}-ratio``."""
    totals = {"up-bytes": 0, "up-dense-bytes": 0, "down-bytes": 0, "down-dense-bytes": 0}
    for rec in records:
        totals[f"{rec.direction}-bytes"] += rec.payload_bytes
        totals[f"{rec.direction}-dense-bytes"] += rec.dense_bytes
    out: dict[str, float] = dict(totals)
    for d in ("up", "down"):
        out[f"{d}-ratio"] = compression_ratio(totals[f"{d}-dense-bytes"], totals[f"{d}-bytes"])
    return out
