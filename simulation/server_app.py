"""fedsplit's ServerApp: a Flower strategy driven over a metered, availability-emulating Grid.

The ServerApp is built per run by :func:`make_server_app`; it runs unchanged on fedsplit's engine
and on Flower's simulation engine (both call ``main(grid, context)``).
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy

from fedsplit.compression import CompressionConfig
from fedsplit.config import RunConfig
from fedsplit.devices import Population, resolve_profiles
from fedsplit.learning import config_to_json, evaluate, task_for
from fedsplit.ledger import Ledger, RoundRecord
from fedsplit.simulation.metered_grid import MeteredGrid
from fedsplit.strategies import build_strategy
from fedsplit.strategies.compression import CompressedStrategy, GuardedStrategy

log = logging.getLogger("fedsplit")


@dataclass
class RunSession:
    """What a ServerApp run produces, shared with the process that launched it."""

    cfg: RunConfig
    population: Population
    ledger: Ledger = field(default_factory=Ledger)
    on_round: Callable[[RoundRecord, float], None] | None = None
    final_state: dict[str, torch.Tensor] | None = None
    sim_elapsed_s: float = 0.0
    strategy: Strategy | None = None
    grid: MeteredGrid | None = None
    strategy_wall_s: float = 0.0
    engine_info: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_config(cls, cfg: RunConfig, **kwargs: Any) -> "RunSession":
        """A session with the population of ``cfg``."""
        return cls(cfg=cfg, population=Population(cfg.devices, resolve_profiles(cfg.profiles)), **kwargs)


def wrap_strategy(strategy: Strategy, cfg: RunConfig, on_reject: Callable[[int, int, str], None]) -> Strategy:
    """Wrap a strategy with update validation, and decompression when compression is configured."""
    if cfg.compression:
        return CompressedStrategy(strategy, CompressionConfig.from_dict(cfg.compression), on_reject=on_reject)
    return GuardedStrategy(strategy, on_reject=on_reject)


def train_config(cfg: RunConfig) -> ConfigRecord:
    """Hyper-parameters sent to the terminals with every train message."""
    t = cfg.train
    return ConfigRecord({"lr": t.lr, "local-epochs": t.local_epochs, "batch-size": t.batch_size})


def run_server(grid: Grid, session: RunSession, partition_of: Callable[[int], int] | None = None) -> None:
    """Run the whole federated training of ``session.cfg`` against ``grid``."""
    cfg = session.cfg
    random.seed(cfg.seed)
    config_json = config_to_json(cfg)
    task = task_for(config_json)
    metered = MeteredGrid(
        grid,
        session.population,
        session.ledger,
        seed=cfg.seed,
        round_deadline_s=cfg.clock.round_deadline_s,
        partition_of=partition_of or getattr(grid, "partition_of", None),
        min_online=cfg.strategy.min_train_nodes,
    )
    session.grid = metered
    s = cfg.strategy
    strategy = build_strategy(
        s.name,
        s.params,
        fraction_train=s.fraction_train,
        fraction_evaluate=s.fraction_evaluate,
        min_train_nodes=s.min_train_nodes,
    )
    strategy = wrap_strategy(strategy, cfg, metered.reject)
    session.strategy = strategy
    metered.get_node_ids()  # learn the node <-> terminal mapping before the clock starts
    model = task.model
    num_params = sum(v.numel() for v in model.state_dict().values())
    test_set = task.data.server_test

    round_started = [time.perf_counter()]

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        model.load_state_dict(arrays.to_torch_state_dict())
        result = evaluate(model, test_set.x, test_set.y)
        metrics = {"accuracy": result.accuracy, "loss": result.loss}
        if server_round >= 1:
            aggregated = sum(
                r.status == "ok" for r in session.ledger.rows_of(server_round) if r.phase == "train"
            )
            server_s = 2.0 * num_params * aggregated / cfg.clock.server_flops_per_s
            now = time.perf_counter()
            record = session.ledger.close_round(
                server_round, cfg.clock.round_deadline_s, server_s, metrics, wall_s=now - round_started[0]
            )
            round_started[0] = now
            session.sim_elapsed_s += record.sim_s
            if session.on_round is not None:
                session.on_round(record, session.sim_elapsed_s)
        metered.current_round = server_round + 1
        return MetricRecord(metrics)

    started = time.perf_counter()
    round_started[0] = started
    result = strategy.start(
        grid=metered,
        initial_arrays=ArrayRecord(task.initial_state()),
        num_rounds=cfg.rounds,
        train_config=train_config(cfg),
        evaluate_fn=evaluate_fn,
    )
    session.strategy_wall_s = time.perf_counter() - started
    session.final_state = {k: v.clone() for k, v in result.arrays.to_torch_state_dict().items()}


def make_server_app(session: RunSession) -> ServerApp:
    """A ServerApp that runs ``session.cfg`` and records into ``session``."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:  # noqa: ARG001 - Flower's signature
        run_server(grid, session)

    return app
