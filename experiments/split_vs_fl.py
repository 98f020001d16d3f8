"""Split learning against federated averaging: accuracy, bytes, simulated time, terminal FLOPs.

FedAvg (``training.mode = fl``), vanilla split learning, U-shaped split learning, SplitFed v1 and
SplitFed v2 train the FedAvg CNN on scikit-learn's digits (native 8x8, IID split over the
terminals, 360 images for the server's test set) with the same federation: 10 always-online
terminals (4 Raspberry Pi 4, 3 mid-range phones, 2 Jetson Nanos, 1 laptop, availability forced to
1), the same seed, initial weights, SGD (lr 0.05, momentum 0.9, batch 32) and the same epochs of
data for every method (``--rounds`` rounds x 1 local epoch: every terminal goes through its data
once per round, in the same seeded batch order). The cut is after the first conv block
(``features.2``: conv 5x5, ReLU, max-pool); U-shape keeps the classifier's last layer on the
terminal too (``features.2,classifier.2``). SplitFed v1 also runs with Gaussian noise on the sent
activations (``split.noise_std``, ``NOISE_STDS``) to show the accuracy cost of that privacy knob.

Per method it prints::

    method=<name> final_acc=<x> bytes=<n> sim_time_s=<t> client_flops=<f> client_flops_share=<x> step_client_share=<x> ...

``bytes`` is every train message of the run, both directions (whole Flower messages as metered by
the grid); ``sim_time_s`` the run's simulated time on the device profiles' clock (the edge server's
work included); ``client_flops`` the sum of ``flops`` over the ledger's train rows, i.e. what the
terminals computed (for split methods it includes the recomputed forward of the terminal part);
``client_flops_share`` that sum over FedAvg's; ``step_client_share`` the terminal part(s)' share of
one training step of a batch of 32 from :func:`fedsplit.split.profile_split` (forward + backward,
client / (client + server), no recompute). Then the issue's acceptance checks as
``check <name>: PASS|FAIL (numbers)``.

All runs share one Ray instance and one set of client actors (the compression sweep's
:class:`SharedEngine`): starting the actors costs as much as a run.

Run:  python experiments/split_vs_fl.py [--smoke] [--rounds 10] [--terminals 10] [--out DIR]
Writes ``curves.csv`` (per round), ``summary.csv`` (per method) and ``split_vs_fl.png``; exit status 1
when a check fails. ``--smoke`` (seconds: 1 round, 4 terminals, fedavg, splitfed-v1 and sl-vanilla,
unless given) prints the accuracy gaps of the sequential split modes and the simulated-time ratio
as ``SKIP``: one round of 4 terminals cannot show them. SplitFed v1 matching FedAvg and the
terminal's FLOP share hold at any size and still count.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")

from fedsplit.cli_types import positive_int  # noqa: E402
from fedsplit.config import RunConfig, load_config  # noqa: E402
from fedsplit.inference.experiment_io import Checks, plt, write_csv  # noqa: E402
from fedsplit.report import shown_path  # noqa: E402
from fedsplit.output_paths import output_folder  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compression_sweep import SharedEngine, ray_session  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "split_vs_fl"
CUT = "features.2"
USHAPE_CUT = "features.2,classifier.2"
#: method label -> (training.mode, split.noise_std)
METHODS: dict[str, tuple[str, float]] = {
    "fedavg": ("fl", 0.0),
    "sl-vanilla": ("sl-vanilla", 0.0),
    "sl-ushape": ("sl-ushape", 0.0),
    "splitfed-v1": ("splitfed-v1", 0.0),
    "splitfed-v2": ("splitfed-v2", 0.0),
}
NOISE_STDS = (0.1, 0.5)
for _std in NOISE_STDS:
    METHODS[f"splitfed-v1-noise{_std:g}"] = ("splitfed-v1", _std)
SPLIT_METHODS = ("sl-vanilla", "sl-ushape", "splitfed-v1", "splitfed-v2")
PROFILES = ("raspberry-pi-4", "smartphone-mid", "jetson-nano", "laptop")
#: acceptance bars of the issue
MAX_ACC_GAP_PP = 2.0
MAX_V1_OVER_SL = 1 / 3
MAX_CLIENT_SHARE = 0.10


def population(terminals: int) -> dict[str, int]:
    """The 4:3:2:1 mix of the issue, scaled to ``terminals`` (10 -> 4, 3, 2, 1)."""
    weights = [4, 3, 2, 1]
    counts = [max(terminals * w // 10, 0) for w in weights]
    i = 0
    while sum(counts) < terminals:
        counts[i % 4] += 1
        i += 1
    return {name: n for name, n in zip(PROFILES, counts) if n > 0}


@dataclass(frozen=True)
class Settings:
    rounds: int = 10
    local_epochs: int = 1
    terminals: int = 10
    lr: float = 0.05
    momentum: float = 0.9
    batch_size: int = 32
    seed: int = 0

    def overrides(self, mode: str, noise_std: float, out_dir: Path) -> list[str]:
        devices = ", ".join(f"{k}={v}" for k, v in population(self.terminals).items())
        profiles = ", ".join(f"{n}={{base='{n}', availability=1.0}}" for n in PROFILES)
        return [
            f"seed={self.seed}",
            f"rounds={self.rounds}",
            "model.name=fedavg-cnn",
            "data.name=digits",
            "data.partitioner=iid",
            f"devices={{{devices}}}",
            f"profiles={{{profiles}}}",
            f"training.mode={mode}",
            f"split.cut={USHAPE_CUT if mode == 'sl-ushape' else CUT}",
            f"split.noise_std={noise_std}",
            "strategy.name=fedavg",
            "strategy.fraction_train=1.0",
            f"train.local_epochs={self.local_epochs}",
            f"train.lr={self.lr}",
            f"train.momentum={self.momentum}",
            f"train.batch_size={self.batch_size}",
            "engine.name=fedsplit",
            "progress=false",
            f"out_dir={out_dir}",
        ]


@dataclass
class MethodRun:
    method: str
    mode: str
    noise_std: float
    accuracy: list[float]
    bytes_round: list[int]
    sim_round: list[float]
    client_flops: int
    bytes_total: int
    sim_time_s: float
    wall_s: float
    rejected: int

    @property
    def final_acc(self) -> float:
        return self.accuracy[-1]


def measure(method: str, mode: str, noise_std: float, outcome) -> MethodRun:  # noqa: ANN001
    ledger = outcome.session.ledger
    rounds = sorted(ledger.rounds)
    train = [r for r in ledger.rows if r.phase == "train"]
    return MethodRun(
        method=method,
        mode=mode,
        noise_std=noise_std,
        accuracy=[float(ledger.rounds[r].metrics["accuracy"]) for r in rounds],
        bytes_round=[ledger.rounds[r].bytes_up + ledger.rounds[r].bytes_down for r in rounds],
        sim_round=[float(ledger.rounds[r].sim_s) for r in rounds],
        client_flops=int(sum(r.flops for r in train)),
        bytes_total=int(sum(r.bytes_up + r.bytes_down for r in train)),
        sim_time_s=float(outcome.summary["sim_time_s"]),
        wall_s=float(outcome.summary["wall_time_s"]),
        rejected=int(outcome.summary["rejected"]),
    )


def step_client_share(cfg: RunConfig, mode: str) -> float:
    """Terminal part(s)' share of one training step's FLOPs (profile, batch of ``batch_size``)."""
    from fedsplit.split import parse_cut
    from fedsplit.learning import config_to_json, task_for
    from fedsplit.split import profile_split

    if mode == "fl":
        return 1.0
    task = task_for(config_to_json(cfg))
    shape = tuple(task.data.partition(0)[0].x.shape[1:])
    profile = profile_split(task.model, parse_cut(USHAPE_CUT if mode == "sl-ushape" else CUT), shape, cfg.train.batch_size)
    client = sum(p.forward_flops + p.backward_flops for p in profile.parts if p.role.startswith("client"))
    total = sum(p.forward_flops + p.backward_flops for p in profile.parts)
    return client / total


def plot(runs: list[MethodRun], path: Path) -> None:
    from fedsplit.report.plots import round_axis

    pyplot = plt()
    fig, axes = pyplot.subplots(1, 4, figsize=(18, 4.2))
    for run in runs:
        style = "--" if run.noise_std else "-"
        axes[0].plot(range(1, len(run.accuracy) + 1), run.accuracy, style, marker="o", ms=3, label=run.method)
    round_axis(axes[0])
    axes[0].set_xlabel("round (1 epoch of data each)")
    axes[0].set_ylabel("server test accuracy")
    axes[0].set_title("accuracy")
    axes[0].legend(fontsize=7)
    names = [r.method for r in runs]
    for ax, values, title in (
        (axes[1], [r.bytes_total / 1e6 for r in runs], "total bytes (MB, up + down)"),
        (axes[2], [r.sim_time_s for r in runs], "simulated time (s)"),
        (axes[3], [r.client_flops / 1e9 for r in runs], "terminal FLOPs (GFLOP, ledger)"),
    ):
        ax.bar(range(len(runs)), values, color=[f"C{i}" for i in range(len(runs))])
        ax.set_xticks(range(len(runs)))
        ax.set_xticklabels(names, rotation=45, ha="right", fontsize=7)
        ax.set_title(title)
        ax.set_yscale("log")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    pyplot.close(fig)


def check_acceptance(runs: dict[str, MethodRun], shares: dict[str, float], smoke: bool = False) -> Checks:
    """The issue's acceptance checks; in a smoke run those only a full-size run shows are SKIP."""
    checks = Checks(smoke=smoke)
    fl = runs["fedavg"]
    rounds = len(fl.accuracy)
    for method in SPLIT_METHODS:
        if method not in runs:
            continue
        gap = (fl.final_acc - runs[method].final_acc) * 100
        checks.check(
            f"{method} within {MAX_ACC_GAP_PP:g} pp of fedavg",
            gap <= MAX_ACC_GAP_PP,
            f"final_acc={runs[method].final_acc:.4f} fedavg={fl.final_acc:.4f} gap_pp={gap:.2f}",
            # SplitFed v1 averages whole models: FedAvg's accuracy at any size
            full_size=None if method == "splitfed-v1" else f"{rounds} round(s): accuracies far from converged",
        )
    if "splitfed-v1" in runs and "sl-vanilla" in runs:
        ratio = runs["splitfed-v1"].sim_time_s / runs["sl-vanilla"].sim_time_s
        checks.check(
            "splitfed-v1 sim_time <= 1/3 of sl-vanilla",
            ratio <= MAX_V1_OVER_SL,
            f"splitfed-v1={runs['splitfed-v1'].sim_time_s:.3f}s sl-vanilla={runs['sl-vanilla'].sim_time_s:.3f}s ratio={ratio:.3f}",
            full_size="the parallel speed-up needs the full run's terminals",
        )
    if "splitfed-v1" in runs:
        measured = runs["splitfed-v1"].client_flops / fl.client_flops
        checks.check(
            f"client FLOPs at cut {CUT} < {MAX_CLIENT_SHARE:.0%} of the full model",
            measured < MAX_CLIENT_SHARE,
            f"ledger splitfed-v1={runs['splitfed-v1'].client_flops} fedavg={fl.client_flops} share={measured:.4f}; "
            f"profile step share={shares['splitfed-v1']:.4f}",
        )
    return checks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true",
                        help="seconds: 1 round, 4 terminals, fedavg,splitfed-v1,sl-vanilla, unless given")
    parser.add_argument("--rounds", type=positive_int, default=None, help=f"default {Settings.rounds}")
    parser.add_argument("--terminals", type=positive_int, default=None, help=f"default {Settings.terminals}")
    parser.add_argument("--methods", default=None, help="comma-separated labels of METHODS (default all)")
    parser.add_argument("--out", type=lambda text: Path(output_folder(text)), default=RESULTS)
    args = parser.parse_args(argv)
    # --smoke only fills in what was not given
    args.rounds = args.rounds or (1 if args.smoke else Settings.rounds)
    args.terminals = args.terminals or (4 if args.smoke else Settings.terminals)
    args.methods = args.methods or ("fedavg,splitfed-v1,sl-vanilla" if args.smoke else ",".join(METHODS))
    for item in args.methods.split(","):  # an unknown name: one line, before any run
        if item.strip() and item.strip() not in METHODS:
            parser.error(f"argument --methods: {item.strip()!r} is not known; allowed: {', '.join(METHODS)}")
    settings = Settings(rounds=args.rounds, terminals=args.terminals)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if "fedavg" not in methods:
        methods.insert(0, "fedavg")
    start = time.perf_counter()
    runs: dict[str, MethodRun] = {}
    shares: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="split-vs-fl-") as tmp:
        work = Path(tmp)
        cfgs = {m: load_config(None, settings.overrides(*METHODS[m], work)) for m in methods}
        with ray_session(os.cpu_count() or 1), SharedEngine(cfgs["fedavg"], work / "clients") as engine:
            for method in methods:
                mode, std = METHODS[method]
                cfg = cfgs[method]
                runs[method] = run = measure(method, mode, std, engine.simulate(cfg))
                shares[method] = step_client_share(cfg, mode)
                print(
                    f"method={method} final_acc={run.final_acc:.4f} bytes={run.bytes_total} sim_time_s={run.sim_time_s:.3f} "
                    f"client_flops={run.client_flops} client_flops_share={run.client_flops / runs['fedavg'].client_flops:.4f} "
                    f"step_client_share={shares[method]:.4f} noise_std={std:g} rejected={run.rejected} wall_s={run.wall_s:.1f}",
                    flush=True,
                )
    fl = runs["fedavg"]
    curve_rows = [
        {"method": r.method, "round": i + 1, "accuracy": acc, "bytes": r.bytes_round[i], "sim_s": r.sim_round[i]}
        for r in runs.values()
        for i, acc in enumerate(r.accuracy)
    ]
    summary_rows = [
        {
            "method": r.method,
            "mode": r.mode,
            "noise_std": r.noise_std,
            "final_acc": r.final_acc,
            "delta_acc_pp": (r.final_acc - fl.final_acc) * 100,
            "bytes": r.bytes_total,
            "sim_time_s": r.sim_time_s,
            "client_flops": r.client_flops,
            "client_flops_share": r.client_flops / fl.client_flops,
            "step_client_share": shares[r.method],
            "rejected": r.rejected,
            "wall_s": r.wall_s,
        }
        for r in runs.values()
    ]
    write_csv(curve_rows, args.out / "curves.csv")
    write_csv(summary_rows, args.out / "summary.csv")
    plot(list(runs.values()), args.out / "split_vs_fl.png")
    checks = check_acceptance(runs, shares, smoke=args.smoke)
    written = [shown_path(args.out / n) for n in ("curves.csv", "summary.csv", "split_vs_fl.png")]
    print(f"wrote {' '.join(written)} in {time.perf_counter() - start:.0f} s", flush=True)
    return 0 if checks.all_passed else 1


if __name__ == "__main__":
    from fedsplit.process_exit import exit_now

    exit_now(main())  # skips the interpreter teardown, where Ray's destructors can hang
