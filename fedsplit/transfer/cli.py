"""``fedsplit pretrain``: a backbone trained centrally on a source task, or a student distilled
from a teacher on unlabeled data; writes a checkpoint for ``model.pretrained`` / ``transfer.teacher``."""

from __future__ import annotations

import argparse
import sys

from fedsplit.output_paths import output_file

EXIT_BAD_INPUT = 2


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``pretrain`` to the ``fedsplit`` command."""
    p = subparsers.add_parser(
        "pretrain",
        help="pretrain a backbone centrally (or distil a student) and save a checkpoint",
        description="Train model.* centrally on the source task data.* (e.g. --set data.classes=0-4) and save a "
        "checkpoint (state_dict + model, input shape, classes) for model.pretrained; with --distill-from, "
        "distil model.* from a teacher checkpoint on data.*'s inputs without their labels. Nothing is downloaded.",
    )
    p.add_argument("--config", "-c", help="TOML configuration file (data.*, model.*, train.*, seed are read)")
    p.add_argument("--set", "-s", action="append", metavar="KEY=VALUE", help="override a field, e.g. --set data.classes=0-4")
    p.add_argument("--out", "-o", required=True, type=output_file, help="checkpoint file to write (.pt)")
    p.add_argument("--epochs", type=int, default=20, help="passes over the data (default 20)")
    p.add_argument("--batch-size", type=int, default=None, help="samples per step (default train.batch_size)")
    p.add_argument("--lr", type=float, default=None, help="SGD learning rate (default train.lr)")
    p.add_argument("--distill-from", metavar="TEACHER.pt", help="distil a student from this checkpoint on unlabeled data.*")
    p.add_argument("--temperature", type=float, default=4.0, help="distillation temperature (default 4)")
    p.set_defaults(func=cmd_pretrain)


def cmd_pretrain(args: argparse.Namespace) -> int:
    """Handler of ``fedsplit pretrain``."""
    from fedsplit.config import ConfigError, load_config
    from fedsplit.models.checkpoint import CheckpointError
    from fedsplit.transfer.pretrain import distill_student, pretrain

    if args.epochs < 1:
        print(f"fedsplit: error: --epochs {args.epochs}: must be >= 1", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.temperature <= 0:
        print(f"fedsplit: error: --temperature {args.temperature}: must be > 0", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        cfg = load_config(args.config, list(args.set or []))
        if args.distill_from:
            result = distill_student(
                cfg, args.distill_from, args.out, epochs=args.epochs, temperature=args.temperature,
                batch_size=args.batch_size, lr=args.lr,
            )
        else:
            result = pretrain(cfg, args.out, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr)
    except (ConfigError, CheckpointError) as exc:
        print(f"fedsplit: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    meta = result.meta
    acc = meta.get("test_accuracy")
    print(
        f"checkpoint={result.path} made_by={meta['made_by']} model={meta['model']} input_shape={'x'.join(map(str, meta['input_shape']))} "
        f"dataset={meta['dataset']} classes={','.join(map(str, meta['classes'] or []))} "
        f"test_acc={'-' if acc is None else f'{acc:.4f}'} train_flops={meta['train_flops']}"
    )
    return 0
