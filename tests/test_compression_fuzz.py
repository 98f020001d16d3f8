"""Fuzzing of every decoder: bad bytes raise PayloadError, nothing else, and cost little.

Properties: no input may crash a decoder (any exception other than
PayloadError), make a codec's decoder emit a RuntimeWarning, or make it
allocate beyond :data:`MEMORY_BOUND` (tracemalloc peak), whatever the declared
sizes say; a decoder checks that a body has exactly the length its claimed
shape and parameters imply before it allocates (see
:mod:`fedsplit.compression.payload`, "Sizing by evidence").

How examples are drawn (Hypothesis profiles, registered in ``tests/conftest.py``):

* Plain ``pytest`` uses the ``ci`` profile: derandomized, 60 examples per test,
  no deadline, no example database. The examples are a fixed function of the
  test code, so a commit is green or red on every run, and this file takes a
  few seconds.
* A long randomized campaign is run by hand::

      FEDSPLIT_FUZZ_EXAMPLES=20000 .venv/bin/python -m pytest -q tests/test_compression_fuzz.py

  ``FEDSPLIT_FUZZ_EXAMPLES`` selects the ``fuzz`` profile: that many fresh
  random examples per property test, a 2 s deadline per example. 10000 took
  7 CPU-minutes (14 minutes of wall time on a busy 2-core machine), so 20000
  takes about a quarter of an hour of CPU. Add ``--hypothesis-seed=N`` to
  repeat a campaign, ``--hypothesis-show-statistics`` to see the counts.

Anything a campaign finds becomes a fixed example below (an entry of
:data:`FIXED_PAYLOAD_EXAMPLES`, or a plain test): Hypothesis prints the
failing draws (``pos``, ``byte``, ``action``...), which map one to one onto a
:class:`Mutation`, and a ``@reproduce_failure`` blob. Fixed examples run in
every CI run, so a fix cannot regress silently, and CI never depends on a
random draw.
"""

from __future__ import annotations

import tracemalloc
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from hypothesis import given
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
SMALL_LIMITS = DecodeLimits(max_payload_bytes=1 << 16, max_tensors=8, max_elements=4096)
# bytes: 4096 elements (SMALL_LIMITS) need at most ~16 x 4096 bytes of decoder work (float32
# output, random-k's index permutation); an allocation sized by a claimed parameter is far bigger.
MEMORY_BOUND = 256 << 10
REJECTION_BOUND = 16 << 10  # bytes: a rejected body allocates no array of the claimed size


def reseal(payload: bytes | bytearray) -> bytes:
    """Recompute the CRC-32 trailer so that mutations reach the structural checks."""
    body = bytes(payload[:-4])
    return body + zlib.crc32(body).to_bytes(4, "little")


def traced(call: Callable[[], Any]) -> tuple[Any, int]:
    """Run ``call``; its result (or the :class:`PayloadError` it raised) and its peak allocation in bytes."""
    tracemalloc.start()
    try:
        try:
            result = call()
        except PayloadError as exc:
            result = exc
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak


shapes = st.lists(st.integers(0, 12), min_size=0, max_size=3).map(tuple)


def _decode_body_or_reject(name: str, body: bytes, shape: tuple[int, ...]) -> None:
    """Decode one body: a float32 array of ``shape`` or a PayloadError, and no RuntimeWarning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # NaN/Inf arithmetic must stay silent
        try:
            out = decoder_for(name).decode(memoryview(body), shape)
        except PayloadError:
            return
    assert isinstance(out, np.ndarray) and out.shape == shape and out.dtype == np.float32


@pytest.mark.parametrize("name", CODECS)
@given(body=st.binary(max_size=400), shape=shapes)
def test_codec_decoders_reject_random_bodies(name: str, body: bytes, shape: tuple[int, ...]) -> None:
    _decode_body_or_reject(name, body, shape)


@dataclass(frozen=True)
class Mutation:
    """A corruption of a byte string: bytes overwritten, then cut or extended, then maybe resealed.

    Attributes
    ----------
    flips : tuple[tuple[int, int], ...]
        ``(position, new byte value)`` pairs, applied in order.
    action : str
        ``"keep"``, ``"truncate"`` (to ``cut`` bytes) or ``"extend"`` (by ``tail``).
    cut : int
        Length in bytes kept by ``"truncate"``.
    tail : bytes
        Bytes appended by ``"extend"``.
    reseal : bool
        Recompute the CRC-32 trailer afterwards (only for results longer than 4 bytes).
    """

    flips: tuple[tuple[int, int], ...] = ()
    action: str = "keep"
    cut: int = 0
    tail: bytes = b""
    reseal: bool = False

    def apply(self, buf: bytes) -> bytes:
        """The mutated copy of ``buf``."""
        out = bytearray(buf)
        for pos, byte in self.flips:
            out[pos] = byte
        if self.action == "truncate":
            out = out[: self.cut]
        elif self.action == "extend":
            out += self.tail
        return reseal(out) if self.reseal and len(out) > 4 else bytes(out)


def _draw_mutation(data: st.DataObject, buf: bytes, *, may_reseal: bool) -> Mutation:
    """Draw a :class:`Mutation` of ``buf``; the labels are the names Hypothesis prints."""
    flips = []
    for _ in range(data.draw(st.integers(0, 4), label="flips")):
        if buf:
            flips.append((data.draw(st.integers(0, len(buf) - 1), label="pos"), data.draw(st.integers(0, 255), label="byte")))
    action = data.draw(st.sampled_from(["keep", "truncate", "extend"]), label="action")
    cut, tail = 0, b""
    if action == "truncate" and buf:
        cut = data.draw(st.integers(0, len(buf) - 1), label="cut")
    elif action == "truncate":
        action = "keep"
    elif action == "extend":
        tail = data.draw(st.binary(min_size=1, max_size=16), label="tail")
    length = len(buf) + len(tail) if action != "truncate" else cut
    resealed = may_reseal and length > 4 and data.draw(st.booleans(), label="reseal")
    return Mutation(tuple(flips), action, cut, tail, resealed)


@pytest.mark.parametrize("name", CODECS)
@given(data=st.data(), shape=st.lists(st.integers(1, 9), min_size=1, max_size=3).map(tuple))
def test_codec_decoders_reject_mutated_bodies(name: str, data: st.DataObject, shape: tuple[int, ...]) -> None:
    x = np.random.default_rng(len(shape)).standard_normal(shape).astype(np.float32)
    body = make_codec(name, **PARAMS.get(name, {})).encode("x", x, EncodeContext())
    _decode_body_or_reject(name, _draw_mutation(data, body, may_reseal=False).apply(body), shape)


def _small_tensors(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "conv.w": rng.standard_normal((4, 2, 3)).astype(np.float32),
        "fc.b": rng.standard_normal(7).astype(np.float32),
        "bn.n": np.array(seed, dtype=np.int64),
    }


def _small_payload(name: str, seed: int) -> bytes:
    return encode_update(_small_tensors(seed), make_codec(name, **PARAMS.get(name, {})), EncodeContext())


def _decode_payload_bounded(payload: bytes, expected: dict | None) -> Any:
    """Decode under :data:`SMALL_LIMITS`: the result or the PayloadError; fails beyond :data:`MEMORY_BOUND`."""
    out, peak = traced(lambda: decode_update(payload, expected=expected, limits=SMALL_LIMITS))
    assert peak < MEMORY_BOUND, f"decoder allocated {peak} bytes"
    if not isinstance(out, PayloadError):
        assert sum(a.size for a in out.tensors.values()) <= SMALL_LIMITS.max_elements
        for name, arr in out.tensors.items():
            assert np.isfinite(arr).all() or name in out.raw
            if expected is not None:
                assert arr.shape == expected[name].shape
    return out


@pytest.mark.parametrize("name", CODECS)
@given(data=st.data(), seed=st.integers(0, 3), with_expected=st.booleans())
def test_payload_decoder_rejects_mutated_payloads(name: str, data: st.DataObject, seed: int, with_expected: bool) -> None:
    payload = _small_payload(name, seed)
    mutated = _draw_mutation(data, payload, may_reseal=True).apply(payload)
    _decode_payload_bounded(mutated, specs_of(_small_tensors(seed)) if with_expected else None)


@given(name=st.sampled_from(CODECS), rest=st.binary(max_size=300))
def test_payload_decoder_rejects_random_bytes_after_a_valid_header_start(name: str, rest: bytes) -> None:
    header = MAGIC + bytes([1, len(name)]) + b"\0\0"
    _decode_payload_bounded(reseal(header + rest[:4] + name.encode() + rest[4:] + b"\0" * 4), None)


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


# ---------------------------------------------------------------------------------------------
# Fixed examples: what fuzzing found (issue #17; a FEDSPLIT_FUZZ_EXAMPLES=10000 campaign) and
# siblings for every codec. They run in every CI run. Each says whether it failed on the
# decoders before the fix (commit c7f54a1 "decoders sized by evidence", or the QSGD warning fix
# after it); the others pin down behaviour that the old decoders already had right.
# ---------------------------------------------------------------------------------------------


def _dims_at(name: str) -> int:
    """Offset of the first dimension of ``conv.w`` (the first tensor) in :func:`_small_payload`."""
    return 12 + len(name) + 4 + len("conv.w")


def _claim_more_elements(name: str) -> Mutation:
    """``conv.w`` (4, 2, 3) claims (16, 16, 15) = 3840 elements (within the limits); its body is unchanged."""
    at = _dims_at(name)
    return Mutation(flips=((at, 16), (at + 4, 16), (at + 8, 15)), reseal=True)


@dataclass(frozen=True)
class FixedExample:
    """A payload of :func:`_small_payload` (``codec``, ``seed``), mutated, and what decoding it must give."""

    codec: str
    seed: int
    with_expected: bool
    mutation: Mutation
    outcome: str  # "reject" (PayloadError), "original" (decodes to the unmutated tensors) or "any"
    name: str  # the test id


FIXED_PAYLOAD_EXAMPLES = [
    # Issue #17, the CI failure (failed before: 4198838 bytes). Byte 90 is in fc.b's QSGD body
    # header, the third byte of the bucket size (8 -> 8 + 16 * 2**16 = 1048584). The body length
    # is still consistent (7 elements, one bucket either way), so the payload is valid and
    # decodes to the same values; the old decoder padded its scratch array to a whole bucket.
    FixedExample("qsgd", 0, False, Mutation(flips=((90, 16),), reseal=True), "original", "qsgd-issue-17"),
    # The same field at 255 (bucket 16711688) with the server's expected specs (failed before:
    # 64 MiB; the worst single-byte mutation of this payload, found by trying all of them).
    FixedExample("qsgd", 0, True, Mutation(flips=((90, 255),), reseal=True), "original", "qsgd-bucket-expected"),
    # Siblings for every codec (passed before too): the header claims 3840 elements for a
    # 24-element body. Dense and quantized bodies then have the wrong length; sparse bodies (k
    # values at indices below 24) are valid for 3840 elements, and decode to a tensor that size.
    *(
        FixedExample(c, 0, False, _claim_more_elements(c), "any" if c in ("topk", "randk") else "reject", f"{c}-claimed-shape")
        for c in CODECS
    ),
]


@pytest.mark.parametrize("example", FIXED_PAYLOAD_EXAMPLES, ids=lambda e: e.name)
def test_fixed_payload_examples(example: FixedExample) -> None:
    payload = _small_payload(example.codec, example.seed)
    tensors = _small_tensors(example.seed)
    out = _decode_payload_bounded(example.mutation.apply(payload), specs_of(tensors) if example.with_expected else None)
    if example.outcome == "reject":
        assert isinstance(out, PayloadError)
    elif example.outcome == "original":
        assert not isinstance(out, PayloadError), out
        original = decode_update(payload, expected=specs_of(tensors))
        for key, arr in original.tensors.items():
            assert out.tensors[key].tobytes() == arr.tobytes(), key


def _body(name: str, shape: tuple[int, ...], **params: Any) -> bytes:
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    return make_codec(name, **{**PARAMS.get(name, {}), **params}).encode("x", x, EncodeContext())


def _set_uint(body: bytes, at: int, value: int, nbytes: int = 4) -> bytes:
    """``body`` with the little-endian unsigned field of ``nbytes`` bytes at ``at`` set to ``value``."""
    return body[:at] + value.to_bytes(nbytes, "little") + body[at + nbytes :]


@pytest.mark.parametrize("name", CODECS)
@pytest.mark.parametrize("shape", [(256, 256), (65536,)], ids=["matrix", "vector"])
@pytest.mark.parametrize("extra", [b"\0", b""], ids=["one-byte-too-long", "one-byte-short"])
def test_bodies_of_the_wrong_length_are_rejected_before_allocating(name: str, shape: tuple[int, ...], extra: bytes) -> None:
    """A body one byte off for 65536 elements is refused before its 256 KiB tensor (or codes) exist.

    Failed before: one byte too long for identity, fp16, QSGD, top-k and random-k (both shapes)
    and PowerSGD (vector: dense mode), which decoded the values, codes or indices in full and
    only then noticed the extra byte; one byte short for top-k (indices decoded first). int8 and
    sign already checked the length first.
    """
    body = _body(name, shape)
    bad = body + extra if extra else body[:-1]
    out, peak = traced(lambda: decoder_for(name).decode(memoryview(bad), shape))
    assert isinstance(out, PayloadError)
    assert peak < REJECTION_BOUND, f"decoder allocated {peak} bytes before rejecting"


def test_qsgd_bucket_size_never_sizes_a_buffer() -> None:
    """A QSGD body for 7 elements claiming the largest bucket (2**24) decodes to the same tensor in O(7) bytes.

    Failed before: 64 MiB of scratch space.
    """
    body = _body("qsgd", (7,))
    huge = _set_uint(body, 1, 1 << 24)  # u8 levels | u32 bucket size
    out, peak = traced(lambda: decoder_for("qsgd").decode(memoryview(huge), (7,)))
    assert peak < REJECTION_BOUND, f"decoder allocated {peak} bytes"
    assert out.tobytes() == decoder_for("qsgd").decode(memoryview(body), (7,)).tobytes()


# (codec, offset, width in bytes, value): a count in a body's own header, set past what the body holds
CLAIMED_COUNTS = {
    "topk-k": ("topk", 1, 4, 4096),  # u8 value dtype | u32 k
    "topk-unary-bits": ("topk", 6, 4, 4096),  # ... | u8 rice b | u32 unary bits
    "randk-k": ("randk", 9, 4, 4096),  # u8 value dtype | u64 seed | u32 k
    "powersgd-rank": ("powersgd", 9, 2, 64),  # u8 mode | u32 rows | u32 cols | u16 rank
    "qsgd-levels": ("qsgd", 0, 1, 127),  # u8 levels (8-bit codes instead of 4)
}


@pytest.mark.parametrize("case", CLAIMED_COUNTS)
def test_claimed_counts_beyond_the_body_are_rejected_before_allocating(case: str) -> None:
    """A body for 4096 elements whose header claims more kept values, index bits, rank or code bits than it holds.

    Failed before: topk-unary-bits (the unary stream was unpacked before its length was compared
    with the tensor size); the others were already refused before allocating.
    """
    name, at, nbytes, value = CLAIMED_COUNTS[case]
    shape = (64, 64)
    body = _set_uint(_body(name, shape), at, value, nbytes)
    out, peak = traced(lambda: decoder_for(name).decode(memoryview(body), shape))
    assert isinstance(out, PayloadError)
    assert peak < REJECTION_BOUND, f"decoder allocated {peak} bytes before rejecting"


@pytest.mark.parametrize("scale", [0x7F800000, 0x7FA00000], ids=["inf", "signaling-nan"])
def test_qsgd_non_finite_scale_decodes_without_a_warning(scale: int) -> None:
    """Found by a FEDSPLIT_FUZZ_EXAMPLES=10000 campaign (failed before): an Inf or NaN bucket scale warned."""
    body = _set_uint(_body("qsgd", (4, 6)), 5, scale)  # u8 levels | u32 bucket | f32 first scale
    _decode_body_or_reject("qsgd", body, (4, 6))
