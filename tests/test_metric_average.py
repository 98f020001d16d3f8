"""fedsplit's weighted metric average equals Flower's, float for float, and strategies get it."""

from __future__ import annotations

import random

import pytest
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAdam, FedAvg, FedProx
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

from fedsplit.strategies.metric_average import weighted_metric_average
from fedsplit.strategies.registry import build_strategy


def reply_content(rng: random.Random, n_records: int) -> RecordDict:
    content = RecordDict({"arrays": ArrayRecord(), "config": ConfigRecord({"x": 1})})
    for i in range(n_records):
        metrics = {"loss": rng.uniform(0, 3), "accuracy": rng.random(), "flops": rng.randrange(10**12),
                   "hist": [rng.random() for _ in range(4)], "steps": [rng.randrange(100) for _ in range(3)]}
        if i == 0:
            metrics["num-examples"] = rng.randrange(1, 300)
        content[f"metrics{i}"] = MetricRecord(metrics)
    return content


@pytest.mark.parametrize("n_records", [1, 2])
def test_equals_flowers_aggregate_float_for_float(n_records: int) -> None:
    rng = random.Random(n_records)
    records = [reply_content(rng, n_records) for _ in range(37)]
    theirs = aggregate_metricrecords(records, "num-examples")
    ours = weighted_metric_average(records, "num-examples")
    assert isinstance(ours, MetricRecord)
    assert list(ours.keys()) == list(theirs.keys()) and "num-examples" not in ours
    for key in theirs:
        assert ours[key] == theirs[key] and type(ours[key]) is type(theirs[key]), key  # exact, not approx


def test_a_missing_weight_is_a_key_error_as_in_flower() -> None:
    records = [RecordDict({"metrics": MetricRecord({"loss": 1.0})})]
    with pytest.raises(KeyError):
        aggregate_metricrecords(records, "num-examples")
    with pytest.raises(KeyError):
        weighted_metric_average(records, "num-examples")


@pytest.mark.parametrize("name", ["fedavg", "fedprox", "fedadam"])
def test_built_strategies_average_metrics_with_it(name: str) -> None:
    strategy = build_strategy(name)
    assert isinstance(strategy, {"fedavg": FedAvg, "fedprox": FedProx, "fedadam": FedAdam}[name])
    assert strategy.train_metrics_aggr_fn is weighted_metric_average
    assert strategy.evaluate_metrics_aggr_fn is weighted_metric_average


def test_a_configured_aggregation_function_is_kept() -> None:
    own = build_strategy("fedavg", {"train_metrics_aggr_fn": aggregate_metricrecords})
    assert own.train_metrics_aggr_fn is aggregate_metricrecords
    assert own.evaluate_metrics_aggr_fn is weighted_metric_average
