"""Benchmark: a SplitFed epoch driven by messages on fedsplit's engine vs the same epoch in one process.

The same work runs two ways in one process, one epoch (one round, 1 local epoch) of SplitFed v1
with the FedAvg CNN cut after its first conv block (``features.2``), 10 terminals, batch 32:

- ``engine``: the ServerApp (:func:`~fedsplit.simulation.server_app.run_server`) drives the
  ``splitfed-v1`` protocol through the metered grid and fedsplit's engine (one 1-CPU actor per
  core, one torch thread each; the ServerApp, which runs the server parts, with one torch thread
  per core). Every batch is two Flower messages (activations + labels up, gradient down) and the
  terminal keeps nothing in the process between them (its part, momentum and cursor live in the
  Context), so it recomputes its forward before the backward.
- ``loop``: a plain PyTorch loop, torch threads = cores: for each terminal in turn, its whole
  model (terminal part + its server copy, :func:`fedsplit.split.split_model`) and the same SGD
  settings, the same batches (:func:`fedsplit.clients.split_client.batch_indices` with the same
  per-round seeds), one :func:`fedsplit.split.split_training_step` per batch with
  ``recompute=True`` (the same per-message functions the two sides call), then the sample-weighted
  average of the whole models.

Neither way evaluates (``training.eval_every = 0``). Ray and its actors start once, before any
timing, and stay up for every pass; each pass gets fresh client contexts. After one untimed
warm-up of each way, ``--passes`` passes run interleaved (engine, loop, engine, loop, ...); the
median of each way is reported. The final weights of the two ways must agree (the check that
they did the same work).

Workloads: ``cnn28`` (digits resized to 28x28, as the FedAvg paper's MNIST CNN: compute-bound, the
acceptance workload) and ``cnn8`` (digits' native 8x8: a terminal's batch is ~0.1 ms of compute,
so the messages dominate).

Run::

    python experiments/bench_split.py [--passes 5] [--workloads cnn28,cnn8] [--terminals 10]
    python experiments/bench_split.py --smoke   # seconds: cnn8, 2 terminals, 1 pass (unless given)

It prints per workload::

    workload=<name> engine_s=<median> loop_s=<median> split_overhead=<engine / loop> ...

then ``check ...: PASS|FAIL (numbers)`` lines; exit status 1 when one fails. Under ``--smoke`` the
overhead bar is ``SKIP`` (one pass of a tiny epoch times per-message costs, not the benchmark);
the weights must still agree.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import statistics
import time
from collections import OrderedDict
from pathlib import Path

import torch

os.environ.setdefault("RAY_DEDUP_LOGS", "0")

from fedsplit.config import RunConfig, load_config  # noqa: E402
from fedsplit.output_paths import output_folder  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "bench_split"
CUT = "features.2"
PROFILES = ("raspberry-pi-4", "smartphone-mid", "jetson-nano", "laptop")
WORKLOADS = {
    "cnn28": ["data.resolution=28"],
    "cnn8": ["data.resolution=0"],
}
MAX_OVERHEAD = 1.5


def population(terminals: int) -> dict[str, int]:
    """The issue's 4:3:2:1 mix scaled to ``terminals``."""
    counts = [terminals * w // 10 for w in (4, 3, 2, 1)]
    i = 0
    while sum(counts) < terminals:
        counts[i % 4] += 1
        i += 1
    return {name: n for name, n in zip(PROFILES, counts) if n > 0}


def make_config(workload: str, terminals: int) -> RunConfig:
    devices = ", ".join(f"{k}={v}" for k, v in population(terminals).items())
    profiles = ", ".join(f"{n}={{base='{n}', availability=1.0}}" for n in PROFILES)
    return load_config(
        None,
        [
            "seed=0",
            "rounds=1",
            "model.name=fedavg-cnn",
            "data.name=digits",
            *WORKLOADS[workload],
            f"devices={{{devices}}}",
            f"profiles={{{profiles}}}",
            "training.mode=splitfed-v1",
            f"split.cut={CUT}",
            "training.eval_every=0",
            "train.local_epochs=1",
            "train.batch_size=32",
            "train.lr=0.05",
            "train.momentum=0.9",
            "progress=false",
        ],
    )


def run_engine(cfg: RunConfig, engine, threads: int) -> tuple[float, dict[str, torch.Tensor]]:  # noqa: ANN001
    """One epoch on fedsplit's engine; the time is the protocol's wall time (``strategy_wall_s``)."""
    from fedsplit.simulation.server_app import RunSession, run_server

    torch.set_num_threads(threads)
    engine.contexts.clear()
    session = RunSession.from_config(cfg)
    run_server(engine.grid(), session)
    if session.error is not None:
        raise session.error
    return session.strategy_wall_s, session.final_state


def run_loop(cfg: RunConfig, task, threads: int) -> tuple[float, dict[str, torch.Tensor]]:  # noqa: ANN001
    """The same epoch as a plain loop calling the two parts' step functions directly."""
    from fedsplit.clients.app import _round_seed
    from fedsplit.clients.split_client import batch_indices
    from fedsplit.split import make_sgd, split_model, split_training_step

    torch.set_num_threads(threads)
    t = cfg.train
    initial = task.initial_state()
    start = time.perf_counter()
    states, sizes = [], []
    for pid in range(cfg.num_terminals):
        parts = split_model(task.model, CUT)
        parts.load_state_dict(initial)
        opts = {name: make_sgd(part, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay) for name, part in parts.named_parts().items()}
        train = task.data.partition(pid)[0]
        n = len(train)
        seed = _round_seed(cfg.seed, pid, 1)
        for k in range(t.local_epochs * math.ceil(n / t.batch_size)):
            idx = batch_indices(n, t.batch_size, t.local_epochs, seed, k)
            split_training_step(parts, opts, train.x[idx], train.y[idx], recompute=True)
        states.append(parts.state_dict())
        sizes.append(n)
    total = float(sum(sizes))
    averaged = OrderedDict()
    for key, ref in states[0].items():
        acc = sum(s[key].double() * (w / total) for s, w in zip(states, sizes))
        averaged[key] = acc.round().to(ref.dtype) if not ref.dtype.is_floating_point else acc.to(ref.dtype)
    return time.perf_counter() - start, averaged


def max_diff(a: dict, b: dict) -> float:
    return max(float((torch.as_tensor(a[k]).double() - torch.as_tensor(b[k]).double()).abs().max()) for k in a)


def bench(name: str, terminals: int, passes: int, cpus: int) -> dict[str, float]:
    from fedsplit.clients.app import make_client_app
    from fedsplit.devices import Population, resolve_profiles
    from fedsplit.learning import config_to_json, task_for
    from fedsplit.simulation.engine import RayEngine

    cfg = make_config(name, terminals)
    task = task_for(config_to_json(cfg))
    population_ = Population(cfg.devices, resolve_profiles(cfg.profiles))
    app = make_client_app(config_json=config_to_json(cfg))
    times: dict[str, list[float]] = {"engine": [], "loop": []}
    with RayEngine(app, population_, num_actors=cpus, cpus_per_actor=1.0) as engine:
        ways = {"engine": lambda: run_engine(cfg, engine, cpus), "loop": lambda: run_loop(cfg, task, cpus)}
        weights = {way: fn()[1] for way, fn in ways.items()}  # warm-up (untimed)
        for _ in range(passes):
            for way, fn in ways.items():
                seconds, weights[way] = fn()
                times[way].append(seconds)
    diff = max_diff(weights["loop"], weights["engine"])
    print(f"workload={name} check weights_engine_vs_loop max_abs_diff={diff:.2e} {'PASS' if diff <= 1e-5 else 'FAIL'}", flush=True)
    engine_s, loop_s = statistics.median(times["engine"]), statistics.median(times["loop"])
    batches = sum(math.ceil(len(task.data.partition(p)[0]) / cfg.train.batch_size) for p in range(cfg.num_terminals))
    result = {"engine_s": engine_s, "loop_s": loop_s, "split_overhead": engine_s / loop_s, "batches": batches, "diff": diff}
    print(
        f"workload={name} terminals={cfg.num_terminals} batches={batches} passes={passes} "
        f"engine_s={engine_s:.3f} loop_s={loop_s:.3f} split_overhead={engine_s / loop_s:.3f} "
        f"engine_ms_per_batch={engine_s / batches * 1e3:.2f} loop_ms_per_batch={loop_s / batches * 1e3:.2f} "
        f"engine_passes={','.join(f'{s:.3f}' for s in times['engine'])} loop_passes={','.join(f'{s:.3f}' for s in times['loop'])}",
        flush=True,
    )
    return result


def main(argv: list[str] | None = None) -> int:
    import ray

    from fedsplit.cli_types import positive_int
    from fedsplit.inference.experiment_io import Checks, plt, write_csv
    from fedsplit.report import shown_path
    from fedsplit.simulation.runner import quiet_flower
    from fedsplit.simulation.ray_env import quiet_ray

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true",
                        help="seconds: cnn8, 2 terminals, 1 pass, unless given; the overhead bar is not checked")
    parser.add_argument("--passes", type=positive_int, default=None, help="timed passes per way (median reported; default 5)")
    parser.add_argument("--workloads", default=None, help=f"comma-separated: {','.join(WORKLOADS)} (default all)")
    parser.add_argument("--terminals", type=positive_int, default=None, help="default 10")
    parser.add_argument("--out", type=lambda text: Path(output_folder(text)), default=RESULTS)
    args = parser.parse_args(argv)
    # --smoke only fills in what was not given
    args.passes = args.passes or (1 if args.smoke else 5)
    args.terminals = args.terminals or (2 if args.smoke else 10)
    args.workloads = args.workloads or ("cnn8" if args.smoke else ",".join(WORKLOADS))
    for item in args.workloads.split(","):  # an unknown name: one line, before any run
        if item.strip() and item.strip() not in WORKLOADS:
            parser.error(f"argument --workloads: {item.strip()!r} is not known; allowed: {', '.join(WORKLOADS)}")
    quiet_flower()
    quiet_ray()
    cpus = os.cpu_count() or 1
    names = [w.strip() for w in args.workloads.split(",") if w.strip()]
    rows = []
    started = not ray.is_initialized()  # reuse a Ray this process already runs (tests)
    if started:
        ray.init(num_cpus=cpus, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    try:
        for name in names:
            rows.append({"workload": name, "cpus": cpus, **bench(name, args.terminals, args.passes, cpus)})
    finally:
        if started:
            ray.shutdown()
    checks = Checks(smoke=args.smoke)
    for row in rows:
        checks.check(
            f"{row['workload']} split_overhead <= {MAX_OVERHEAD:g}",
            row["split_overhead"] <= MAX_OVERHEAD,
            f"engine_s={row['engine_s']:.3f} loop_s={row['loop_s']:.3f} split_overhead={row['split_overhead']:.3f} cpus={cpus}",
            full_size=f"{args.passes} timed pass(es) of a {args.terminals}-terminal epoch measure per-message costs and "
                      "noise, not the benchmark's median",
        )
        checks.check(f"{row['workload']} same weights", row["diff"] <= 1e-5, f"max_abs_diff={row['diff']:.2e}")
    write_csv(rows, args.out / "bench_split.csv")
    pyplot = plt()
    fig, ax = pyplot.subplots(figsize=(6, 4))
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], [r["loop_s"] for r in rows], 0.4, label="plain loop")
    ax.bar([x + 0.2 for x in xs], [r["engine_s"] for r in rows], 0.4, label="fedsplit engine (messages)")
    for x, r in zip(xs, rows):
        ax.text(x + 0.2, r["engine_s"], f"x{r['split_overhead']:.2f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(list(xs))
    ax.set_xticklabels([r["workload"] for r in rows])
    ax.set_ylabel("wall time of one SplitFed v1 epoch (s, median)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out / "bench_split.png", dpi=110)
    pyplot.close(fig)
    print(f"wrote {shown_path(args.out / 'bench_split.csv')} {shown_path(args.out / 'bench_split.png')}", flush=True)
    return 0 if checks.all_passed else 1


if __name__ == "__main__":
    from fedsplit.process_exit import exit_now

    exit_now(main())  # skips the interpreter teardown, where Ray's destructors can hang
