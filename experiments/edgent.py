"""Edgent (issue #15): replay a bandwidth trace under Edgent-dynamic, Edgent-static, device-only, edge-only.

Steps: train the default multi-exit model (``multiexit-cnn``, width 0.5) jointly on digits resized
to 32x32 and measure every exit's held-out accuracy; profile layer latencies on this machine, fit
the per-kind regressions and report their MdAPE on held-out layer shapes (both sets timed
together, interleaved: :func:`fedsplit.inference.edgent.latency.time_calls`); predict every (exit,
partition) configuration's latency for the ``iot-camera`` terminal and the ``edge-server``; learn
bandwidth states offline on one generated trace (PELT change points) and replay another, one request
per second, under the four policies.

Run:  python experiments/edgent.py [--smoke] [--out DIR]
Prints ``policy=<name> miss_rate=<x> mean_acc=<y>`` per policy and ``check ...`` lines; writes
``replay.csv``, ``policies.csv``, ``calibration.json`` (for ``fedsplit edgent --calibration``) and
``edgent.png`` (bandwidth trace with the chosen exit/partition over time).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from fedsplit.data import load_dataset
from fedsplit.inference.edgent.configs import build_config_table
from fedsplit.inference.edgent.devices import DEFAULT_DEVICE, DEFAULT_EDGE, get_profile
from fedsplit.inference.edgent.latency import LatencyModel, held_out_mdape, profile_layer_sets, random_layer_calls
from fedsplit.inference.edgent.optimizer import plan
from fedsplit.inference.edgent.replay import POLICIES, replay
from fedsplit.inference.edgent.states import fit_states
from fedsplit.inference.edgent.traces import generate_trace
from fedsplit.inference.experiment_io import Checks, plt, print_row, write_csv
from fedsplit.models.multiexit import build_multiexit, evaluate_exits, train_multiexit
from fedsplit.report import shown_path
from fedsplit.output_paths import output_folder

WIDTH = 0.5
REQUIREMENT_S = 0.100


def train_model(epochs: int):
    bundle = load_dataset("digits", resolution=32, seed=0)
    model = build_multiexit("multiexit-cnn", bundle.input_shape, bundle.num_classes, width=WIDTH, seed=0)
    torch.manual_seed(0)
    train_multiexit(model, bundle.train.x, bundle.train.y, epochs=epochs, batch_size=16, lr=0.03, seed=0)
    return model, evaluate_exits(model, bundle.test.x, bundle.test.y), bundle


def plot(trace, results, table, path: Path) -> None:
    pyplot = plt()
    fig, axes = pyplot.subplots(3, 1, figsize=(12, 8), sharex=True)
    t = trace.times_s
    axes[0].plot(t, trace.bps / 1e6, lw=0.8, color="k")
    axes[0].set_yscale("log")
    axes[0].set_ylabel("uplink [Mbit/s]")
    for name in ("edgent-dynamic", "edgent-static"):
        idx = results[name].index
        axes[1].step(t, table.exit[idx], where="post", label=name)
        axes[2].step(t, table.partition[idx] / table.blocks_on_path[idx], where="post", label=name)
    axes[1].set_ylabel("exit")
    axes[2].set_ylabel("share of path on device\n(0 edge-only, 1 device-only)")
    axes[2].set_xlabel("time [s]")
    for ax in axes[1:]:
        ax.legend(fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(f"Edgent replay: requirement {REQUIREMENT_S * 1e3:.0f} ms, {table.device} + {table.edge}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    pyplot.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="1 training epoch, short traces")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--out", type=lambda text: Path(output_folder(text)), default=Path(__file__).parent / "results" / "edgent")
    args = parser.parse_args(argv)
    start = time.time()
    model, accuracies, bundle = train_model(1 if args.smoke else args.epochs)
    print_row({"stage": "train", **{f"acc_exit{i}": a for i, a in enumerate(accuracies)}, "wall_s": time.time() - start})

    # Training and held-out shapes are timed together, in interleaved rounds, so that a change of load
    # on a shared machine during the profile cannot fall on one set and not the other.
    profile_start = time.time()
    train_t, held_t = profile_layer_sets(random_layer_calls(24, seed=0), random_layer_calls(12, seed=1))
    profile_s = time.time() - profile_start
    latency = LatencyModel.fit(train_t)
    errors = held_out_mdape(latency, held_t)
    print_row({"stage": "latency", **{f"mdape_{k}_pct": v for k, v in errors.items()},
               "held_out_layers": len(held_t), "host_flops_per_s": latency.host_flops_per_s, "profile_s": profile_s})

    device, edge = get_profile(DEFAULT_DEVICE), get_profile(DEFAULT_EDGE)
    table = build_config_table(model, latency, device, edge, accuracies)
    steps = 200 if args.smoke else 600
    train_trace, test_trace = generate_trace(steps, seed=1), generate_trace(steps, seed=2)
    states = fit_states(train_trace.bps)
    planning_bps = float(np.median(train_trace.bps))
    print_row({"stage": "states", "states": len(states),
               "planning_mbps": " ".join(f"{b / 1e6:.3g}" for b in states.planning_bps),
               "static_planning_mbps": planning_bps / 1e6})

    results = {p: replay(p, table, test_trace, REQUIREMENT_S, states, planning_bps) for p in POLICIES}
    rows = []
    for name, r in results.items():
        print(f"policy={name} miss_rate={r.miss_rate:.4f} mean_acc={r.mean_accuracy:.4f}", flush=True)
        rows.append({"policy": name, "miss_rate": r.miss_rate, "mean_acc": r.mean_accuracy,
                     "configs_used": len(set(r.index.tolist()))})
    lagged = replay("edgent-dynamic", table, test_trace, REQUIREMENT_S, states, planning_bps, lag=1)
    print(f"sensitivity policy=edgent-dynamic lag=1 miss_rate={lagged.miss_rate:.4f} "
          f"mean_acc={lagged.mean_accuracy:.4f}", flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, args.out / "policies.csv")
    write_csv([{"t_s": float(t), "bandwidth_bps": float(b), **{f"{p}_exit": int(table.exit[results[p].index[i]])
               for p in POLICIES}, **{f"{p}_partition": int(table.partition[results[p].index[i]]) for p in POLICIES},
               **{f"{p}_latency_s": float(results[p].latency_s[i]) for p in POLICIES}}
               for i, (t, b) in enumerate(zip(test_trace.times_s, test_trace.bps))], args.out / "replay.csv")
    calibration = {"latency_model": latency.to_dict(), "accuracies": accuracies, "model": "multiexit-cnn", "width": WIDTH,
                   "input_shape": list(bundle.input_shape), "num_classes": bundle.num_classes,
                   "device": device.name, "edge": edge.name, "mdape_held_out_pct": errors}
    (args.out / "calibration.json").write_text(json.dumps(calibration, indent=2) + "\n", encoding="utf-8")
    plot(test_trace, results, table, args.out / "edgent.png")

    checks = Checks()
    dyn = results["edgent-dynamic"]
    lowest = min(r.miss_rate for r in results.values())
    checks.check("edgent-dynamic has the lowest miss rate", dyn.miss_rate <= lowest,
                 f"{dyn.miss_rate:.4f} vs " + ", ".join(f"{k} {r.miss_rate:.4f}" for k, r in results.items()))
    checks.check("edgent-dynamic mean accuracy >= device-only", dyn.mean_accuracy >= results["device-only"].mean_accuracy,
                 f"{dyn.mean_accuracy:.4f} vs {results['device-only'].mean_accuracy:.4f}")
    low = test_trace.bps < np.quantile(test_trace.bps, 0.25)
    edge_low = float(results["edge-only"].missed[low].mean())
    checks.check("edge-only misses deadlines at low bandwidth", edge_low > 0,
                 f"miss rate {edge_low:.3f} on the lowest-bandwidth quarter of steps (< "
                 f"{np.quantile(test_trace.bps, 0.25) / 1e6:.3g} Mbit/s), {float(results['edge-only'].missed[~low].mean()):.3f} elsewhere")
    checks.check("layer-latency MdAPE <= 15 % on held-out shapes", errors["all"] <= 15.0, f"{errors['all']:.2f} %")
    example = plan(table, REQUIREMENT_S, 5e6)
    print_row({"stage": "example_plan", "bandwidth_mbps": 5, **{k: v for k, v in example.to_dict().items()
               if k in ("feasible", "exit", "partition", "cut", "latency_s", "accuracy")}})
    print(f"wrote {shown_path(args.out / 'policies.csv')}, {shown_path(args.out / 'replay.csv')}, "
          f"{shown_path(args.out / 'edgent.png')}, {shown_path(args.out / 'calibration.json')} "
          f"in {time.time() - start:.0f} s", flush=True)
    return 0 if checks.all_passed else 1


if __name__ == "__main__":
    sys.exit(main())
