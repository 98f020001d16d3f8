"""Benchmark: FedAvg's average of the replies' arrays, Flower's against fedsplit's.

The replies hold a model's tensors as the update guard hands them to the strategy (ParsedArrays
with the views its check read, :func:`fedsplit.clients.arrays.parsed_record`), weighted by
random example counts. Flower's ``aggregate_arrayrecords`` and
:func:`fedsplit.strategies.fedavg_aggregate.aggregate_arrayrecords` run alternately on the same
replies; the best of the passes is reported, and the two results are compared bit for bit.

Run::

    python experiments/bench_aggregate.py                    # the 64-64-10 MLP, 10 and 100 replies
    python experiments/bench_aggregate.py --model fedavg-cnn --replies 10

It prints one line per reply count::

    model=<name> replies=<n> tensors=<k> flower_ms=.. fedsplit_ms=.. ratio=<flower/fedsplit> same_bits=True|False
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords as flower_aggregate

from fedsplit.clients.arrays import array_record_from_state, parsed_record, record_views, sectioned
from fedsplit.config import load_config
from fedsplit.learning import config_to_json, task_for
from fedsplit.strategies.fedavg_aggregate import aggregate_arrayrecords as fedsplit_aggregate


def replies(model: str, count: int, seed: int = 0) -> list[RecordDict]:
    """``count`` reply contents holding ``model``'s tensors perturbed at random, as checked updates."""
    sizes = ["model.hidden=64"] if model == "mlp" else ["data.resolution=28"]  # as bench_engine's workloads
    cfg = load_config(None, [f"model.name={model}", *sizes])
    state = {k: v.numpy() for k, v in task_for(config_to_json(cfg)).initial_state().items()}
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        update = {k: (v + rng.standard_normal(v.shape).astype(v.dtype)) if v.dtype.kind == "f" else v for k, v in state.items()}
        record = array_record_from_state(update)
        content = RecordDict({"arrays": parsed_record(record, record_views(record)), "metrics": MetricRecord({"num-examples": int(rng.integers(5, 300))})})
        out.append(sectioned(content))
    return out


def time_ms(fn, number: int) -> float:  # noqa: ANN001 - () -> ArrayRecord
    """Milliseconds per call of ``fn``, over ``number`` calls."""
    start = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - start) / number * 1e3


def same_bits(a: ArrayRecord, b: ArrayRecord) -> bool:
    return list(a) == list(b) and all(isinstance(a[k], Array) and a[k].data == b[k].data and a[k].dtype == b[k].dtype for k in a)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="mlp", help="model.name of the replies' tensors (default mlp)")
    parser.add_argument("--replies", default="10,100", help="comma-separated reply counts (default 10,100)")
    parser.add_argument("--passes", type=int, default=7, help="alternating passes per way; the best is reported")
    args = parser.parse_args(argv)
    ok = True
    for count in (int(c) for c in args.replies.split(",")):
        contents = replies(args.model, count)
        number = max(1, 200 // count)
        flower_ms = fedsplit_ms = float("inf")
        for _ in range(args.passes):  # alternating, one pass of each at a time
            flower_ms = min(flower_ms, time_ms(lambda: flower_aggregate(contents, "num-examples"), number))
            fedsplit_ms = min(fedsplit_ms, time_ms(lambda: fedsplit_aggregate(contents, "num-examples"), number))
        same = same_bits(fedsplit_aggregate(contents, "num-examples"), flower_aggregate(contents, "num-examples"))
        ok &= same
        print(
            f"model={args.model} replies={count} tensors={len(contents[0]['arrays'])} flower_ms={flower_ms:.3f} "
            f"fedsplit_ms={fedsplit_ms:.3f} ratio={flower_ms / fedsplit_ms:.2f} same_bits={same}",
            flush=True,
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
