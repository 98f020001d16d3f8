"""The metered message size equals the size of Flower's protobuf, byte for byte."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.common.serde import recorddict_to_proto

from fedsplit.simulation.wire_size import recorddict_wire_bytes


def _arrays(rng: np.random.Generator, shapes: list[tuple[int, ...]], dtype: str = "float32") -> ArrayRecord:
    return ArrayRecord({f"layer{i}.{'w' * (i % 3)}": Array(rng.standard_normal(s).astype(dtype)) for i, s in enumerate(shapes)})


CASES = {
    "empty": lambda rng: RecordDict(),
    "empty-array-record": lambda rng: RecordDict({"arrays": ArrayRecord()}),
    "scalar-and-empty-tensors": lambda rng: RecordDict({"arrays": _arrays(rng, [(), (0,), (0, 5)])}),
    "small-model": lambda rng: RecordDict(
        {"arrays": _arrays(rng, [(64, 64), (64,), (10, 64), (10,)]), "metrics": MetricRecord({"num-examples": 130})}
    ),
    # > 2**21 bytes: the data length is a 4-byte varint; > 127-byte keys: a 2-byte length.
    "large-tensor-long-key": lambda rng: RecordDict(
        {"k" * 300: ArrayRecord({"x" * 200: Array(rng.standard_normal((600, 1000)).astype("float32"))})}
    ),
    "int-and-half": lambda rng: RecordDict(
        {"a": _arrays(rng, [(3, 3)], "float16"), "b": ArrayRecord({"n": Array(np.array(2**40, dtype=np.int64))})}
    ),
    "metrics-and-config": lambda rng: RecordDict(
        {
            "metrics": MetricRecord({"flops": 2**62, "neg": -7, "loss": 0.25, "hist": [1.0, 2.5], "ids": [1, -2, 2**33]}),
            "config": ConfigRecord({"lr": 0.05, "name": "é" * 70, "raw": b"\x00" * 300, "flag": True, "ks": ["a", "bc"]}),
        }
    ),
    "train-message-content": lambda rng: RecordDict(
        {"arrays": _arrays(rng, [(32, 1, 5, 5), (32,), (512, 3136)]), "config": ConfigRecord({"server-round": 3, "lr": 0.1})}
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_wire_size_equals_protobuf_size(case: str) -> None:
    content = CASES[case](np.random.default_rng(0))
    assert recorddict_wire_bytes(content) == recorddict_to_proto(content).ByteSize()



METRIC_VALUES = [0, 1, -1, 63, -64, 64, 2**31, -(2**31), 2**63 - 1, -(2**63), 2**63, 2**64 - 1,
                 0.0, -0.0, 1.5, float("nan"), float("inf"), -1e300, [], [0.5, -2.0], [1, -3, 2**40], [2**63, 1]]


def test_metric_record_size_equals_protobuf_size_for_every_kind_of_value() -> None:
    """Scalars sized by arithmetic (sint64 zigzag, uint64 above the int64 range, doubles) and lists
    by protobuf agree with Flower's serialiser, under keys of every length, the empty one included."""
    rng = np.random.default_rng(1)
    keys = ["", "a", "num-examples", "é" * 70, "k" * 200]
    for trial in range(200):
        picked = rng.choice(len(METRIC_VALUES), size=int(rng.integers(0, 6)), replace=False)
        record = MetricRecord({f"{keys[trial % len(keys)]}{i}" if i else keys[trial % len(keys)]: METRIC_VALUES[j] for i, j in enumerate(picked)})
        content = RecordDict({keys[(trial + 1) % len(keys)]: record})
        assert recorddict_wire_bytes(content) == recorddict_to_proto(content).ByteSize(), dict(record)


def test_array_items_with_empty_keys_are_sized_as_protobuf_does() -> None:
    content = RecordDict({"": ArrayRecord({"": Array(np.zeros(3, dtype=np.float32)), "b": Array(np.zeros(0, dtype=np.int8))})})
    assert recorddict_wire_bytes(content) == recorddict_to_proto(content).ByteSize()
