"""Compression on real Flower objects: the mod around a real ClientApp, the strategy around FedAvg."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp.strategy import FedAdam, FedAvg, FedProx

from fedsplit.clients.compression_mod import COMPRESSION_ERROR_CODE, compression_mod, to_numpy
from fedsplit.compression import (
    CompressionConfig,
    decode_update,
    encode_update,
    make_codec,
    specs_of,
)
from fedsplit.compression.wire import (
    CODEC_STATE_KEY,
    CONFIG_KEY,
    DENSE_BYTES_METRIC,
    DOWNLINK_KEY,
    PAYLOAD_BYTES_METRIC,
    REPLICA_META_KEY,
    REPLICA_STATE_KEY,
    RESIDUAL_STATE_KEY,
    UPDATE_KEY,
)
from fedsplit.strategies.compression import CompressedStrategy, GuardedStrategy, keep_dtypes

STRATEGY_LOGGER = "fedsplit.strategies.compression"
DENSE_BYTES = 4 * (8 * 16 + 16) + 8


pytestmark = pytest.mark.usefixtures("task_identity")  # tests/conftest.py


def global_model(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "w": rng.standard_normal((8, 16)).astype(np.float32),
        "b": rng.standard_normal(16).astype(np.float32),
        "bn.num_batches_tracked": np.array(5, dtype=np.int64),
    }


def record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()})


def local_step(node_id: int) -> dict[str, np.ndarray]:
    """What client ``node_id`` adds to the weights it receives (differs per node)."""
    rng = np.random.default_rng(node_id)
    return {"w": rng.standard_normal((8, 16)).astype(np.float32) * 0.1, "b": np.full(16, 0.01 * node_id, np.float32)}


def make_app() -> ClientApp:
    """A real ClientApp with the mod installed; train adds a per-node constant update."""
    app = ClientApp(mods=[compression_mod])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        weights = to_numpy(msg.content["arrays"])
        step = local_step(context.node_id)
        local = {
            "w": weights["w"] + step["w"],
            "b": weights["b"] + step["b"],
            "bn.num_batches_tracked": weights["bn.num_batches_tracked"] + 3,
        }
        metrics = MetricRecord({"num-examples": 10 * context.node_id, "train-loss": 0.5})
        return Message(RecordDict({"arrays": record(local), "metrics": metrics}), reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        return Message(RecordDict({"metrics": MetricRecord({"num-examples": 1, "loss": 0.0})}), reply_to=msg)

    return app


def context(node_id: int) -> Context:
    return Context(run_id=1, node_id=node_id, node_config={}, state=RecordDict(), run_config={})


def train_message(node_id: int, server_round: int, arrays: dict[str, np.ndarray], spec: dict | None) -> Message:
    config = ConfigRecord({"server-round": server_round, "lr": 0.1})
    if spec is not None:
        config[CONFIG_KEY] = json.dumps(spec)
    content = RecordDict({"arrays": record(arrays), "config": config})
    return Message(content, dst_node_id=node_id, message_type=MessageType.TRAIN)


class StubGrid:
    """Only what the strategies' configure_* use: the connected node ids."""

    def __init__(self, node_ids: list[int]) -> None:
        self.node_ids = node_ids

    def get_node_ids(self) -> list[int]:
        return list(self.node_ids)


# -- the client mod ----------------------------------------------------------------------


def test_mod_encodes_update_and_keeps_error_feedback_across_rounds() -> None:
    app, ctx = make_app(), context(7)
    glob = global_model()
    cfg = CompressionConfig(uplink="topk", density=0.1, error_feedback=True)
    rounds, total_sent = 4, {"w": np.zeros((8, 16), np.float32), "b": np.zeros(16, np.float32)}
    for r in range(1, rounds + 1):
        reply = app(train_message(7, r, glob, cfg.wire_spec(r)), ctx)
        assert not reply.has_error()
        assert "arrays" not in reply.content
        update = reply.content[UPDATE_KEY]
        assert update["codec"] == "topk" and update["server-round"] == r
        payload = update["payload"]
        assert reply.content["metrics"][PAYLOAD_BYTES_METRIC] == len(payload)
        assert reply.content["metrics"][DENSE_BYTES_METRIC] == DENSE_BYTES
        assert reply.content["metrics"]["num-examples"] == 70
        decoded = decode_update(payload, expected=specs_of(glob))
        assert int(decoded.tensors["bn.num_batches_tracked"]) == 8  # raw, exact, absolute
        for k in total_sent:
            total_sent[k] += decoded.tensors[k]
        residual = to_numpy(ctx.state[RESIDUAL_STATE_KEY])
        assert set(residual) == {"w", "b"}
    step = local_step(7)
    for k in total_sent:  # what reached the server + what the client still holds == all updates
        np.testing.assert_allclose(total_sent[k] + residual[k], rounds * step[k], rtol=1e-5, atol=1e-5)
    assert np.abs(residual["w"]).max() > 0  # top-k 10% really dropped something


def test_mod_error_feedback_off_clears_the_residual() -> None:
    app, ctx = make_app(), context(3)
    glob = global_model()
    app(train_message(3, 1, glob, CompressionConfig(uplink="topk", density=0.1).wire_spec(1)), ctx)
    assert RESIDUAL_STATE_KEY in ctx.state
    spec = CompressionConfig(uplink="topk", density=0.1, error_feedback=False).wire_spec(2)
    app(train_message(3, 2, glob, spec), ctx)
    assert RESIDUAL_STATE_KEY not in ctx.state


def test_mod_keeps_powersgd_warm_start_in_context_state() -> None:
    app, ctx = make_app(), context(2)
    spec = CompressionConfig(uplink="powersgd", rank=2).wire_spec(1)
    app(train_message(2, 1, global_model(), spec), ctx)
    q = to_numpy(ctx.state[CODEC_STATE_KEY])
    assert list(q) == ["powersgd/w"] and q["powersgd/w"].shape == (16, 2)


def test_mod_passes_through_without_spec_and_for_evaluate() -> None:
    app, ctx = make_app(), context(4)
    reply = app(train_message(4, 1, global_model(), None), ctx)
    assert "arrays" in reply.content and UPDATE_KEY not in reply.content
    assert PAYLOAD_BYTES_METRIC not in reply.content["metrics"]
    assert len(ctx.state) == 0
    content = RecordDict({"arrays": record(global_model()), "config": ConfigRecord({CONFIG_KEY: "{}"})})
    reply = app(Message(content, dst_node_id=4, message_type=MessageType.EVALUATE), ctx)
    assert not reply.has_error() and reply.content["metrics"]["loss"] == 0.0


def test_mod_replies_with_an_error_for_a_bad_spec() -> None:
    app, ctx = make_app(), context(4)
    msg = train_message(4, 1, global_model(), None)
    msg.content["config"][CONFIG_KEY] = json.dumps({"version": 1, "uplink": {"codec": "nope"}})
    reply = app(msg, ctx)
    assert reply.has_error() and reply.error.code == COMPRESSION_ERROR_CODE and "nope" in reply.error.reason


def test_mod_refuses_a_delta_for_a_stale_replica() -> None:
    app, ctx = make_app(), context(5)
    msg = train_message(5, 3, global_model(), CompressionConfig(downlink="topk").wire_spec(3))
    del msg.content["arrays"]
    msg.content[DOWNLINK_KEY] = ConfigRecord({"mode": "delta", "payload": b"x", "round": 3, "base-round": 2})
    reply = app(msg, ctx)
    assert reply.has_error() and "stale downlink replica" in reply.error.reason


# -- the strategy wrapper ------------------------------------------------------------------


def run_round(strategy, server_round, arrays, grid, app, contexts, drop=(), inspect=None):
    """configure_train, deliver to every node not in ``drop`` (the mod owns delivered messages)."""
    messages = list(strategy.configure_train(server_round, record(arrays), ConfigRecord({"lr": 0.1}), grid))
    if inspect is not None:
        inspect(messages)
    replies = [app(m, contexts[m.metadata.dst_node_id]) for m in messages if m.metadata.dst_node_id not in drop]
    return messages, replies


def fedavg_of(locals_by_node: dict[int, dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    weights = {n: 10.0 * n for n in locals_by_node}
    total = sum(weights.values())
    keys = next(iter(locals_by_node.values())).keys()
    return {k: sum(locals_by_node[n][k] * (weights[n] / total) for n in locals_by_node) for k in keys}


def decoded_locals(replies, glob) -> dict[int, dict[str, np.ndarray]]:
    out = {}
    for reply in replies:
        tensors = decode_update(reply.content[UPDATE_KEY]["payload"], expected=specs_of(glob)).tensors
        out[reply.metadata.src_node_id] = {
            k: (glob[k] + tensors[k] if k != "bn.num_batches_tracked" else tensors[k]) for k in glob
        }
    return out


@pytest.mark.parametrize("uplink", ["topk", "qsgd", "powersgd"])
def test_strategy_aggregate_equals_fedavg_of_decoded_weights(uplink: str) -> None:
    nodes = [1, 2, 3]
    app, contexts, grid = make_app(), {n: context(n) for n in nodes}, StubGrid(nodes)
    strategy = CompressedStrategy(FedAvg(min_available_nodes=3, min_train_nodes=3),
                                  CompressionConfig(uplink=uplink, density=0.2))
    glob = global_model()
    messages, replies = run_round(strategy, 1, glob, grid, app, contexts)
    for m in messages:
        spec = json.loads(m.content["config"][CONFIG_KEY])
        assert spec["uplink"]["codec"] == uplink and m.content["config"]["lr"] == 0.1
    expected = fedavg_of(decoded_locals(replies, glob))
    payload_bytes = sum(len(r.content[UPDATE_KEY]["payload"]) for r in replies)

    arrays, metrics = strategy.aggregate_train(1, replies)
    got = to_numpy(arrays)
    for k in ("w", "b", "bn.num_batches_tracked"):
        np.testing.assert_allclose(got[k], expected[k], rtol=1e-6, atol=1e-6)
    assert float(got["bn.num_batches_tracked"]) == pytest.approx(8.0)
    assert metrics[PAYLOAD_BYTES_METRIC] == payload_bytes
    assert metrics[DENSE_BYTES_METRIC] == 3 * DENSE_BYTES
    assert metrics["fedsplit.rejected"] == 0
    ups = [t for t in strategy.traffic if t.direction == "up"]
    assert sorted(t.node_id for t in ups) == nodes and sum(t.payload_bytes for t in ups) == payload_bytes


def test_identity_compression_reproduces_plain_fedavg() -> None:
    nodes = [1, 2, 3, 4]
    glob = global_model()
    app, grid = make_app(), StubGrid(nodes)
    plain = FedAvg(min_available_nodes=4, min_train_nodes=4)
    _, plain_replies = run_round(plain, 1, glob, grid, app, {n: context(n) for n in nodes})
    want, _ = plain.aggregate_train(1, plain_replies)
    wrapped = CompressedStrategy(FedAvg(min_available_nodes=4, min_train_nodes=4), CompressionConfig())
    _, replies = run_round(wrapped, 1, glob, grid, app, {n: context(n) for n in nodes})
    got, metrics = wrapped.aggregate_train(1, replies)
    for k in glob:
        np.testing.assert_allclose(to_numpy(got)[k], to_numpy(want)[k], rtol=1e-6, atol=1e-6)
    assert metrics["fedsplit.uplink-ratio"] == pytest.approx(DENSE_BYTES / (metrics[PAYLOAD_BYTES_METRIC] / 4), rel=1e-9)
    assert metrics["fedsplit.uplink-ratio"] < 1  # identity: framing makes it slightly larger than fp32


def test_bad_payloads_are_rejected_and_the_rest_aggregated(caplog) -> None:
    nodes = [1, 2, 3, 4, 5, 6]
    app, contexts, grid = make_app(), {n: context(n) for n in nodes}, StubGrid(nodes)
    # No on_reject callback: the wrapper logs each rejection itself (with a callback, the callback
    # logs it, with the terminal's id: one line per rejected update either way).
    strategy = CompressedStrategy(FedAvg(min_available_nodes=6, min_train_nodes=6),
                                  CompressionConfig(uplink="topk", density=0.25))
    rejected = strategy.rejections
    glob = global_model()
    _, replies = run_round(strategy, 1, glob, grid, app, contexts)
    by_node = {r.metadata.src_node_id: r for r in replies}

    def set_payload(node: int, payload: bytes) -> None:
        by_node[node].content[UPDATE_KEY] = ConfigRecord({"codec": "topk", "payload": payload, "server-round": 1})

    good = by_node[1].content[UPDATE_KEY]["payload"]
    set_payload(1, good[: len(good) // 2])  # truncated
    nan = {"w": np.full((8, 16), np.nan, np.float32), "b": np.zeros(16, np.float32),
           "bn.num_batches_tracked": np.array(8, np.int64)}
    set_payload(2, encode_update(nan, make_codec("topk", density=1.0)))  # decodes to NaN
    wrong = {"w": np.zeros((16, 8), np.float32), "b": np.zeros(16, np.float32),
             "bn.num_batches_tracked": np.array(8, np.int64)}
    set_payload(3, encode_update(wrong, make_codec("topk")))  # mis-shaped
    set_payload(4, b"\0" * (10 * DENSE_BYTES))  # oversized
    clean = {n: by_node[n] for n in (5, 6)}
    expected = fedavg_of(decoded_locals(list(clean.values()), glob))

    with caplog.at_level(logging.WARNING, logger=STRATEGY_LOGGER):
        arrays, metrics = strategy.aggregate_train(1, replies)
    reasons = {n: why for _, n, why in rejected}
    assert sorted(reasons) == [1, 2, 3, 4] and all(r == 1 for r, _, _ in rejected)
    assert "checksum" in reasons[1] or "truncated" in reasons[1]
    assert "NaN/Inf" in reasons[2]
    assert "shape" in reasons[3]
    assert "exceeds the limit" in reasons[4]
    lines = [rec.getMessage() for rec in caplog.records if rec.name == STRATEGY_LOGGER]
    for node in (1, 2, 3, 4):
        assert sum(f"from node {node}:" in line for line in lines) == 1
    got = to_numpy(arrays)
    for k in glob:
        np.testing.assert_allclose(got[k], expected[k], rtol=1e-6, atol=1e-6)
    assert metrics["fedsplit.rejected"] == 4


def test_reply_without_update_record_is_rejected() -> None:
    nodes = [1, 2]
    app, contexts, grid = make_app(), {n: context(n) for n in nodes}, StubGrid(nodes)
    strategy = CompressedStrategy(FedAvg(), CompressionConfig(uplink="int8"))
    _, replies = run_round(strategy, 1, global_model(), grid, app, contexts)
    replies[0].content = RecordDict({"metrics": replies[0].content["metrics"], "arrays": record(global_model())})
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None and len(strategy.rejections) == 1
    assert "compression_mod" in strategy.rejections[0][2]


def test_downlink_deltas_keep_replicas_identical_and_stale_clients_get_dense() -> None:
    nodes = [1, 2, 3]
    app, contexts, grid = make_app(), {n: context(n) for n in nodes}, StubGrid(nodes)
    strategy = CompressedStrategy(
        FedAvg(min_available_nodes=3, min_train_nodes=3),
        CompressionConfig(uplink="topk", density=0.2, downlink="topk", downlink_options={"density": 0.5}),
    )
    glob = global_model()
    modes_by_round = {}
    for r in (1, 2, 3):
        drop = (3,) if r == 2 else ()

        def inspect(messages, r=r):
            modes_by_round[r] = {m.metadata.dst_node_id: m.content[DOWNLINK_KEY]["mode"] for m in messages}
            for m in messages:
                assert ("arrays" in m.content) == (modes_by_round[r][m.metadata.dst_node_id] == "dense")

        _, replies = run_round(strategy, r, glob, grid, app, contexts, drop=drop, inspect=inspect)
        arrays, _ = strategy.aggregate_train(r, replies)
        reference = strategy._broadcast.reference
        for n in nodes:
            if n in drop:
                continue
            replica = to_numpy(contexts[n].state[REPLICA_STATE_KEY])
            assert contexts[n].state[REPLICA_META_KEY]["round"] == r
            assert all(replica[k].tobytes() == reference[k].tobytes() for k in reference)
        glob = to_numpy(arrays)
        glob["bn.num_batches_tracked"] = glob["bn.num_batches_tracked"].astype(np.int64)
    assert modes_by_round[1] == {1: "dense", 2: "dense", 3: "dense"}
    assert modes_by_round[2] == {1: "delta", 2: "delta", 3: "delta"}
    assert modes_by_round[3] == {1: "delta", 2: "delta", 3: "dense"}  # node 3 missed round 2
    down = [t for t in strategy.traffic if t.direction == "down" and t.server_round == 3]
    by_node = {t.node_id: t for t in down}
    assert by_node[3].codec == "dense" and by_node[3].payload_bytes == DENSE_BYTES
    assert by_node[1].codec == "topk" and by_node[1].payload_bytes < DENSE_BYTES
    summary = strategy.traffic_summary()
    assert summary["down-ratio"] > 1 and summary["up-ratio"] > 1


def test_guarded_strategy_rejects_nan_and_misshaped_arrays(caplog) -> None:
    nodes = [1, 2, 3, 4]
    app, contexts, grid = make_app(), {n: context(n) for n in nodes}, StubGrid(nodes)
    rejected = []
    strategy = GuardedStrategy(FedAvg(min_available_nodes=4, min_train_nodes=4),
                               on_reject=lambda r, n, why: rejected.append((r, n, why)))
    glob = global_model()
    _, replies = run_round(strategy, 1, glob, grid, app, contexts)
    by_node = {r.metadata.src_node_id: r for r in replies}
    nan = to_numpy(by_node[1].content["arrays"])
    nan["b"][0] = np.inf
    by_node[1].content["arrays"] = record(nan)
    bad_shape = to_numpy(by_node[2].content["arrays"])
    bad_shape["w"] = bad_shape["w"].T.copy()
    by_node[2].content["arrays"] = record(bad_shape)
    expected = fedavg_of({n: to_numpy(by_node[n].content["arrays"]) for n in (3, 4)})
    with caplog.at_level(logging.WARNING, logger=STRATEGY_LOGGER):
        arrays, _ = strategy.aggregate_train(1, replies)
    assert {n: why for _, n, why in rejected}.keys() == {1, 2}
    assert "NaN/Inf" in dict((n, w) for _, n, w in rejected)[1]
    assert "shape" in dict((n, w) for _, n, w in rejected)[2]
    got = to_numpy(arrays)
    for k in glob:
        np.testing.assert_allclose(got[k], expected[k], rtol=1e-6, atol=1e-6)


def test_guarded_strategy_hands_the_inner_strategy_parsed_arrays_with_the_same_aggregate() -> None:
    """The guard has parsed every accepted update: the inner strategy gets them as ParsedArrays
    (its numpy() skips np.load's header parse) and aggregates exactly what it would from Arrays."""
    from fedsplit.clients.arrays import ParsedArray

    nodes = [1, 2, 3]
    app, contexts, grid = make_app(), {n: context(n) for n in nodes}, StubGrid(nodes)
    seen: list[type] = []

    class Recording(FedAvg):
        def aggregate_train(self, server_round, replies):  # noqa: ANN001, ANN202
            replies = list(replies)
            seen.extend(type(a) for r in replies for a in r.content["arrays"].values())
            return super().aggregate_train(server_round, replies)

    strategy = GuardedStrategy(Recording(min_available_nodes=3, min_train_nodes=3))
    _, replies = run_round(strategy, 1, global_model(), grid, app, contexts)
    assert {type(a) for r in replies for a in r.content["arrays"].values()} == {Array}  # as off the wire
    plain = FedAvg(min_available_nodes=3).aggregate_train(1, replies)[0]  # Flower alone, on the same replies
    plain = keep_dtypes(plain, strategy._expected[1][1])  # the guard gives integer buffers their dtype back
    arrays, _ = strategy.aggregate_train(1, replies)
    assert seen and set(seen) == {ParsedArray}
    for key in plain:
        assert arrays[key].numpy().tobytes() == plain[key].numpy().tobytes(), key


def test_guarded_strategy_checks_replies_as_they_arrive_once(caplog) -> None:
    """precheck_reply (the hook the engine calls as each batch of replies arrives) gives the
    verdicts aggregate_train then uses: each update is checked once, a bad one is rejected once
    (one log line), and the aggregate is the FedAvg of the good ones, also for a reply whose
    content a meter replaced after the check (MeteredGrid strips a measuring terminal's record)."""
    nodes = [1, 2, 3, 4]
    app, contexts, grid = make_app(), {n: context(n) for n in nodes}, StubGrid(nodes)
    strategy = GuardedStrategy(FedAvg(min_available_nodes=4, min_train_nodes=4))  # logs each rejection itself
    _, replies = run_round(strategy, 1, global_model(), grid, app, contexts)
    by_node = {r.metadata.src_node_id: r for r in replies}
    nan = to_numpy(by_node[1].content["arrays"])
    nan["w"][0, 0] = np.nan
    by_node[1].content["arrays"] = record(nan)
    expected = fedavg_of({n: to_numpy(by_node[n].content["arrays"]) for n in (2, 3, 4)})
    checks = []
    check = strategy._check
    strategy._check = lambda node, msg: checks.append(node) or check(node, msg)
    for reply in replies:
        strategy.precheck_reply(reply)
    assert sorted(checks) == nodes and strategy.rejections == []  # checked on arrival, rejected when aggregated
    by_node[3].content = RecordDict(dict(by_node[3].content))  # replaced after its check
    with caplog.at_level(logging.WARNING, logger=STRATEGY_LOGGER):
        arrays, _ = strategy.aggregate_train(1, replies)
    assert sorted(checks) == nodes  # no update checked twice
    assert [n for _, n, _ in strategy.rejections] == [1]
    assert sum("rejected" in r.getMessage() for r in caplog.records if r.name == STRATEGY_LOGGER) == 1
    got = to_numpy(arrays)
    for k in expected:
        np.testing.assert_allclose(got[k], expected[k], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "inner",
    [lambda: FedProx(min_available_nodes=2, proximal_mu=0.1), lambda: FedAdam(min_available_nodes=2)],
    ids=["fedprox", "fedadam"],
)
def test_wrapper_composes_with_other_strategies(inner) -> None:
    nodes = [1, 2]
    app, contexts, grid = make_app(), {n: context(n) for n in nodes}, StubGrid(nodes)
    strategy = CompressedStrategy(inner(), CompressionConfig(uplink="qsgd", levels=16))
    glob = global_model()
    glob["bn.num_batches_tracked"] = glob["bn.num_batches_tracked"].astype(np.float32)  # FedAdam needs floats
    for r in (1, 2):
        messages, replies = run_round(strategy, r, glob, grid, app, contexts)
        if isinstance(strategy.inner, FedProx):
            assert all(m.content["config"]["proximal-mu"] == 0.1 for m in messages)
        arrays, metrics = strategy.aggregate_train(r, replies)
        assert arrays is not None and metrics["fedsplit.rejected"] == 0
        glob = to_numpy(arrays)
    assert strategy.fraction_train == 1.0  # attributes reach the inner strategy


class LoopbackGrid(StubGrid):
    """Delivers messages straight to an in-process ClientApp (one Context per node)."""

    def __init__(self, node_ids: list[int], app: ClientApp) -> None:
        super().__init__(node_ids)
        self.app = app
        self.contexts = {n: context(n) for n in node_ids}

    def send_and_receive(self, messages, *, timeout=None):
        return [self.app(m, self.contexts[m.metadata.dst_node_id]) for m in messages]


def test_flower_start_loop_runs_with_uplink_and_downlink_compression() -> None:
    grid = LoopbackGrid([1, 2, 3], make_app())
    traffic = []
    strategy = CompressedStrategy(
        FedAvg(min_available_nodes=3, min_train_nodes=3, min_evaluate_nodes=3),
        CompressionConfig.from_dict({"uplink": "topk", "density": 0.1, "error_feedback": True,
                                     "warmup_rounds": 2, "downlink": "qsgd"}),
        on_traffic=traffic.append,
    )
    result = strategy.start(grid, record(global_model()), num_rounds=3)
    assert set(result.train_metrics_clientapp) == {1, 2, 3}
    sizes = [result.train_metrics_clientapp[r][PAYLOAD_BYTES_METRIC] for r in (1, 2, 3)]
    assert sizes[0] > sizes[1] > sizes[2]  # warm-up: density 0.25 -> 0.158 -> 0.1
    assert set(result.evaluate_metrics_clientapp) == {1, 2, 3}
    assert len(traffic) == 3 * 3 * 2 and traffic == strategy.traffic
    assert result.arrays is not None and set(result.arrays) == set(global_model())
