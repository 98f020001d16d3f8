"""The ServerApp object named in ``pyproject.toml``'s ``[tool.flwr.app.components]`` (``flwr run .``).

The run configuration comes from Flower's run config: ``config-file`` (a fedsplit TOML file, may be
empty) and ``overrides`` (``;``-separated ``KEY=VALUE``, as with ``--set``). The ClientApp reads the
same two keys, so both sides build the same task. The run folder is written as by ``fedsplit simulate``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedsplit.config import RunConfig, load_config
from fedsplit.report import make_run_dir, summarize, write_run_folder
from fedsplit.simulation.server_app import RunSession, run_server

server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the configured federation on whatever Grid Flower provides."""
    path = str(context.run_config.get("config-file", "")) or None
    overrides = [o for o in str(context.run_config.get("overrides", "")).split(";") if o.strip()]
    cfg = load_config(path, overrides)
    session = RunSession.from_config(cfg)
    started = time.perf_counter()
    try:
        run_server(grid, session)
    except BaseException as exc:
        if session.ledger.rounds:  # the rounds done so far are kept, with the reason the run ended
            run_dir, _ = _write(cfg, session, started, {"error": f"{type(exc).__name__}: {exc}"})
            print(f"run_dir={run_dir}: the run failed after {len(session.ledger.rounds)} of {cfg.rounds} rounds; its ledgers are kept")
        raise  # Flower marks the run finished:failed with this exception (`fedsplit deploy run` exits 1)
    run_dir, summary = _write(cfg, session, started, {})
    print(f"run_dir={run_dir} final_accuracy={summary['final_metrics'].get('accuracy', float('nan')):.4f}")


def _write(cfg: RunConfig, session: RunSession, started: float, extra: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    """Write the run folder of ``session`` and return it with the summary; the folder is made now,
    so a run that fails before its first round leaves none. ``started``: ``perf_counter`` seconds."""
    run_dir = make_run_dir(cfg)
    extra = {"engine": "flwr-run", "terminals": cfg.num_terminals, **extra}
    if session.grid is not None and (measured := session.grid.measured.summary(session.population.profile_of)):
        extra["measured_profiles"] = measured  # SuperNodes with profile = "measure": probe and link fit
    if session.grid is not None and (nodes := session.grid.nodes_summary()):
        extra["nodes"] = nodes  # which SuperNode was which terminal, and the device class it declared
    summary = summarize(session.ledger, time.perf_counter() - started, extra)
    write_run_folder(run_dir, cfg, session.ledger, summary, session.final_state)
    return run_dir, summary
