"""Deng et al. (2022), Fig. 3: total latency, system accuracy and total energy vs number of terminals.

For N = 2..12 terminals and many seeded draws of the paper's case study (defaults of
``fedsplit.inference.paper_scenario``), schedule with the proposed joint scheduler (the fast
Lagrangian solver, whose certified gap is reported; for N <= 8 the exact solver also runs and
``optimal_share`` is the fraction of draws where the fast answer is optimal) and the four baselines of
the paper, and average over the draws that admit a feasible schedule (the same draws for every
scheme).

Run:  python experiments/deng_fig3.py [--smoke] [--seeds 50] [--out DIR]
Prints one ``key=value`` line per (N, scheme), writes ``fig3.csv`` and ``fig3.png``, then checks the
paper's claims (exit status 1 when one fails).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from fedsplit.cli_types import positive_int
from fedsplit.inference.experiment_io import Checks, plt, print_row, write_csv
from fedsplit.inference.paper_scenario import PaperScenarioConfig, generate_paper_scenario
from fedsplit.inference.solve import solve
from fedsplit.report import shown_path
from fedsplit.output_paths import output_folder

SCHEMES = ("proposed", "greedy-latency", "greedy-accuracy", "random", "equal-resource")
#: Up to this N the exact solver also runs, to report how often the fast answer is optimal.
EXACT_UP_TO = 8


def run(terminal_counts: list[int], seeds: int) -> list[dict]:
    """Average every scheme over the feasible draws for each number of terminals."""
    config = PaperScenarioConfig()
    rows = []
    for n in terminal_counts:
        per_scheme: dict[str, list[tuple[float, float, float, bool]]] = {s: [] for s in SCHEMES}
        gaps = []
        optimal = []
        infeasible = 0
        for seed in range(seeds):
            problem = generate_paper_scenario(n, seed, config)
            proposed = solve(problem, "fast")
            if not proposed.feasible:
                infeasible += 1
                continue
            gaps.append(proposed.gap)
            if n <= EXACT_UP_TO:
                exact = solve(problem, "exact")
                optimal.append(abs(proposed.total_latency_s - exact.total_latency_s) <= 1e-9 * exact.total_latency_s)
            for scheme in SCHEMES:
                result = proposed if scheme == "proposed" else solve(problem, scheme, seed=seed)
                per_scheme[scheme].append(
                    (result.total_latency_s, result.total_energy_j, result.accuracy, result.feasible)
                )
        for scheme in SCHEMES:
            values = np.array(per_scheme[scheme], dtype=float)
            row = {
                "N": n,
                "scheme": scheme,
                "latency_s": float(values[:, 0].mean()),
                "energy_j": float(values[:, 1].mean()),
                "accuracy": float(values[:, 2].mean()),
                "meets_all_constraints": float(values[:, 3].mean()),
                "seeds_used": len(values),
                "seeds_infeasible": infeasible,
                "certified_gap_mean": float(np.mean(gaps)) if scheme == "proposed" else float("nan"),
                "optimal_share": float(np.mean(optimal)) if scheme == "proposed" and optimal else float("nan"),
            }
            print_row(row)
            rows.append(row)
    return rows


def plot(rows: list[dict], target: float, path: Path) -> None:
    """Three panels like the paper's Fig. 3."""
    pyplot = plt()
    fig, axes = pyplot.subplots(1, 3, figsize=(15, 4.2))
    for scheme in SCHEMES:
        sub = [r for r in rows if r["scheme"] == scheme]
        n = [r["N"] for r in sub]
        for ax, key in zip(axes, ("latency_s", "accuracy", "energy_j")):
            ax.plot(n, [r[key] for r in sub], marker="o", label=scheme)
    axes[1].axhline(target, color="k", linestyle=":", label=f"target chi={target}")
    for ax, label in zip(axes, ("total latency [s]", "system accuracy", "total energy [J]")):
        ax.set_xlabel("number of terminals N")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_yscale("log")
    axes[2].set_yscale("log")
    axes[1].legend(fontsize=8)
    fig.suptitle("Deng et al. 2022 Fig. 3 reproduced (means over feasible seeded draws)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    pyplot.close(fig)


def check_claims(rows: list[dict], target: float) -> Checks:
    """The paper's claims about Fig. 3, checked on the averages."""
    checks = Checks()
    ns = sorted({r["N"] for r in rows})
    get = {(r["N"], r["scheme"]): r for r in rows}
    for metric in ("latency_s", "energy_j"):
        for other in ("greedy-accuracy", "random", "equal-resource"):
            mine = [get[(n, "proposed")][metric] for n in ns]
            theirs = [get[(n, other)][metric] for n in ns]
            worst = min(t - m for m, t in zip(mine, theirs))
            checks.check(
                f"proposed {metric} < {other} at every N",
                all(m < t for m, t in zip(mine, theirs)),
                f"smallest margin {worst:.4g}; at N={ns[-1]}: {mine[-1]:.4g} vs {theirs[-1]:.4g}",
            )
            diffs = np.array(theirs) - np.array(mine)
            rising = float(np.corrcoef(ns, diffs)[0, 1]) if len(ns) > 2 else float("nan")
            checks.check(
                f"{metric} advantage over {other} grows with N",
                diffs[-1] > diffs[0] and (len(ns) < 3 or rising > 0.8),
                f"advantage N={ns[0]}: {diffs[0]:.4g}, N={ns[-1]}: {diffs[-1]:.4g}, corr(N, advantage)={rising:.3f}",
            )
    lat = {s: [get[(n, s)]["latency_s"] for n in ns] for s in SCHEMES}
    energy = {s: [get[(n, s)]["energy_j"] for n in ns] for s in SCHEMES}
    fastest = all(lat["greedy-latency"][k] <= min(lat[s][k] for s in SCHEMES) for k in range(len(ns)))
    checks.check("greedy-latency has the lowest latency at every N", fastest,
                 f"N={ns[-1]}: greedy-latency {lat['greedy-latency'][-1]:.4g} s vs proposed {lat['proposed'][-1]:.4g} s")
    lowest_energy = all(energy["greedy-latency"][k] <= min(energy[s][k] for s in SCHEMES) for k in range(len(ns)))
    checks.check("greedy-latency has the lowest energy at every N", lowest_energy,
                 f"N={ns[-1]}: {energy['greedy-latency'][-1]:.4g} J vs proposed {energy['proposed'][-1]:.4g} J")
    acc_gl = [get[(n, "greedy-latency")]["accuracy"] for n in ns]
    checks.check("greedy-latency misses the accuracy target at every N", all(a < target for a in acc_gl),
                 f"accuracy {max(acc_gl):.4f} at most vs target {target}")
    acc_p = [get[(n, "proposed")]["accuracy"] for n in ns]
    checks.check("proposed meets the accuracy target at every N", all(a >= target - 1e-9 for a in acc_p),
                 f"accuracy {min(acc_p):.4f} at least vs target {target}")
    highest = all(lat["greedy-accuracy"][k] >= max(lat[s][k] for s in SCHEMES) for k in range(len(ns)))
    highest_e = all(energy["greedy-accuracy"][k] >= max(energy[s][k] for s in SCHEMES) for k in range(len(ns)))
    checks.check("greedy-accuracy has the highest latency and energy at every N", highest and highest_e,
                 f"N={ns[-1]}: {lat['greedy-accuracy'][-1]:.4g} s, {energy['greedy-accuracy'][-1]:.4g} J")
    return checks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a few seconds: N in {2, 6, 12}, 5 seeds unless --seeds")
    parser.add_argument("--seeds", type=positive_int, default=None, help="seeded draws per N (default 50)")
    parser.add_argument("--out", type=lambda text: Path(output_folder(text)), default=Path(__file__).parent / "results" / "deng_fig3")
    args = parser.parse_args(argv)
    counts = [2, 6, 12] if args.smoke else list(range(2, 13))
    seeds = args.seeds or (5 if args.smoke else 50)
    start = time.perf_counter()
    rows = run(counts, seeds)
    target = PaperScenarioConfig().accuracy_target
    write_csv(rows, args.out / "fig3.csv")
    plot(rows, target, args.out / "fig3.png")
    print(f"wrote {shown_path(args.out / 'fig3.csv')} and {shown_path(args.out / 'fig3.png')} in {time.perf_counter() - start:.1f} s")
    checks = check_claims(rows, target)
    return 0 if checks.all_passed else 1


if __name__ == "__main__":
    sys.exit(main())
