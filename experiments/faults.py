"""Experiment (issue #13 item 4): accuracy under injected terminal faults.

The default run (FedAvg, the compact CNN, digits IID over the default population of ten
terminals, ``--rounds`` rounds) on fedsplit's engine (Ray actors), once fault-free and once per
``--faults`` setting, all from the same seed: a crash is an exception in place of the terminal's
ClientApp, a kill ends the actor process running it (the engine replaces the actor). The faulty
terminals leave each round to the rest. Prints one line per run::

    faults=<setting> final_acc=<x> delta_pp=<fault-free minus this, percentage points> failed=<n>
    aggregated=<n> actor_restarts=<n> sim_time_s=<s> wall_s=<s>

and writes ``<out>/faults.csv`` (same columns) and the run folders under ``<out>/runs``.

Run::

    python experiments/faults.py [--rounds 10] [--faults 'crash_rate=0.3' 'crash_rate=0.2,kill_rate=0.1'] [--engine fedsplit]
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from fedsplit.config import load_config
from fedsplit.simulation.runner import simulate
from fedsplit.output_paths import output_folder


def faults_overrides(setting: str) -> list[str]:
    """``crash_rate=0.3,kill_rate=0.1`` -> ``--set`` overrides of ``faults.*`` (``none``: none)."""
    if setting == "none":
        return []
    return [f"faults.{item.strip()}" for item in setting.split(",") if item.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--engine", default="fedsplit", choices=("fedsplit", "serial"))
    parser.add_argument("--faults", nargs="+", default=["crash_rate=0.3"], help="settings to compare with the fault-free run")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra overrides for every run")
    parser.add_argument("--out", type=lambda text: Path(output_folder(text)), default=Path("experiments/results/faults"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    clean_acc = None
    for setting in ["none", *args.faults]:
        name = setting.replace("=", "").replace(",", "-").replace(".", "")
        base = [f"rounds={args.rounds}", f"seed={args.seed}", f"engine.name={args.engine}", "progress=false",
                f"out_dir={args.out / 'runs'}", f"run_name={name}"]
        outcome = simulate(load_config(None, base + args.set + faults_overrides(setting)))
        s = outcome.summary
        acc = float(s["final_metrics"]["accuracy"])
        clean_acc = acc if clean_acc is None else clean_acc
        rounds = outcome.session.ledger.rounds.values()
        row = {
            "faults": setting,
            "final_acc": round(acc, 4),
            "delta_pp": round(100 * (clean_acc - acc), 2),
            "failed": int(s["failed"]),
            "aggregated": sum(r.aggregated for r in rounds),
            "actor_restarts": int(s.get("actor_restarts", 0)),
            "sim_time_s": round(float(s["sim_time_s"]), 3),
            "wall_s": round(float(s["wall_time_s"]), 1),
        }
        rows.append(row)
        print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    with open(args.out / "faults.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return 0


if __name__ == "__main__":
    from fedsplit.process_exit import exit_now

    exit_now(main())  # skips the interpreter teardown, where Ray's destructors can hang
