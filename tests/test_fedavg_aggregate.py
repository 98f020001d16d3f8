"""fedsplit's FedAvg average (strategies/fedavg_aggregate.py) against Flower's, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import strategy as flwr_strategy
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords as flower_aggregate

from fedsplit.strategies.compression import GuardedStrategy
from fedsplit.strategies.fedavg_aggregate import aggregate_arrayrecords, uses_flower_fedavg_aggregate

LAYOUTS = {"w": ((16, 8), np.float32), "b": ((8,), np.float32), "scale": ((), np.float32), "w64": ((3, 5), np.float64),
           "half": ((6,), np.float16), "count": ((), np.int64), "flags": ((4,), np.bool_), "ints": ((2, 3), np.int32)}


def replies_content(rng: np.random.Generator, n: int, weights: list[float] | None = None, order_of=None) -> list[RecordDict]:
    records = []
    for i in range(n):
        keys = list(LAYOUTS) if order_of is None else order_of(i)
        arrays = {}
        for key in keys:
            shape, dtype = LAYOUTS[key]
            if np.dtype(dtype).kind == "f":
                value = (rng.standard_normal(shape) * 10.0 ** rng.integers(-3, 4)).astype(dtype)
            elif np.dtype(dtype).kind == "b":
                value = rng.integers(0, 2, shape).astype(bool)
            else:
                value = rng.integers(-1000, 1000, shape).astype(dtype)
            arrays[key] = Array(np.asarray(value))
        weight = int(rng.integers(1, 300)) if weights is None else weights[i]
        records.append(RecordDict({"arrays": ArrayRecord(arrays), "metrics": MetricRecord({"num-examples": weight, "train-loss": 0.5})}))
    return records


def assert_same_bits(ours: ArrayRecord, flowers: ArrayRecord) -> None:
    assert list(ours) == list(flowers)
    for key in flowers:
        a, b = ours[key], flowers[key]
        assert (a.dtype, tuple(a.shape)) == (b.dtype, tuple(b.shape)), key
        assert a.data == b.data, f"{key}: values differ from Flower's"


@pytest.mark.parametrize("n", [1, 2, 7, 100])
def test_same_bits_as_flowers_average(n):
    rng = np.random.default_rng(n)
    records = replies_content(rng, n)
    assert_same_bits(aggregate_arrayrecords(records, "num-examples"), flower_aggregate(records, "num-examples"))


def test_same_bits_with_float_weights_keys_in_other_orders_and_a_reply_of_another_layout():
    """Weights that are not integers, replies whose tensors come in another order (Flower keeps
    the order it saw first), and a reply whose tensor has another dtype (Flower's ``+=`` casts
    its product to the first reply's dtype)."""
    rng = np.random.default_rng(7)
    keys = list(LAYOUTS)
    records = replies_content(rng, 12, weights=[float(w) for w in rng.uniform(0.1, 50.0, 12)],
                              order_of=lambda i: keys[i % len(keys):] + keys[: i % len(keys)])
    records[5]["arrays"]["w"] = Array(rng.standard_normal((16, 8)))  # float64 among float32
    assert_same_bits(aggregate_arrayrecords(records, "num-examples"), flower_aggregate(records, "num-examples"))


def test_which_strategies_take_the_vectorised_average():
    class OwnAggregate(flwr_strategy.FedAvg):
        def aggregate_train(self, server_round, replies):  # noqa: ANN001, ANN201
            return super().aggregate_train(server_round, replies)

    assert uses_flower_fedavg_aggregate(flwr_strategy.FedAvg()) and uses_flower_fedavg_aggregate(flwr_strategy.FedProx())
    for other in (flwr_strategy.FedAvgM(), flwr_strategy.FedAdam(), flwr_strategy.Krum(), flwr_strategy.FedMedian(), OwnAggregate()):
        assert not uses_flower_fedavg_aggregate(other), type(other).__name__
    patched = flwr_strategy.FedAvg()
    patched.aggregate_train = lambda server_round, replies: (None, None)
    assert not uses_flower_fedavg_aggregate(patched)


def test_a_patched_flower_fedavg_is_called_not_replaced(monkeypatch):
    """Whoever patches Flower's ``FedAvg.aggregate_train`` (a test double, a hot fix) gets theirs called."""
    monkeypatch.setattr(flwr_strategy.FedAvg, "aggregate_train", lambda self, server_round, replies: (None, None))
    assert not uses_flower_fedavg_aggregate(flwr_strategy.FedAvg())
    assert GuardedStrategy(flwr_strategy.FedAvg()).aggregate_train(1, []) == (None, None)


def test_guarded_fedavg_aggregates_as_flower_does_without_flowers_loop(monkeypatch, task_identity):
    """The update guard around Flower's FedAvg gives Flower's own result (arrays and metrics),
    computed by fedsplit's average: Flower's per-reply loop is not called."""
    from flwr.serverapp.strategy import fedavg as flower_fedavg_module

    rng = np.random.default_rng(3)
    model = {"w": np.zeros((16, 8), np.float32), "b": np.zeros(8, np.float32)}
    contents = [RecordDict({"arrays": ArrayRecord({k: Array((rng.standard_normal(v.shape)).astype(np.float32)) for k, v in model.items()}),
                            "metrics": MetricRecord({"num-examples": int(rng.integers(1, 100)), "train-loss": float(rng.uniform())})})
                for _ in range(20)]

    def exchange(strategy):  # noqa: ANN001, ANN202 - the round's messages and their replies
        sent = list(strategy.configure_train(1, ArrayRecord({k: Array(v) for k, v in model.items()}), ConfigRecord(), _Nodes(20)))
        return [Message(content, reply_to=_as_delivered(msg, i)) for i, (msg, content) in enumerate(zip(sent, contents))]

    plain = flwr_strategy.FedAvg()
    expected_arrays, expected_metrics = plain.aggregate_train(1, exchange(plain))
    guarded = GuardedStrategy(flwr_strategy.FedAvg())
    replies = exchange(guarded)

    def not_called(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("Flower's aggregate_arrayrecords ran")

    monkeypatch.setattr(flower_fedavg_module, "aggregate_arrayrecords", not_called)
    arrays, metrics = guarded.aggregate_train(1, replies)
    assert_same_bits(arrays, expected_arrays)
    assert dict(metrics) == dict(expected_metrics)


class _Nodes:
    """The part of a Grid that Flower's ``configure_train`` reads: ``count`` connected nodes."""

    def __init__(self, count: int) -> None:
        self.count = count

    def get_node_ids(self):  # noqa: ANN201
        return list(range(1, self.count + 1))


def _as_delivered(msg: Message, index: int) -> Message:
    """``msg`` as it is once delivered: a message id and its destination (what a reply refers to)."""
    msg.metadata.__dict__["_message_id"] = f"m{index}"
    return msg


def test_benchmark_smoke_reports_the_same_bits(capsys):
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "bench_aggregate.py"
    spec = importlib.util.spec_from_file_location("bench_aggregate", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--replies", "1,3", "--passes", "1"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("model=")]
    assert len(lines) == 2 and all("same_bits=True" in line and "flower_ms=" in line for line in lines)
