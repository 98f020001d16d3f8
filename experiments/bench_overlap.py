"""Benchmark: the server's work overlapped with training, against the same work done serially.

Two kinds of server work can overlap the terminals' training (``--work``):

- ``replies`` (default): fedsplit's engine hands each batch of replies to the server as it comes
  back (:attr:`fedsplit.simulation.metered_grid.MeteredGrid.stream_replies`): the updates are
  checked and their bytes counted while other actors still train. With ``stream_replies = False``
  the same work runs after the last reply.
- ``evaluation``: the server's evaluation of a round's model runs during the next round's first
  exchange (:attr:`~fedsplit.simulation.metered_grid.MeteredGrid.overlap_server_work`), against
  before the next round starts.

Both ways run in one process on the same actors, interleaved pass by pass, one actor per core
(``--actors`` to choose); the final weights must be identical.

Run::

    python experiments/bench_overlap.py                        # mlp100 and mlp, 8 passes each (~1 minute)
    python experiments/bench_overlap.py --workloads mlp --passes 3
    python experiments/bench_overlap.py --work evaluation --workloads mlp,cnn --actors 1 --passes 3

It prints one line per workload::

    workload=<name> serial_s=.. overlap_s=.. speedup=.. serial_server_s=.. overlap_server_s=.. serial_median_s=.. overlap_median_s=.. work=.. actors=.. load_avg=..

``*_s`` is the best wall time of the rounds (``Strategy.start``), ``*_median_s`` the median, and
``*_server_s`` the best time spent outside the engine (the serial work more actors do not shorten,
as in ``bench_engine.py``).
"""

from __future__ import annotations

import argparse
import os
import statistics

from bench_engine import COMMON, WORKLOADS, max_diff, run_fedsplit_timed

from fedsplit.config import load_config


def bench(name: str, passes: int, work: str = "replies", actors: int | None = None) -> dict[str, float]:
    import ray

    from fedsplit.clients.app import make_client_app
    from fedsplit.devices import Population, resolve_profiles
    from fedsplit.learning import config_to_json
    from fedsplit.simulation.engine import RayEngine, ray_init_options
    from fedsplit.simulation.metered_grid import MeteredGrid

    cfg = load_config(None, COMMON + WORKLOADS[name])
    cpus = os.cpu_count() or 1
    ray.init(**ray_init_options(num_cpus=cpus))
    switch = "stream_replies" if work == "replies" else "overlap_server_work"
    actors = actors or cpus
    population = Population(cfg.devices, resolve_profiles(cfg.profiles))
    app = make_client_app(config_json=config_to_json(cfg))
    walls: dict[bool, list[float]] = {True: [], False: []}
    server: dict[bool, list[float]] = {True: [], False: []}
    weights: dict[bool, dict] = {}
    try:
        with RayEngine(app, population, num_actors=actors, cpus_per_actor=1.0) as engine:
            for timed in [False] + [True] * passes:  # one untimed warm-up pass of both ways
                for stream in (True, False):
                    setattr(MeteredGrid, switch, stream)
                    seconds, weights[stream], outside, _ = run_fedsplit_timed(cfg, engine, server_threads=1)
                    if timed:
                        walls[stream].append(seconds)
                        server[stream].append(outside)
    finally:
        setattr(MeteredGrid, switch, True)
        ray.shutdown()
    diff = max_diff(weights[True], weights[False])
    print(f"workload={name} check weights_overlap_vs_serial max_abs_diff={diff:.2e} {'PASS' if diff == 0 else 'FAIL'}")
    result = {
        "serial_s": min(walls[False]), "overlap_s": min(walls[True]),
        "serial_server_s": min(server[False]), "overlap_server_s": min(server[True]),
        "serial_median_s": statistics.median(walls[False]), "overlap_median_s": statistics.median(walls[True]),
    }
    print(
        f"workload={name} serial_s={result['serial_s']:.3f} overlap_s={result['overlap_s']:.3f} "
        f"speedup={result['serial_s'] / result['overlap_s']:.3f} serial_server_s={result['serial_server_s']:.3f} "
        f"overlap_server_s={result['overlap_server_s']:.3f} serial_median_s={result['serial_median_s']:.3f} "
        f"overlap_median_s={result['overlap_median_s']:.3f} work={work} actors={actors} load_avg={os.getloadavg()[0]:.2f}",
        flush=True,
    )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", default="mlp100,mlp", help=f"comma-separated: {','.join(WORKLOADS)}")
    parser.add_argument("--passes", type=int, default=8, help="timed passes per way (best and median are reported)")
    parser.add_argument("--work", choices=("replies", "evaluation"), default="replies", help="the server work overlapped (see above)")
    parser.add_argument("--actors", type=int, default=None, help="actors of 1 CPU (default: one per core)")
    args = parser.parse_args(argv)
    for item in args.workloads.split(","):  # an unknown name: one line now, not a KeyError traceback
        if item not in WORKLOADS:
            parser.error(f"argument --workloads: {item!r} is not known; allowed: {', '.join(WORKLOADS)}")
    from fedsplit.simulation.runner import quiet_flower

    quiet_flower()
    for name in args.workloads.split(","):
        bench(name, args.passes, args.work, args.actors)
    return 0


if __name__ == "__main__":
    from fedsplit.process_exit import exit_now

    exit_now(main())  # skips the interpreter teardown, where Ray's destructors can hang
