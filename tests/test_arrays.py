"""fedsplit's one-copy Array builder gives exactly what Flower's Array(ndarray) gives."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedsplit.clients.arrays import (
    ParsedArray,
    SectionedRecordDict,
    array_from_numpy,
    array_record_from_state,
    array_view,
    parsed_record,
    sectioned,
    state_dict_of,
)

rng = np.random.default_rng(0)
ARRAYS = {
    "float32-matrix": rng.standard_normal((64, 33)).astype(np.float32),
    "float16": rng.standard_normal((7,)).astype(np.float16),
    "float64-4d": rng.standard_normal((2, 3, 4, 5)),
    "int64-scalar": np.array(12345, dtype=np.int64),
    "bool": rng.random((5, 5)) > 0.5,
    "uint8": rng.integers(0, 255, (17,), dtype=np.uint8),
    "empty": np.zeros((0, 4), dtype=np.float32),
    "big-endian": np.arange(6, dtype=">i4").reshape(2, 3),
    "fortran-order": np.asfortranarray(rng.standard_normal((4, 6)).astype(np.float32)),
    "strided-view": rng.standard_normal((10, 10)).astype(np.float32)[::3, 1::2],
}


@pytest.mark.parametrize("name", sorted(ARRAYS))
def test_array_from_numpy_equals_flower(name: str) -> None:
    arr = ARRAYS[name]
    ours, flowers = array_from_numpy(arr), Array(np.ascontiguousarray(arr).reshape(arr.shape))
    assert (ours.dtype, ours.shape, ours.stype) == (flowers.dtype, flowers.shape, flowers.stype)
    assert ours.data == flowers.data
    assert ours.is_dirty and ours == flowers and ours.object_id == flowers.object_id  # dirty until Flower deflates it
    np.testing.assert_array_equal(ours.numpy(), arr)


def test_array_record_from_state_round_trips_a_torch_state_dict() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4))
    state = model.state_dict()
    record = array_record_from_state(state)
    assert list(record) == list(state)
    assert record.object_id == ArrayRecord(state).object_id
    for key, value in record.to_torch_state_dict().items():
        assert value.dtype == state[key].dtype
        assert torch.equal(value, state[key])


@pytest.mark.parametrize("name", sorted(ARRAYS))
def test_array_view_equals_flower_numpy_without_copying(name: str) -> None:
    flowers = Array(ARRAYS[name])  # Flower's own encoding, Fortran order included
    view, expected = array_view(flowers), flowers.numpy()
    assert view.dtype == expected.dtype and view.shape == expected.shape
    np.testing.assert_array_equal(view, expected)
    assert not view.flags.writeable
    if view.size:
        assert np.shares_memory(view, np.frombuffer(flowers.data, dtype=np.uint8))


def test_array_view_rejects_truncated_or_foreign_data() -> None:
    good = Array(np.arange(10, dtype=np.float32))
    with pytest.raises(ValueError, match="header says 40"):
        array_view(Array(dtype=good.dtype, shape=good.shape, stype=good.stype, data=good.data[:-4]))
    with pytest.raises(ValueError, match="too few"):
        array_view(Array(dtype="float32", shape=(1,), stype="numpy.ndarray", data=b"\x93NUMPY"))
    with pytest.raises(TypeError, match="torch.tensor"):
        array_view(Array(dtype="float32", shape=(1,), stype="torch.tensor", data=good.data))


@pytest.mark.parametrize("name", sorted(ARRAYS))
def test_parsed_array_numpy_equals_flower_numpy(name: str) -> None:
    """A ParsedArray gives what Array.numpy() gives: dtype, shape, memory order, a writable copy."""
    flowers = Array(np.ascontiguousarray(ARRAYS[name]).reshape(ARRAYS[name].shape))
    parsed = parsed_record(ArrayRecord({"x": flowers}))["x"]
    assert isinstance(parsed, ParsedArray) and parsed.data is flowers.data  # the same bytes, not a copy
    ours, theirs = parsed.numpy(), flowers.numpy()
    assert (ours.dtype, ours.shape, ours.flags.f_contiguous) == (theirs.dtype, theirs.shape, theirs.flags.f_contiguous)
    np.testing.assert_array_equal(ours, theirs)
    ours += 1 if ours.dtype != bool else True  # writable, and a copy: the record's bytes do not change
    np.testing.assert_array_equal(parsed.numpy(), theirs)


def test_parsed_array_travels_and_arrives_as_a_plain_flower_array() -> None:
    """Flower names an object's class on the wire and rebuilds it from its own classes: a
    ParsedArray deflates to exactly the plain Array's bytes, so the receiver gets an Array."""
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
    from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents

    plain = ArrayRecord({"w": Array(ARRAYS["float32-matrix"]), "b": Array(ARRAYS["int64-scalar"])})
    parsed = parsed_record(plain)
    assert [type(a) for a in parsed.values()] == [ParsedArray, ParsedArray]
    assert parsed.object_id == plain.object_id
    contents = {oid: obj.deflate() for oid, obj in get_all_nested_objects(parsed).items()}
    arrived = inflate_object_from_contents(parsed.object_id, contents)
    assert [type(a) for a in arrived.values()] == [Array, Array]
    for key in plain:
        np.testing.assert_array_equal(arrived[key].numpy(), plain[key].numpy())


def test_sectioned_record_dict_gives_flowers_views_and_writes_through_them() -> None:
    plain = RecordDict({
        "arrays": ArrayRecord({"w": Array(ARRAYS["float32-matrix"])}),
        "metrics": MetricRecord({"num-examples": 7, "loss": 0.5}),
        "config": ConfigRecord({"lr": 0.1}),
    })
    fast = sectioned(plain)
    assert isinstance(fast, SectionedRecordDict) and sectioned(fast) is fast
    for kind in ("array_records", "metric_records", "config_records"):
        theirs, ours = getattr(plain, kind), getattr(fast, kind)
        assert type(ours) is type(theirs) and dict(ours) == dict(theirs)
    fast.metric_records["extra"] = MetricRecord({"n": 1})  # a write through the view reaches the dict
    assert isinstance(fast["extra"], MetricRecord) and "extra" not in plain  # a copy: the original is untouched
    with pytest.raises(TypeError):
        fast.metric_records["bad"] = ConfigRecord({"x": 1})  # the view still checks the record type


def test_sectioned_views_are_freed_when_dropped_and_check_as_flowers_do() -> None:
    """Flower's view holds its own bound method (a reference cycle only the cyclic collector frees);
    a SectionedRecordDict's view is freed by its last reference going."""
    import gc
    import weakref

    plain = RecordDict({"arrays": ArrayRecord({"w": Array(ARRAYS["float32-matrix"])}), "metrics": MetricRecord({"n": 3})})
    fast = sectioned(plain)
    gc.disable()
    try:
        theirs, ours = weakref.ref(plain.metric_records), weakref.ref(fast.metric_records)
        assert theirs() is not None and ours() is None
    finally:
        gc.enable()
    with pytest.raises(TypeError) as theirs_error:
        plain.array_records["bad"] = MetricRecord({"x": 1})
    with pytest.raises(TypeError) as ours_error:
        fast.array_records["bad"] = MetricRecord({"x": 1})
    assert str(ours_error.value) == str(theirs_error.value)
    fast.array_records["more"] = ArrayRecord({"v": Array(ARRAYS["float32-matrix"])})  # a write still reaches the dict
    assert isinstance(fast["more"], ArrayRecord)


def test_sectioned_record_dict_travels_and_arrives_as_a_plain_record_dict() -> None:
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
    from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents

    plain = RecordDict({"arrays": ArrayRecord({"w": Array(ARRAYS["float32-matrix"])}), "metrics": MetricRecord({"n": 3})})
    fast = sectioned(plain)
    assert fast.deflate() == plain.deflate() and fast.object_id == plain.object_id
    contents = {oid: obj.deflate() for oid, obj in get_all_nested_objects(fast).items()}
    arrived = inflate_object_from_contents(fast.object_id, contents)
    assert type(arrived) is RecordDict and list(arrived) == ["arrays", "metrics"]
    np.testing.assert_array_equal(arrived["arrays"]["w"].numpy(), ARRAYS["float32-matrix"])


def test_sectioned_record_dict_falls_back_to_flowers_views(monkeypatch) -> None:
    """Where Flower no longer has the private view class, the views are Flower's own."""
    import fedsplit.clients.arrays as arrays

    monkeypatch.setattr(arrays, "_VIEW_FIELDS_KNOWN", False)
    plain = RecordDict({"arrays": ArrayRecord({"w": Array(ARRAYS["float32-matrix"])}), "metrics": MetricRecord({"n": 3})})
    fast = sectioned(plain)
    for kind in ("array_records", "metric_records", "config_records"):
        assert dict(getattr(fast, kind)) == dict(getattr(plain, kind))


def test_parsed_array_reads_through_the_view_it_was_given_until_its_bytes_change() -> None:
    import pickle

    from fedsplit.clients.arrays import ParsedArray, array_from_numpy, parsed_record, record_views

    values = np.arange(12, dtype=np.float32).reshape(3, 4)
    record = ArrayRecord({"w": array_from_numpy(values)})
    views = record_views(record)
    parsed = parsed_record(record, views)["w"]
    assert isinstance(parsed, ParsedArray) and parsed.__dict__["_view"] is views["w"]
    out = parsed.numpy()
    assert out.flags.writeable and not np.shares_memory(out, views["w"])  # a fresh copy, as Array.numpy()
    np.testing.assert_array_equal(out, values)
    parsed.data = array_from_numpy(values + 1).data  # new bytes: the kept view is dropped
    assert "_view" not in parsed.__dict__
    np.testing.assert_array_equal(parsed.numpy(), values + 1)
    again = parsed_record(record, record_views(record))["w"]
    assert "_view" not in pickle.loads(pickle.dumps(again)).__dict__
    assert again.deflate() == record["w"].deflate()  # travels as the plain Array, view left behind


TORCH_ARRAYS = sorted(name for name in ARRAYS if name != "big-endian")  # torch takes native byte order only


@pytest.mark.parametrize("name", TORCH_ARRAYS)
def test_state_dict_of_equals_flowers_to_torch_state_dict(name: str) -> None:
    record = ArrayRecord({"a": Array(ARRAYS[name]), "b": Array(ARRAYS["float32-matrix"])})
    ours, flowers = state_dict_of(record), record.to_torch_state_dict()
    assert list(ours) == list(flowers) == ["a", "b"]
    for key in ours:
        assert ours[key].dtype == flowers[key].dtype and ours[key].shape == flowers[key].shape
        if ours[key].numel():  # (strides of an empty tensor mean nothing)
            assert ours[key].stride() == flowers[key].stride()  # Fortran order kept, as np.load keeps it
        assert torch.equal(ours[key], flowers[key])
    before = bytes(record["b"].data)
    ours["b"].add_(1.0)  # its own writable copy: the record's bytes do not change
    assert bytes(record["b"].data) == before
    np.testing.assert_array_equal(state_dict_of(record)["b"].numpy(), ARRAYS["float32-matrix"])


def test_read_only_values_are_numpys_values_without_a_copy():
    from fedsplit.clients.arrays import read_only_values

    values = np.arange(12, dtype=np.float32).reshape(3, 4)
    plain = Array(values)
    read = read_only_values(plain)
    np.testing.assert_array_equal(read, plain.numpy())
    assert read.dtype == values.dtype and not read.flags.writeable
    checked = parsed_record(ArrayRecord({"x": plain}), {"x": read})["x"]
    assert read_only_values(checked) is read  # the view the check kept
    other = Array(dtype="float32", shape=(1,), stype="torch.raw", data=b"\x00" * 4)
    with pytest.raises(TypeError):  # Flower's own error for bytes that are no NumPy array
        other.numpy()
    with pytest.raises(TypeError):
        read_only_values(other)
