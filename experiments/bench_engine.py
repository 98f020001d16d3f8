"""Benchmark: fedsplit's engine against a plain PyTorch loop and Flower's simulation engine.

The same training work (same terminals, partitions, rounds, epochs, seeds, FedAvg, server-side
evaluation after every round) runs five ways in one process:

- ``pure``: a sequential PyTorch loop with FedAvg averaging, torch threads = 1 (the one-core limit);
- ``limit``: the same loop on all cores (:class:`PlainParallel`: one process per core trains its
  share of each round's terminals, the parent averages and evaluates): the machine's limit;
- ``fedsplit1``: fedsplit's engine with one actor of 1 CPU (torch threads = 1);
- ``fedsplit``: fedsplit's engine with one 1-CPU actor per core of the machine;
- ``flower``: Flower's simulation engine with 1 CPU per client on all cores.

Every way runs the server side (averaging, evaluation) with one torch thread, as the pure loop
does, so that all do the same server work: on the small models here a second thread makes the
evaluation slower, not faster (the 64-64-10 MLP on 360 images: 0.15 ms on one thread, 24 ms
median on two of this 2-core machine under load ~4, the OpenMP threads waiting on each other).

Each way is run once untimed (warm-up) and then timed three times, pure, limit and the two
fedsplit ways interleaved pass by pass (Flower's engine, which starts its own Ray, runs after them); the
best time of each way is reported.
Times are the strategy's wall time (``Strategy.start``), as Flower itself reports it; Ray start-up
is excluded for both engines. The final global weights of pure, limit, fedsplit1 and fedsplit must agree.

Run::

    python experiments/bench_engine.py                       # mlp and cnn (~9 minutes on 2 cores)
    python experiments/bench_engine.py --workloads mlp100 --no-flower --passes 1   # 100 terminals a round
    python experiments/bench_engine.py --workloads mlp-skew --no-flower             # unequal terminals
    python experiments/bench_engine.py --smoke               # seconds: tiny settings, checks only agreement
    python experiments/bench_engine.py --profile mlp         # cProfile of the driver in the fedsplit way
    python experiments/bench_engine.py --workloads mlp100 --no-flower --actors 15   # one core of 16 left to the driver
    python experiments/bench_engine.py --workloads mlp --no-flower --transport channel  # a socket to each actor

It prints one line per workload::

    workload=<name> pure_s=.. fedsplit1_s=.. fedsplit_s=.. flower_s=.. overhead=.. overhead_med=.. speedup=.. flower_over_fedsplit=.. efficiency=.. efficiency_med=.. limit_s=.. limit_efficiency=.. limit_efficiency_med=.. vs_limit=.. server_s=.. busy1=.. app_speed1=.. busy=.. app_speed=.. feeds=.. gc_s=.. full_gcs=..

``efficiency = pure_s / (min(actors, terminals per round) * fedsplit_s)``: 1.0 when P actors take
1/P of the pure loop's time (P = the cores, ``--actors`` if given, or fewer when fewer terminals
train per round; with ``--actors`` below the cores, compare ``fedsplit_s`` across runs).
The ratios are of each way's best pass; ``overhead_med``, ``efficiency_med`` and
``limit_efficiency_med`` are the same ratios taken within each pass (the two ways run seconds
apart) and their median over the passes (:func:`paired_median`): where the two views disagree by
more than a few percent, the machine was not steady enough for either to settle a target.
``server_s`` is the part of the fedsplit way's time spent outside the engine (the strategy's
aggregation, the server's evaluation, metering, building the next round's messages): serial work
that more actors do not shorten, so with P actors ``efficiency <= pure_s / (pure_s + P * server_s)``.
Where the rest goes (:func:`breakdown`): ``busy`` is the share of the actors' time spent inside the
ClientApp (the rest they wait for the driver and Ray), ``app_speed`` the pure loop's time over the
seconds the apps took for the same terminals (below 1 by the app's work around training and by cores
slowing each other); ``efficiency = busy * app_speed``, and ``busy1 * app_speed1 = 1 / overhead`` for
the one-actor way.
``feeds = app_s / driver_cpu_s``: the ClientApp seconds the actors ran per CPU second the driver
process spent (all its threads: the ServerApp, the engine, Ray's) in the fedsplit way. The driver's
work is mostly one Python thread, so with ``P`` actors a round takes about no less than the
driver's CPU time, and roughly ``efficiency <= feeds / P`` whatever the cores: it tells from this
machine about how many actors the driver can keep busy on a larger one (the 100-terminal workload
on 16 cores needs ``feeds >= 11.2`` for efficiency 0.7).
``gc_s`` is the seconds Python's cyclic collector ran in the driver during the fedsplit way's
reported pass, ``full_gcs`` its full collections there (each walks every object of the process:
a pass that holds one is slower by it, whatever the engine).
``limit_efficiency`` is the same ratio for the plain loop on all cores, so it shows how far this
machine scales at all (the cores share caches and memory bandwidth, the server's averaging and
evaluation stay serial); ``vs_limit = limit_s / fedsplit_s`` is fedsplit against that limit.
The machine's load average is printed with it, and ``capacity=<before>,<after>/<cores>``: the cores'
worth of throughput that as many busy processes as cores got just before and just after the
workload (:func:`parallel_capacity`; ``2.00/2`` on an idle 2-core machine, ``1.0/2`` while another
job holds a core). Other processes on the cores slow the actors, and efficiency cannot exceed
``capacity / actors``.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from collections import OrderedDict

import torch

from fedsplit.config import RunConfig, load_config
from fedsplit.config.schema import DEFAULT_TRANSPORT, TRANSPORTS
from fedsplit.learning import config_to_json, evaluate, task_for, train_local

WORKLOADS = {
    # overhead-bound: the 64-64-10 MLP on digits, 10 clients x 10 rounds x 5 local epochs
    "mlp": ["model.name=mlp", "model.hidden=64", "rounds=10", "train.local_epochs=5", "devices={laptop=10}"],
    # compute-bound: the FedAvg CNN on 28x28 inputs (digits resized), 10 clients, E=5 local epochs
    # as in the FedAvg paper's CNN runs: training dominates the round, as on real terminals.
    "cnn": ["model.name=fedavg-cnn", "data.resolution=28", "rounds=2", "train.local_epochs=5", "devices={laptop=10}"],
    # the same with E=1 (not run by default): the server's evaluation of the global model on 360
    # test images, which no engine can run in parallel, is then ~1/6 of the pure loop's time.
    "cnn-e1": ["model.name=fedavg-cnn", "data.resolution=28", "rounds=2", "train.local_epochs=1", "devices={laptop=10}"],
    # unequal terminals: the MLP workload on Dirichlet(0.3) partitions (41 to 266 digits a
    # terminal), where splitting a round's terminals by count leaves one core waiting; fedsplit's
    # engine balances its batches by each terminal's measured seconds, the limit way splits by count.
    "mlp-skew": ["model.name=mlp", "model.hidden=64", "rounds=10", "train.local_epochs=5", "devices={laptop=10}",
                 "data.partitioner=dirichlet", "data.alpha=0.3"],
    # many terminals: the MLP with 100 terminals trained each round, enough to fill 16 cores
    # (each terminal holds ~13 digits, so this is the most overhead-bound workload).
    "mlp100": ["model.name=mlp", "model.hidden=64", "rounds=5", "train.local_epochs=5", "devices={laptop=100}"],
}
SMOKE = {
    "mlp": ["model.name=mlp", "rounds=2", "train.local_epochs=1", "devices={laptop=4}"],
}
COMMON = [
    "seed=0",
    "strategy.name=fedavg",
    "strategy.fraction_train=1.0",
    "train.momentum=0.0",
    "profiles.laptop={base='laptop', availability=1.0}",
    "progress=false",
]


def client_seed(cfg: RunConfig, pid: int, server_round: int) -> int:
    from fedsplit.clients.app import _round_seed

    return _round_seed(cfg.seed, pid, server_round)


def train_terminals(task, cfg: RunConfig, global_state: dict, pids: list[int], server_round: int) -> tuple[list[dict], list[int]]:  # noqa: ANN001 - Task
    """Plain local training of ``pids`` from ``global_state``: their states (NumPy) and example counts."""
    model, t = task.model, cfg.train
    states, sizes = [], []
    for pid in pids:
        model.load_state_dict(global_state)
        train_set, _ = task.data.partition(pid)
        result = train_local(
            model, train_set.x, train_set.y, epochs=t.local_epochs, batch_size=t.batch_size, lr=t.lr,
            momentum=t.momentum, weight_decay=t.weight_decay, seed=client_seed(cfg, pid, server_round),
        )
        states.append({k: v.detach().numpy().copy() for k, v in model.state_dict().items()})
        sizes.append(result.num_examples)
    return states, sizes


def fedavg_numpy(states: list[dict], sizes: list[int]) -> "OrderedDict[str, torch.Tensor]":
    """FedAvg in float32, accumulating in terminal order (the arithmetic Flower's FedAvg does)."""
    factors = [n / sum(sizes) for n in sizes]
    averaged = {k: states[0][k] * factors[0] for k in states[0]}
    for state, factor in zip(states[1:], factors[1:]):
        for k in averaged:
            averaged[k] += state[k] * factor
    return OrderedDict((k, torch.from_numpy(v)) for k, v in averaged.items())


def fedavg_loop(cfg: RunConfig, train_round) -> tuple[float, dict[str, torch.Tensor]]:  # noqa: ANN001 - (state, pids, round) -> (states, sizes)
    """FedAvg with ``train_round`` training each round's terminals, then averaging and the server
    evaluation in this process (one thread); the wall time of the rounds and the final state."""
    torch.set_num_threads(1)
    task = task_for(config_to_json(cfg))
    global_state = task.initial_state()
    test = task.data.server_test
    start = time.perf_counter()
    for server_round in range(1, cfg.rounds + 1):
        states, sizes = train_round(global_state, list(range(cfg.num_terminals)), server_round)
        global_state = fedavg_numpy(states, sizes)
        task.model.load_state_dict(global_state)
        evaluate(task.model, test.x, test.y)
    return time.perf_counter() - start, global_state


def run_pure(cfg: RunConfig) -> tuple[float, dict[str, torch.Tensor]]:
    """The one-core limit: FedAvg in a sequential loop (one thread), with the same server evaluation."""
    task = task_for(config_to_json(cfg))
    return fedavg_loop(cfg, lambda state, pids, server_round: train_terminals(task, cfg, state, pids, server_round))


_WORKER: dict = {}


def _limit_worker_init(config_json: str) -> None:
    torch.set_num_threads(1)
    _WORKER["task"] = task_for(config_json)
    _WORKER["cfg"] = _WORKER["task"].cfg


def _limit_worker_train(job: tuple[dict, list[int], int]) -> tuple[list[dict], list[int]]:
    global_state, pids, server_round = job
    state = OrderedDict((k, torch.from_numpy(v)) for k, v in global_state.items())
    return train_terminals(_WORKER["task"], _WORKER["cfg"], state, pids, server_round)


class PlainParallel:
    """The machine's limit: the plain loop on all cores. ``workers`` processes (one torch thread
    each, started once, outside the timing) train their share of each round's terminals
    (consecutive, even blocks); this process averages in terminal order and evaluates, as the
    pure loop does. What a user who writes the loop with :mod:`multiprocessing` gets, transfers
    of the states through pipes included."""

    def __init__(self, cfg: RunConfig, workers: int) -> None:
        import multiprocessing

        from fedsplit.simulation.engine import split_evenly

        self.cfg, self.workers, self._split = cfg, workers, split_evenly
        context = multiprocessing.get_context("spawn")  # no fork of a process that runs Ray's threads
        self.pool = context.Pool(workers, initializer=_limit_worker_init, initargs=(config_to_json(cfg),))

    def run(self) -> tuple[float, dict[str, torch.Tensor]]:
        return fedavg_loop(self.cfg, self._train_round)

    def _train_round(self, global_state: dict, pids: list[int], server_round: int) -> tuple[list[dict], list[int]]:
        numpy_state = {k: v.detach().numpy() for k, v in global_state.items()}
        jobs = [(numpy_state, block, server_round) for block in self._split(pids, self.workers)]
        states, sizes = [], []
        for block_states, block_sizes in self.pool.map(_limit_worker_train, jobs, chunksize=1):
            states += block_states
            sizes += block_sizes
        return states, sizes

    def close(self) -> None:
        self.pool.terminate()
        self.pool.join()


def run_fedsplit(cfg: RunConfig, engine, server_threads: int) -> tuple[float, dict[str, torch.Tensor]]:  # noqa: ANN001
    """fedsplit's engine; the ServerApp (aggregation, server evaluation) runs with ``server_threads``."""
    from fedsplit.simulation.server_app import RunSession, run_server

    torch.set_num_threads(server_threads)
    session = RunSession.from_config(cfg)
    run_server(engine.grid(), session)
    return session.strategy_wall_s, session.final_state


def run_fedsplit_timed(cfg: RunConfig, engine, server_threads: int) -> tuple[float, dict[str, torch.Tensor], float, float]:  # noqa: ANN001
    """:func:`run_fedsplit`, the seconds of the run spent outside ``engine.execute`` (its
    ``server_s``: the server's serial work) and the seconds the actors spent in the ClientApp
    (``engine.app_s``, summed over messages)."""
    inside, app = engine.execute_s, engine.app_s
    seconds, state = run_fedsplit(cfg, engine, server_threads)
    return seconds, state, seconds - (engine.execute_s - inside), engine.app_s - app


def run_flower(cfg: RunConfig, server_threads: int) -> tuple[float, dict[str, torch.Tensor]]:
    """Flower's simulation engine; its ServerApp runs in this process with ``server_threads``."""
    from fedsplit.simulation.runner import run_on_flower_engine
    from fedsplit.simulation.server_app import RunSession

    torch.set_num_threads(server_threads)
    session = RunSession.from_config(cfg)
    run_on_flower_engine(session)
    return session.strategy_wall_s, session.final_state


class CollectorTime:
    """Seconds Python's cyclic garbage collector ran while the ``with`` block did, and its full
    (generation 2) collections among them.

    A full collection walks every object the process tracks (~650k once torch, Flower and Ray
    are imported: 0.3 s on the 2-core development machine); which timed pass it lands in is chance.
    """

    def __init__(self) -> None:
        self.seconds, self.full, self._started = 0.0, 0, 0.0

    def _callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        self.seconds += time.perf_counter() - self._started
        self.full += info["generation"] == 2

    def __enter__(self) -> "CollectorTime":
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)


def best_interleaved(ways: dict, passes: int, per_pass: dict[str, list[float]] | None = None) -> tuple[dict[str, float], dict[str, dict]]:
    """Warm every way up once (untimed), then time ``passes`` rounds of all ways in turn.

    Interleaving (pure, fedsplit1, fedsplit, pure, ...) spreads the machine's slow spells over
    all ways instead of charging them to whichever happened to run then. Best time per way;
    ``per_pass``, when given, receives every timed pass's seconds by way (for :func:`paired_median`).
    Every pass starts after a full collection (``gc.collect()``, untimed), as ``timeit`` turns
    the collector off: the garbage of the way before is not charged to the next, and a pass pays
    for its own (a long run's collector share is ``bench_driver.py --gc``'s).
    """
    for fn in ways.values():
        gc.collect()
        fn()
    times: dict[str, list[float]] = {name: [] for name in ways}
    weights: dict[str, dict] = {}
    for _ in range(passes):
        for name, fn in ways.items():
            gc.collect()
            seconds, weights[name] = fn()
            times[name].append(seconds)
    if per_pass is not None:
        per_pass.update(times)
    return {name: min(t) for name, t in times.items()}, weights


def paired_median(numerator: list[float], denominator: list[float]) -> float:
    """The median over passes of ``numerator[i] / denominator[i]``: two ways' times taken in the
    same pass, seconds apart, so a slow spell of the machine weighs on both sides of each ratio.
    A second view of a ratio beside the ratio of the best times: on this project's noisy 2-core VM
    the two differ by a few percent, and how much tells how far to trust either."""
    return statistics.median(n / d for n, d in zip(numerator, denominator, strict=True))


def max_diff(a: dict, b: dict) -> float:
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def terminals_per_round(cfg: RunConfig) -> int:
    """Terminals sampled for training each round (every terminal is online in these workloads)."""
    return max(cfg.strategy.min_train_nodes, int(cfg.strategy.fraction_train * cfg.num_terminals))


SPIN = """
import sys, time
start, seconds = float(sys.argv[1]), float(sys.argv[2])
while time.time() < start:
    time.sleep(0.001)
units, end = 0, time.perf_counter() + seconds
while time.perf_counter() < end:
    sum(i * i for i in range(2000))
    units += 1
print(units)
"""


def _spin(workers: int, seconds: float) -> float:
    """Work units that ``workers`` fresh processes (``python -c``) do together in ``seconds``."""
    import subprocess

    start = time.time() + 0.3  # every process has started by then
    procs = [
        subprocess.Popen([sys.executable, "-c", SPIN, repr(start), repr(seconds)], stdout=subprocess.PIPE, text=True)
        for _ in range(workers)
    ]
    return float(sum(int(p.communicate()[0]) for p in procs))


def parallel_capacity(workers: int, seconds: float = 0.5) -> float:
    """Cores' worth of throughput the machine gives ``workers`` busy processes right now.

    One process spins alone for ``seconds``, then ``workers`` processes together, then one alone
    again; the result is the work they did together over the mean work of the one alone
    (``workers`` on an idle machine, less while other processes hold cores). On this project's
    2-core VM a single core's rate itself varies by up to 2x from one half second to the next
    (measured 5,600 to 9,900 units), so the figure is a rough indication, not a correction.
    Efficiency can only reach about ``capacity / actors``: the figure tells whether a low
    efficiency is the engine's or the machine's. Takes about ``3 * (seconds + 0.3)`` seconds.
    """
    before = _spin(1, seconds)
    together = _spin(workers, seconds)
    after = _spin(1, seconds)
    return together / ((before + after) / 2)


def efficiency(pure_s: float, fedsplit_s: float, actors: int, per_round: int) -> float:
    """``pure_s / (P * fedsplit_s)`` with ``P = min(actors, per_round)``: 1.0 = perfect scaling."""
    return pure_s / (min(actors, per_round) * fedsplit_s)


def breakdown(pure_s: float, fedsplit_s: float, app_s: float, actors: int) -> tuple[float, float]:
    """``(busy, app_speed)`` of a fedsplit way whose ``actors`` spent ``app_s`` seconds in the
    ClientApp (summed) during its ``fedsplit_s``; their product is ``pure_s / (actors * fedsplit_s)``.

    ``busy = app_s / (actors * fedsplit_s)``: the share of the actors' time spent running the app;
    the rest they wait for the driver (the server's work between rounds, dispatch, replies) and
    for Ray. ``app_speed = pure_s / app_s``: the pure loop's time over the apps' time for the same
    terminals; below 1 by the ClientApp's own work around training (loading the message, building
    the reply) and, with several actors, by the cores slowing each other (shared caches and memory).
    """
    return app_s / (actors * fedsplit_s), pure_s / app_s


def profile_driver(name: str, overrides: list[str], top: int = int(os.environ.get("FEDSPLIT_PROFILE_TOP", "15"))) -> None:
    """Print the top ``top`` entries (cumulative and own time) of a cProfile of the driver
    process during one fedsplit run (one actor per core), after an unprofiled warm-up."""
    import cProfile
    import io
    import pstats

    import ray

    from fedsplit.clients.app import make_client_app
    from fedsplit.devices import Population, resolve_profiles
    from fedsplit.simulation.engine import RayEngine, ray_init_options

    cfg = load_config(None, COMMON + overrides)
    cpus = os.cpu_count() or 1
    ray.init(**ray_init_options(num_cpus=cpus))
    population = Population(cfg.devices, resolve_profiles(cfg.profiles))
    app = make_client_app(config_json=config_to_json(cfg))
    with RayEngine(app, population, num_actors=cpus, cpus_per_actor=1.0) as engine:
        run_fedsplit(cfg, engine, server_threads=1)
        profiler = cProfile.Profile()
        profiler.enable()
        seconds, _ = run_fedsplit(cfg, engine, server_threads=1)
        profiler.disable()
    ray.shutdown()
    print(f"workload={name} profiled fedsplit_s={seconds:.3f} load_avg={os.getloadavg()[0]:.2f}")
    for key in ("cumulative", "tottime"):
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).strip_dirs().sort_stats(key).print_stats(top)
        print(out.getvalue().strip(), flush=True)


def bench(
    name: str, overrides: list[str], passes: int, with_flower: bool, capacity: bool = True, batch_factor: int = 1, actors: int | None = None,
    transport: str = DEFAULT_TRANSPORT,
) -> dict[str, float]:
    import ray

    from fedsplit.clients.app import make_client_app
    from fedsplit.devices import Population, resolve_profiles
    from fedsplit.simulation.engine import RayEngine, ray_init_options

    cfg = load_config(None, COMMON + overrides)
    cpus = os.cpu_count() or 1
    actors = actors or cpus  # the fedsplit way's actors: one per core unless told
    # (seconds, server_s, app_s, driver_cpu_s, gc_s, full collections) a pass
    timed: dict[str, list[tuple[float, float, float, float, float, int]]] = {"fedsplit1": [], "fedsplit": []}

    def run_timed(way: str, engine: RayEngine):  # noqa: ANN202 - a fedsplit way, its server_s, app_s, driver CPU and collector time kept
        cpu = time.process_time()  # every thread of this process: the ServerApp, the engine, Ray's own
        with CollectorTime() as collector:
            seconds, state, outside, app = run_fedsplit_timed(cfg, engine, server_threads=1)
        timed[way].append((seconds, outside, app, time.process_time() - cpu, collector.seconds, collector.full))
        return seconds, state

    capacity_before = parallel_capacity(cpus) if capacity else float("nan")
    plain = PlainParallel(cfg, min(cpus, terminals_per_round(cfg)))
    # Both engines' actors exist at once so that the ways can be interleaved; only one engine
    # works at a time, so Ray is given one logical CPU more than the machine has for the idle one.
    ray.init(**ray_init_options(num_cpus=cpus + 1))
    population = Population(cfg.devices, resolve_profiles(cfg.profiles))
    app = make_client_app(config_json=config_to_json(cfg))
    with (
        RayEngine(app, population, num_actors=1, cpus_per_actor=1.0, batch_factor=batch_factor, transport=transport) as one,
        RayEngine(app, population, num_actors=actors, cpus_per_actor=1.0, batch_factor=batch_factor, transport=transport) as every,
    ):
        per_pass: dict[str, list[float]] = {}
        times, weights = best_interleaved(
            {
                "pure": lambda: run_pure(cfg),
                "limit": plain.run,
                "fedsplit1": lambda: run_timed("fedsplit1", one),
                "fedsplit": lambda: run_timed("fedsplit", every),
            },
            passes,
            per_pass,
        )
    ray.shutdown()
    plain.close()
    if with_flower:
        flower_times, flower_weights = best_interleaved({"flower": lambda: run_flower(cfg, server_threads=1)}, passes)
        times.update(flower_times)
        weights.update(flower_weights)
    else:
        times["flower"] = float("nan")
    for way in ("limit", "fedsplit1", "fedsplit"):
        diff = max_diff(weights["pure"], weights[way])
        print(f"workload={name} check weights_{way}_vs_pure max_abs_diff={diff:.2e} {'PASS' if diff <= 1e-5 else 'FAIL'}")
    # the pass whose time is reported (the first run of each way is best_interleaved's untimed warm-up)
    best = {way: min(runs[1:]) for way, runs in timed.items()}
    _, server_s, app_s, driver_cpu_s, gc_s, full_gcs = best["fedsplit"]
    parts = {
        way: breakdown(times["pure"], best[way][0], best[way][2], p)  # (seconds, app_s) of the reported pass
        for way, p in (("fedsplit1", 1), ("fedsplit", min(actors, terminals_per_round(cfg))))
    }
    line = (
        f"workload={name} pure_s={times['pure']:.3f} fedsplit1_s={times['fedsplit1']:.3f} "
        f"fedsplit_s={times['fedsplit']:.3f} flower_s={times['flower']:.3f} "
        f"overhead={times['fedsplit1'] / times['pure']:.3f} overhead_med={paired_median(per_pass['fedsplit1'], per_pass['pure']):.3f} "
        f"speedup={times['fedsplit1'] / times['fedsplit']:.3f} "
        f"flower_over_fedsplit={times['flower'] / times['fedsplit']:.3f} "
        f"efficiency={efficiency(times['pure'], times['fedsplit'], actors, terminals_per_round(cfg)):.3f} "
        f"efficiency_med={paired_median(per_pass['pure'], per_pass['fedsplit']) / min(actors, terminals_per_round(cfg)):.3f} "
        f"limit_s={times['limit']:.3f} limit_efficiency={efficiency(times['pure'], times['limit'], cpus, terminals_per_round(cfg)):.3f} "
        f"limit_efficiency_med={paired_median(per_pass['pure'], per_pass['limit']) / min(cpus, terminals_per_round(cfg)):.3f} "
        f"vs_limit={times['limit'] / times['fedsplit']:.3f} server_s={server_s:.3f} "
        f"busy1={parts['fedsplit1'][0]:.3f} app_speed1={parts['fedsplit1'][1]:.3f} "
        f"busy={parts['fedsplit'][0]:.3f} app_speed={parts['fedsplit'][1]:.3f} feeds={app_s / driver_cpu_s:.1f} gc_s={gc_s:.3f} full_gcs={full_gcs} "
        f"actors={actors} per_round={terminals_per_round(cfg)} load_avg={os.getloadavg()[0]:.2f} "
        f"capacity={capacity_before:.2f},{parallel_capacity(cpus) if capacity else float('nan'):.2f}/{cpus}"
    )
    print(line, flush=True)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny settings, one pass, no Flower engine")
    parser.add_argument("--workloads", default="mlp,cnn", help=f"comma-separated: {','.join(WORKLOADS)}")
    parser.add_argument("--passes", type=int, default=3, help="timed passes per way (best is reported)")
    parser.add_argument("--no-flower", action="store_true", help="skip Flower's engine")
    parser.add_argument("--actors", type=int, default=None, metavar="P",
                        help="the fedsplit way's actors (default: one per core; e.g. one fewer leaves a core to the driver)")
    parser.add_argument("--transport", choices=TRANSPORTS, default=DEFAULT_TRANSPORT,
                        help="fedsplit engine: how batches reach the actors (RayEngine transport; channel: a Unix socket to each local actor)")
    parser.add_argument("--batch-factor", type=int, default=1, help="fedsplit engine: batches per actor and round (RayEngine batch_factor)")
    parser.add_argument("--profile", metavar="WORKLOAD", choices=list(WORKLOADS), help="only profile the driver on WORKLOAD (top 15 entries)")
    args = parser.parse_args(argv)
    if args.actors is not None and not 1 <= args.actors <= (os.cpu_count() or 1):
        parser.error(f"argument --actors: {args.actors} is not between 1 and the {os.cpu_count()} cores")
    for item in args.workloads.split(","):  # an unknown name: one line now, not a KeyError traceback
        if item not in WORKLOADS:
            parser.error(f"argument --workloads: {item!r} is not known; allowed: {', '.join(WORKLOADS)}")
    from fedsplit.simulation.runner import quiet_flower

    quiet_flower()
    if args.profile:
        profile_driver(args.profile, WORKLOADS[args.profile])
        return 0
    table = SMOKE if args.smoke else WORKLOADS
    names = list(table) if args.smoke else args.workloads.split(",")
    for name in names:
        bench(name, table[name], 1 if args.smoke else args.passes, with_flower=not (args.smoke or args.no_flower), capacity=not args.smoke,
              batch_factor=args.batch_factor, actors=args.actors, transport=args.transport)
    return 0


if __name__ == "__main__":
    from fedsplit.process_exit import exit_now

    exit_now(main())  # skips the interpreter teardown, where Ray's destructors can hang
