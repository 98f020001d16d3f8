"""A round's content that many messages share, sent to the actors once instead of once per call.

A FedAvg-style strategy sends every terminal of a round the same global model: one
:class:`~flwr.app.ArrayRecord` object inside every message's :class:`~flwr.app.RecordDict`. Ray
pickles each actor call's arguments apart, so with the round's messages in ``P`` calls the model
is serialized ``P`` times by the driver, one process for every actor of the machine (measured on
this project's 2-core machine: 1.9 ms a copy for the 6.6 MB FedAvg CNN, so ~30 ms of the driver's
CPU a round at 16 actors; ``experiments/bench_driver.py --ray-actors``). Put in Ray's object store
once (:func:`ray.put`), it is serialized once and each actor reads it from shared memory.

The engine finds such records with :func:`shared_records`, sends each message without them
(:func:`strip`: same metadata, the other records as they were) and a :class:`Layout` that says
where they go, and the actor puts them back (:func:`restore`) before the ClientApp sees the
message: the app gets the same names, in the same order, with the same content.

Only records carried by the messages of more than one call and of at least
:data:`SHARED_RECORD_BYTES` go this way: a small model costs more to put in the store than to
pickle again (its calls' arguments travel inline with them).
"""

from __future__ import annotations

from collections.abc import Sequence

from flwr.app import ArrayRecord, Message, RecordDict
from flwr.app.message import make_message

#: Smallest ArrayRecord (bytes of array data) that is put in the object store once a round when
#: the messages of several actor calls carry it; smaller ones are pickled into each call.
SHARED_RECORD_BYTES = 1024 * 1024

#: Where a stripped message's records go back: ``(name, index)`` per record of the original
#: content, in order; ``index`` is the record's position in the shared list, or -1 for a record
#: that travelled inside the message.
Layout = tuple[tuple[str, int], ...]


def record_bytes(record: ArrayRecord) -> int:
    """Bytes of array data in ``record`` (its arrays' serialized ``data``)."""
    return sum(len(array.data) for array in record.values())


def shared_records(batches: Sequence[Sequence[Message]], min_bytes: int = SHARED_RECORD_BYTES) -> list[ArrayRecord]:
    """The ArrayRecords (the same objects) that messages of more than one of ``batches`` carry,
    each of at least ``min_bytes`` bytes of array data, in the order first met."""
    seen: dict[int, tuple[ArrayRecord, set[int]]] = {}
    for index, batch in enumerate(batches):
        for msg in batch:
            if msg.has_content():
                for record in msg.content.values():  # not ``array_records``: a view built per call
                    if isinstance(record, ArrayRecord):
                        seen.setdefault(id(record), (record, set()))[1].add(index)
    return [record for record, where in seen.values() if len(where) > 1 and record_bytes(record) >= min_bytes]


def strip(msg: Message, positions: dict[int, int]) -> tuple[Message, Layout | None]:
    """``msg`` without the records listed in ``positions`` (``id(record)`` -> index in the shared
    list) and the layout that puts them back; ``(msg, None)`` when it carries none of them."""
    if not msg.has_content() or not any(id(r) in positions for r in msg.content.values()):
        return msg, None
    layout = tuple((name, positions.get(id(record), -1)) for name, record in msg.content.items())
    kept = RecordDict({name: record for name, record in msg.content.items() if id(record) not in positions})
    return make_message(metadata=msg.metadata, content=kept), layout


def restore(msg: Message, layout: Layout | None, shared: Sequence[ArrayRecord] | None) -> Message:
    """The message :func:`strip` took apart, its records back in their places and order."""
    if layout is None:
        return msg
    kept = msg.content
    content = RecordDict({name: shared[index] if index >= 0 else kept[name] for name, index in layout})
    return make_message(metadata=msg.metadata, content=content)
