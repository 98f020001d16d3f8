"""Run a configured simulation end to end: engine, training, ledgers, run folder."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedsplit.config import RunConfig, dump_config
from fedsplit.data import FederatedData
from fedsplit.learning import config_to_json, task_for
from fedsplit.privacy.report import privacy_extra
from fedsplit.report import RoundProgress, make_run_dir, print_summary, summarize, write_run_folder
from fedsplit.simulation.checkpoint import RESUME_FILE, check_unfinished, read_resume_point, resuming_line
from fedsplit.simulation.ray_env import quiet_ray
from fedsplit.simulation.server_app import RunSession, _without_flower_warning, make_server_app, run_server

log = logging.getLogger("fedsplit")


@dataclass
class RunOutcome:
    """A finished run: its folder, summary and session (ledger, final weights)."""

    run_dir: Path
    summary: dict[str, Any]
    session: RunSession


def quiet_flower() -> None:
    """Keep Flower's per-round INFO logs out of the progress display (warnings still show)."""
    logging.getLogger("flwr").setLevel(logging.WARNING)


@contextmanager
def flower_keeps_callers_ray() -> Iterator[None]:
    """Inside this block, a Flower simulation leaves a Ray session it did not start running.

    Flower's ``RayBackend.terminate`` ends its actors and then calls ``ray.shutdown()`` even when
    Ray was up before the run (a notebook's session, a sweep, a test session): the caller's next
    Ray work would pay a fresh start (8-10 s on 2 cores) and lose its actors. When Ray is
    initialised on entry, the backend's teardown here ends only Flower's actors; when it is not,
    Flower starts and ends Ray as usual.
    """
    import ray

    if not ray.is_initialized():
        yield
        return
    from flwr.server.superlink.fleet.vce.backend.raybackend import RayBackend

    original = RayBackend.terminate

    def terminate_actors_only(backend: RayBackend) -> None:
        if backend.pool:
            backend.pool.terminate_all_actors()

    RayBackend.terminate = terminate_actors_only  # type: ignore[method-assign]
    try:
        yield
    finally:
        RayBackend.terminate = original  # type: ignore[method-assign]


def run_on_flower_engine(session: RunSession) -> None:
    """Run on Flower's own simulation engine (Ray backend; one budget for every client); a Ray
    session that is up before the run stays up after it (:func:`flower_keeps_callers_ray`)."""
    from flwr.simulation import run_simulation

    from fedsplit.clients.app import make_client_app
    from fedsplit.simulation.warm_actors import release_idle

    release_idle()  # Flower's actors need the CPUs that warm fedsplit actors would hold
    cfg = session.cfg
    init_args: dict[str, Any] = {"include_dashboard": False}
    if cfg.engine.ray_address:
        init_args["address"] = cfg.engine.ray_address
    elif cfg.engine.num_cpus:
        init_args["num_cpus"] = cfg.engine.num_cpus
    # Flower 1.41 warns that run_simulation is deprecated in favour of `flwr run`: advice to
    # fedsplit's maintainers (this engine's API), nothing about the user's run.
    with _without_flower_warning("`run_simulation` function is deprecated"), flower_keeps_callers_ray():
        run_simulation(
            server_app=make_server_app(session),
            client_app=make_client_app(config_json=config_to_json(cfg)),
            num_supernodes=cfg.num_terminals,
            backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}, "init_args": init_args},
        )


#: The largest data (pool and test set, bytes; partitions) that travels to the actors with the
#: ClientApp (:func:`data_for_actors`): pickled once per actor, its partitions drawn here first.
ACTOR_DATA_MAX_BYTES = 32 * 2**20
ACTOR_DATA_MAX_PARTITIONS = 256


def data_for_actors(data: FederatedData) -> FederatedData | None:
    """The run's data for its actors, when it is small enough to send: with its partitions drawn
    (:meth:`~fedsplit.data.FederatedData.with_drawn_partitions`), so an actor builds its task on it
    without importing scikit-learn or flwr-datasets (3-4 s of an actor's first message on this
    project's 2-core machine, the digits runs'). None for larger data, which each actor loads from
    disk itself, and for generated data, which has no pool to send."""
    if data.is_generated or data.num_partitions > ACTOR_DATA_MAX_PARTITIONS or data.nbytes > ACTOR_DATA_MAX_BYTES:
        return None
    return data.with_drawn_partitions()


def run_on_fedsplit_engine(session: RunSession) -> None:
    """Run on fedsplit's engine (Ray actors with per-device budgets); the actors get the run's
    data with their ClientApp when it is small (:func:`data_for_actors`)."""
    from fedsplit.clients.app import make_client_app
    from fedsplit.simulation.engine import RayEngine

    cfg = session.cfg
    config_json = config_to_json(cfg)
    app = make_client_app(config_json=config_json, data=data_for_actors(task_for(config_json).data))
    with RayEngine.from_run_config(cfg, app) as engine:
        session.engine_info = engine.describe()
        try:
            run_server(engine.grid(), session)
        finally:
            session.engine_info["actor_restarts"] = engine.actor_restarts


def run_on_serial_engine(session: RunSession) -> None:
    """Run on fedsplit's engine without Ray: every message in this process, one after another."""
    from fedsplit.clients.app import make_client_app
    from fedsplit.simulation.engine import SerialEngine

    cfg = session.cfg
    engine = SerialEngine(make_client_app(config_json=config_to_json(cfg)), session.population)
    session.engine_info = engine.describe()
    run_server(engine.grid(), session)


ENGINES = {"flower": run_on_flower_engine, "fedsplit": run_on_fedsplit_engine, "serial": run_on_serial_engine}


def compression_extra(strategy: Any) -> dict[str, Any]:
    """Uplink compression totals of a run, for ``summary.json``; empty without compression.

    Reads :meth:`~fedsplit.strategies.compression.CompressedStrategy.traffic_summary`, i.e. the
    ``fedsplit.payload-bytes`` / ``fedsplit.dense-bytes`` accounting of every accepted or rejected
    train reply: ``compression_ratio`` is the fp32 size of the uplink updates over the bytes of
    their compressed payloads (whole rounds, all clients).

    Parameters
    ----------
    strategy : Any
        The run's (wrapped) strategy, ``RunSession.strategy``.
    """
    traffic_summary = getattr(strategy, "traffic_summary", None)
    if not callable(traffic_summary):
        return {}
    traffic = traffic_summary()
    if not traffic.get("up-bytes"):
        return {}
    return {
        "compression_ratio": float(traffic["up-ratio"]),
        "uplink_payload_bytes": int(traffic["up-bytes"]),
        "uplink_dense_bytes": int(traffic["up-dense-bytes"]),
    }


def simulate(cfg: RunConfig, *, write: bool = True, engine: Any = None, resume: Path | None = None) -> RunOutcome:
    """Train ``cfg`` on its engine and write the run folder.

    Parameters
    ----------
    cfg : RunConfig
        A validated configuration.
    write : bool
        Write the run folder (``cfg.out_dir/<run_name>``) and print the closing table.
    engine : RayEngine, optional
        An already started fedsplit engine to run on (its actors are kept for the caller's next
        run, e.g. a sweep); by default ``cfg.engine`` starts one for this run.
    resume : Path, optional
        The folder of a run of ``cfg`` to continue (``fedsplit simulate --resume``): it goes on
        after the round of its ``checkpoints/resume.pt`` (from round 1 if it has none) and its
        folder is written, not a new one. With ``cfg.progress`` a line on stderr says from where.

    Raises
    ------
    ResumePointError
        ``resume``'s ``checkpoints/resume.pt`` is there but unreadable (before any engine starts).
    """
    quiet_flower()
    quiet_ray()
    session = RunSession.from_config(cfg)
    if engine is None and cfg.engine.name == "fedsplit":  # before a run folder is made for nothing
        import ray

        from fedsplit.simulation.engine import check_local_budgets, check_ray_reachable

        if not ray.is_initialized():
            check_ray_reachable(cfg.engine.ray_address)
            if not cfg.engine.ray_address:  # ClusterTooSmallError: a device class the local Ray cannot host
                check_local_budgets(session.population, cfg.engine.num_cpus)
    task_for(config_to_json(cfg))  # the data and model, built once here: a DataError before any run folder
    if resume is not None:
        run_dir = Path(resume)
        check_unfinished(run_dir)  # ResumePointError: its summary.json says it ended
        session.checkpoint_dir = run_dir / "checkpoints"
        session.resume_from = read_resume_point(session.checkpoint_dir / RESUME_FILE)  # ResumePointError: unreadable
        if cfg.progress:  # before the progress lines, on their stream
            print(resuming_line(run_dir, session.resume_from, cfg.rounds), file=sys.stderr, flush=True)
    elif write:
        run_dir = make_run_dir(cfg)
        session.checkpoint_dir = run_dir / "checkpoints"
        dump_config(cfg, run_dir / "config.toml")  # now: a run killed before its end can be resumed
    else:
        run_dir = Path(cfg.out_dir)
    start = time.perf_counter()
    done_rounds = session.resume_from.round if session.resume_from is not None else 0
    with RoundProgress(cfg.rounds, enabled=cfg.progress, done_rounds=done_rounds) as progress:
        session.on_round = progress.on_round
        if engine is not None:
            session.engine_info = engine.describe()
            run_server(engine.grid(), session)
        else:
            ENGINES[cfg.engine.name](session)
    wall_s = time.perf_counter() - start
    if session.error is not None:
        raise session.error
    if len(session.ledger.rounds) != (session.stopped["after_round"] if session.stopped else cfg.rounds):
        raise RuntimeError(
            f"the run stopped after {len(session.ledger.rounds)} of {cfg.rounds} rounds (see the log above)"
        )
    extra: dict[str, Any] = {"engine": cfg.engine.name, "terminals": cfg.num_terminals, **session.engine_info}
    extra.update(compression_extra(session.strategy))
    extra.update(privacy_extra(cfg, session.strategy, session.ledger))
    if session.split_cut is not None:
        extra["split_cut"] = session.split_cut  # the cut trained with (what split.cut = auto chose)
    if session.stopped:
        extra["stopped"] = dict(session.stopped)  # why the run ended before cfg.rounds
    summary = summarize(session.ledger, wall_s, extra)
    if write or resume is not None:
        write_run_folder(run_dir, cfg, session.ledger, summary, session.final_state)
        if cfg.progress:
            print_summary(summary, str(run_dir))
    return RunOutcome(run_dir=run_dir, summary=summary, session=session)
