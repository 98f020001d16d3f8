"""``fedsplit simulate``: train a configured federation of emulated terminals on one machine."""

from __future__ import annotations

import argparse

from fedsplit.cli_errors import print_error
from fedsplit.config import ConfigError, iter_fields, load_config, parse_override
from fedsplit.config.errors import RayUnreachableError
from fedsplit.config.schema import ENGINES, RunConfig
from fedsplit.output_paths import output_folder, unwritable_reason


def _fields_help() -> str:
    lines = ["configuration fields (set in --config FILE.toml or with --set KEY=VALUE):"]
    for name, default, meta in iter_fields(RunConfig):
        lines.append(f"  {name} = {default!r}\n      {meta.get('doc', '')}")
    return "\n".join(lines)


def check_strategy(cfg: RunConfig) -> int:
    """Build the strategy as the run will (a user's class imported, its ``strategy.params`` checked
    against its constructor), before any engine starts: 0, or 2 after one line on stderr."""
    from fedsplit.simulation.server_app import strategy_from_config
    from fedsplit.strategies import StrategyLoadError
    from fedsplit.strategies.robust import wrap_robustness

    try:
        wrap_robustness(strategy_from_config(cfg), cfg, None)  # Flower's DP wrapper checks its settings
    except StrategyLoadError as exc:
        print_error("simulate", f"config: {exc}")
        return 2
    return 0


def dry_run(cfg: RunConfig) -> int:
    """Check everything that ``fedsplit simulate`` checks before training, and start nothing.

    With ``training.mode = fl`` the strategy is built as the run would build it (a user's class
    is imported, its ``strategy.params`` checked against its constructor); the other modes run
    their own protocol (split learning, FedBuff/FedAsync, gossip) and use no ``strategy.name``.
    No Ray, no data, no model.

    Parameters
    ----------
    cfg : RunConfig
        A configuration that :func:`~fedsplit.config.load_config` accepted.

    Returns
    -------
    int
        0, after printing the resolved configuration as TOML with a closing ``# config OK``
        comment line naming the training mode (and, for ``fl``, its strategy); 2 (one line on
        stderr, as a real run) when the strategy of an ``fl`` run cannot be built.
    """
    import tomli_w

    from fedsplit.config import config_to_dict

    mode = cfg.training.mode
    if mode == "fl" and (code := check_strategy(cfg)) != 0:  # as cmd_simulate: only fl builds one
        return code
    what = f"{mode} (strategy {cfg.strategy.name})" if mode == "fl" else mode
    print(tomli_w.dumps(config_to_dict(cfg)), end="")
    print(f"# config OK: {cfg.rounds} rounds of {what} on {cfg.num_terminals} terminals "
          f"(engine {cfg.engine.name}); --dry-run started nothing")
    return 0


#: ``--set`` keys that ``--resume`` accepts: where the run goes on (another Ray cluster, a local
#: Ray of another size), not what it computes; a run resumed elsewhere ends as the same run does.
RESUME_PLACEMENT_KEYS: tuple[str, ...] = ("engine.ray_address", "engine.num_cpus")


def resume_config(run_dir: str, args: argparse.Namespace) -> RunConfig:
    """The configuration of the run folder ``run_dir`` (its ``config.toml``), for ``--resume``,
    with the ``--set`` overrides of :data:`RESUME_PLACEMENT_KEYS` applied (e.g. the Ray cluster
    the run was attached to is gone: ``--set engine.ray_address=`` goes on with a local Ray).

    Raises
    ------
    ConfigError
        The folder has no ``config.toml``, or ``--config``, ``--engine`` or a ``--set`` of another
        key would change the run being continued.
    """
    from pathlib import Path

    from fedsplit.simulation.checkpoint import ResumePointError, check_unfinished

    overrides = list(args.set or [])
    changed = [".".join(parse_override(item)[0]) for item in overrides]
    if args.config or args.engine or any(key not in RESUME_PLACEMENT_KEYS for key in changed):
        raise ConfigError(
            "--resume RUN_DIR continues the run of RUN_DIR/config.toml; --config, --engine and --set cannot change it "
            f"(--set may only say where it goes on: {', '.join(RESUME_PLACEMENT_KEYS)})"
        )
    path = Path(run_dir) / "config.toml"
    if not path.is_file():
        raise ConfigError(f"--resume {run_dir}: no config.toml there (not a run folder of fedsplit simulate)")
    try:
        check_unfinished(run_dir)
    except ResumePointError as exc:
        raise ConfigError(str(exc)) from None
    return load_config(path, overrides)


def cmd_simulate(args: argparse.Namespace) -> int:
    """Handler of ``fedsplit simulate``."""
    resume = getattr(args, "resume", None)  # (a Namespace built by hand may lack it)
    try:
        if resume:
            cfg = resume_config(resume, args)
        else:
            overrides = list(args.set or [])
            if args.engine:
                overrides.append(f"engine.name={args.engine}")
            cfg = load_config(args.config, overrides)
    except ConfigError as exc:
        print_error("simulate", str(exc))
        return 2
    if not resume and (reason := unwritable_reason(cfg.out_dir, folder=True)) is not None:
        print_error("simulate", f"config: out_dir = {cfg.out_dir!r}: cannot write there ({reason})")
        return 2
    if getattr(args, "dry_run", False):  # (a Namespace built by hand may lack it)
        return dry_run(cfg)
    if cfg.training.mode == "fl" and (code := check_strategy(cfg)) != 0:  # before Ray starts
        return code
    from pathlib import Path

    from fedsplit.simulation.checkpoint import ResumePointError
    from fedsplit.models.checkpoint import CheckpointError
    from fedsplit.simulation.loop import EmptyRoundsError
    from fedsplit.simulation.runner import simulate
    from fedsplit.strategies import StrategyLoadError

    try:
        outcome = simulate(cfg, resume=Path(resume) if resume else None)
    except StrategyLoadError as exc:
        print_error("simulate", f"config: {exc}")
        return 2
    except ResumePointError as exc:  # truncated or corrupt checkpoints/resume.pt: read before any engine starts
        print_error("simulate", str(exc))
        return 2
    except EmptyRoundsError as exc:
        print_error("simulate", f"run: {exc}")
        return 3
    except CheckpointError as exc:  # model.pretrained / transfer.teacher whose tensors do not fit the model built
        print_error("simulate", f"config: {exc}")
        return 2
    except RayUnreachableError as exc:
        if not resume:
            raise  # fedsplit.cli: one line, exit 2
        print_error("simulate", f"{exc}; or go on elsewhere: fedsplit simulate --resume {resume} --set engine.ray_address=HOST:PORT "
                                "(empty: a local Ray)")
        return 2
    acc = outcome.summary["final_metrics"].get("accuracy")
    if "stopped" in outcome.summary:
        stopped = outcome.summary["stopped"]
        print(f"stopped after round {stopped['after_round']} of {stopped['of_rounds']}: {stopped['reason']}")
    print(f"run_dir={outcome.run_dir} final_accuracy={acc:.4f} sim_time_s={outcome.summary['sim_time_s']:.3f} "
          f"wall_time_s={outcome.summary['wall_time_s']:.2f}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``simulate`` (and the engine's ``run-app``) to the ``fedsplit`` command."""
    p = subparsers.add_parser(
        "simulate",
        help="train a federation of emulated edge terminals",
        description="Train a model with a Flower strategy across a population of emulated edge terminals "
        "and write a run folder (config, rounds.csv, clients.csv, summary.json, plots).",
        epilog=_fields_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", "-c", help="TOML configuration file (defaults for everything it omits)")
    p.add_argument("--set", "-s", action="append", metavar="KEY=VALUE", help="override a field, e.g. --set rounds=30")
    p.add_argument("--engine", choices=ENGINES, help="shortcut for --set engine.name=...")
    p.add_argument(
        "--resume", metavar="RUN_DIR",
        help="continue the run of RUN_DIR (killed or stopped) after the round of its checkpoints/resume.pt, "
        "with its own config.toml; the result equals an uninterrupted run's. --set may only say where it goes on "
        f"({', '.join(RESUME_PLACEMENT_KEYS)}), e.g. when the Ray cluster it was attached to is gone",
    )
    p.add_argument(
        "--dry-run", action="store_true",
        help="validate the configuration (and the strategy), print it resolved as TOML and exit 0; starts no Ray, trains nothing",
    )
    p.set_defaults(func=cmd_simulate)
    register_run_app(subparsers)


def cmd_run_app(args: argparse.Namespace) -> int:
    """Handler of ``fedsplit run-app`` (:mod:`fedsplit.simulation.run_app`, imported only to run it:
    it imports Flower, Ray and torch, which building the command's parser does not need)."""
    from fedsplit.simulation.run_app import cmd_run_app as run

    return run(args)


def register_run_app(subparsers: argparse._SubParsersAction) -> None:
    """Add ``run-app`` to the ``fedsplit`` command."""
    p = subparsers.add_parser(
        "run-app",
        help="run a Flower ServerApp/ClientApp pair (written for flwr run) on fedsplit's engine",
        description="Run a third-party Flower app unchanged on fedsplit's Ray engine with per-device budgets.",
    )
    p.add_argument("server_app", metavar="MODULE:SERVER_APP")
    p.add_argument("client_app", metavar="MODULE:CLIENT_APP")
    p.add_argument("--nodes", type=int, required=True, help="number of emulated terminals")
    p.add_argument("--devices", help="device mix, e.g. raspberry-pi-4=6,laptop=4 (default: all laptop)")
    p.add_argument("--run-config", action="append", metavar="KEY=VALUE", help="Flower run config entry")
    p.add_argument("--ray-address", help="attach to an existing Ray cluster")
    p.add_argument("--out", type=output_folder, help="folder for clients.csv and rounds.csv, new or empty "
                   "(default: a new runs/run-app/<date-time>)")
    p.set_defaults(func=cmd_run_app)
