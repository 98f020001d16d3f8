"""``fedsplit pipeline --config F.toml``: train a model family with ``fedsplit simulate``, catalog
it, schedule a scenario over it and serve the schedule (:mod:`fedsplit.pipeline`).

Exit codes: 0 on success, 2 on a bad configuration (one line naming the field), 3 when a
member's training stops on empty rounds.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fedsplit.cli_errors import print_error
from fedsplit.config import ConfigError, RunConfig, parse_override
from fedsplit.config.loader import apply_override
from fedsplit.output_paths import unwritable_reason


def train_member(cfg: RunConfig) -> Path:
    """Train one member with :func:`fedsplit.simulation.runner.simulate`; its run folder."""
    from fedsplit.simulation.runner import simulate

    return simulate(cfg).run_dir


def cmd_pipeline(args: argparse.Namespace) -> int:
    """Handler of ``fedsplit pipeline``."""
    from fedsplit.pipeline import load_pipeline, run_pipeline

    overrides: dict = {}
    try:
        for text in args.set or []:
            keys, value = parse_override(text)
            apply_override(overrides, keys, value)
        cfg = load_pipeline(args.config, overrides)
    except ConfigError as exc:
        print_error("pipeline", str(exc))
        return 2
    if (reason := unwritable_reason(cfg.out_dir, folder=True)) is not None:
        print_error("pipeline", f"pipeline: out_dir = {str(cfg.out_dir)!r}: cannot write there ({reason})")
        return 2
    import ray
    from fedsplit.simulation.engine import check_ray_reachable, ray_init_options
    from fedsplit.simulation.loop import EmptyRoundsError
    from fedsplit.simulation.warm_actors import warm_actors
    from fedsplit.transfer.pretrain import TrainingDiverged

    base = cfg.member_config(cfg.members[0], cfg.out_dir)
    started = False
    if not ray.is_initialized():  # one Ray for every member (each simulate attaches to it)
        if base.engine.name == "fedsplit":
            check_ray_reachable(base.engine.ray_address)
            ray.init(**ray_init_options(base.engine.ray_address or None, base.engine.num_cpus or None))
            started = True
    try:
        with warm_actors():  # every member trains on the actors the first one started
            result = run_pipeline(cfg, train_member, log=print)
    except EmptyRoundsError as exc:
        print_error("pipeline", f"run: {exc}")
        return 3
    except TrainingDiverged as exc:  # [pretrain]'s settings (e.g. its lr) make the loss NaN
        print_error("pipeline", f"pretraining: {exc}")
        return 3
    finally:
        if started:
            ray.shutdown()
    sv = result.serve
    print(f"pipeline_dir={result.folder} models={len(result.catalog['models'])} separates={str(not result.separation).lower()} "
          f"feasible={str(result.schedule.feasible).lower()} catalog_mean_accuracy={sv.catalog_mean_accuracy:.4f} "
          f"realised_mean_accuracy={sv.realised_mean_accuracy:.4f} accuracy_gap_pp={sv.accuracy_gap_pp:.3f} "
          f"promised_total_latency_s={sv.promised_total_latency_s:.6g} modelled_total_latency_s={sv.modelled_total_latency_s:.6g} "
          f"wall_s={result.timings_s['total']:.1f}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``pipeline`` to the ``fedsplit`` command."""
    p = subparsers.add_parser(
        "pipeline",
        help="train a model family federatedly, catalog it, schedule and serve it: one run folder",
        description="(Optional pretraining ->) federated training of every family member -> derived pruned and "
        "int8 members -> catalog.json -> scenario -> schedule -> serve-sim, with report.md, CSVs and plots, "
        "all in <out_dir>/<name>/. Example: experiments/configs/pipeline.toml.",
    )
    p.add_argument("--config", "-c", required=True, metavar="F.toml", help="pipeline configuration")
    p.add_argument("--set", "-s", action="append", metavar="KEY=VALUE",
                   help="override a pipeline key, e.g. --set base.rounds=2 or --set name=smoke")
    p.set_defaults(func=cmd_pipeline)


__all__ = ["cmd_pipeline", "register", "train_member"]
