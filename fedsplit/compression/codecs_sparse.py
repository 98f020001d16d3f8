"""Sparsifying codecs: top-k (largest magnitudes) and random-k (unbiased)."""

from __future__ import annotations

import math
import struct

import numpy as np

from fedsplit.compression.bitpack import (
    BodyReader,
    decode_sorted_indices,
    encode_sorted_indices,
    numel,
    peek_index_header,
    sorted_indices_nbytes,
)
from fedsplit.compression.codec import Codec, EncodeContext, check_choice, check_float_range
from fedsplit.compression.codecs_dense import FP16_MAX
from fedsplit.compression.errors import PayloadError

__all__ = ["TopKCodec", "RandomKCodec", "kept_count", "VALUE_DTYPES"]

VALUE_DTYPES = ("float16", "float32")
_VALUE_CODES = {"float32": 0, "float16": 1}
_VALUE_WIRE = {0: np.dtype("<f4"), 1: np.dtype("<f2")}
_TOPK_HEADER = struct.Struct("<BI")  # value dtype code, k
_RANDK_HEADER = struct.Struct("<BQI")  # value dtype code, index seed, k


def kept_count(numel: int, density: float) -> int:
    """Elements kept out of ``numel``: ``ceil(density * numel)``, at least 1 if ``numel > 0``."""
    if numel == 0:
        return 0
    return min(numel, max(1, math.ceil(density * numel - 1e-9)))


def _encode_values(values: np.ndarray, value_dtype: str) -> bytes:
    if value_dtype == "float16":
        values = np.clip(values, -FP16_MAX, FP16_MAX)
    return values.astype(_VALUE_WIRE[_VALUE_CODES[value_dtype]]).tobytes()


def _value_dtype(code: int) -> np.dtype:
    """Wire dtype of the kept values for a body's value dtype ``code``."""
    if code not in _VALUE_WIRE:
        raise PayloadError(f"unknown value dtype code {code}")
    return _VALUE_WIRE[code]


def _check_kept(what: str, k: int, n: int) -> None:
    if k > n:
        raise PayloadError(f"{what} keeps {k} elements of a tensor with {n}")


class TopKCodec(Codec):
    """Top-k sparsification: keep the ``k = ceil(density * n)`` largest ``|x|``.

    Indices are Golomb-Rice coded gaps (about 8 bits per index at density 0.01);
    values are fp16 by default (clipped to +-65504) or fp32. Biased: use with error
    feedback.

    Body: ``u8 value dtype | u32 k | u8 rice b | u32 unary bits | unary stream |
    remainder stream | k values``.
    """

    name = "topk"

    def __init__(self, density: float = 0.01, value_dtype: str = "float16") -> None:
        self.density = check_float_range("density", density, 0.0, 1.0)
        self.value_dtype = check_choice("value_dtype", value_dtype, VALUE_DTYPES)

    def params(self) -> dict[str, object]:
        return {"density": self.density, "value_dtype": self.value_dtype}

    def encode(self, name: str, x: np.ndarray, ctx: EncodeContext) -> bytes:
        flat = x.ravel()
        n = flat.size
        k = kept_count(n, self.density)
        if k == n:
            idx = np.arange(n, dtype=np.int64)
        else:
            idx = np.sort(np.argpartition(np.abs(flat), n - k)[n - k :]).astype(np.int64)
        return (
            _TOPK_HEADER.pack(_VALUE_CODES[self.value_dtype], k)
            + encode_sorted_indices(idx)
            + _encode_values(flat[idx], self.value_dtype)
        )

    def decode(self, body: memoryview, shape: tuple[int, ...]) -> np.ndarray:
        reader = BodyReader(body, "topk body")
        code, k = reader.unpack(_TOPK_HEADER)
        n = numel(shape)
        _check_kept("topk", k, n)
        dtype = _value_dtype(code)
        b, unary_bits = peek_index_header(reader)
        reader.expect_remaining(
            sorted_indices_nbytes(k, b, unary_bits) + k * dtype.itemsize,
            f"{k} indices (Rice b={b}, {unary_bits} unary bits) and {k} values of {dtype.itemsize} bytes",
        )
        idx = decode_sorted_indices(reader, k, n)
        values = reader.rest_array(dtype, k).astype(np.float32)
        out = np.zeros(n, dtype=np.float32)
        out[idx] = values
        return out.reshape(shape)


def _random_indices(seed: int, n: int, k: int) -> np.ndarray:
    rng = np.random.Generator(np.random.PCG64(seed))
    return np.sort(rng.choice(n, size=k, replace=False, shuffle=False))


class RandomKCodec(Codec):
    """Random-k sparsification: keep ``k`` uniformly random elements (x ``n / k`` if unbiased).

    Indices are not sent: the body carries the 64-bit seed from which both sides
    draw them (NumPy PCG64, ``Generator.choice`` without replacement), so the
    size is ``13 + k * value bytes``. Values are fp32 by default (exactly
    unbiased); fp16 adds round-to-nearest error of at most 2**-11 relative.

    With ``unbiased=True`` (the default) the kept values are scaled by ``n / k``
    so that ``E[decode(encode(x))] = x``; that is the right codec *without* error
    feedback, but not with it: the residual ``x - C(x)`` then holds ``(1 - n/k) x``
    on the kept elements, so every element is multiplied by about ``-n / k`` each
    time it is picked and the residual grows geometrically until it overflows
    (in a run: every update rejected as NaN/Inf). Under error feedback random-k is used unscaled (``unbiased=False``,
    "memory" random-k of Stich et al., 2018): ``||x - C(x)||^2 = ||x||^2 - ||x_kept||^2``.
    :class:`~fedsplit.compression.config.CompressionConfig` picks that
    automatically (:attr:`error_feedback_params`). The flag only changes the
    encoder's values; the body format is the same.
    """

    name = "randk"
    error_feedback_params = {"unbiased": False}

    def __init__(self, density: float = 0.01, value_dtype: str = "float32", unbiased: bool = True) -> None:
        self.density = check_float_range("density", density, 0.0, 1.0)
        self.value_dtype = check_choice("value_dtype", value_dtype, VALUE_DTYPES)
        if not isinstance(unbiased, bool):
            raise ValueError(f"unbiased: got {unbiased!r}; allowed: true or false")
        self.unbiased = unbiased

    def params(self) -> dict[str, object]:
        return {"density": self.density, "value_dtype": self.value_dtype, "unbiased": self.unbiased}

    def encode(self, name: str, x: np.ndarray, ctx: EncodeContext) -> bytes:
        flat = x.ravel()
        n = flat.size
        k = kept_count(n, self.density)
        seed = int(ctx.rng.integers(0, 2**63))
        idx = _random_indices(seed, n, k)
        scale = n / k if self.unbiased and k else 1.0
        values = flat[idx].astype(np.float64) * scale if k else np.zeros(0)
        return _RANDK_HEADER.pack(_VALUE_CODES[self.value_dtype], seed, k) + _encode_values(values, self.value_dtype)

    def decode(self, body: memoryview, shape: tuple[int, ...]) -> np.ndarray:
        reader = BodyReader(body, "randk body")
        code, seed, k = reader.unpack(_RANDK_HEADER)
        n = numel(shape)
        _check_kept("randk", k, n)
        values = reader.rest_array(_value_dtype(code), k).astype(np.float32)
        out = np.zeros(n, dtype=np.float32)
        if k:
            out[_random_indices(seed, n, k)] = values
        return out.reshape(shape)
