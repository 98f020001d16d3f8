"""Speed and certified gap of the fast scheduler on large instances.

Instances: the paper's case study scaled to N terminals (band and edge server per 6 terminals as in
the paper, 5 models from 100x100 to 600x600 inputs, chi = 0.7; see
``fedsplit.inference.instances.benchmark_problem``). Each size is solved several times from a fresh
problem object (nothing cached) and the best wall time is reported, since the machine is shared.

Prints ``N=<n> solve_s=<t> gap=<g>`` per size, writes ``bench.csv`` and ``bench.png``, and checks the
issue's targets: N=1,000 in <= 0.2 s, N=10,000 in <= 2 s, certified gap <= 1% at N=100 (exit status 1 when a check fails).

Run:  python experiments/bench_scheduler.py [--smoke] [--repeats 5] [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from fedsplit.cli_types import positive_int
from fedsplit.inference.experiment_io import Checks, plt, write_csv
from fedsplit.inference.instances import benchmark_problem
from fedsplit.inference.lagrangian import solve_fast
from fedsplit.output_paths import output_folder

N_MODELS = 5
TIME_LIMITS = {1000: 0.2, 10000: 2.0}
GAP_LIMIT_AT_100 = 0.01


def bench(n: int, repeats: int, seed: int = 0) -> dict:
    """Best-of-``repeats`` wall time and the certified gap for one size."""
    problem = benchmark_problem(n, N_MODELS, seed)
    times = []
    schedule = None
    for _ in range(repeats):
        fresh = problem.with_updates()  # drop cached pair tables: time the whole solve
        start = time.perf_counter()
        schedule = solve_fast(fresh)
        times.append(time.perf_counter() - start)
    row = {
        "N": n,
        "M": N_MODELS,
        "solve_s": min(times),
        "median_s": sorted(times)[len(times) // 2],
        "gap": schedule.gap,
        "feasible": schedule.feasible,
        "total_latency_s": schedule.total_latency_s,
        "lower_bound_s": schedule.lower_bound_s,
        "accuracy": schedule.accuracy,
        "accuracy_target": problem.accuracy_target,
    }
    print(
        f"N={n} solve_s={row['solve_s']:.4f} gap={row['gap']:.3g} median_s={row['median_s']:.4f} "
        f"M={N_MODELS} feasible={str(row['feasible']).lower()} total_latency_s={row['total_latency_s']:.6g} "
        f"lower_bound_s={row['lower_bound_s']:.6g}",
        flush=True,
    )
    return row


def plot(rows: list[dict], path: Path) -> None:
    pyplot = plt()
    fig, ax = pyplot.subplots(figsize=(6, 4))
    ax.loglog([r["N"] for r in rows], [r["solve_s"] for r in rows], marker="o", label="fast solver (best of runs)")
    for n, limit in TIME_LIMITS.items():
        ax.scatter([n], [limit], marker="_", s=400, color="red")
    ax.set_xlabel("terminals N (M = 5 models)")
    ax.set_ylabel("solve time [s]")
    ax.set_title("Fast scheduler: time vs N (red: targets)")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    pyplot.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="seconds: N in {100, 1000}, 2 runs each unless --repeats")
    parser.add_argument("--repeats", type=positive_int, default=None, help="runs per size; the best is reported (default 5)")
    parser.add_argument("--out", type=lambda text: Path(output_folder(text)), default=Path(__file__).parent / "results" / "bench_scheduler")
    args = parser.parse_args(argv)
    sizes = [100, 1000] if args.smoke else [100, 300, 1000, 3000, 10000]
    repeats = args.repeats or (2 if args.smoke else 5)
    rows = [bench(n, repeats if n <= 3000 else max(2, repeats - 2)) for n in sizes]
    write_csv(rows, args.out / "bench.csv")
    plot(rows, args.out / "bench.png")
    checks = Checks()
    by_n = {r["N"]: r for r in rows}
    for n, limit in TIME_LIMITS.items():
        if n in by_n:
            checks.check(f"N={n} solved within {limit} s", by_n[n]["solve_s"] <= limit,
                         f"best {by_n[n]['solve_s']:.4f} s, median {by_n[n]['median_s']:.4f} s")
    if 100 in by_n:
        checks.check("certified gap <= 1% at N=100", by_n[100]["gap"] <= GAP_LIMIT_AT_100,
                     f"gap {by_n[100]['gap']:.3g}")
    checks.check("every answer feasible with a certified gap", all(r["feasible"] for r in rows),
                 f"largest gap {max(r['gap'] for r in rows):.3g}")
    return 0 if checks.all_passed else 1


if __name__ == "__main__":
    sys.exit(main())
