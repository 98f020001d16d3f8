"""Dense codecs: fp32 identity, fp16, and uniform int8 with a per-tensor scale."""

from __future__ import annotations

import struct

import numpy as np

from fedsplit.compression.bitpack import BodyReader, numel
from fedsplit.compression.codec import Codec, EncodeContext

__all__ = ["IdentityCodec", "Float16Codec", "Int8Codec"]

FP16_MAX = float(np.finfo(np.float16).max)  # 65504
_SCALE = struct.Struct("<f")


class IdentityCodec(Codec):
    """Lossless fp32: body is the ``4 * n`` bytes of the little-endian array."""

    name = "identity"

    def encode(self, name: str, x: np.ndarray, ctx: EncodeContext) -> bytes:
        return np.asarray(x, dtype="<f4", order="C").tobytes()

    def decode(self, body: memoryview, shape: tuple[int, ...]) -> np.ndarray:
        values = BodyReader(body, "identity body").rest_array("<f4", numel(shape))
        return values.reshape(shape).astype(np.float32)


class Float16Codec(Codec):
    """IEEE half precision: ``2 * n`` bytes; values are clipped to +-65504 first.

    Lossless for data that is exactly representable in fp16.
    """

    name = "fp16"

    def encode(self, name: str, x: np.ndarray, ctx: EncodeContext) -> bytes:
        if x.size and (float(x.max()) > FP16_MAX or float(x.min()) < -FP16_MAX):
            x = np.clip(x, -FP16_MAX, FP16_MAX)
        return x.astype("<f2").tobytes()

    def decode(self, body: memoryview, shape: tuple[int, ...]) -> np.ndarray:
        values = BodyReader(body, "fp16 body").rest_array("<f2", numel(shape))
        return values.reshape(shape).astype(np.float32)


class Int8Codec(Codec):
    """Uniform symmetric int8: ``f32 scale | n x int8``, value = ``q * scale``.

    ``scale = max|x| / 127``, ``q = round(x / scale)``; size ``4 + n`` bytes.
    """

    name = "int8"

    def encode(self, name: str, x: np.ndarray, ctx: EncodeContext) -> bytes:
        amax = float(np.max(np.abs(x))) if x.size else 0.0
        scale = amax / 127.0 if amax > 0 else 0.0
        if scale > 0 and np.isfinite(scale):
            q = np.clip(np.rint(x / np.float32(scale)), -127, 127).astype(np.int8)
        else:
            q = np.zeros(x.size, dtype=np.int8)
        return np.array([scale], dtype="<f4").tobytes() + q.tobytes()

    def decode(self, body: memoryview, shape: tuple[int, ...]) -> np.ndarray:
        reader = BodyReader(body, "int8 body")
        (scale,) = reader.unpack(_SCALE)
        q = reader.rest_array("i1", numel(shape))
        with np.errstate(over="ignore"):  # a huge scale overflows to Inf: the payload's finiteness check rejects it
            return (q.astype(np.float32) * np.float32(scale)).reshape(shape)
