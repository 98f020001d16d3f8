"""Experiment (issue #16 item 5): orchestration methods on a heterogeneous population.

Digits, Dirichlet(alpha = 0.5) partitions, the MLP, a population of five device classes (four
terminals each) whose slowest terminal (``smartphone-low``: 3 GFLOP/s, 2 Mbit/s up) is more than
10x slower than the fastest (``laptop``: 50 GFLOP/s, 50 Mbit/s up) in compute and in uplink.
Methods, each from the same seeded initial model:

- ``fedavg``: synchronous FedAvg, every online terminal, no deadline (waits for the slowest);
- ``fedcs``: FedCS selection with ``clock.round_deadline_s`` = ``--deadline`` (seconds);
- ``adaptive``: per-terminal local epochs (up to ``--max-epochs``) with FedNova averaging;
- ``fedbuff``: ``--concurrency`` in flight, K = ``--buffer``, staleness exponent 0.5;
- ``fedasync``: ``--concurrency`` in flight, mixing alpha 0.6, staleness exponent 0.5;
- ``gossip``: D-PSGD on a ring of all terminals, as many steps as make FedAvg's number of local
  trainings (equal total local steps).

Asynchronous methods get as many aggregations as make FedAvg's number of updates (FedBuff: /K).
Runs are in-process (the real ClientApp, one message after the other, no Ray: the simulated clock
does not depend on the engine). Writes ``<out>/curves.csv`` (method, round, sim_s, energy_j,
accuracy) and ``<out>/accuracy.png`` (accuracy vs simulated time and vs energy), and prints one
line per method::

    method=<name> time_to_target_s=<t> final_acc=<x> energy_j=<e>

``time_to_target_s`` is the simulated time of the first evaluation at or above ``--target``
(``inf`` if never); ``energy_j`` is the energy (terminals + server) spent until then (or in all,
if never).

Run::

    python experiments/orchestration.py [--rounds 30] [--target 0.85] [--out experiments/results/orchestration]
"""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path


from fedsplit.clients.app import make_client_app
from fedsplit.config import load_config
from fedsplit.learning import config_to_json
from fedsplit.simulation.engine import EngineGrid, SerialEngine
from fedsplit.simulation.server_app import RunSession, run_server
from fedsplit.output_paths import output_folder

POPULATION = "{laptop = 4, jetson-nano = 4, raspberry-pi-4 = 4, smartphone-mid = 4, smartphone-low = 4}"
METHODS = ("fedavg", "fedcs", "adaptive", "fedbuff", "fedasync", "gossip")


def method_overrides(method: str, args: argparse.Namespace, updates: int) -> list[str]:
    """``--set`` overrides of ``method`` (``updates``: FedAvg's number of local trainings)."""
    n = 20
    if method == "fedavg":
        return [f"rounds={args.rounds}"]
    if method == "fedcs":
        return [f"rounds={args.rounds}", "strategy.selection=fedcs", f"clock.round_deadline_s={args.deadline}"]
    if method == "adaptive":
        return [f"rounds={args.rounds}", "strategy.local_work=adaptive", f"strategy.max_local_epochs={args.max_epochs}"]
    if method == "fedbuff":
        return [f"rounds={max(1, updates // args.buffer)}", "training.mode=fedbuff", f"orchestration.concurrency={args.concurrency}", f"orchestration.buffer_size={args.buffer}", f"training.eval_every={max(1, args.eval_every)}"]
    if method == "fedasync":
        return [f"rounds={max(1, updates)}", "training.mode=fedasync", f"orchestration.concurrency={args.concurrency}", f"training.eval_every={max(1, args.buffer)}"]
    if method == "gossip":
        return [f"rounds={max(1, round(updates / n))}", "training.mode=gossip", "orchestration.graph=ring", "orchestration.gossip=dpsgd"]
    raise ValueError(f"method {method!r}: unknown (known: {', '.join(METHODS)})")


def run_method(method: str, args: argparse.Namespace, updates: int) -> list[dict]:
    """Run one method; rows of (round, cumulative sim_s, cumulative energy_j, accuracy, updates)."""
    base = [
        f"devices={POPULATION}", "data.name=digits", "data.partitioner=dirichlet", "data.alpha=0.5", "model.name=mlp",
        f"train.local_epochs={args.local_epochs}", f"seed={args.seed}", "progress=false", "strategy.min_train_nodes=2",
        "training.max_empty_rounds=0",
    ]
    cfg = load_config(None, base + method_overrides(method, args, updates))
    session = RunSession.from_config(cfg)
    engine = SerialEngine(make_client_app(config_json=config_to_json(cfg)), session.population)
    run_server(EngineGrid(engine), session)
    rows, sim, energy, done = [], 0.0, 0.0, 0
    for r in sorted(session.ledger.rounds):
        rec = session.ledger.rounds[r]
        sim += rec.sim_s
        energy += rec.energy_j + rec.server_energy_j
        done += rec.aggregated
        if "accuracy" in rec.metrics:
            rows.append({"method": method, "round": r, "sim_s": sim, "energy_j": energy, "accuracy": rec.metrics["accuracy"], "trainings": done})
    return rows


def summary(rows: list[dict], target: float) -> tuple[float, float, float]:
    """(time to target s, final accuracy, energy J until the target, or in all)."""
    hit = next((r for r in rows if r["accuracy"] >= target), None)
    final = rows[-1]
    return (hit["sim_s"] if hit else math.inf), final["accuracy"], (hit or final)["energy_j"]


def plot(curves: dict[str, list[dict]], path: Path, target: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for method, rows in curves.items():
        axes[0].plot([r["sim_s"] for r in rows], [r["accuracy"] for r in rows], label=method)
        axes[1].plot([r["energy_j"] for r in rows], [r["accuracy"] for r in rows], label=method)
    for ax, xlabel in zip(axes, ("simulated time (s)", "energy, terminals + server (J)")):
        ax.axhline(target, color="grey", lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test accuracy")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle("digits, Dirichlet 0.5, 5 device classes (slowest/fastest > 10x)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30, help="FedAvg / FedCS / adaptive rounds")
    parser.add_argument("--local-epochs", type=int, default=2)
    parser.add_argument("--target", type=float, default=0.85, help="target test accuracy")
    parser.add_argument("--deadline", type=float, default=0.12, help="FedCS round deadline (simulated s)")
    parser.add_argument("--max-epochs", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--buffer", type=int, default=5)
    parser.add_argument("--eval-every", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--out", type=lambda text: Path(output_folder(text)), default=Path("experiments/results/orchestration"))
    args = parser.parse_args(argv)
    for item in args.methods.split(","):  # an unknown name: one line, before any run
        if item.strip() and item.strip() not in METHODS:
            parser.error(f"argument --methods: {item.strip()!r} is not known; allowed: {', '.join(METHODS)}")
    import torch

    torch.set_num_threads(1)  # tiny models: one thread each beats a contended thread pool
    args.out.mkdir(parents=True, exist_ok=True)
    curves: dict[str, list[dict]] = {}
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    curves["fedavg"] = run_method("fedavg", args, 0)
    updates = curves["fedavg"][-1]["trainings"]
    for method in methods:
        if method != "fedavg":
            curves[method] = run_method(method, args, updates)
    with open(args.out / "curves.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["method", "round", "sim_s", "energy_j", "accuracy", "trainings"])
        writer.writeheader()
        for rows in curves.values():
            writer.writerows(rows)
    plot(curves, args.out / "accuracy.png", args.target)
    print(f"# target accuracy {args.target}; FedAvg's local trainings: {updates}")
    for method, rows in curves.items():
        t, acc, energy = summary(rows, args.target)
        print(f"method={method} time_to_target_s={t:.4g} final_acc={acc:.4f} energy_j={energy:.4g} trainings={rows[-1]['trainings']}")


if __name__ == "__main__":
    from fedsplit.process_exit import exit_now

    exit_now(main())  # skips the interpreter teardown, where Ray's destructors can hang
