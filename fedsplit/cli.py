"""The ``fedsplit`` command: the front door of the framework.

Each sub-command lives in the module that owns its room and registers itself here through a
``register(subparsers)`` function, so that this file stays a thin dispatcher. A sub-command's
handler takes the parsed :class:`argparse.Namespace` and returns a process exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from collections.abc import Sequence
from typing import NoReturn

from fedsplit.cli_errors import command_of, print_error
from fedsplit.config.errors import ActorStartError, ClusterTooSmallError, RayUnreachableError
from fedsplit.process_exit import exit_now

#: Modules that contribute sub-commands, in the order they appear in ``fedsplit --help``.
COMMAND_MODULES: tuple[str, ...] = (
    "fedsplit.simulation.cli",
    "fedsplit.simulation.deploy",
    "fedsplit.simulation.pipeline_cli",
    "fedsplit.transfer.cli",
    "fedsplit.report.catalog_cli",
    "fedsplit.inference.cli",
    "fedsplit.serving.cli",
    "fedsplit.inference.edgent_cli",
)

#: Sub-commands that may start Ray: :func:`fedsplit.simulation.ray_env.quiet_ray` runs first.
RAY_COMMANDS: frozenset[str] = frozenset({"simulate", "run-app", "pipeline"})


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every registered sub-command."""
    parser = argparse.ArgumentParser(
        prog="fedsplit",
        description="Federated and split training over emulated edge devices, "
        "and the edge-inference scheduler fed by its models.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for module_name in COMMAND_MODULES:
        module = importlib.import_module(module_name)
        module.register(subparsers)
    return parser


#: File-system errors a user's paths cause (a folder that is a file, no permission, ...): one line,
#: exit 2, in place of a traceback. Sub-commands check their outputs first
#: (:mod:`fedsplit.output_paths`); these are what only writing shows (an immutable folder, a full disk).
PATH_ERRORS = (PermissionError, NotADirectoryError, IsADirectoryError, FileExistsError, FileNotFoundError)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``fedsplit`` command and return its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in RAY_COMMANDS:
        from fedsplit.simulation.ray_env import quiet_ray

        quiet_ray()
    try:
        return int(args.func(args) or 0)
    except PATH_ERRORS as exc:
        if exc.filename is None:
            raise
        print_error(command_of(args), f"{exc.filename}: {exc.strerror or type(exc).__name__}")
        return 2
    except RayUnreachableError as exc:  # engine.ray_address does not answer
        print_error(command_of(args), str(exc))
        return 2
    except ClusterTooSmallError as exc:  # a device class's num_cpus above the Ray cluster's CPUs
        print_error(command_of(args), f"engine: {exc}")
        return 2
    except ActorStartError as exc:  # the engine's actors cannot start the ClientApp: the run stopped
        print_error(command_of(args), f"engine: {exc}")
        return 3
    except ValueError as exc:  # a DataError: a broken dataset file, a partitioning the pool cannot give
        # (fedsplit.data, with torch, is imported by then; importing it up front would slow every command down)
        from fedsplit.data.errors import DataError

        if not isinstance(exc, DataError):
            raise
        print_error(command_of(args), f"data: {exc}")
        return 2
    except KeyboardInterrupt:  # Ctrl-C: one line, not the stacks of every thread Ray and torch were in
        hint = "; the run folder keeps every finished round: continue with `fedsplit simulate --resume RUN_DIR`"
        print(f"fedsplit {command_of(args)}: interrupted{hint if args.command == 'simulate' else ''}", file=sys.stderr)
        return 130


def console_main() -> NoReturn:
    """The ``fedsplit`` console command: :func:`main`, then :func:`~fedsplit.process_exit.exit_now`.

    The exit skips the interpreter's teardown, where the destructors of Ray's core worker and
    gRPC's channels can block for ever after a run's work is done; the ``atexit`` handlers and the
    output are kept. An unexpected exception prints its traceback and exits 1, as Python's exit does.
    """
    try:
        code: object = main()
    except SystemExit as exc:  # argparse's --help (0) and usage errors (2)
        code = exc.code
    except KeyboardInterrupt:  # Ctrl-C before a command's handler runs (it handles its own)
        code = 130
    except BaseException:  # a bug: its traceback, exit 1
        traceback.print_exc()
        code = 1
    exit_now(code)


if __name__ == "__main__":  # pragma: no cover
    console_main()
