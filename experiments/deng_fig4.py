"""Deng et al. (2022), Fig. 4: total latency vs edge compute, for two input-size sets and two chi.

Six terminals of the paper's case study; the edge server's capacity F sweeps 6..24 GHz; the models'
inputs are the original set {100, 300, 600} or the optimised set {90, 280, 570} pixels a side (same
accuracies: the optimised models are pruned versions); the accuracy target chi is 0.67 or 0.75.
Every point is the proposed scheduler's (fast solver) total latency averaged over the same seeded
draws: those feasible in every configuration at every F, so that curves are comparable.

Run:  python experiments/deng_fig4.py [--smoke] [--seeds 50] [--out DIR]
Writes ``fig4.csv`` and ``fig4.png``, then checks the paper's claims (exit status 1 when one fails).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from fedsplit.cli_types import positive_int
from fedsplit.inference.experiment_io import Checks, plt, print_row, write_csv
from fedsplit.inference.paper_scenario import PaperScenarioConfig, generate_paper_scenario
from fedsplit.inference.solve import solve
from fedsplit.report import shown_path
from fedsplit.output_paths import output_folder

INPUT_SETS = {"phi1": (100, 300, 600), "phi2": (90, 280, 570)}
TARGETS = (0.67, 0.75)
N_TERMINALS = 6


def run(compute_hz: list[float], seeds: int) -> list[dict]:
    """Latency of every (input set, chi, F) averaged over the commonly feasible draws."""
    base = PaperScenarioConfig()
    latency: dict[tuple[str, float, float], dict[int, float]] = {}
    gaps: dict[tuple[str, float, float], list[float]] = {}
    for set_name, sides in INPUT_SETS.items():
        for chi in TARGETS:
            for F in compute_hz:
                config = replace(base.with_models(input_sides=sides), edge_cycles_per_s=F, accuracy_target=chi)
                key = (set_name, chi, F)
                latency[key], gaps[key] = {}, []
                for seed in range(seeds):
                    result = solve(generate_paper_scenario(N_TERMINALS, seed, config), "fast")
                    if result.feasible:
                        latency[key][seed] = result.total_latency_s
                        gaps[key].append(result.gap)
    common = set(range(seeds))
    for values in latency.values():
        common &= set(values)
    common_list = sorted(common)
    rows = []
    for (set_name, chi, F), values in latency.items():
        row = {
            "input_set": set_name,
            "input_sides": "/".join(str(s) for s in INPUT_SETS[set_name]),
            "chi": chi,
            "edge_ghz": F / 1e9,
            "latency_s": float(np.mean([values[s] for s in common_list])),
            "seeds_used": len(common_list),
            "seeds_feasible_here": len(values),
            "certified_gap_mean": float(np.mean(gaps[(set_name, chi, F)])),
        }
        print_row(row)
        rows.append(row)
    return rows


def plot(rows: list[dict], path: Path) -> None:
    pyplot = plt()
    fig, ax = pyplot.subplots(figsize=(7, 4.5))
    styles = {"phi1": "-", "phi2": "--"}
    markers = {0.67: "o", 0.75: "s"}
    for set_name in INPUT_SETS:
        for chi in TARGETS:
            sub = [r for r in rows if r["input_set"] == set_name and r["chi"] == chi]
            ax.plot([r["edge_ghz"] for r in sub], [r["latency_s"] for r in sub], styles[set_name],
                    marker=markers[chi], label=f"{set_name} {sub[0]['input_sides']}, chi={chi}")
    ax.set_xlabel("edge server compute F [GHz]")
    ax.set_ylabel("total latency [s]")
    ax.set_title("Deng et al. 2022 Fig. 4 reproduced (N=6, proposed scheduler)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    pyplot.close(fig)


def check_claims(rows: list[dict]) -> Checks:
    checks = Checks()
    get = {(r["input_set"], r["chi"], r["edge_ghz"]): r["latency_s"] for r in rows}
    ghz = sorted({r["edge_ghz"] for r in rows})
    for set_name in INPUT_SETS:
        for chi in TARGETS:
            curve = [get[(set_name, chi, g)] for g in ghz]
            checks.check(
                f"latency falls as compute grows ({set_name}, chi={chi})",
                all(b < a for a, b in zip(curve, curve[1:])),
                f"{curve[0]:.4g} s at {ghz[0]:g} GHz -> {curve[-1]:.4g} s at {ghz[-1]:g} GHz",
            )
    for chi in TARGETS:
        diffs = [get[("phi1", chi, g)] - get[("phi2", chi, g)] for g in ghz]
        checks.check(
            f"smaller inputs (phi2) give lower latency at every F (chi={chi})",
            all(d > 0 for d in diffs),
            f"phi1 - phi2 from {min(diffs):.4g} to {max(diffs):.4g} s",
        )
    for set_name in INPUT_SETS:
        diffs = [get[(set_name, 0.75, g)] - get[(set_name, 0.67, g)] for g in ghz]
        checks.check(
            f"higher chi gives higher latency at every F ({set_name})",
            all(d > 0 for d in diffs),
            f"chi 0.75 - chi 0.67 from {min(diffs):.4g} to {max(diffs):.4g} s",
        )
    return checks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a few seconds: 3 compute values, 5 seeds unless --seeds")
    parser.add_argument("--seeds", type=positive_int, default=None, help="seeded draws per point (default 50)")
    parser.add_argument("--out", type=lambda text: Path(output_folder(text)), default=Path(__file__).parent / "results" / "deng_fig4")
    args = parser.parse_args(argv)
    compute = [6e9, 14e9, 24e9] if args.smoke else [g * 1e9 for g in range(6, 25, 2)]
    seeds = args.seeds or (5 if args.smoke else 50)
    start = time.perf_counter()
    rows = run(compute, seeds)
    write_csv(rows, args.out / "fig4.csv")
    plot(rows, args.out / "fig4.png")
    print(f"wrote {shown_path(args.out / 'fig4.csv')} and {shown_path(args.out / 'fig4.png')} in {time.perf_counter() - start:.1f} s")
    checks = check_claims(rows)
    return 0 if checks.all_passed else 1


if __name__ == "__main__":
    sys.exit(main())
