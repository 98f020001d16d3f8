"""Benchmark: a run's start-up, with and without the engine's two start-up measures.

Most of a short run's wall time is start-up: Ray, new actor processes importing torch and Flower,
each actor building the run's data, the server's first FLOP count. Two measures cut it:

- ``data``: the run's data travels to the actors with the ClientApp, its partitions drawn in the
  driver (:func:`fedsplit.simulation.runner.data_for_actors`), so an actor does not import
  scikit-learn and flwr-datasets to build it again;
- ``warm``: the server's one-off FLOP-counter import (:func:`fedsplit.models.flops.warm_flop_counter`)
  runs while the actors start, instead of in round 2 (where the first evaluation overlaps it).

Each variant runs the same ``fedsplit simulate`` in a fresh interpreter (nothing warm), the
variants alternating pass by pass; a variant without a measure switches it off in that process.

Run::

    python experiments/bench_startup.py                         # the main job (README), 3 passes
    python experiments/bench_startup.py --set devices={laptop=4} --set engine.actors_per_device=1 --passes 5

It prints one line per run and one per variant::

    variant=<data+warm|data|none> pass=<k> total_s=.. wall_s=.. first_round_s=.. accuracy=..
    variant=<name> best_total_s=.. median_total_s=.. median_first_round_s=..

``total_s`` is the whole process (interpreter to exit), ``wall_s`` and ``first_round_s`` are the
run's own (``summary.json``: from the engine's start, and its first round with the start-up in it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: What each variant switches off, as Python run in its process before ``fedsplit simulate``.
VARIANTS: dict[str, str] = {
    "data+warm": "",
    "data": "import fedsplit.simulation.server_app as s; s._warm_flop_counter = lambda: None\n",
    "none": (
        "import fedsplit.simulation.server_app as s; s._warm_flop_counter = lambda: None\n"
        "import fedsplit.simulation.runner as r; r.ACTOR_DATA_MAX_PARTITIONS = 0\n"
    ),
}


def run_once(switch_off: str, overrides: list[str], out: Path) -> dict[str, float]:
    """One ``fedsplit simulate`` in a fresh interpreter: its total seconds and its summary's."""
    args = ["simulate", "--set", f"out_dir='{out}'", "--set", "progress=false"]
    for item in overrides:
        args += ["--set", item]
    code = f"{switch_off}import sys\nfrom fedsplit.cli import main\nsys.exit(main({args!r}))\n"
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    total = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"fedsplit simulate failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    summary = json.loads(next(out.glob("*/summary.json")).read_text())
    return {"total_s": total, "wall_s": summary["wall_time_s"], "first_round_s": summary["first_round_wall_s"],
            "accuracy": summary["final_metrics"]["accuracy"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--passes", type=int, default=3, help="runs per variant, >= 1 (alternating)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated: {','.join(VARIANTS)}")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a configuration override of the run")
    args = parser.parse_args(argv)
    names = args.variants.split(",")
    if args.passes < 1 or any(n not in VARIANTS for n in names):
        parser.error(f"--passes must be >= 1 and --variants among {', '.join(VARIANTS)}")
    results: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    for k in range(1, args.passes + 1):
        for name in names:
            with tempfile.TemporaryDirectory(prefix="fedsplit-bench-startup-") as folder:
                row = run_once(VARIANTS[name], args.set, Path(folder))
            results[name].append(row)
            print(f"variant={name} pass={k} total_s={row['total_s']:.2f} wall_s={row['wall_s']:.2f} "
                  f"first_round_s={row['first_round_s']:.2f} accuracy={row['accuracy']:.4f}", flush=True)
    for name, rows in results.items():
        totals = [r["total_s"] for r in rows]
        print(f"variant={name} best_total_s={min(totals):.2f} median_total_s={statistics.median(totals):.2f} "
              f"median_first_round_s={statistics.median(r['first_round_s'] for r in rows):.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
