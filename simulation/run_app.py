"""``fedsplit run-app``: run any Flower ServerApp/ClientApp pair on fedsplit's engine, unchanged.

The apps are the ones written for ``flwr run`` (``@app.main()`` ServerApp, ``@app.train()``
ClientApp); fedsplit hosts the ClientApp on its Ray actors with per-device budgets, hands the
ServerApp a metered Grid, and writes the ledgers (``clients.csv``, ``rounds.csv``) of what ran.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import tomllib
import traceback
from collections.abc import Collection
from pathlib import Path
from typing import Any

from flwr.app import Context, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import ServerApp
from ray import cloudpickle as ray_cloudpickle

from fedsplit.config.errors import ActorStartError, ClusterTooSmallError, RayUnreachableError
from fedsplit.devices import Population, resolve_profiles
from fedsplit.cli_errors import print_error
from fedsplit.ledger import Ledger
from fedsplit.report import fresh_folder, shown_path


class AppLoadError(ValueError):
    """An app reference that does not load; the message names it and why."""


def load_object(ref: str, kind: type) -> Any:
    """Load ``module:attribute`` and check it is a ``kind`` instance."""
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise AppLoadError(f"{ref!r}: expected MODULE:ATTRIBUTE, e.g. my_app.server_app:app")
    if module_name.endswith(".py") or "/" in module_name or "\\" in module_name:
        dotted = module_name.removesuffix(".py").replace("\\", "/").strip("/").replace("/", ".")
        raise AppLoadError(f"{ref!r}: name the module, not its file: {dotted}:{attr} (run from the folder above it)")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - reported to the user as is
        raise AppLoadError(f"{ref!r}: cannot import {module_name!r} ({type(exc).__name__}: {exc})") from None
    obj = getattr(module, attr, None)
    if not isinstance(obj, kind):
        raise AppLoadError(f"{ref!r}: {attr!r} is not a flwr {kind.__name__}")
    # Ship the app's code to the Ray workers with the app itself, so an app that is not installed
    # (a folder on the user's path) runs on actors that cannot import it.
    top = sys.modules[module_name.split(".")[0]]
    if not getattr(top, "__file__", "").startswith(sys.prefix):
        ray_cloudpickle.register_pickle_by_value(top)
    return obj


def parse_devices(text: str | None, nodes: int, known: Collection[str] = ()) -> dict[str, int]:
    """``"raspberry-pi-4=6,laptop=4"`` -> counts; default: all ``nodes`` are laptops.

    Raises :class:`AppLoadError` for fewer than one node, a count that is not an integer >= 0,
    a profile name not in ``known`` (when given), or counts that do not add up to ``nodes``.
    """
    if nodes < 1:
        raise AppLoadError(f"--nodes {nodes}: at least 1 terminal")
    if not text:
        return {"laptop": nodes}
    counts: dict[str, int] = {}
    for part in text.split(","):
        name, _, count = part.partition("=")
        name = name.strip()
        try:
            counts[name] = int(count)
        except ValueError:
            raise AppLoadError(f"--devices {text!r}: expected NAME=COUNT[,NAME=COUNT...]") from None
        if counts[name] < 0:
            raise AppLoadError(f"--devices {text!r}: {name}={counts[name]}: a count is an integer >= 0")
        if known and name not in known:
            raise AppLoadError(f"--devices {text!r}: unknown device profile {name!r} (known: {', '.join(sorted(known))})")
    if sum(counts.values()) != nodes:
        raise AppLoadError(f"--devices {text!r}: counts add up to {sum(counts.values())}, not --nodes {nodes}")
    return counts


def parse_run_config(items: list[str]) -> dict[str, Any]:
    """``key=value`` strings (TOML values) -> Flower run config."""
    config: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise AppLoadError(f"--run-config {item!r}: expected KEY=VALUE")
        try:
            config[key.strip()] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            config[key.strip()] = raw
    return config


def run_app(
    server_ref: str,
    client_ref: str,
    *,
    nodes: int,
    devices: str | None = None,
    run_config: dict[str, Any] | None = None,
    ray_address: str | None = None,
    seed: int = 0,
    ledger: Ledger | None = None,
) -> Ledger:
    """Run a third-party app pair on fedsplit's engine and return the ledger of what ran.

    ``ledger`` (a new one by default) is filled as rounds end, so a caller that passes its own
    still holds the finished rounds when the ServerApp raises or the run is interrupted; the
    round in progress is closed on the way out.
    """
    from fedsplit.simulation.engine import RayEngine
    from fedsplit.simulation.metered_grid import MeteredGrid

    server_app = load_object(server_ref, ServerApp)
    client_app = load_object(client_ref, ClientApp)
    profiles = resolve_profiles()
    population = Population(parse_devices(devices, nodes, profiles), profiles)
    ledger = Ledger() if ledger is None else ledger
    with RayEngine(client_app, population, run_config=run_config, ray_address=ray_address) as engine:
        grid = MeteredGrid(
            engine.grid(), population, ledger, seed=seed, partition_of=engine.partition_of,
            emulate_availability=False, auto_rounds=True,
        )
        context = Context(
            run_id=engine.run_id, node_id=SUPERLINK_NODE_ID, node_config={}, state=RecordDict(), run_config=dict(run_config or {})
        )
        try:
            server_app(grid, context)
        finally:
            if grid.current_round > 0:
                grid.close_round()
    return ledger


#: Where ``run-app`` writes without ``--out``: a new timestamped folder per run below it.
DEFAULT_OUT_ROOT = Path("runs") / "run-app"
#: The files ``run-app`` writes in its folder.
LEDGER_FILES = ("clients.csv", "rounds.csv")


def output_dir(out: str | None) -> Path:
    """The folder this run writes its ledgers to: ``out`` when given (refused when it already
    holds a run's ledgers), else a new ``runs/run-app/<YYYYmmdd-HHMMSS>[-k]``.

    Raises
    ------
    AppLoadError
        When ``out`` already holds ``clients.csv`` or ``rounds.csv`` (they would be overwritten).
    """
    if out is not None:
        path = Path(out)
        if existing := [name for name in LEDGER_FILES if (path / name).exists()]:
            raise AppLoadError(f"--out {out}: already holds a run's {' and '.join(existing)}; name a new folder (or remove them)")
        return path
    return fresh_folder(DEFAULT_OUT_ROOT)


def write_ledgers(ledger: Ledger, out: Path) -> None:
    """Write ``clients.csv`` and ``rounds.csv`` of ``ledger`` into ``out`` (made if missing)."""
    out.mkdir(parents=True, exist_ok=True)
    ledger.write_clients_csv(out / "clients.csv")
    ledger.write_rounds_csv(out / "rounds.csv")


def cmd_run_app(args: argparse.Namespace) -> int:
    """Handler of ``fedsplit run-app``."""
    sys.path.insert(0, str(Path.cwd()))
    ledger = Ledger()
    try:
        out = output_dir(args.out)
        run_app(
            args.server_app,
            args.client_app,
            nodes=args.nodes,
            devices=args.devices,
            run_config=parse_run_config(args.run_config or []),
            ray_address=args.ray_address,
            ledger=ledger,
        )
    except AppLoadError as exc:
        print_error("run-app", str(exc))
        return 2
    except (RayUnreachableError, ClusterTooSmallError):  # before any round: the command prints them in one line
        raise
    except BaseException as exc:  # the ServerApp raised, or Ctrl-C: keep the rounds that ran
        if ledger.rounds:
            write_ledgers(ledger, out)
            kept = f"the ledgers of its {len(ledger.rounds)} finished round(s) are in {shown_path(out)}"
        else:
            kept = "no round finished, nothing was written"
        if isinstance(exc, KeyboardInterrupt):
            print(f"fedsplit run-app: interrupted; {kept}", file=sys.stderr)
            raise  # fedsplit.cli.main: exit 130
        if isinstance(exc, ActorStartError):  # the engine's, not the app's: one line, as fedsplit.cli.main prints it
            print_error("run-app", f"engine: {exc}; {kept}")
            return 3
        traceback.print_exc()  # the app's own code: its stack is what its developer needs
        print_error("run-app", f"the ServerApp raised {type(exc).__name__}: {exc}; {kept}")
        return 1
    write_ledgers(ledger, out)
    for record in ledger.rounds.values():
        print(f"round={record.round} clients={record.selected} ok={record.aggregated} failed={record.failed} "
              f"bytes_up={record.bytes_up} bytes_down={record.bytes_down} sim_s={record.sim_s:.4f}")
    print(f"out={shown_path(out)} (clients.csv: one row per terminal and exchange; rounds.csv: one per round)")
    return 0
