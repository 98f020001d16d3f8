"""fedsplit's ServerApp: a training protocol driven by the server loop over a metered Grid.

The ServerApp is built per run by :func:`make_server_app`; it runs unchanged on fedsplit's engine
and on Flower's simulation engine (both call ``main(grid, context)``).
"""

from __future__ import annotations

import copy
import logging
import random
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from flwr.app import ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy

from fedsplit.compression import CompressionConfig
from fedsplit.config import RunConfig
from fedsplit.devices import DeviceProfile, Population, resolve_profiles
from fedsplit.learning import config_to_json, evaluate, task_for
from fedsplit.ledger import Ledger, RoundRecord
from fedsplit.models.flops import warm_flop_counter
from fedsplit.faults import FaultPlan
from fedsplit.simulation.checkpoint import (
    RESUME_FILE,
    NotResumable,
    ResumePoint,
    capture_protocol,
    context_states,
    restore_context_states,
    restore_ledger,
    restore_protocol,
    rng_states,
    set_rng_states,
    write_resume_point,
)
from fedsplit.simulation.faults import attach_faults
from fedsplit.simulation.frozen_heap import frozen_heap
from fedsplit.simulation.loop import LoopSettings, run_protocol
from fedsplit.simulation.metered_grid import MeteredGrid
from fedsplit.strategies import StrategyLoadError, build_strategy
from fedsplit.strategies.registry import min_replies
from fedsplit.strategies.compression import CompressedStrategy, GuardedStrategy
from fedsplit.strategies.fedavg_protocol import strategy_protocol
from fedsplit.strategies.protocol import ProtocolRun, TrainingProtocol
from fedsplit.strategies.robust import wrap_robustness
from fedsplit.strategies.split_protocol import SPLIT_MODES, SplitProtocol, SplitSettings
from fedsplit.split import choose_cut, describe_cut_choice
from fedsplit.split.cut_select import MODE_PROTOCOL

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
    checkpoint_dir: Path | None = None
    error: BaseException | None = None
    protocol_factory: Callable[[RunConfig, MeteredGrid], TrainingProtocol] | None = None
    """Builds the run's protocol instead of ``training.mode`` (a plug-in protocol, or a test's)."""
    resume_from: ResumePoint | None = None
    """A saved state to continue from (``fedsplit simulate --resume``); None = from round 1."""
    not_resumable: str = ""
    """Why no resume point is written for this run (empty while they are)."""
    stopped: dict[str, Any] | None = None
    """Set when the protocol ended the run before its last round: ``after_round``, ``of_rounds``,
    ``reason`` (e.g. a resource budget spent); None when the run did every round."""
    split_cut: str | dict[str, str] | None = None
    """The cut a split run trains with (``split.cut`` as given, or the one ``auto`` chose), for
    ``summary.json``: see :func:`split_cut_summary`; None outside split learning."""

    def checkpoint(self, server_round: int, state: dict[str, torch.Tensor]) -> None:
        """Save the global weights of ``server_round`` to ``checkpoint_dir/round-<r>.pt`` (atomically)."""
        if self.checkpoint_dir is None:
            return
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        path = self.checkpoint_dir / f"round-{server_round}.pt"
        tmp = path.with_suffix(".pt.tmp")
        torch.save(state, tmp)
        tmp.replace(path)

    @property
    def resume_path(self) -> Path | None:
        """Where this run's resume point is written (``checkpoints/resume.pt``), if anywhere."""
        return None if self.checkpoint_dir is None else self.checkpoint_dir / RESUME_FILE

    def save_resume_point(self, server_round: int, protocol: TrainingProtocol, grid: MeteredGrid) -> None:
        """Write everything needed to continue after ``server_round`` (atomically; see
        :mod:`fedsplit.simulation.checkpoint`). A protocol whose state cannot be saved gets one
        warning, and the run goes on without resume points."""
        write = self.resume_point(server_round, protocol, grid)
        if write is not None:
            write()

    def resume_point(self, server_round: int, protocol: TrainingProtocol, grid: MeteredGrid) -> Callable[[], None] | None:
        """:meth:`save_resume_point` in two steps: capture now, as ``server_round`` ends, the
        protocol's state, the terminals' contexts and the random generators (the next round's
        first steps change them), and return the function that writes them with the ledger and
        the simulated time as they are when it is called (after the round's evaluation and
        report, which may overlap the next round's first exchange). None: nothing to write."""
        path = self.resume_path
        if path is None or self.not_resumable:
            return None
        try:
            blob = capture_protocol(protocol, grid)
        except NotResumable as exc:
            self.not_resumable = str(exc)
            log.warning("no resume points for this run: the protocol's state cannot be saved (%s)", exc)
            return None
        contexts, rng = context_states(grid), rng_states()

        def write() -> None:
            point = ResumePoint(
                round=server_round,
                protocol=blob,
                ledger=self.ledger,
                contexts=contexts,
                rng=rng,
                sim_elapsed_s=self.sim_elapsed_s,
            )
            write_resume_point(path, point)

        return write

    def restore(self, protocol: TrainingProtocol, grid: MeteredGrid) -> int:
        """Put :attr:`resume_from` back into this run (after ``protocol.start``); the round to continue after."""
        point = self.resume_from
        if point is None:
            return 0
        restore_protocol(protocol, point.protocol, grid)
        restore_ledger(self.ledger, point.ledger)
        if point.contexts is not None and not restore_context_states(grid, point.contexts):
            log.warning("resume: this engine keeps no terminal contexts; the terminals' saved state is not restored")
        self.sim_elapsed_s = point.sim_elapsed_s
        set_rng_states(point.rng)
        log.info("resumed after round %d of %d", point.round, self.cfg.rounds)
        return point.round

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


def build_protocol(cfg: RunConfig, metered: MeteredGrid) -> TrainingProtocol:
    """The training protocol of ``cfg.training.mode`` (``fl``: the configured Flower strategy;
    the split-learning modes: :class:`~fedsplit.strategies.split_protocol.SplitProtocol`)."""
    if cfg.training.mode in SPLIT_MODES:
        return build_split_protocol(cfg, metered)
    if cfg.training.mode in ("fedbuff", "fedasync", "gossip"):
        return build_orchestration_protocol(cfg)
    strategy = wrap_selection(strategy_from_config(cfg), cfg, metered)
    if cfg.secagg.enabled:  # the server holds no individual update: nothing to validate, clip or decompress
        from fedsplit.strategies.secagg_protocol import secagg_protocol

        return secagg_protocol(strategy, cfg)
    strategy = wrap_robustness(strategy, cfg, metered.reject)  # central DP, norm defence
    return strategy_protocol(wrap_strategy(strategy, cfg, metered.reject))


def strategy_from_config(cfg: RunConfig) -> Strategy:
    """The Flower strategy of ``cfg.strategy`` (``name``, ``params`` and sampling), unwrapped.

    Raises
    ------
    StrategyLoadError
        The strategy cannot be built (unknown name, a class that does not import, a parameter its
        constructor refuses), or it aggregates a round only with more replies than the population
        has terminals (Flower's Bulyan: ``4 * num_malicious_nodes + 3``), so that every round
        would be empty.
    """
    s = cfg.strategy
    with _without_flower_warning("fraction_evaluate is set to 0.0"):  # 0 = off, as configured
        strategy = build_strategy(
            s.name,
            s.params,
            fraction_train=s.fraction_train,
            fraction_evaluate=s.fraction_evaluate,
            min_train_nodes=s.min_train_nodes,
        )
    needed = min_replies(strategy)
    if needed > cfg.num_terminals:
        raise StrategyLoadError(
            f"strategy.name = {s.name!r}: it aggregates a round only with at least {needed} replies "
            f"(Bulyan: 4 * num_malicious_nodes + 3), and the population has {cfg.num_terminals} terminals: "
            "every round would be empty"
        )
    return strategy


def wrap_selection(strategy: Strategy, cfg: RunConfig, metered: MeteredGrid) -> Strategy:
    """FedCS selection (``strategy.selection``) and adaptive local work (``strategy.local_work``)."""
    from fedsplit.strategies.adaptive_local import AdaptiveLocalStrategy, BudgetController
    from fedsplit.strategies.fedcs import FedCSStrategy, completion_predictor

    s = cfg.strategy
    if s.selection == "all" and s.local_work == "fixed":
        return strategy
    predictor = completion_predictor(config_to_json(cfg), metered.population.profile_of)
    if s.selection == "fedcs":
        strategy = FedCSStrategy(strategy, predictor, cfg.clock.round_deadline_s)
    if s.local_work == "adaptive":
        controller = None
        if s.resource_budget_s > 0:
            controller = BudgetController(s.resource_budget_s, s.max_local_epochs, cfg.train.lr, resource="time")
        elif s.resource_budget_j > 0:
            controller = BudgetController(s.resource_budget_j, s.max_local_epochs, cfg.train.lr, resource="energy")
        strategy = AdaptiveLocalStrategy(strategy, predictor, max_epochs=s.max_local_epochs, controller=controller)
    return strategy


def build_orchestration_protocol(cfg: RunConfig) -> TrainingProtocol:
    """FedBuff / FedAsync (:mod:`fedsplit.strategies.async_protocol`) or gossip training."""
    o = cfg.orchestration
    if cfg.training.mode == "gossip":
        from fedsplit.strategies.gossip_protocol import GossipProtocol, GossipSettings

        return GossipProtocol(GossipSettings(graph=o.graph, graph_degree=o.graph_degree, edges=o.edges, gossip=o.gossip, seed=cfg.seed))
    from fedsplit.strategies.async_protocol import AsyncProtocol, AsyncSettings

    return AsyncProtocol(
        AsyncSettings(
            mode=cfg.training.mode, concurrency=o.concurrency, buffer_size=o.buffer_size, staleness_exponent=o.staleness_exponent,
            server_lr=o.server_lr, mixing_alpha=o.mixing_alpha, seed=cfg.seed,
        )
    )


def split_cuts(cfg: RunConfig, population: Population, server_profile: DeviceProfile) -> dict[str, str]:
    """The cut of every device class: ``split.cut`` as given, or chosen by predicted time (auto).

    With ``auto``, SplitFed v1 (one server copy per terminal) takes each class's own best cut;
    the other modes share one server part, so one cut serves all: the one with the least
    predicted time summed over the population. Each choice is logged with the alternatives.
    """
    task = task_for(config_to_json(cfg))
    classes = sorted({population.profile_of(p).name for p in range(population.size)})
    if cfg.split.cut != "auto":
        return {name: cfg.split.cut for name in classes}
    protocol = MODE_PROTOCOL[cfg.training.mode]
    input_shape = tuple(task.data.input_shape)
    sizes = [len(task.data.partition(p)[0]) for p in range(population.size)]
    samples = max(1, round(sum(sizes) / len(sizes))) * cfg.train.local_epochs
    times: dict[str, dict] = {}
    for name in classes:
        best, per_cut = choose_cut(task.model, input_shape, cfg.train.batch_size, samples, population.profiles[name], server_profile, protocol, recompute=True)
        log.info("%s", describe_cut_choice(name, best, per_cut))
        times[name] = {"best": best, "times": per_cut}
    label = lambda cut: ",".join(cut) if isinstance(cut, tuple) else cut  # noqa: E731
    if cfg.training.mode == "splitfed-v1":
        return {name: label(times[name]["best"]) for name in classes}
    counts = {name: sum(1 for p in range(population.size) if population.profile_of(p).name == name) for name in classes}
    cuts = list(times[classes[0]]["times"])
    best = min(cuts, key=lambda c: sum(counts[n] * times[n]["times"][c] for n in classes))
    log.info("split.cut = auto for the population (%s): %s", cfg.training.mode, label(best))
    return {name: label(best) for name in classes}


def split_cut_summary(protocol: TrainingProtocol, population: Population) -> str | dict[str, str] | None:
    """The cut ``protocol`` trains with, in ``split.cut``'s syntax (``"a"``; ``"a,b"`` in U-shape):
    one string when every terminal has the same cut, else ``{device class: cut}`` (SplitFed v1 with
    ``auto``); None for a protocol that is not split learning."""
    if not isinstance(protocol, SplitProtocol):
        return None
    by_class: dict[str, str] = {}
    for pid in range(population.size):
        by_class.setdefault(population.profile_of(pid).name, str(protocol.cut_of(pid)))
    cuts = set(by_class.values())
    return cuts.pop() if len(cuts) == 1 else dict(sorted(by_class.items()))


def build_split_protocol(cfg: RunConfig, metered: MeteredGrid) -> TrainingProtocol:
    """A :class:`~fedsplit.strategies.split_protocol.SplitProtocol` for ``cfg``."""
    task = task_for(config_to_json(cfg))
    cuts = split_cuts(cfg, metered.population, metered.server_profile)
    t = cfg.train
    settings = SplitSettings(
        mode=cfg.training.mode,
        lr=t.lr,
        momentum=t.momentum,
        weight_decay=t.weight_decay,
        batch_size=t.batch_size,
        local_epochs=t.local_epochs,
        seed=cfg.seed,
        noise_std=cfg.split.noise_std,
        num_classes=int(task.data.num_classes),
        travelling=task.travelling if task.plan is not None else (),
        poisson=cfg.privacy.mode == "local",
    )
    population = metered.population
    return SplitProtocol(settings, task.model, tuple(task.data.input_shape), lambda pid: cuts[population.profile_of(pid).name])


@contextmanager
def _without_flower_warning(text: str):  # noqa: ANN202
    """Drop Flower log records containing ``text`` (a warning about a setting the user chose)."""

    def keep(record: logging.LogRecord) -> bool:
        return text not in record.getMessage()

    flwr_logger = logging.getLogger("flwr")
    flwr_logger.addFilter(keep)
    try:
        yield
    finally:
        flwr_logger.removeFilter(keep)


def run_server(grid: Grid, session: RunSession, partition_of: Callable[[int], int] | None = None) -> None:
    """Run the whole training of ``session.cfg`` against ``grid``."""
    cfg = session.cfg
    random.seed(cfg.seed)
    task = task_for(config_to_json(cfg))
    metered = MeteredGrid(
        grid,
        session.population,
        session.ledger,
        seed=cfg.seed,
        round_deadline_s=cfg.clock.round_deadline_s,
        partition_of=partition_of or getattr(grid, "partition_of", None),
        min_online=cfg.strategy.min_train_nodes,
        server_profile=resolve_profiles(cfg.profiles)[cfg.clock.server_profile],
        min_nodes=cfg.deploy.min_nodes,
        wait_s=cfg.deploy.wait_s,
    )
    session.grid = metered
    f = cfg.faults
    attach_faults(grid, FaultPlan(f.crash_rate, f.kill_rate, f.seed), metered)
    protocol = (session.protocol_factory or build_protocol)(cfg, metered)
    session.strategy = getattr(protocol, "strategy", None)
    session.split_cut = split_cut_summary(protocol, metered.population)
    metered.get_node_ids()  # learn the node <-> terminal mapping before the clock starts
    # The server evaluates a copy of its own, on the CPU where its test set is: ClientApps that run
    # in this process (the serial engine) share ``task.model`` and move it to their device.
    model = copy.deepcopy(task.model).to("cpu")
    test_set = task.data.server_test

    def evaluate_global(state: dict[str, torch.Tensor]) -> dict[str, float]:
        model.load_state_dict(task.full_state(state))  # + the frozen rest under transfer.trainable
        result = evaluate(model, test_set.x, test_set.y)
        return {"accuracy": result.accuracy, "loss": result.loss}

    def on_round(record: RoundRecord) -> None:
        session.sim_elapsed_s += record.sim_s
        if session.on_round is not None:
            session.on_round(record, session.sim_elapsed_s)

    t = cfg.training
    if t.eval_every > 0:  # the first evaluation's one-off import, while the actors start
        metered.run_while_training(_warm_flop_counter)
    run = ProtocolRun(
        grid=metered,
        num_rounds=cfg.rounds,
        # what travels (all, or the trainable tensors under transfer.trainable); split learning's
        # server holds whole models and filters what it sends itself
        initial_state=task.full_state(task.initial_state()) if cfg.training.mode in SPLIT_MODES else task.initial_state(),
        train_config=train_config(cfg),
    )
    started = time.perf_counter()
    try:
        with frozen_heap():  # what exists now is never garbage during the run: the collector skips it
            final = run_protocol(
                protocol,
                run,
                evaluate=evaluate_global,
                settings=LoopSettings(
                    eval_every=t.eval_every,
                    checkpoint_every=t.checkpoint_every,
                    max_empty_rounds=t.max_empty_rounds,
                    resume_every=t.resume_every,
                    min_clients=f.min_clients,
                    too_few=f.too_few,
                    max_retries=f.max_retries,
                ),
                on_round=on_round,
                resume=lambda: session.restore(protocol, metered),
                resume_point=lambda server_round: session.resume_point(server_round, protocol, metered),
                checkpoint=lambda server_round, state: session.checkpoint(server_round, task.full_state(state)),
                on_stop=lambda server_round, reason: setattr(session, "stopped", {"after_round": server_round, "of_rounds": cfg.rounds, "reason": reason}),
            )
    finally:
        session.strategy_wall_s = time.perf_counter() - started
    session.final_state = {k: v.clone() for k, v in task.full_state(final).items()}


def _warm_flop_counter() -> None:
    """:func:`fedsplit.models.flops.warm_flop_counter`, for :meth:`MeteredGrid.run_while_training`
    (work that must not raise: a failure here only leaves the import to the first evaluation)."""
    try:
        warm_flop_counter()
    except Exception as exc:  # noqa: BLE001 - an optimisation; the evaluation counts as before
        log.debug("server: FLOP counter warm-up failed (%s: %s)", type(exc).__name__, exc)


def make_server_app(session: RunSession) -> ServerApp:
    """A ServerApp that runs ``session.cfg`` and records into ``session``."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:  # noqa: ARG001 - Flower's signature
        try:
            run_server(grid, session)
        except BaseException as exc:  # kept for the launcher: an engine may only log it
            session.error = exc
            raise

    return app
