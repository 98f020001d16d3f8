"""The engine's actor calls carry Flower messages pickled by the standard library, intact."""

from __future__ import annotations

import pickle

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict

from fedsplit.simulation.actor_payload import pack, unpack


def test_a_batch_of_messages_and_contexts_comes_back_equal(task_identity):
    model = ArrayRecord({"w": Array(np.arange(12, dtype=np.float32).reshape(3, 4))})
    msgs = [
        Message(RecordDict({"arrays": model, "config": ConfigRecord({"server-round": 3})}), dst_node_id=n, message_type="train", group_id="3")
        for n in (1, 2)
    ]
    ctxs = [Context(run_id=1, node_id=n, node_config={"partition-id": n - 1}, state=RecordDict(), run_config={}) for n in (1, 2)]
    payload = pack((list(zip(msgs, ctxs)), ["kill", None], None))
    assert isinstance(payload, bytes)
    items, faults, layouts = unpack(payload)
    assert faults == ["kill", None] and layouts is None
    for (msg, ctx), sent, sent_ctx in zip(items, msgs, ctxs):
        assert msg.metadata == sent.metadata
        got = msg.content["arrays"]["w"]
        assert got.numpy().tolist() == model["w"].numpy().tolist()
        assert msg.content["config"]["server-round"] == 3
        assert ctx.node_config == sent_ctx.node_config and ctx.node_id == sent_ctx.node_id
    # the model both messages share is pickled once, as Ray's own pickling did
    assert items[0][0].content["arrays"] is items[1][0].content["arrays"]


def test_what_the_standard_pickler_refuses_goes_through_cloudpickle():
    def local(x: int) -> int:
        return x + 1

    try:
        pickle.dumps(local)
    except (pickle.PicklingError, AttributeError):
        pass
    else:  # pragma: no cover - the premise of this test
        raise AssertionError("the standard pickler took a local function")
    assert unpack(pack({"f": local}))["f"](1) == 2
