"""PowerSGD low-rank codec (Vogels et al., 2019) with warm start."""

from __future__ import annotations

import struct

import numpy as np

from fedsplit.compression.bitpack import BodyReader, numel
from fedsplit.compression.codec import Codec, EncodeContext, check_int_range
from fedsplit.compression.errors import PayloadError

__all__ = ["PowerSGDCodec"]

MAX_RANK = 1024
_MODE = struct.Struct("<B")
_LOWRANK_HEADER = struct.Struct("<IIH")  # rows m, cols, rank r
_DENSE, _LOWRANK = 0, 1


def _low_rank_product(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``p @ q.T`` as a sum of outer products: much faster than BLAS for small rank."""
    with np.errstate(all="ignore"):
        if p.shape[1] > 8:
            return (p @ q.T).astype(np.float32)
        out = np.multiply(p[:, 0:1], q[:, 0])
        for j in range(1, p.shape[1]):
            out += np.multiply(p[:, j : j + 1], q[:, j])
        return out


def _orthonormalize(p: np.ndarray) -> np.ndarray:
    q, _ = np.linalg.qr(p.astype(np.float64), mode="reduced")
    return q.astype(np.float32)


class PowerSGDCodec(Codec):
    """Rank-``r`` approximation ``P Q^T`` by one power iteration per round.

    A tensor of shape ``(m, ...)`` is viewed as an ``m x (n / m)`` matrix ``M``.
    With the previous round's ``Q`` (warm start, kept in the sender's
    :attr:`EncodeContext.state` under the tensor name; random Gaussian at first):
    ``P = orth(M Q)``, ``Q = M^T P``, and the receiver gets ``P Q^T``. Vectors
    and matrices too small to gain (``(m + cols) * r >= m * cols``) are sent as
    dense fp32. Biased: use with error feedback.

    Body: ``u8 mode`` then either ``n x f32`` (mode 0) or
    ``u32 m | u32 cols | u16 r | m*r f32 (P) | cols*r f32 (Q)`` (mode 1).
    """

    name = "powersgd"

    def __init__(self, rank: int = 2) -> None:
        self.rank = check_int_range("rank", rank, 1, MAX_RANK)

    def params(self) -> dict[str, int]:
        return {"rank": self.rank}

    def encode(self, name: str, x: np.ndarray, ctx: EncodeContext) -> bytes:
        n = x.size
        if x.ndim < 2 or n == 0:
            return _MODE.pack(_DENSE) + np.asarray(x, dtype="<f4", order="C").tobytes()
        m = x.shape[0]
        cols = n // m
        r = min(self.rank, m, cols)
        if (m + cols) * r >= m * cols:
            return _MODE.pack(_DENSE) + np.asarray(x, dtype="<f4", order="C").tobytes()
        mat = x.reshape(m, cols)
        q = ctx.state.get(name)
        if (
            q is None
            or q.shape != (cols, r)
            or not np.all(np.isfinite(q))
            or np.any(np.linalg.norm(q, axis=0) == 0)
        ):
            q = ctx.rng.standard_normal((cols, r), dtype=np.float32)
        with np.errstate(all="ignore"):
            p = _orthonormalize(mat @ q)
            q = (mat.T @ p).astype(np.float32)
        ctx.state[name] = q
        return (
            _MODE.pack(_LOWRANK)
            + _LOWRANK_HEADER.pack(m, cols, r)
            + p.astype("<f4").tobytes()
            + q.astype("<f4").tobytes()
        )

    def decode(self, body: memoryview, shape: tuple[int, ...]) -> np.ndarray:
        reader = BodyReader(body, "powersgd body")
        (mode,) = reader.unpack(_MODE)
        n = numel(shape)
        if mode == _DENSE:
            return reader.rest_array("<f4", n).astype(np.float32).reshape(shape)
        if mode != _LOWRANK:
            raise PayloadError(f"unknown powersgd mode {mode}")
        m, cols, r = reader.unpack(_LOWRANK_HEADER)
        if m * cols != n or r < 1 or r > min(m, cols):
            raise PayloadError(f"powersgd factors {m}x{cols} rank {r} do not fit shape {shape}")
        factors = reader.rest_array("<f4", (m + cols) * r)
        p = factors[: m * r].reshape(m, r).astype(np.float32)
        q = factors[m * r :].reshape(cols, r).astype(np.float32)
        return _low_rank_product(p, q).reshape(shape)
