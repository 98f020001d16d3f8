"""Benchmark: fedsplit's own cost per message, outside training, in one process.

The engine's end-to-end timings (``bench_engine.py``) vary by 10 % and more from one run to the
next on a shared 2-core machine, more than most single changes to the per-message path are worth.
This bench removes the training (``train_local`` answers at once with the example count) and Ray
(:class:`~fedsplit.simulation.engine.SerialEngine` runs the ClientApp in this process), so what is
left is what fedsplit does for each message besides training and transport: the ClientApp loading
the global model and building its reply, the strategy's checks and aggregation, metering, the
ledger, the server's evaluation per round. The pure loop of ``bench_engine.py`` (same terminals and
rounds, its training stubbed the same way) is timed beside it: loading the weights, copying the
trained state, averaging and evaluating are the work any FedAvg loop does.

Run::

    python experiments/bench_plumbing.py                    # mlp100 and mlp, best of 7 runs each
    python experiments/bench_plumbing.py --workloads mlp100 --profile   # + the top entries

It prints one line per workload::

    workload=<name> messages=.. pure_us=.. fedsplit_us=.. extra_us=..

``*_us`` are microseconds per train message (the run's best wall time over the messages),
``extra_us = fedsplit_us - pure_us``.
"""

from __future__ import annotations

import argparse

import torch

import bench_engine  # this folder is the script's: on sys.path when it runs
from fedsplit.config import load_config
from fedsplit.learning import config_to_json
from fedsplit.learning.local import TrainResult


def no_training(model, x, y, **kwargs) -> TrainResult:  # noqa: ANN001, ANN003, ARG001 - train_local's signature
    """``train_local`` without the training: the example count, as the real one reports it."""
    return TrainResult(int(x.shape[0]), 0, 0, 0.0)


def bench(name: str, runs: int, profile: bool) -> dict[str, float]:
    import fedsplit.clients.privacy_mod as privacy_mod
    from fedsplit.clients.app import make_client_app
    from fedsplit.devices import Population, resolve_profiles
    from fedsplit.simulation.engine import SerialEngine

    privacy_mod.train_local = no_training  # the ClientApp's trainer (no DP, no attack in these workloads)
    bench_engine.train_local = no_training  # the pure loop's
    torch.set_num_threads(1)
    cfg = load_config(None, bench_engine.COMMON + bench_engine.WORKLOADS[name])
    engine = SerialEngine(make_client_app(config_json=config_to_json(cfg)), Population(cfg.devices, resolve_profiles(cfg.profiles)))
    ways = {"pure": lambda: bench_engine.run_pure(cfg)[0], "fedsplit": lambda: bench_engine.run_fedsplit(cfg, engine, server_threads=1)[0]}
    for way in ways.values():  # warm-up: the task, the data, the first-call caches
        way()
    best = {key: min(way() for _ in range(runs)) for key, way in ways.items()}
    messages = cfg.rounds * bench_engine.terminals_per_round(cfg)
    result = {f"{key}_us": seconds / messages * 1e6 for key, seconds in best.items()}
    print(f"workload={name} messages={messages} pure_us={result['pure_us']:.0f} fedsplit_us={result['fedsplit_us']:.0f} "
          f"extra_us={result['fedsplit_us'] - result['pure_us']:.0f}", flush=True)
    if profile:
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        profiler.runcall(ways["fedsplit"])
        pstats.Stats(profiler).strip_dirs().sort_stats("tottime").print_stats(20)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", default="mlp100,mlp", help=f"comma-separated: {','.join(bench_engine.WORKLOADS)}")
    parser.add_argument("--runs", type=int, default=7, help="timed runs per way (best is reported)")
    parser.add_argument("--profile", action="store_true", help="also print the top entries of a cProfile of the fedsplit way")
    args = parser.parse_args(argv)
    for item in args.workloads.split(","):
        if item not in bench_engine.WORKLOADS:
            parser.error(f"argument --workloads: {item!r} is not known; allowed: {', '.join(bench_engine.WORKLOADS)}")
    if args.runs < 1:
        parser.error(f"argument --runs: {args.runs} is not a positive count")
    from fedsplit.simulation.runner import quiet_flower

    quiet_flower()
    for name in args.workloads.split(","):
        bench(name, args.runs, args.profile)
    return 0


if __name__ == "__main__":
    from fedsplit.process_exit import exit_now

    exit_now(main())  # skips the interpreter teardown, where Ray's destructors can hang
