"""Exact wire size of a Flower ``RecordDict`` without serialising its arrays.

Flower puts a message's content on the wire as the protobuf ``flwr.proto.RecordDict``.
Serialising a model's ``ArrayRecord`` just to learn its size copies every tensor several times
(milliseconds per message for a 1.6 M-parameter CNN); this module computes the same number from
the arrays' byte lengths and the small protobuf heads, so metering a message costs microseconds.

Keys, array payloads and scalar metrics are sized by arithmetic (a reply's ``MetricRecord``
through protobuf took as long as all of its arrays); an array's other fields (dtype, shape,
stype) by protobuf once per layout, and the rest (config records, metric lists) by protobuf
itself. ``tests/test_wire_size.py`` checks the result against
``recorddict_to_proto(content).ByteSize()`` byte for byte.
"""

from __future__ import annotations

import functools

from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.common.serde import config_record_to_proto, metric_record_to_proto
from flwr.proto.recorddict_pb2 import Array as ProtoArray
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict

__all__ = ["array_record_wire_bytes", "metric_record_wire_bytes", "recorddict_wire_bytes"]

_INT64_MAX = 2**63 - 1


def _varint_bytes(value: int) -> int:
    """Bytes of a non-negative integer as a protobuf varint."""
    return max(1, (value.bit_length() + 6) // 7)


def _embedded_bytes(length: int) -> int:
    """Bytes of a length-delimited field of ``length`` bytes (field numbers below 16: 1-byte tag)."""
    return 1 + _varint_bytes(length) + length


@functools.lru_cache(maxsize=4096)
def _array_head_bytes(dtype: str, shape: tuple[int, ...], stype: str) -> int:
    """Bytes of an ``Array``'s fields other than its data (a run has a handful of layouts)."""
    return ProtoArray(dtype=dtype, shape=shape, stype=stype).ByteSize()


@functools.lru_cache(maxsize=4096)
def _array_item_bytes(key: str, dtype: str, shape: tuple[int, ...], stype: str, data_bytes: int) -> int:
    """Bytes of one ``ArrayRecord`` item (its key, the Array's fields and ``data_bytes`` of data),
    framing included: a run sends the same few layouts over and over."""
    # proto3 leaves an empty ``bytes`` field off the wire.
    array = _array_head_bytes(dtype, shape, stype) + (_embedded_bytes(data_bytes) if data_bytes else 0)
    return _embedded_bytes(_string_field_bytes(key) + _embedded_bytes(array))


def array_record_wire_bytes(record: ArrayRecord) -> int:
    """Bytes of ``record`` serialised as ``flwr.proto.ArrayRecord``."""
    total = 0
    for key, array in record.items():
        total += _array_item_bytes(key, array.dtype, tuple(array.shape), array.stype, len(array.data))
    return total


@functools.lru_cache(maxsize=4096)
def _string_field_bytes(text: str) -> int:
    """Bytes of a string field (field number below 16) holding ``text`` (proto3 leaves "" off)."""
    return _embedded_bytes(len(text.encode("utf-8"))) if text else 0


def _metric_value_bytes(value: object) -> int | None:
    """Bytes of a scalar ``flwr.proto.MetricRecordValue`` as Flower fills it (a float as
    ``double``, an int as ``sint64``, or as ``uint64`` above the int64 range); None for a list
    (and an int below the int64 range, which Flower's serialiser refuses), left to protobuf."""
    if isinstance(value, float):
        return 9  # tag + 8 bytes: a set oneof member is written even when it is 0.0
    if isinstance(value, int) and value >= -_INT64_MAX - 1:
        if value > _INT64_MAX:
            return 1 + _varint_bytes(value)
        return 1 + _varint_bytes((value << 1) ^ (value >> 63))  # zigzag
    return None


def metric_record_wire_bytes(record: MetricRecord) -> int:
    """Bytes of ``record`` serialised as ``flwr.proto.MetricRecord``.

    Scalars are sized by arithmetic; a list value by protobuf (Flower's own serialiser).
    """
    total = 0
    for key, value in record.items():
        size = _metric_value_bytes(value)
        if size is None:
            size = metric_record_to_proto(MetricRecord({key: value})).items[0].value.ByteSize()
        total += _embedded_bytes(_string_field_bytes(key) + _embedded_bytes(size))
    return total


def recorddict_wire_bytes(content: RecordDict) -> int:
    """Bytes of ``content`` serialised as ``flwr.proto.RecordDict`` (what Flower sends).

    Raises
    ------
    ValueError
        For a record type Flower cannot serialise.
    """
    total = 0
    for key, record in content.items():
        if isinstance(record, ArrayRecord):
            item = _string_field_bytes(key) + _embedded_bytes(array_record_wire_bytes(record))
        elif isinstance(record, MetricRecord):
            item = _string_field_bytes(key) + _embedded_bytes(metric_record_wire_bytes(record))
        elif isinstance(record, ConfigRecord):
            item = ProtoRecordDict.Item(key=key, config_record=config_record_to_proto(record)).ByteSize()
        else:
            raise ValueError(f"record {key!r} has unsupported type {type(record).__name__}")
        total += _embedded_bytes(item)
    return total
