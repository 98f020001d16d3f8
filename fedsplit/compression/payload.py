"""Wire format of a compressed tensor set: versioned, self-describing, bounds-checked.

Layout (all integers little-endian)::

    header   4s magic b"FSUP" | u8 version (1) | u8 codec-name length L | u16 flags (0)
             | u32 tensor count T | L bytes ASCII codec name          -> 12 + L bytes
    T times  u16 name length N | u8 kind | u8 ndim D | N bytes UTF-8 name
             | D x u32 dims | u32 body length B | B bytes body          -> 8 + N + 4 D + B bytes
    trailer  u32 CRC-32 (zlib) of all preceding bytes                   -> 4 bytes

Kind 0 (``coded``): a floating tensor, body written by the codec named in the
header; it decodes to ``float32``. Kind 1 (``raw``): any other tensor (integer
or bool buffers such as BatchNorm's ``num_batches_tracked``), and the float32
deltas of normalisation statistics (:func:`is_statistic`: BatchNorm's running
mean and variance, which a lossy codec would turn into a negative variance),
sent exactly as ``u8 dtype code | itemsize * n bytes``. The payload's size in bytes is
``len(payload)`` and nothing else; :func:`framing_overhead` gives the part that
is not codec body.

Decoding checks every declared count against the bytes actually left (and
against :class:`DecodeLimits`) before allocating anything, rejects trailing
bytes, checksum mismatches (so corrupted values are caught too), duplicate or
unexpected names, shapes and dtypes that differ from the expected
ones, and tensors that decode to NaN or Inf; every failure is a
:class:`~fedsplit.compression.errors.PayloadError` with a one-line reason.

Sizing by evidence: a tensor's claimed shape is checked against the expected
spec (when the receiver has one) and the limits; then its body, once the codec
has read the body's own header, must have exactly the length that the shape,
dtype and codec parameters imply (raw: ``1 + itemsize * n`` bytes), before any
array is allocated. So every allocation is the decoded tensor itself
(``4 * n`` bytes for a coded one) or is bounded by the length of the body; a
parameter in the body (a QSGD bucket size, a top-k count) never sizes a buffer
on its own.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fedsplit.compression.bitpack import BodyReader, numel
from fedsplit.compression.codec import Codec, EncodeContext
from fedsplit.compression.errors import PayloadError
from fedsplit.compression.registry import decoder_for

__all__ = [
    "MAGIC",
    "FORMAT_VERSION",
    "TensorSpec",
    "DecodeLimits",
    "DecodedUpdate",
    "encode_update",
    "decode_update",
    "framing_overhead",
    "is_coded",
    "is_statistic",
]

MAGIC = b"FSUP"
FORMAT_VERSION = 1
MAX_NDIM = 8
_HEADER = struct.Struct("<4sBBHI")
_TENSOR = struct.Struct("<HBB")
_BODY_LEN = struct.Struct("<I")
_RAW_CODE = struct.Struct("<B")
_MIN_RECORD = _TENSOR.size + _BODY_LEN.size
_CRC = struct.Struct("<I")
KIND_CODED, KIND_RAW = 0, 1

_RAW_DTYPES: dict[int, np.dtype] = {
    1: np.dtype("bool"),
    2: np.dtype("<i1"),
    3: np.dtype("<u1"),
    4: np.dtype("<i2"),
    5: np.dtype("<u2"),
    6: np.dtype("<i4"),
    7: np.dtype("<u4"),
    8: np.dtype("<i8"),
    9: np.dtype("<u8"),
    10: np.dtype("<f2"),
    11: np.dtype("<f4"),
    12: np.dtype("<f8"),
}
_RAW_CODES = {dt.newbyteorder("="): code for code, dt in _RAW_DTYPES.items()}


def is_coded(dtype: np.dtype | str) -> bool:
    """Whether tensors of ``dtype`` are floating: updated as deltas and, unless they are
    statistics (:func:`is_statistic`), sent through the codec; other tensors travel raw."""
    return bool(np.issubdtype(np.dtype(dtype), np.floating))


#: Last component of the state_dict names of normalisation statistics (BatchNorm's, InstanceNorm's).
STATISTIC_NAMES: tuple[str, ...] = ("running_mean", "running_var")


def is_statistic(name: str) -> bool:
    """Whether tensor ``name`` is a normalisation statistic, whose delta travels raw (exactly).

    A lossy codec's error (top-k's dropped entries re-sent later by error feedback, random-k's
    ``n / k`` scaling, quantization) lands on the running variance too: a rebuilt variance went
    negative and every evaluation of the model gave NaN. The statistics are a few values per
    channel, so sending their deltas exactly costs little.
    """
    return name.rsplit(".", 1)[-1] in STATISTIC_NAMES


@dataclass(frozen=True)
class TensorSpec:
    """Expected shape and dtype of one named tensor."""

    shape: tuple[int, ...]
    dtype: str

    @classmethod
    def of(cls, array: np.ndarray) -> TensorSpec:
        """Spec of an existing array."""
        return cls(tuple(int(d) for d in array.shape), np.dtype(array.dtype).str)

    @property
    def numel(self) -> int:
        """Number of elements."""
        return numel(self.shape)


@dataclass(frozen=True)
class DecodeLimits:
    """Upper bounds enforced before any allocation.

    Attributes
    ----------
    max_payload_bytes : int
        Longest payload accepted, in bytes.
    max_tensors : int
        Most tensors in one payload.
    max_elements : int
        Most elements summed over all tensors (bounds the decoded size: 4 bytes
        each for float tensors).
    """

    max_payload_bytes: int = 1 << 30
    max_tensors: int = 1 << 16
    max_elements: int = 1 << 27

    @classmethod
    def for_specs(cls, specs: Mapping[str, TensorSpec], *, slack: float = 2.0) -> DecodeLimits:
        """Limits for a known tensor set: payload at most ``slack`` x the fp32 size + framing."""
        elements = sum(s.numel for s in specs.values())
        framing = 4096 + sum(8 + len(n.encode()) + 4 * len(s.shape) + 16 for n, s in specs.items())
        return cls(
            max_payload_bytes=int(slack * 4 * elements) + framing,
            max_tensors=max(1, len(specs)),
            max_elements=max(1, elements),
        )


@dataclass(frozen=True)
class DecodedUpdate:
    """Result of :func:`decode_update`.

    Attributes
    ----------
    codec : str
        Codec named in the payload header.
    tensors : dict[str, np.ndarray]
        Coded tensors as ``float32``; raw tensors in their own dtype. Payload order.
    raw : frozenset[str]
        Names of the tensors that travelled raw.
    """

    codec: str
    tensors: dict[str, np.ndarray]
    raw: frozenset[str]


def framing_overhead(specs: Mapping[str, TensorSpec] | Mapping[str, np.ndarray], codec_name: str) -> int:
    """Bytes of a payload that are not codec/raw bodies (header, per-tensor records, CRC)."""
    total = _HEADER.size + len(codec_name.encode("ascii")) + _CRC.size
    for name, spec in specs.items():
        ndim = len(spec.shape)
        total += _TENSOR.size + len(name.encode("utf-8")) + 4 * ndim + _BODY_LEN.size
    return total


def encode_update(
    tensors: Mapping[str, np.ndarray], codec: Codec, ctx: EncodeContext | None = None
) -> bytes:
    """Encode named tensors into one payload.

    Floating tensors are cast to ``float32`` and encoded by ``codec``, except
    statistics (:func:`is_statistic`), written raw as ``float32``; all others
    are written raw (exact). Order is preserved.

    Parameters
    ----------
    tensors : Mapping[str, np.ndarray]
        Named tensors (for an update: float deltas, raw absolute buffers).
    codec : Codec
        Encoder for the floating tensors.
    ctx : EncodeContext, optional
        Randomness and persistent codec state; a fresh one (seed 0) if omitted.

    Returns
    -------
    bytes
        The payload; its length is the byte count on the wire.
    """
    ctx = ctx if ctx is not None else EncodeContext()
    name_bytes = codec.name.encode("ascii")
    parts = [_HEADER.pack(MAGIC, FORMAT_VERSION, len(name_bytes), 0, len(tensors)), name_bytes]
    for name, value in tensors.items():
        arr = np.asarray(value)
        encoded_name = name.encode("utf-8")
        if len(encoded_name) > 0xFFFF or arr.ndim > MAX_NDIM or any(d > 0xFFFFFFFF for d in arr.shape):
            raise ValueError(f"tensor {name!r} cannot be framed (name length, ndim or dims too large)")
        if is_coded(arr.dtype) and not is_statistic(name):
            kind = KIND_CODED
            body = codec.encode(name, np.asarray(arr, dtype=np.float32, order="C"), ctx)
        else:
            kind = KIND_RAW
            if is_coded(arr.dtype):  # a statistic: its float32 delta, exactly
                arr = np.asarray(arr, dtype=np.float32)
            code = _RAW_CODES.get(arr.dtype.newbyteorder("="))
            if code is None:
                raise ValueError(f"tensor {name!r}: dtype {arr.dtype} cannot travel raw")
            body = bytes([code]) + np.asarray(arr, dtype=_RAW_DTYPES[code], order="C").tobytes()
        if len(body) > 0xFFFFFFFF:
            raise ValueError(f"tensor {name!r}: body of {len(body)} bytes exceeds 4 GiB")
        parts += [
            _TENSOR.pack(len(encoded_name), kind, arr.ndim),
            encoded_name,
            struct.pack(f"<{arr.ndim}I", *arr.shape),
            _BODY_LEN.pack(len(body)),
            body,
        ]
    joined = b"".join(parts)
    return joined + _CRC.pack(zlib.crc32(joined))


def _decode_raw(body: memoryview, shape: tuple[int, ...], spec: TensorSpec | None, name: str = "") -> np.ndarray:
    """A raw body ``u8 dtype code | itemsize * n bytes``, checked against ``spec`` before allocating.

    Raises
    ------
    PayloadError
        Unknown dtype code, a dtype other than the expected one (a floating spec
        must travel coded, except a statistic's, whose delta travels as float32),
        or a body that is not exactly ``1 + itemsize * n`` bytes.
    """
    reader = BodyReader(body, "raw body")
    (code,) = reader.unpack(_RAW_CODE)
    dtype = _RAW_DTYPES.get(code)
    if dtype is None:
        raise PayloadError(f"unknown raw dtype code {code}")
    native = dtype.newbyteorder("=")
    if spec is not None:
        wanted = np.dtype(spec.dtype)
        if is_coded(wanted) and is_statistic(name):
            wanted = np.dtype(np.float32)  # the delta of a statistic, as model_update computes it
        elif is_coded(wanted):
            raise PayloadError(f"raw {native}, expected coded {wanted}")
        if native != wanted.newbyteorder("="):
            raise PayloadError(f"raw {native}, expected {wanted}")
    return reader.rest_array(dtype, numel(shape)).reshape(shape).astype(native, copy=True)


def _decode_coded(codec: Codec, body: memoryview, shape: tuple[int, ...]) -> np.ndarray:
    try:
        with np.errstate(all="ignore"):  # overflow to Inf is caught by the finiteness check
            arr = codec.decode(body, shape)
    except PayloadError:
        raise
    except Exception as exc:  # a user codec may raise anything: still a bad payload
        raise PayloadError(f"decoder failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(arr, np.ndarray) or tuple(arr.shape) != shape:
        raise PayloadError(f"decoder returned shape {getattr(arr, 'shape', None)}, expected {shape}")
    return arr.astype(np.float32, copy=False)


def decode_update(
    payload: bytes | bytearray | memoryview,
    *,
    expected: Mapping[str, TensorSpec] | None = None,
    limits: DecodeLimits | None = None,
    codec: str | None = None,
) -> DecodedUpdate:
    """Decode a payload written by :func:`encode_update`.

    Parameters
    ----------
    payload : bytes
        The received bytes.
    expected : Mapping[str, TensorSpec], optional
        If given, the payload must hold exactly these names with these shapes;
        floating specs must be coded and other dtypes raw with the same dtype.
    limits : DecodeLimits, optional
        Size bounds; ``DecodeLimits.for_specs(expected)`` when ``expected`` is
        given, else the defaults.
    codec : str, optional
        If given, the codec name that the header must carry.

    Returns
    -------
    DecodedUpdate

    Raises
    ------
    PayloadError
        Truncated, corrupted, oversized or mis-shaped payload, or non-finite values.
    """
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise PayloadError(f"payload is {type(payload).__name__}, not bytes")
    if limits is None:
        limits = DecodeLimits.for_specs(expected) if expected is not None else DecodeLimits()
    size = len(memoryview(payload).cast("B")) if isinstance(payload, memoryview) else len(payload)
    if size > limits.max_payload_bytes:
        raise PayloadError(f"payload of {size} bytes exceeds the limit of {limits.max_payload_bytes} bytes")
    if size < _HEADER.size + _CRC.size:
        raise PayloadError(f"payload truncated: {size} bytes is shorter than a header")
    view = memoryview(payload).cast("B")
    (crc,) = _CRC.unpack(view[size - _CRC.size :])
    if zlib.crc32(view[: size - _CRC.size]) != crc:
        raise PayloadError("checksum mismatch (payload corrupted or truncated)")
    reader = BodyReader(view[: size - _CRC.size], "payload")
    magic, version, name_len, flags, count = reader.unpack(_HEADER)
    if magic != MAGIC:
        raise PayloadError(f"bad magic {bytes(magic)!r}, expected {MAGIC!r}")
    if version != FORMAT_VERSION:
        raise PayloadError(f"unsupported payload version {version}, expected {FORMAT_VERSION}")
    if flags != 0:
        raise PayloadError(f"unknown header flags 0x{flags:04x}")
    try:
        codec_name = bytes(reader.take(name_len)).decode("ascii")
        decoder = decoder_for(codec_name)
    except (UnicodeDecodeError, ValueError) as exc:
        raise PayloadError(f"unknown codec in header: {exc}") from None
    if codec is not None and codec_name != codec:
        raise PayloadError(f"codec {codec_name!r} in payload, expected {codec!r}")
    if count > limits.max_tensors or count * _MIN_RECORD > reader.remaining:
        raise PayloadError(f"payload declares {count} tensors, more than it can hold or the limit allows")
    if expected is not None and count != len(expected):
        raise PayloadError(f"payload holds {count} tensors, expected {len(expected)}")

    tensors: dict[str, np.ndarray] = {}
    raw: set[str] = set()
    elements = 0
    for _ in range(count):
        nlen, kind, ndim = reader.unpack(_TENSOR)
        if ndim > MAX_NDIM:
            raise PayloadError(f"tensor with {ndim} dimensions (at most {MAX_NDIM})")
        try:
            name = bytes(reader.take(nlen)).decode("utf-8")
        except UnicodeDecodeError:
            raise PayloadError("tensor name is not UTF-8") from None
        if name in tensors:
            raise PayloadError(f"tensor {name!r} appears twice")
        shape = tuple(int(d) for d in reader.unpack(struct.Struct(f"<{ndim}I")))
        elements += numel(shape)
        if elements > limits.max_elements:
            raise PayloadError(f"payload declares more than {limits.max_elements} elements")
        spec = None
        if expected is not None:
            spec = expected.get(name)
            if spec is None:
                raise PayloadError(f"unexpected tensor {name!r}")
            if tuple(spec.shape) != shape:
                raise PayloadError(f"tensor {name!r} has shape {shape}, expected {tuple(spec.shape)}")
        (body_len,) = reader.unpack(_BODY_LEN)
        body = reader.take(body_len)
        try:
            if kind == KIND_CODED:
                if spec is not None and not is_coded(spec.dtype):
                    raise PayloadError(f"coded, but expected raw {np.dtype(spec.dtype)}")
                if spec is not None and is_statistic(name):
                    raise PayloadError("coded, but a statistic's delta travels raw (float32)")
                arr = _decode_coded(decoder, body, shape)
            elif kind == KIND_RAW:
                arr = _decode_raw(body, shape, spec, name)
                raw.add(name)
            else:
                raise PayloadError(f"unknown tensor kind {kind}")
            if is_coded(arr.dtype) and not np.isfinite(arr).all():
                raise PayloadError("decodes to NaN/Inf")
        except PayloadError as exc:
            raise PayloadError(f"tensor {name!r}: {exc}") from None
        tensors[name] = arr
    reader.finish()
    return DecodedUpdate(codec=codec_name, tensors=tensors, raw=frozenset(raw))
