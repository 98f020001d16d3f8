"""Transfer learning and distillation on a target task the backbone never saw (issue #12 item 8).

Source task: digits 0-4 (``data.classes = "0-4"``), trained centrally (``fedsplit pretrain``).
Target task: digits 5-9 (relabelled 0-4), trained federatedly on emulated terminals with the same
rounds and local work for every method:

- ``scratch``           the large model from random init, every tensor travels;
- ``finetune``          the large model from the source checkpoint, backbone frozen
                        (``transfer.trainable``, default: the BatchNorm layers, the stem, the
                        first stage and the head; the two deeper stages, 72 % of the weights,
                        stay as pretrained), only the trainable tensors (and, with
                        ``--batchnorm global``, the BatchNorm statistics) travel;
- ``student-scratch``   a small model from random init;
- ``student-distilled`` the same small model, first distilled on the server from a teacher (the
                        ``scratch`` run's final model) on an unlabeled public set (the source
                        task's images, no labels), then trained federatedly with the teacher's
                        soft labels in every terminal's loss (``transfer.teacher``; the teacher's
                        inference FLOPs count in the terminals' FLOPs).

Runs use the in-process engine (real ClientApp and Flower messages, no Ray), so the numbers do not
depend on the machine's load. Prints one line per method::

    method=<name> final_acc=<x> uplink_bytes=<n> client_flops=<f>

then writes ``transfer.csv`` (per round), ``transfer_summary.csv`` and ``transfer.png`` (accuracy
vs round and vs uplink bytes) under ``--out`` and prints the acceptance checks as
``check <claim>: PASS|FAIL (numbers)``; exit status 1 when one fails. Under ``--smoke`` (1 round,
width-0.25 models) every check is ``SKIP``: the accuracies are one round's, and the uplink ratio of
a model that small is set by the framing of its ~50 small tensors, not by the frozen weights.

    .venv/bin/python experiments/transfer.py                 # the full experiment (minutes)
    .venv/bin/python experiments/transfer.py --smoke --out /tmp/t   # seconds: what CI runs
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from fedsplit.clients.app import make_client_app  # noqa: E402
from fedsplit.inference.experiment_io import Checks  # noqa: E402
from fedsplit.config import load_config  # noqa: E402
from fedsplit.learning import config_to_json  # noqa: E402
from fedsplit.learning import task as task_module  # noqa: E402
from fedsplit.simulation.engine import EngineGrid, SerialEngine  # noqa: E402
from fedsplit.simulation.server_app import RunSession, run_server  # noqa: E402
from fedsplit.models.checkpoint import model_meta, save_checkpoint  # noqa: E402
from fedsplit.transfer.pretrain import distill_student, pretrain  # noqa: E402
from fedsplit.cli_types import positive_int  # noqa: E402
from fedsplit.output_paths import output_folder  # noqa: E402

METHODS = ("scratch", "finetune", "student-scratch", "student-distilled")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=output_folder, default=str(REPO / "experiments" / "results" / "transfer"), help="output folder")
    p.add_argument("--smoke", action="store_true", help="a seconds-long version (tiny models, 1 round, 2 terminals)")
    p.add_argument("--rounds", type=positive_int, default=None, help="default 5; --smoke 1")
    p.add_argument("--local-epochs", type=positive_int, default=None, help="default 2; --smoke 1")
    p.add_argument("--terminals", type=positive_int, default=None, help="default 4; --smoke 2")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default="cnn", help="the large model (model.name)")
    p.add_argument("--width", type=float, default=None, help="its model.width (default 1; --smoke 0.25)")
    p.add_argument(
        "--trainable", default="batchnorm,stem,stages.0,head",
        help="transfer.trainable of the fine-tuned model (default: every BatchNorm layer, the stem, the first stage and the head: 7%% of the CNN)",
    )
    p.add_argument("--batchnorm", default="global", choices=("frozen", "local", "global"), help="transfer.batchnorm")
    p.add_argument("--lr", type=float, default=0.05, help="train.lr of every federated run")
    p.add_argument("--finetune-lr", type=float, default=0.2, help="train.lr of the fine-tuned run (a fresh head on a pretrained body)")
    p.add_argument("--pretrain-epochs", type=positive_int, default=None, help="default 20; --smoke 1")
    p.add_argument("--student", default="mlp", help="the small model (model.name)")
    p.add_argument("--student-hidden", type=int, default=16, help="its model.hidden (mlp)")
    p.add_argument("--student-width", type=float, default=0.25, help="its model.width (cnn, mobilenet)")
    p.add_argument("--distill-epochs", type=positive_int, default=None, help="server-side distillation epochs (default 20; --smoke 1)")
    p.add_argument("--temperature", type=float, default=4.0)
    p.add_argument("--alpha", type=float, default=0.5)
    args = p.parse_args(argv)
    # --smoke fills in only what was not given
    defaults = {"rounds": (5, 1), "local_epochs": (2, 1), "terminals": (4, 2), "width": (1.0, 0.25),
                "pretrain_epochs": (20, 1), "distill_epochs": (20, 1)}
    for name, (full, smoke) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, smoke if args.smoke else full)
    return args


def base_overrides(args: argparse.Namespace) -> list[str]:
    """What every run shares: the population (always online, so methods see the same terminals)."""
    return [
        "profiles={pi={base='raspberry-pi-4', availability=1.0}}", f"devices={{pi={args.terminals}}}",
        f"seed={args.seed}", "progress=false", f"train.local_epochs={args.local_epochs}", f"train.lr={args.lr}",
        "training.max_empty_rounds=0",
    ]


def large(args: argparse.Namespace) -> list[str]:
    return [f"model.name={args.model}", f"model.width={args.width}"]


def small(args: argparse.Namespace) -> list[str]:
    return [f"model.name={args.student}", f"model.hidden={args.student_hidden}", f"model.width={args.student_width}"]


def federated(args: argparse.Namespace, method: str, extra: list[str]) -> tuple[list[dict], RunSession]:
    """One federated run on the target task; per-round rows (accuracy, cumulative bytes and FLOPs)."""
    cfg = load_config(None, base_overrides(args) + [f"rounds={args.rounds}", "data.classes='5-9'", *extra])
    session = RunSession.from_config(cfg)
    text = config_to_json(cfg)
    try:
        run_server(EngineGrid(SerialEngine(make_client_app(config_json=text), session.population)), session)
    finally:
        task_module._TASKS.pop(text, None)
    rows, up, flops = [], 0, 0
    for r in sorted(session.ledger.rounds):
        train = [row for row in session.ledger.rows_of(r) if row.phase == "train"]
        up += sum(row.bytes_up for row in train)
        flops += sum(row.flops for row in train)
        rows.append({"method": method, "round": r, "accuracy": session.ledger.rounds[r].metrics.get("accuracy", float("nan")), "uplink_bytes": up, "client_flops": flops})
    return rows, session


def run(args: argparse.Namespace) -> dict[str, list[dict]]:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    source_cfg = load_config(None, base_overrides(args) + large(args) + ["data.classes='0-4'"])
    source = pretrain(source_cfg, out / "source.pt", epochs=args.pretrain_epochs)
    print(f"pretrain dataset=digits classes=0-4 model={args.model} test_acc={source.meta['test_accuracy']:.4f} train_flops={source.meta['train_flops']}")
    curves: dict[str, list[dict]] = {}
    curves["scratch"], scratch = federated(args, "scratch", large(args))
    finetune = large(args) + [f"model.pretrained='{source.path}'", f"transfer.trainable='{args.trainable}'", f"transfer.batchnorm={args.batchnorm}"]
    finetune.append(f"train.lr={args.finetune_lr}")
    curves["finetune"], _ = federated(args, "finetune", finetune)
    # the teacher: the large model the federation trained from scratch, as a checkpoint
    task = scratch.cfg
    teacher_meta = {
        **model_meta(args.model, (1, 8, 8), 5, hidden=task.model.hidden, width=args.width),
        "dataset": "digits", "classes": [5, 6, 7, 8, 9], "made_by": "federated (scratch)",
    }
    teacher = save_checkpoint(out / "teacher.pt", scratch.final_state, teacher_meta)
    curves["student-scratch"], _ = federated(args, "student-scratch", small(args))
    public_cfg = load_config(None, base_overrides(args) + small(args) + ["data.classes='0-4'"])  # unlabeled source images
    student = distill_student(public_cfg, teacher, out / "student.pt", epochs=args.distill_epochs, temperature=args.temperature)
    print(f"distill public=digits 0-4 (unlabeled) student={args.student} samples={student.meta['public_samples']} train_flops={student.meta['train_flops']}")
    curves["student-distilled"], _ = federated(
        args, "student-distilled",
        small(args) + [f"model.pretrained='{student.path}'", f"transfer.teacher='{teacher}'",
                       f"transfer.temperature={args.temperature}", f"transfer.alpha={args.alpha}"],
    )
    return curves


def report(curves: dict[str, list[dict]], out: Path) -> list[str]:
    """Write the CSVs and the plot; the per-method lines to print."""
    lines = []
    final = {m: rows[-1] for m, rows in curves.items()}
    for m in METHODS:
        f = final[m]
        lines.append(f"method={m} final_acc={f['accuracy']:.4f} uplink_bytes={f['uplink_bytes']} client_flops={f['client_flops']}")
    rows = [row for m in METHODS for row in curves[m]]
    with open(out / "transfer.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with open(out / "transfer_summary.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["method", "final_acc", "uplink_bytes", "client_flops"])
        writer.writeheader()
        for m in METHODS:
            writer.writerow({"method": m, "final_acc": final[m]["accuracy"], "uplink_bytes": final[m]["uplink_bytes"], "client_flops": final[m]["client_flops"]})
    plot(curves, out / "transfer.png")
    return lines


def check_claims(curves: dict[str, list[dict]], smoke: bool = False) -> Checks:
    """Fine-tuning matches training from scratch on a fifth of the uplink; distillation helps the student."""
    checks = Checks(smoke=smoke)
    final = {m: rows[-1] for m, rows in curves.items()}
    one_round = f"{len(curves['scratch'])} round(s) of tiny models: accuracies are noise"
    delta = final["finetune"]["accuracy"] - final["scratch"]["accuracy"]
    checks.check("finetune_vs_scratch accuracy (fine-tuned >= from scratch)", delta >= 0, f"acc_delta={delta:+.4f}",
                 full_size=one_round)
    ratio = final["scratch"]["uplink_bytes"] / max(final["finetune"]["uplink_bytes"], 1)
    checks.check("finetune_vs_scratch uplink (from scratch sends >= 5x the fine-tuned bytes)", ratio >= 5,
                 f"uplink_ratio={ratio:.1f}",
                 full_size="at the smoke's width 0.25 the framing of ~50 small tensors is a large share of each message")
    delta = final["student-distilled"]["accuracy"] - final["student-scratch"]["accuracy"]
    checks.check("distilled_vs_student_scratch (the distilled student ends above the one from scratch)", delta > 0,
                 f"acc_delta={delta:+.4f}", full_size=one_round)
    return checks


def plot(curves: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fedsplit.report.plots import round_axis

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for m in METHODS:
        rows = curves[m]
        axes[0].plot([r["round"] for r in rows], [r["accuracy"] for r in rows], marker="o", label=m)
        axes[1].plot([r["uplink_bytes"] for r in rows], [r["accuracy"] for r in rows], marker="o", label=m)
    round_axis(axes[0])
    axes[1].set_xlabel("uplink bytes, all terminals (cumulative)")
    axes[1].set_xscale("log")
    for ax in axes:
        ax.set_ylabel("accuracy, digits 5-9 (server test set)")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle("target digits 5-9: from scratch vs fine-tuned (pretrained on 0-4) vs distilled student")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    curves = run(args)
    for line in report(curves, Path(args.out)):
        print(line)
    checks = check_claims(curves, smoke=args.smoke)
    return 0 if checks.all_passed else 1


if __name__ == "__main__":
    from fedsplit.process_exit import exit_now

    exit_now(main())  # skips the interpreter teardown, where Ray's destructors can hang
