"""Building Flower ``Array``/``ArrayRecord`` objects from model tensors with one copy.

Flower's ``Array(ndarray)`` serialises through ``np.save`` into a ``BytesIO``: the tensor is
copied three times (``tobytes``, the buffer write, ``getvalue``), about 18 ms for the 6.6 MB of
the FedAvg CNN on this project's 2-core machine, more than 5% of a client's local epoch.
:func:`array_from_numpy` writes the same bytes (the ``.npy`` format, header then data) with a
single copy, and :func:`array_view` reads one back without any (a read-only view of the bytes, its
``.npy`` header parsed once per layout), where ``Array.numpy()`` copies the data and parses the
header with ``ast.literal_eval`` every time. Both agree exactly with Flower's: ``tests/test_arrays.py``
checks them against ``Array(ndarray)`` and ``Array.numpy()`` for many dtypes and shapes.

The ``.npy`` header of a layout (dtype, shape) is built once per process (:func:`_npy_header`):
NumPy formats it through ``repr`` of a dict, about 70 us per array, paid for every tensor of
every reply and of every message the server sends, though a run has a handful of layouts.

On the server, checked updates reach the strategy as :class:`ParsedArray` items of a
:class:`SectionedRecordDict`, which read the same bytes through those cached headers and views.
"""

from __future__ import annotations

import functools
import math
from collections import OrderedDict
from collections.abc import Callable, Mapping
from io import BytesIO

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

try:  # the class of the views Flower hands out (tests/test_arrays.py checks it)
    from flwr.app.message.recorddict import _SyncedDict, _check_key
except ImportError:  # a Flower that moved it: SectionedRecordDict gives Flower's own views
    _SyncedDict = _check_key = None

__all__ = ["ParsedArray", "SectionedRecordDict", "array_from_numpy", "as_parsed", "array_record_from_state", "array_view", "parsed_record", "read_only_values", "record_views", "sectioned", "state_dict_of"]


def array_from_numpy(ndarray: np.ndarray) -> Array:
    """A Flower ``Array`` equal to ``Array(ndarray)``, built with one copy of the data."""
    arr = np.asarray(ndarray)
    if arr.dtype.hasobject:
        return Array(arr)  # Flower refuses object arrays; let it say so
    if not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr).reshape(arr.shape)
    header = _npy_header(arr.dtype, arr.shape)
    if header is None:  # a header over 64 KiB needs format 2.0: leave it to np.save
        return Array(arr)
    data = b"".join((header, arr.reshape(-1).view(np.uint8).data))
    return _direct_array(_dtype_name(arr.dtype), tuple(int(d) for d in arr.shape), data)


def _direct_array(dtype: str, shape: tuple[int, ...], data: bytes) -> Array:
    """``Array(dtype=dtype, shape=shape, stype="numpy.ndarray", data=data)`` without its argument
    checks, which cost more than the rest of building a small tensor's ``Array`` (about 15 us of
    Python a tensor, paid for every tensor of every reply): the four fields are set as Flower's own
    direct initialisation sets them, and Flower marks the new object dirty on first use.
    """
    array = Array.__new__(Array)
    array.__dict__.update(dtype=dtype, shape=shape, stype="numpy.ndarray", data=data)
    return array


@functools.lru_cache(maxsize=256)
def _dtype_name(dtype: np.dtype) -> str:
    """``str(dtype)`` (NumPy builds it anew each time)."""
    return str(dtype)


@functools.lru_cache(maxsize=4096)
def _npy_header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes | None:
    """The ``.npy`` 1.0 header (magic, length, dict, padding) of a C-contiguous array of this
    layout, as ``np.save`` writes it; None when it needs format 2.0 (over 64 KiB)."""
    header = BytesIO()
    info = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    try:
        np.lib.format.write_array_header_1_0(header, info)
    except ValueError:
        return None
    return header.getvalue()


def array_record_from_state(state: Mapping[str, object]) -> ArrayRecord:
    """An ``ArrayRecord`` of a state dict (torch tensors or NumPy arrays), keys in order.

    Torch tensors are detached and moved to the CPU first.
    """
    record = ArrayRecord()  # filled item by item: ArrayRecord(dict) would build every Array again
    for key, value in state.items():
        if hasattr(value, "detach"):
            value = value.detach().cpu().numpy()
        record[key] = array_from_numpy(value)
    return record


@functools.lru_cache(maxsize=4096)
def _npy_layout(prefix: bytes) -> tuple[np.dtype, tuple[int, ...], bool]:
    """dtype, shape and Fortran order of an ``.npy`` header (``prefix`` = magic + length + header)."""
    fp = BytesIO(prefix)
    version = np.lib.format.read_magic(fp)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp)
    else:
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp)
    if dtype.hasobject:
        raise ValueError("object arrays are not accepted")
    return dtype, tuple(shape), bool(fortran)


def array_view(array: Array) -> np.ndarray:
    """The values of a Flower ``Array`` as a read-only NumPy view of its bytes (no copy).

    Equal to ``array.numpy()``. Raises ``ValueError`` (or NumPy's own error) for bytes that are
    not a well-formed ``.npy`` of plain (non-object) data, and ``TypeError`` for another ``stype``.
    """
    if array.stype != "numpy.ndarray":
        raise TypeError(f"Unsupported serialization type for numpy conversion: {array.stype!r}")
    data = array.data
    if len(data) < 10:
        raise ValueError(f"{len(data)} bytes are too few for an .npy array")
    if data[6] == 1:
        end = 10 + int.from_bytes(data[8:10], "little")
    else:
        end = 12 + int.from_bytes(data[8:12], "little")
    dtype, shape, fortran = _npy_layout(bytes(data[:end]))
    count = math.prod(shape)
    if len(data) - end != count * dtype.itemsize:
        raise ValueError(f"array data holds {len(data) - end} bytes, its header says {count * dtype.itemsize}")
    flat = np.frombuffer(data, dtype=dtype, count=count, offset=end)
    return flat.reshape(shape, order="F" if fortran else "C")


def record_views(record: ArrayRecord) -> dict[str, np.ndarray]:
    """Every array of ``record`` as a read-only view (:func:`array_view`), keys in order."""
    return {key: array_view(array) for key, array in record.items()}


def state_dict_of(record: ArrayRecord) -> "OrderedDict[str, torch.Tensor]":
    """``record.to_torch_state_dict()``: the same tensors (dtypes, shapes, memory order), each
    writable and its own copy, read through :func:`array_view` instead of ``np.load`` (0.03 ms
    against 0.25 ms for the 6 arrays of the 64-64-10 MLP: the server asks for the global model's
    state every round it evaluates, between the rounds, while the terminals wait)."""
    return OrderedDict((key, torch.from_numpy(array_view(array).copy(order="K"))) for key, array in record.items())


class ParsedArray(Array):
    """A Flower ``Array`` whose :meth:`numpy` reads its bytes through :func:`array_view`.

    The same bytes and the same result as ``Array.numpy()`` (a fresh, writable array, Fortran
    order kept), without ``np.load``'s header parse (``ast.literal_eval``, ~40 us per array).
    Strategy wrappers that have checked a reply hand the inner strategy its arrays in this form
    (:func:`parsed_record`), so that Flower's aggregation (``aggregate_arrayrecords`` calls
    ``numpy()`` on every array of every reply) does not parse each header again.
    """

    def numpy(self) -> np.ndarray:
        view = self.__dict__.get("_view")
        return (array_view(self) if view is None else view).copy(order="K")

    def __setattr__(self, name: str, value: object) -> None:
        super().__setattr__(name, value)
        if name in ("dtype", "shape", "stype", "data"):
            self.__dict__.pop("_view", None)  # the kept view reads the old bytes

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_view", None)  # a view of ``data``: rebuilt on demand
        return state

    def deflate(self) -> bytes:
        """The bytes of the plain ``Array``: Flower's wire header names an object's class and the
        receiver rebuilds it from Flower's own classes, so a ParsedArray that reaches the wire (a
        strategy may return an update it was given) travels, and arrives, as an ``Array``."""
        plain = _recast(self, Array)
        plain.__dict__.pop("_view", None)
        return plain.deflate()


def read_only_values(array: Array) -> np.ndarray:
    """``array.numpy()``'s values without its copy, read-only: the view a :class:`ParsedArray`
    kept, else :func:`array_view` of its bytes; ``array.numpy()`` itself (which raises Flower's
    own error) for what :func:`array_view` cannot read."""
    view = array.__dict__.get("_view")
    if view is not None:
        return view
    try:
        return array_view(array)
    except (TypeError, ValueError):
        return array.numpy()


def parsed_record(record: ArrayRecord, views: Mapping[str, np.ndarray] | None = None) -> ArrayRecord:
    """``record`` with every array as a :class:`ParsedArray` (the same bytes, no copy of them).

    ``views``, when given, are :func:`record_views` of ``record`` already read (by a check of the
    update): each ParsedArray keeps its own, so that ``numpy()`` does not parse it again.
    """
    parsed = ArrayRecord()  # ArrayRecord(dict) would rebuild plain Arrays; its items are Arrays already checked
    parsed.__dict__["_data"] = items = {key: as_parsed(array) for key, array in record.__dict__["_data"].items()}
    for key, view in (views or {}).items():
        items[key].__dict__["_view"] = view
    return parsed


def as_parsed(array: Array) -> ParsedArray:
    """``array`` as a :class:`ParsedArray`: its fields (the same bytes object) in the subclass,
    without Flower's ``Array.__init__`` (which sorts out its three signatures, ~10 us)."""
    return array if isinstance(array, ParsedArray) else _recast(array, ParsedArray)


def _recast(obj: object, cls: type) -> object:
    """A shallow copy of ``obj`` as a ``cls`` (the same field objects), without ``cls.__init__``:
    how this module moves Flower objects between Flower's class and its subclasses here."""
    out = object.__new__(cls)
    out.__dict__.update(obj.__dict__)
    return out


_VIEW_OF = {ArrayRecord: "array_records", MetricRecord: "metric_records", ConfigRecord: "config_records"}


class SectionedRecordDict(RecordDict):
    """A ``RecordDict`` whose ``array_records``, ``metric_records`` and ``config_records`` views
    cost a dict comprehension.

    Flower builds each view by ``view[key] = record`` for every record, and the view's
    ``__setitem__`` also assigns the record back into the ``RecordDict`` (type checks and an
    overwrite check each time): about 7 us per view, and Flower's FedAvg asks each reply for six
    views (reply validation, then the array and metric aggregations). Here the view is the same
    Flower class (writes to it still reach this ``RecordDict``), filled directly: 2.2 us. Views
    are not kept: a kept view refers back to its ``RecordDict``, a reference cycle that would hold
    every reply's arrays until Python's cyclic collector runs. Nor is a view a cycle of its own:
    Flower's keeps its bound method ``check_value`` as its value check, so each view lives until
    the collector runs (four a reply in FedAvg's aggregation: 96 % of a run's cyclic garbage);
    these check with Flower's check bound to another view (:func:`_record_check`) and go as
    soon as they are dropped. It deflates as a plain ``RecordDict`` (Flower names the class on
    the wire).
    """

    def _view(self, kind: type) -> object:
        if not _VIEW_FIELDS_KNOWN:
            return getattr(RecordDict, _VIEW_OF[kind]).fget(self)
        view = _SyncedDict.__new__(_SyncedDict)
        view.__dict__.update(
            _check_key_fn=_check_key,
            _check_value_fn=_record_check(kind),
            _data={k: r for k, r in self.__dict__["_data"].items() if isinstance(r, kind)},
            recorddict=self,
            allowed_type=kind,
        )
        return view

    @property
    def array_records(self):  # noqa: ANN201 - Flower's TypedDict[str, ArrayRecord]
        return self._view(ArrayRecord)

    @property
    def metric_records(self):  # noqa: ANN201 - Flower's TypedDict[str, MetricRecord]
        return self._view(MetricRecord)

    @property
    def config_records(self):  # noqa: ANN201 - Flower's TypedDict[str, ConfigRecord]
        return self._view(ConfigRecord)

    def deflate(self) -> bytes:
        return _recast(self, RecordDict).deflate()


@functools.lru_cache(maxsize=None)
def _record_check(kind: type) -> Callable[[object], None]:
    """Flower's own value check for views of ``kind``: ``check_value`` bound to one view made once
    for the purpose (kept for the process's life), not to the view that uses it."""
    return _SyncedDict(RecordDict(), kind).check_value


def _view_fields_known() -> bool:
    """Whether Flower's view still holds exactly the fields :meth:`SectionedRecordDict._view` sets
    (else the views are Flower's own)."""
    if _SyncedDict is None:
        return False
    try:
        fields = set(_record_check(ArrayRecord).__self__.__dict__)
    except Exception:  # noqa: BLE001 - a Flower whose view is built otherwise
        return False
    return fields == {"_check_key_fn", "_check_value_fn", "_data", "recorddict", "allowed_type"}


_VIEW_FIELDS_KNOWN = _view_fields_known()


def sectioned(content: RecordDict) -> SectionedRecordDict:
    """``content``'s records (the same objects) in a :class:`SectionedRecordDict`."""
    if isinstance(content, SectionedRecordDict):
        return content
    out = _recast(content, SectionedRecordDict)
    out.__dict__["_data"] = dict(content.__dict__["_data"])  # its own dict: setting a record leaves ``content`` as it was
    return out
