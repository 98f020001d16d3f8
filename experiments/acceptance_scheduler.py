"""Acceptance checks of the scheduler (issue 5) on random instances.

1. Exact solver vs brute force: on random instances with N <= 6 (3 models), enumerate every model
   vector meeting the accuracy target, solve each allocation with the general-purpose SLSQP solver
   (``fedsplit.inference.reference``, independent of the KKT code), and compare the best with the
   branch-and-bound answer (also whether both call the instance infeasible).
2. Fast vs exact: on random *feasible* instances with N <= 8, the relative gap of the fast solver's
   total latency to the exact optimum (mean and max).
3. Certified gap at N = 100 on scaled case-study instances.

Run:  python experiments/acceptance_scheduler.py [--smoke] [--instances 200] [--out DIR]
Writes ``exact_vs_brute_force.csv`` (per instance: ``brute_force_latency_s`` and ``exact_latency_s``, the
total latency of the schedule each found, ``brute_force_solve_s`` and ``exact_solve_s``, the time each took
to solve), ``fast_vs_exact.csv`` (``exact_latency_s`` / ``fast_latency_s``, the relative ``gap_to_exact``, the
fast solver's ``certified_gap``, ``exact_solve_s`` / ``fast_solve_s``) and ``acceptance_scheduler.png``
(latency found, fast solver's gap and solve times, per instance).
Exit status 1 when a check fails. Takes ~10 minutes in full on a 2-core machine (the SLSQP brute force dominates).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np

from fedsplit.cli_types import positive_int
from fedsplit.inference.exact import solve_exact
from fedsplit.inference.experiment_io import Checks, plt, print_row, write_csv
from fedsplit.inference.feasibility import pair_table
from fedsplit.inference.instances import benchmark_problem, random_problem
from fedsplit.inference.lagrangian import solve_fast
from fedsplit.inference.model_choice import ACCURACY_TOL
from fedsplit.inference.reference import reference_allocation
from fedsplit.inference.system_model import Problem
from fedsplit.report import shown_path
from fedsplit.output_paths import output_folder


def brute_force(problem: Problem) -> float:
    """Best total latency over all model vectors, allocations by SLSQP (``inf`` if none feasible)."""
    n, m = problem.n_terminals, problem.n_models
    feasible = pair_table(problem).feasible
    required = problem.accuracy_target * n - ACCURACY_TOL
    best = np.inf
    for vector in itertools.product(range(m), repeat=n):
        models = np.array(vector, dtype=np.intp)
        if problem.accuracy[models].sum() < required or not feasible[np.arange(n), models].all():
            continue
        ok, value, _, _ = reference_allocation(problem, models, starts=2)
        if ok and value < best:
            best = value
    return best


def exact_vs_brute(count: int, seed: int) -> tuple[list[dict], int, int]:
    rng = np.random.default_rng(seed)
    rows, agree, feasible_count = [], 0, 0
    for k in range(count):
        n = int(rng.integers(1, 7))
        problem = random_problem(rng, n)
        start = time.perf_counter()
        reference = brute_force(problem)
        brute_s = time.perf_counter() - start
        exact = solve_exact(problem)
        if np.isfinite(reference):
            feasible_count += 1
            rel = abs(exact.total_latency_s - reference) / reference if exact.feasible else np.inf
            # SLSQP stops at ~1e-9 relative; the KKT solver is exact to ~1e-12.
            match = exact.feasible and rel <= 1e-6
        else:
            rel = 0.0 if not exact.feasible else np.inf
            match = not exact.feasible
        agree += bool(match)
        row = {"instance": k, "N": n, "brute_force_latency_s": reference, "exact_latency_s": exact.total_latency_s,
               "rel_diff": rel, "match": bool(match), "brute_force_solve_s": brute_s, "exact_solve_s": exact.solve_s}
        rows.append(row)
        if not match:
            print_row(row)
    return rows, agree, feasible_count


def fast_vs_exact(count: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    while len(rows) < count:
        n = int(rng.integers(1, 9))
        problem = random_problem(rng, n)
        exact = solve_exact(problem)
        if not exact.feasible:
            continue
        fast = solve_fast(problem)
        gap = (fast.total_latency_s - exact.total_latency_s) / exact.total_latency_s if fast.feasible else np.inf
        rows.append({"instance": len(rows), "N": n, "exact_latency_s": exact.total_latency_s,
                     "fast_latency_s": fast.total_latency_s, "gap_to_exact": gap, "certified_gap": fast.gap,
                     "fast_solve_s": fast.solve_s, "exact_solve_s": exact.solve_s})
    return rows


def plot(brute_rows: list[dict], fast_rows: list[dict], path: Path) -> None:
    """Per instance: the total latency each solver found, the fast solver's gap, and solve times."""
    pyplot = plt()
    fig, axes = pyplot.subplots(1, 3, figsize=(15, 4.2))
    ax = axes[0]
    pairs = [(r["brute_force_latency_s"], r["exact_latency_s"]) for r in brute_rows
             if np.isfinite(r["brute_force_latency_s"]) and np.isfinite(r["exact_latency_s"])]
    if pairs:
        ax.scatter(*zip(*pairs), s=14, label="exact vs brute force (SLSQP), N <= 6")
    ax.scatter([r["exact_latency_s"] for r in fast_rows], [r["fast_latency_s"] for r in fast_rows], s=14, marker="x",
               label="fast vs exact, N <= 8")
    values = [v for pair in pairs for v in pair] + [r["exact_latency_s"] for r in fast_rows]
    ax.plot([min(values), max(values)], [min(values), max(values)], "k:", lw=1, label="y = x")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("reference total latency [s] (brute force / exact)")
    ax.set_ylabel("solver's total latency [s] (exact / fast)")
    ax.set_title("total latency found, per instance")
    ax.legend(fontsize=7)
    ax = axes[1]
    ax.scatter([r["N"] for r in fast_rows], [100 * r["gap_to_exact"] for r in fast_rows], s=14)
    ax.axhline(0.5, color="C1", linestyle=":", label="bar on the mean gap (0.5 %)")
    ax.axhline(2.0, color="C3", linestyle=":", label="bar on the max gap (2 %)")
    ax.set_xlabel("number of terminals N")
    ax.set_ylabel("fast solver's latency above exact [%]")
    ax.set_title("fast vs exact, per instance")
    ax.legend(fontsize=7)
    ax = axes[2]
    for rows, key, label, marker in ((brute_rows, "brute_force_solve_s", "brute force (SLSQP per model vector)", "o"),
                                     (fast_rows, "exact_solve_s", "exact (branch and bound)", "s"),
                                     (fast_rows, "fast_solve_s", "fast (Lagrangian)", "x")):
        ax.scatter([r["N"] for r in rows], [max(r[key], 1e-6) for r in rows], s=14, marker=marker, label=label)
    ax.set_yscale("log")
    ax.set_xlabel("number of terminals N")
    ax.set_ylabel("solve time per instance [s]")
    ax.set_title("solve time")
    ax.legend(fontsize=7)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    pyplot.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="seconds: 5 instances each unless --instances, N=100 once")
    parser.add_argument("--instances", type=positive_int, default=None, help="random instances per test (default 200)")
    parser.add_argument("--out", type=lambda text: Path(output_folder(text)), default=Path(__file__).parent / "results" / "acceptance_scheduler")
    args = parser.parse_args(argv)
    count = args.instances or (5 if args.smoke else 200)
    checks = Checks()

    start = time.perf_counter()
    brute_rows, agree, feasible_count = exact_vs_brute(count, seed=2024)
    rows = brute_rows
    print_row({"test": "exact_vs_brute_force", "instances": count, "feasible": feasible_count,
               "agree": agree, "max_rel_diff": max(r["rel_diff"] for r in rows),
               "seconds": time.perf_counter() - start})
    write_csv(rows, args.out / "exact_vs_brute_force.csv")
    checks.check("exact solver matches brute force (SLSQP per model vector)", agree == count,
                 f"{agree}/{count} agree, {feasible_count} feasible")

    start = time.perf_counter()
    rows = fast_rows = fast_vs_exact(count, seed=7)
    gaps = np.array([r["gap_to_exact"] for r in rows])
    print_row({"test": "fast_vs_exact", "instances": count, "mean_gap": float(gaps.mean()),
               "max_gap": float(gaps.max()), "optimal_share": float(np.mean(gaps <= 1e-9)),
               "seconds": time.perf_counter() - start})
    write_csv(rows, args.out / "fast_vs_exact.csv")
    checks.check("fast solver mean gap <= 0.5% vs exact (N <= 8)", gaps.mean() <= 0.005, f"mean {gaps.mean():.3g}")
    checks.check("fast solver max gap <= 2% vs exact (N <= 8)", gaps.max() <= 0.02, f"max {gaps.max():.3g}")

    seeds = 1 if args.smoke else 10
    certified = []
    for seed in range(seeds):
        schedule = solve_fast(benchmark_problem(100, 3, seed))
        certified.append(schedule.gap)
        print_row({"test": "certified_gap_N100", "seed": seed, "M": 3, "gap": schedule.gap,
                   "solve_s": schedule.solve_s})
    checks.check("certified gap <= 1% at N=100", max(certified) <= 0.01, f"max over {seeds} seeds {max(certified):.3g}")
    plot(brute_rows, fast_rows, args.out / "acceptance_scheduler.png")
    print(f"wrote {shown_path(args.out / 'exact_vs_brute_force.csv')}, {shown_path(args.out / 'fast_vs_exact.csv')} "
          f"and {shown_path(args.out / 'acceptance_scheduler.png')}", flush=True)
    return 0 if checks.all_passed else 1


if __name__ == "__main__":
    sys.exit(main())
