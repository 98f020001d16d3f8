"""Quantising codecs: QSGD (stochastic, unbiased) and scaled sign (EF-signSGD)."""

from __future__ import annotations

import struct

import numpy as np

from fedsplit.compression.bitpack import (
    BodyReader,
    numel,
    pack_bits,
    pack_uint,
    packed_nbytes,
    unpack_bits,
    unpack_uint,
)
from fedsplit.compression.codec import Codec, EncodeContext, check_int_range
from fedsplit.compression.errors import PayloadError

__all__ = ["QSGDCodec", "ScaledSignCodec", "qsgd_code_width"]

MAX_LEVELS = 127
MAX_BUCKET = 1 << 24
_QSGD_HEADER = struct.Struct("<BI")  # levels s, bucket size (elements)
_SCALE = struct.Struct("<f")


def qsgd_code_width(levels: int) -> int:
    """Bits per element for QSGD with ``levels`` levels: codes cover ``-s..s``."""
    return int(2 * levels).bit_length()


def _dequantize(codes: np.ndarray, scale: np.ndarray, levels: int, bucket: int) -> np.ndarray:
    """``(code - s) * scale[i // bucket] / s`` for every element ``i``.

    Works on the ``n`` codes in place (full buckets as a 2-D view, then the
    partial last one), so it allocates ``4 n`` bytes whatever the bucket size:
    a bucket size claimed by the body must not size a buffer. A NaN or infinite
    scale gives NaN/Inf values without a warning; the payload's finiteness
    check rejects them.
    """
    values = codes.astype(np.float32)
    values -= np.float32(levels)
    with np.errstate(invalid="ignore", over="ignore"):
        step = scale.astype(np.float32) / np.float32(levels)
        full = values.size // bucket
        whole_buckets = values[: full * bucket].reshape(full, bucket)  # a view: scaled in place
        whole_buckets *= step[:full, None]
        if full * bucket < values.size:
            values[full * bucket :] *= step[full]
    return values


class QSGDCodec(Codec):
    """QSGD (Alistarh et al., 2017) with ``s`` levels and bucketing, max-norm scaled.

    Each bucket of ``bucket_size`` consecutive elements is scaled by its max
    absolute value ``m``; ``|x| / m * s`` is rounded stochastically to one of its
    two neighbouring integers, so ``E[decode(encode(x))] = x`` (unbiased).

    Body: ``u8 s | u32 bucket_size | f32 scale per bucket | codes``, where each
    code ``level + s`` takes ``ceil(log2(2s + 1))`` bits (6 bits for ``s = 16``).
    Size in bytes: ``5 + 4 * ceil(n / bucket_size) + ceil(n * width / 8)``.
    """

    name = "qsgd"

    def __init__(self, levels: int = 16, bucket_size: int = 512) -> None:
        self.levels = check_int_range("levels", levels, 1, MAX_LEVELS)
        self.bucket_size = check_int_range("bucket_size", bucket_size, 1, MAX_BUCKET)

    def params(self) -> dict[str, int]:
        return {"levels": self.levels, "bucket_size": self.bucket_size}

    def encode(self, name: str, x: np.ndarray, ctx: EncodeContext) -> bytes:
        with np.errstate(invalid="ignore", over="ignore"):
            return self._encode(x, ctx)

    def _encode(self, x: np.ndarray, ctx: EncodeContext) -> bytes:
        s, bucket = self.levels, self.bucket_size
        flat = x.ravel()
        n = flat.size
        nb = -(-n // bucket)
        padded = np.zeros(nb * bucket, dtype=np.float32)
        padded[:n] = flat
        mag = np.abs(padded).reshape(nb, bucket)
        scale = mag.max(axis=1) if nb else np.zeros(0, dtype=np.float32)
        safe = np.where(scale > 0, scale, np.float32(1.0)).astype(np.float32)
        level = mag * (np.float32(s) / safe)[:, None]
        level += ctx.rng.random(level.shape, dtype=np.float32)
        np.floor(level, out=level)
        np.minimum(level, s, out=level)  # guards float round-up at |x| == max
        np.copysign(level, padded.reshape(nb, bucket), out=level)
        level += np.float32(s)
        codes = level.ravel()[:n].astype(np.uint8)  # NaN input: NaN scale, decodes to NaN anyway
        header = _QSGD_HEADER.pack(s, bucket)
        return header + scale.astype("<f4").tobytes() + pack_uint(codes, qsgd_code_width(s))

    def decode(self, body: memoryview, shape: tuple[int, ...]) -> np.ndarray:
        reader = BodyReader(body, "qsgd body")
        s, bucket = reader.unpack(_QSGD_HEADER)
        if not 1 <= s <= MAX_LEVELS or not 1 <= bucket <= MAX_BUCKET:
            raise PayloadError(f"qsgd levels {s} or bucket size {bucket} out of range")
        n = numel(shape)
        nb = -(-n // bucket)
        width = qsgd_code_width(s)
        code_nbytes = packed_nbytes(n, width)
        reader.expect_remaining(4 * nb + code_nbytes, f"{nb} bucket scales and {n} codes of {width} bits")
        scale = reader.array("<f4", nb)
        codes = unpack_uint(reader.take(code_nbytes), n, width)
        if n and int(codes.max()) > 2 * s:
            raise PayloadError(f"qsgd code {int(codes.max())} exceeds 2 * levels = {2 * s}")
        return _dequantize(codes, scale, s, bucket).reshape(shape)


class ScaledSignCodec(Codec):
    """Scaled sign (Karimireddy et al., 2019): ``mean|x| * sign(x)``, sign(0) = +1.

    Body: ``f32 scale | n sign bits`` = ``4 + ceil(n / 8)`` bytes. Biased: use with
    error feedback.
    """

    name = "sign"

    def encode(self, name: str, x: np.ndarray, ctx: EncodeContext) -> bytes:
        scale = float(np.mean(np.abs(x), dtype=np.float64)) if x.size else 0.0
        return np.array([scale], dtype="<f4").tobytes() + pack_bits(x.ravel() < 0)

    def decode(self, body: memoryview, shape: tuple[int, ...]) -> np.ndarray:
        reader = BodyReader(body, "sign body")
        (scale,) = reader.unpack(_SCALE)
        n = numel(shape)
        reader.expect_remaining(packed_nbytes(n, 1), f"{n} sign bits")
        negative = unpack_bits(reader.take(reader.remaining), n)
        scale32 = np.float32(scale)
        return np.where(negative, -scale32, scale32).astype(np.float32, copy=False).reshape(shape)
