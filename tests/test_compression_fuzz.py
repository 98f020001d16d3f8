"""Hypothesis fuzzing of every decoder: bad bytes raise PayloadError, nothing else.

No input may crash a decoder (any exception other than PayloadError), hang
(per-example deadline) or allocate beyond a bound set by the limits (tracemalloc
peak), whatever the declared sizes say.
"""

from __future__ import annotations

import os
import tracemalloc
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedsplit.compression import (
    DecodeLimits,
    EncodeContext,
    PayloadError,
    decode_update,
    decoder_for,
    encode_update,
    make_codec,
    specs_of,
)
from fedsplit.compression.payload import MAGIC

CODECS = ("identity", "fp16", "int8", "qsgd", "topk", "randk", "sign", "powersgd")
PARAMS = {"topk": {"density": 0.2}, "randk": {"density": 0.2}, "qsgd": {"levels": 5, "bucket_size": 8}}
# 60 examples per test keeps the file at a few seconds; FEDSPLIT_FUZZ_EXAMPLES=1000 for a deep run.
FUZZ = settings(max_examples=int(os.environ.get("FEDSPLIT_FUZZ_EXAMPLES", "60")), deadline=2000, suppress_health_check=[HealthCheck.too_slow], database=None)
SMALL_LIMITS = DecodeLimits(max_payload_bytes=1 << 16, max_tensors=8, max_elements=4096)
MEMORY_BOUND = 4 << 20  # bytes: far above what 4096 elements need, far below an unchecked allocation

def reseal(payload: bytes | bytearray) -> bytes:
    """Recompute the CRC-32 trailer so that mutations reach the structural checks."""
    body = bytes(payload[:-4])
    return body + zlib.crc32(body).to_bytes(4, "little")


shapes = st.lists(st.integers(0, 12), min_size=0, max_size=3).map(tuple)


def _decode_body_or_reject(name: str, body: bytes, shape: tuple[int, ...]) -> None:
    try:
        out = decoder_for(name).decode(memoryview(body), shape)
    except PayloadError:
        return
    assert isinstance(out, np.ndarray) and out.shape == shape and out.dtype == np.float32


@pytest.mark.parametrize("name", CODECS)
@FUZZ
@given(body=st.binary(max_size=400), shape=shapes)
def test_codec_decoders_reject_random_bodies(name: str, body: bytes, shape: tuple[int, ...]) -> None:
    _decode_body_or_reject(name, body, shape)


def _mutate(data: st.DataObject, buf: bytes) -> bytes:
    out = bytearray(buf)
    for _ in range(data.draw(st.integers(0, 4), label="flips")):
        if out:
            pos = data.draw(st.integers(0, len(out) - 1), label="pos")
            out[pos] = data.draw(st.integers(0, 255), label="byte")
    action = data.draw(st.sampled_from(["keep", "truncate", "extend"]), label="action")
    if action == "truncate" and out:
        out = out[: data.draw(st.integers(0, len(out) - 1), label="cut")]
    elif action == "extend":
        out += data.draw(st.binary(min_size=1, max_size=16), label="tail")
    return bytes(out)


@pytest.mark.parametrize("name", CODECS)
@FUZZ
@given(data=st.data(), shape=st.lists(st.integers(1, 9), min_size=1, max_size=3).map(tuple))
def test_codec_decoders_reject_mutated_bodies(name: str, data: st.DataObject, shape: tuple[int, ...]) -> None:
    x = np.random.default_rng(len(shape)).standard_normal(shape).astype(np.float32)
    body = make_codec(name, **PARAMS.get(name, {})).encode("x", x, EncodeContext())
    _decode_body_or_reject(name, _mutate(data, body), shape)


def _small_tensors(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "conv.w": rng.standard_normal((4, 2, 3)).astype(np.float32),
        "fc.b": rng.standard_normal(7).astype(np.float32),
        "bn.n": np.array(seed, dtype=np.int64),
    }


def _decode_payload_bounded(payload: bytes, expected: dict | None) -> None:
    tracemalloc.start()
    try:
        out = decode_update(payload, expected=expected, limits=SMALL_LIMITS)
    except PayloadError:
        out = None
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak < MEMORY_BOUND, f"decoder allocated {peak} bytes"
    if out is not None:
        assert sum(a.size for a in out.tensors.values()) <= SMALL_LIMITS.max_elements
        for name, arr in out.tensors.items():
            assert np.isfinite(arr).all() or name in out.raw
            if expected is not None:
                assert arr.shape == expected[name].shape


@pytest.mark.parametrize("name", CODECS)
@FUZZ
@given(data=st.data(), seed=st.integers(0, 3), with_expected=st.booleans())
def test_payload_decoder_rejects_mutated_payloads(name: str, data: st.DataObject, seed: int, with_expected: bool) -> None:
    tensors = _small_tensors(seed)
    payload = encode_update(tensors, make_codec(name, **PARAMS.get(name, {})), EncodeContext())
    mutated = _mutate(data, payload)
    if len(mutated) > 4 and data.draw(st.booleans(), label="reseal"):
        mutated = reseal(mutated)
    _decode_payload_bounded(mutated, specs_of(tensors) if with_expected else None)


@FUZZ
@given(name=st.sampled_from(CODECS), rest=st.binary(max_size=300))
def test_payload_decoder_rejects_random_bytes_after_a_valid_header_start(name: str, rest: bytes) -> None:
    header = MAGIC + bytes([1, len(name)]) + b"\0\0"
    _decode_payload_bounded(reseal(header + rest[:4] + name.encode() + rest[4:] + b"\0" * 4), None)


@FUZZ
@given(raw=st.binary(max_size=200))
def test_payload_decoder_rejects_arbitrary_bytes(raw: bytes) -> None:
    _decode_payload_bounded(raw, None)


@pytest.mark.parametrize("name", ["topk", "randk", "powersgd", "qsgd"])
def test_huge_declared_sizes_cost_nothing(name: str) -> None:
    """Bodies declaring more elements than the shape, or shapes beyond the limits, are cut short."""
    big = (1 << 16, 1 << 15)  # 2**31 elements, declared by a few bytes
    payload = bytearray(encode_update({"x": np.zeros((2, 2), np.float32)}, make_codec(name)))
    dims_at = 12 + len(name) + 4 + 1
    payload[dims_at : dims_at + 8] = b"".join(d.to_bytes(4, "little") for d in big)
    sealed = reseal(payload)
    _decode_payload_bounded(sealed, None)
    with pytest.raises(PayloadError, match="elements"):
        decode_update(sealed)  # default limits: 2**27 elements
