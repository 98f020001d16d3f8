"""A round's global model goes to Ray's object store once, and every ClientApp still gets it whole."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode

from fedsplit.devices import Population, builtin_profiles
from fedsplit.simulation import engine as engine_module
from fedsplit.simulation.engine import RayEngine
from fedsplit.simulation.shared_content import record_bytes, restore, shared_records, strip


def model_record(values: int, fill: float = 1.0) -> ArrayRecord:
    return ArrayRecord({"w": Array(np.full(values, fill, dtype=np.float32)), "b": Array(np.arange(3, dtype=np.int64))})


def train_message(node: int, content: dict) -> Message:
    return Message(RecordDict(content), dst_node_id=node, message_type="train", group_id="1")


def test_only_large_records_that_several_batches_carry_are_shared(task_identity):
    model, small = model_record(1000), model_record(10)
    own = [model_record(1000) for _ in range(3)]  # one per message: nothing to share
    batches = [
        [train_message(1, {"arrays": model, "small": small, "own": own[0]})],
        [train_message(2, {"arrays": model, "small": small, "own": own[1]}), train_message(3, {"arrays": model, "own": own[2]})],
    ]
    assert record_bytes(model) == 4000 + 24 + 2 * 128  # float32 and int64 data, each with its .npy header
    assert shared_records(batches, min_bytes=1024) == [model]
    assert shared_records(batches, min_bytes=100) == [model, small]
    assert shared_records(batches[1:], min_bytes=100) == []  # one batch: pickled once anyway
    assert shared_records(batches, min_bytes=10**9) == []


def test_strip_and_restore_give_back_the_same_message(task_identity):
    model, config = model_record(1000), ConfigRecord({"server-round": 4})
    msg = train_message(7, {"config": config, "arrays": model, "metrics": MetricRecord({"x": 1})})
    sent, layout = strip(msg, {id(model): 0})
    assert list(sent.content.keys()) == ["config", "metrics"]  # the model does not travel in the call
    assert sent.metadata is msg.metadata and sent.content["config"] is config
    back = restore(sent, layout, [model])
    assert list(back.content.keys()) == ["config", "arrays", "metrics"]  # names and order as sent
    assert back.content["arrays"] is model and back.metadata is msg.metadata
    untouched = train_message(8, {"config": config})
    assert strip(untouched, {id(model): 0}) == (untouched, None)
    assert restore(untouched, None, None) is untouched


def echo_app() -> ClientApp:
    """Replies with what arrived: the record names in order and the model's checksum."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        arrays = msg.content["arrays"]
        total = float(arrays["w"].numpy().sum()) + float(arrays["b"].numpy().sum())
        names = ",".join(msg.content.keys())
        return Message(RecordDict({"metrics": MetricRecord({"sum": total}), "names": ConfigRecord({"names": names})}), reply_to=msg)

    return app


def test_every_actor_gets_the_shared_model_put_once_and_retries_too(ray_session, monkeypatch):
    import ray

    puts: list[object] = []
    real_put = ray.put
    monkeypatch.setattr(engine_module.ray, "put", lambda value, **kw: puts.append(value) or real_put(value, **kw))
    model = model_record(300_000, fill=0.5)  # 1.2 MB: over the engine's threshold
    population = Population({"laptop": 5}, builtin_profiles())
    with RayEngine(echo_app(), population, num_actors=2) as engine:
        assert record_bytes(model) >= engine.shared_record_bytes
        engine.faults = lambda m: "kill" if m.metadata.dst_node_id == engine.node_id_of(0) else None
        grid = engine.grid()
        nodes = list(grid.get_node_ids())
        msgs = [train_message(n, {"config": ConfigRecord({"server-round": 1}), "arrays": model}) for n in nodes]
        replies = {r.metadata.src_node_id: r for r in grid.send_and_receive(msgs)}
        assert len(puts) == 1 and puts[0] == [model]  # the model, once for the whole round
        assert replies[engine.node_id_of(0)].error.code == ErrorCode.CLIENT_APP_CRASHED
        for pid in range(1, 5):  # including the batch-mates of terminal 0, retried alone after the kill
            reply = replies[engine.node_id_of(pid)]
            assert not reply.has_error(), reply.error.reason
            assert reply.content["metrics"]["sum"] == 150_000.0 + 3.0
            assert reply.content["names"]["names"] == "config,arrays"
        assert engine.actor_restarts >= 1
        engine.faults = None
        engine.shared_record_bytes = 10**9  # switched off: the model travels inside each call
        again = grid.send_and_receive([train_message(n, {"arrays": model}) for n in nodes])
        assert len(puts) == 1 and all(r.content["metrics"]["sum"] == 150_003.0 for r in again)
