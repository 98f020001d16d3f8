"""Bit-level packing with NumPy: sign bits, fixed-width unsigned codes, sorted indices.

All streams are little-endian in both byte and bit order: element ``i`` of a
fixed-width stream occupies bits ``[i * width, (i + 1) * width)`` counted from the
least significant bit of the first byte. Unpacking functions take the exact
number of elements and check the buffer length first, so they never trust a
length that the buffer cannot hold.

The body-size arithmetic that every codec's decoder shares lives here too:
:func:`numel`, :func:`packed_nbytes`, :func:`sorted_indices_nbytes` and
:meth:`BodyReader.expect_remaining`, which a decoder calls once it has read its
header, with the exact number of bytes that the claimed shape and the header's
parameters imply, *before* it allocates anything.
"""

from __future__ import annotations

import struct

import numpy as np

from fedsplit.compression.errors import PayloadError

__all__ = [
    "numel",
    "packed_nbytes",
    "sorted_indices_nbytes",
    "RICE_HEADER_NBYTES",
    "peek_index_header",
    "pack_bits",
    "unpack_bits",
    "pack_uint",
    "unpack_uint",
    "encode_sorted_indices",
    "decode_sorted_indices",
    "BodyReader",
]

MAX_UINT_WIDTH = 32  # bits


def numel(shape: tuple[int, ...]) -> int:
    """Number of elements of an array of ``shape`` (1 for ``()``), as an exact Python int."""
    n = 1
    for d in shape:
        n *= int(d)
    return n


def packed_nbytes(count: int, width: int) -> int:
    """Bytes needed for ``count`` codes of ``width`` bits each (rounded up to a byte)."""
    return (count * width + 7) // 8


def pack_bits(flags: np.ndarray) -> bytes:
    """Pack booleans into ``ceil(n / 8)`` bytes, little-endian bit order."""
    return np.packbits(np.asarray(flags, dtype=bool).ravel(), bitorder="little").tobytes()


def unpack_bits(buf: bytes | memoryview, count: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`; ``buf`` must be exactly ``ceil(count / 8)`` bytes."""
    if len(buf) != packed_nbytes(count, 1):
        raise PayloadError(f"bit stream of {len(buf)} bytes cannot hold exactly {count} bits")
    raw = np.frombuffer(buf, dtype=np.uint8)
    return np.unpackbits(raw, count=count, bitorder="little").view(bool)


def pack_uint(codes: np.ndarray, width: int) -> bytes:
    """Pack unsigned integer codes, each below ``2**width``, into a dense bit stream.

    Parameters
    ----------
    codes : np.ndarray
        Non-negative integers, each ``< 2**width``.
    width : int
        Bits per code, 0 to 32. Width 0 packs to no bytes.

    Returns
    -------
    bytes
        ``ceil(len(codes) * width / 8)`` bytes.
    """
    if not 0 <= width <= MAX_UINT_WIDTH:
        raise ValueError(f"width must be in [0, {MAX_UINT_WIDTH}] bits, got {width}")
    codes = np.asarray(codes).ravel()
    n = codes.size
    if width == 0 or n == 0:
        return b""
    if width == 8:
        return codes.astype(np.uint8).tobytes()
    nbytes = packed_nbytes(n, width)
    if width < 8:
        # Eight codes of `width` bits fill exactly `width` bytes of one uint64;
        # columns are made contiguous first so each shift/or streams through memory.
        groups = -(-n // 8)
        padded = np.zeros(groups * 8, dtype=np.uint8)
        padded[:n] = codes
        cols = padded.reshape(groups, 8).T.copy()
        acc = cols[0].astype("<u8")
        for j in range(1, 8):
            acc |= cols[j].astype("<u8") << np.uint64(j * width)
        return acc.view(np.uint8).reshape(groups, 8)[:, :width].tobytes()[:nbytes]
    bits = np.unpackbits(codes.astype("<u4").view(np.uint8).reshape(n, 4), axis=1, bitorder="little")
    return np.packbits(bits[:, :width].ravel(), bitorder="little").tobytes()


def unpack_uint(buf: bytes | memoryview, count: int, width: int) -> np.ndarray:
    """Inverse of :func:`pack_uint`; returns ``count`` codes as ``uint32``.

    ``buf`` must be exactly ``ceil(count * width / 8)`` bytes long.
    """
    if not 0 <= width <= MAX_UINT_WIDTH:
        raise PayloadError(f"code width {width} bits is outside [0, {MAX_UINT_WIDTH}]")
    if len(buf) != packed_nbytes(count, width):
        raise PayloadError(f"code stream of {len(buf)} bytes cannot hold exactly {count} codes of {width} bits")
    if width == 0 or count == 0:
        return np.zeros(count, dtype=np.uint32)
    raw = np.frombuffer(buf, dtype=np.uint8)
    if width == 8:
        return raw.astype(np.uint32)
    if width < 8:
        groups = -(-count // 8)
        padded = np.zeros((groups, 8), dtype=np.uint8)
        body = np.zeros(groups * width, dtype=np.uint8)
        body[: raw.size] = raw
        padded[:, :width] = body.reshape(groups, width)
        acc = padded.view("<u8").ravel()
        mask = np.uint64((1 << width) - 1)
        out = np.empty((groups, 8), dtype=np.uint32)
        for j in range(8):
            out[:, j] = (acc >> np.uint64(j * width)) & mask
        return out.ravel()[:count]
    bits = np.unpackbits(raw, count=count * width, bitorder="little").reshape(count, width)
    full = np.zeros((count, 32), dtype=np.uint8)
    full[:, :width] = bits
    return np.packbits(full, axis=1, bitorder="little").view("<u4").ravel().astype(np.uint32)


class BodyReader:
    """Bounds-checked sequential reader over a byte buffer.

    Every read checks the remaining length first and raises :class:`PayloadError`
    otherwise, so a corrupted length field can never cause an over-read or a large
    allocation beyond the size of the buffer itself.
    """

    def __init__(self, buf: bytes | memoryview, what: str = "body") -> None:
        self._view = memoryview(buf).cast("B") if not isinstance(buf, memoryview) else buf.cast("B")
        self._pos = 0
        self._what = what

    @property
    def remaining(self) -> int:
        """Unread bytes."""
        return len(self._view) - self._pos

    def take(self, nbytes: int) -> memoryview:
        """Return the next ``nbytes`` bytes."""
        if nbytes < 0 or nbytes > self.remaining:
            raise PayloadError(f"{self._what} truncated: need {nbytes} bytes, {self.remaining} left")
        out = self._view[self._pos : self._pos + nbytes]
        self._pos += nbytes
        return out

    def unpack(self, fmt: struct.Struct) -> tuple:
        """Read one struct."""
        return fmt.unpack(self.take(fmt.size))

    def peek(self, fmt: struct.Struct) -> tuple:
        """Read one struct without consuming it."""
        if fmt.size > self.remaining:
            raise PayloadError(f"{self._what} truncated: need {fmt.size} bytes, {self.remaining} left")
        return fmt.unpack(self._view[self._pos : self._pos + fmt.size])

    def expect_remaining(self, nbytes: int, layout: str) -> None:
        """Require exactly ``nbytes`` unread bytes: what the header read so far implies.

        Decoders call this before allocating, so that every later allocation is
        sized by bytes that are actually present rather than by a claimed count.

        Parameters
        ----------
        nbytes : int
            Exact length in bytes of the rest of the body.
        layout : str
            What those bytes should hold (e.g. ``"24 codes of 4 bits"``), for the message.
        """
        if self.remaining != nbytes:
            raise PayloadError(
                f"{self._what} has {self.remaining} bytes after its header, expected {nbytes} for {layout}"
            )

    def array(self, dtype: str | np.dtype, count: int) -> np.ndarray:
        """Read ``count`` items of a fixed-size little-endian ``dtype`` (read-only view)."""
        dt = np.dtype(dtype)
        if count < 0 or count * dt.itemsize > self.remaining:
            raise PayloadError(
                f"{self._what} truncated: need {count} x {dt.itemsize} bytes, {self.remaining} left"
            )
        return np.frombuffer(self.take(count * dt.itemsize), dtype=dt, count=count)

    def rest_array(self, dtype: str | np.dtype, count: int) -> np.ndarray:
        """The rest of the buffer as ``count`` items of ``dtype``, which must fill it exactly.

        The length is checked (:meth:`expect_remaining`) before anything is read;
        the result is a read-only view, so nothing is allocated here either.
        """
        dt = np.dtype(dtype)
        self.expect_remaining(count * dt.itemsize, f"{count} values of {dt.itemsize} bytes")
        return self.array(dt, count)

    def finish(self) -> None:
        """Require that the whole buffer has been consumed."""
        if self.remaining:
            raise PayloadError(f"{self._what} has {self.remaining} unexpected trailing bytes")


_RICE_HEADER = struct.Struct("<BI")  # rice parameter (bits), unary stream length (bits)
RICE_HEADER_NBYTES = _RICE_HEADER.size


def sorted_indices_nbytes(count: int, b: int, unary_bits: int) -> int:
    """Bytes of an index stream written by :func:`encode_sorted_indices`.

    ``count`` indices with Rice parameter ``b`` (bits) and a unary stream of
    ``unary_bits`` bits take ``5 + ceil(unary_bits / 8) + ceil(count * b / 8)`` bytes.
    """
    return RICE_HEADER_NBYTES + packed_nbytes(unary_bits, 1) + packed_nbytes(count, b)


def peek_index_header(reader: BodyReader) -> tuple[int, int]:
    """The Rice parameter ``b`` (bits) and unary stream length (bits) of the next index stream."""
    b, unary_bits = reader.peek(_RICE_HEADER)
    return int(b), int(unary_bits)


def _rice_cost(gaps: np.ndarray, b: int) -> int:
    return int((gaps >> b).sum()) + gaps.size * (b + 1)


def encode_sorted_indices(indices: np.ndarray) -> bytes:
    """Golomb-Rice code strictly increasing non-negative indices.

    Gaps ``g_i = idx_i - idx_{i-1} - 1`` (with ``idx_{-1} = -1``) are split into a
    quotient ``g >> b`` written in unary (that many 1-bits then a 0-bit) and a
    ``b``-bit remainder. Unary and remainder parts are stored as two separate
    streams so that decoding is fully vectorised. ``b`` is chosen to minimise the
    size for the actual gaps.

    Layout: ``u8 b | u32 unary_bits | unary stream | remainder stream``; size in
    bytes is ``5 + ceil(unary_bits / 8) + ceil(k * b / 8)``.
    """
    idx = np.asarray(indices, dtype=np.int64).ravel()
    k = idx.size
    if k == 0:
        return _RICE_HEADER.pack(0, 0)
    gaps = np.diff(idx, prepend=-1) - 1
    if gaps.min() < 0:
        raise ValueError("indices must be strictly increasing and non-negative")
    top = int(gaps.max()).bit_length()
    b = min(range(0, min(top, MAX_UINT_WIDTH) + 1), key=lambda w: _rice_cost(gaps, w))
    q = gaps >> b
    unary_bits = int(q.sum()) + k
    unary = np.ones(unary_bits, dtype=bool)
    unary[np.cumsum(q + 1) - 1] = False
    rem = (gaps & ((1 << b) - 1)).astype(np.uint32) if b else np.zeros(k, dtype=np.uint32)
    return _RICE_HEADER.pack(b, unary_bits) + pack_bits(unary) + pack_uint(rem, b)


def decode_sorted_indices(reader: BodyReader, count: int, limit: int) -> np.ndarray:
    """Read ``count`` indices written by :func:`encode_sorted_indices`.

    Raises :class:`PayloadError` unless the streams hold exactly ``count``
    strictly increasing indices, all ``< limit``. The stream lengths are checked
    against ``count``, ``limit`` and the bytes left before anything is allocated:
    ``count`` gaps summing to at most ``limit - count`` have unary quotients
    summing to at most ``(limit - count) >> b``.
    """
    b, unary_bits = reader.unpack(_RICE_HEADER)
    if count == 0:
        if unary_bits != 0:
            raise PayloadError("index stream declares bits for zero indices")
        return np.zeros(0, dtype=np.int64)
    if b > MAX_UINT_WIDTH:
        raise PayloadError(f"rice parameter {b} bits is outside [0, {MAX_UINT_WIDTH}]")
    if count > limit:
        raise PayloadError(f"index stream declares {count} indices, more than the {limit} elements")
    most_bits = count + ((limit - count) >> b)
    if not count <= unary_bits <= most_bits or packed_nbytes(unary_bits, 1) > reader.remaining:
        raise PayloadError(
            f"unary index stream of {unary_bits} bits is inconsistent with {count} indices below {limit}"
            f" (allowed: {count} to {most_bits} bits)"
        )
    unary = unpack_bits(reader.take(packed_nbytes(unary_bits, 1)), unary_bits)
    stops = np.flatnonzero(~unary)
    if stops.size != count or stops[-1] != unary_bits - 1:
        raise PayloadError(f"unary index stream holds {stops.size} codes, expected {count}")
    q = np.diff(stops, prepend=-1) - 1
    if int(q.max()) > (limit >> b):
        raise PayloadError("index gap exceeds the tensor size")
    rem = unpack_uint(reader.take(packed_nbytes(count, b)), count, b)
    gaps = (q << b) | rem.astype(np.int64)
    idx = np.cumsum(gaps + 1) - 1
    if int(idx[-1]) >= limit:
        raise PayloadError(f"index {int(idx[-1])} out of range for {limit} elements")
    return idx
