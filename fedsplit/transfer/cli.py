"""``fedsplit pretrain``: a backbone trained centrally on a source task, or a student distilled
from a teacher on unlabeled data; writes a checkpoint for ``model.pretrained`` / ``transfer.teacher``."""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

from fedsplit.cli_errors import print_error
from fedsplit.output_paths import output_file

EXIT_BAD_INPUT = 2


class EpochLines:
    """Progress of a pretraining or distillation on stderr: one plain line per finished epoch.

    ``epoch i/N: loss=L S.SSs (total T.Ts)`` (seconds of that epoch, and of the training so far),
    as ``fedsplit simulate`` prints ``round k/N: ...`` off a terminal
    (:class:`fedsplit.report.RoundProgress`); a line per epoch on a terminal too, so that the loss
    history stays readable. ``--set progress=false`` turns them off.

    Parameters
    ----------
    total_epochs : int
        The ``N`` of ``epoch i/N``.
    file : text stream, optional
        Where to print (default: ``sys.stderr`` at the time of each line).
    """

    def __init__(self, total_epochs: int, file: TextIO | None = None) -> None:
        self.total_epochs = total_epochs
        self.file = file
        self.total_s = 0.0

    def __call__(self, epoch: int, loss: float, seconds: float) -> None:
        """Report epoch ``epoch`` (from 1): its mean loss and how long it took (s)."""
        self.total_s += seconds
        out = self.file or sys.stderr
        out.write(f"epoch {epoch}/{self.total_epochs}: loss={loss:.4f} {seconds:.2f}s (total {self.total_s:.1f}s)\n")
        out.flush()


def number_problems(args: argparse.Namespace) -> str | None:
    """The first of ``--epochs``, ``--batch-size``, ``--lr``, ``--temperature`` out of range, as
    ``FLAG VALUE: what is allowed``; None when all are allowed (an absent option is)."""
    from fedsplit.transfer.pretrain import positive_float_problem, positive_int_problem

    checks = (
        ("--epochs", args.epochs, positive_int_problem),
        ("--batch-size", args.batch_size, positive_int_problem),
        ("--lr", args.lr, positive_float_problem),
        ("--temperature", args.temperature, positive_float_problem),
    )
    for flag, value, problem_of in checks:
        if value is not None and (problem := problem_of(value)) is not None:
            shown = f"{value:g}" if isinstance(value, float) else str(value)
            return f"{flag} {shown}: {problem}"
    return None


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``pretrain`` to the ``fedsplit`` command."""
    p = subparsers.add_parser(
        "pretrain",
        help="pretrain a backbone centrally (or distil a student) and save a checkpoint",
        description="Train model.* centrally on the source task data.* (e.g. --set data.classes=0-4) and save a "
        "checkpoint (state_dict + model, input shape, classes) for model.pretrained; with --distill-from, "
        "distil model.* from a teacher checkpoint on data.*'s inputs without their labels. Nothing is downloaded. "
        "One line per epoch on stderr (epoch, loss, seconds); --set progress=false for none.",
    )
    p.add_argument("--config", "-c", help="TOML configuration file (data.*, model.*, train.*, seed are read)")
    p.add_argument("--set", "-s", action="append", metavar="KEY=VALUE", help="override a field, e.g. --set data.classes=0-4")
    p.add_argument("--out", "-o", required=True, type=output_file, help="checkpoint file to write (.pt)")
    p.add_argument("--epochs", type=int, default=20, help="passes over the data, >= 1 (default 20)")
    p.add_argument("--batch-size", type=int, default=None, help="samples per step, >= 1 (default train.batch_size)")
    p.add_argument("--lr", type=float, default=None, help="SGD learning rate, finite and > 0 (default train.lr)")
    p.add_argument("--distill-from", metavar="TEACHER.pt", help="distil a student from this checkpoint on unlabeled data.*")
    p.add_argument("--temperature", type=float, default=4.0, help="distillation temperature, finite and > 0 (default 4)")
    p.set_defaults(func=cmd_pretrain)


def cmd_pretrain(args: argparse.Namespace) -> int:
    """Handler of ``fedsplit pretrain``."""
    from fedsplit.config import ConfigError, load_config
    from fedsplit.models.checkpoint import CheckpointError
    from fedsplit.transfer.pretrain import TrainingDiverged, distill_student, pretrain

    if (problem := number_problems(args)) is not None:  # before any data are loaded
        print_error("pretrain", problem)
        return EXIT_BAD_INPUT
    try:
        cfg = load_config(args.config, list(args.set or []))
        progress = EpochLines(args.epochs) if cfg.progress else None
        if args.distill_from:
            result = distill_student(
                cfg, args.distill_from, args.out, epochs=args.epochs, temperature=args.temperature,
                batch_size=args.batch_size, lr=args.lr, on_epoch=progress,
            )
        else:
            result = pretrain(cfg, args.out, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, on_epoch=progress)
    except (ConfigError, CheckpointError, TrainingDiverged) as exc:
        print_error("pretrain", str(exc))
        return EXIT_BAD_INPUT
    meta = result.meta
    acc = meta.get("test_accuracy")
    print(
        f"checkpoint={result.path} made_by={meta['made_by']} model={meta['model']} input_shape={'x'.join(map(str, meta['input_shape']))} "
        f"dataset={meta['dataset']} classes={','.join(map(str, meta['classes'] or []))} "
        f"test_acc={'-' if acc is None else f'{acc:.4f}'} train_flops={meta['train_flops']}"
    )
    return 0
