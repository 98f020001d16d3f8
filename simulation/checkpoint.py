"""Resume points: everything a killed run needs to continue as if it had never stopped.

A resume point is written to ``<run folder>/checkpoints/resume.pt`` after a round (every
``training.resume_every`` rounds), atomically: a temporary file is written, flushed to disk and
renamed over the previous one, so a process killed at any moment leaves either the previous
point or the new one. ``fedsplit simulate --resume RUN_DIR`` rebuilds the run from its
``config.toml`` and continues after the saved round.

What it holds, and where each piece lives during a run:

- ``round``: the last round completed (the loop continues with the next);
- ``protocol``: the server side of training, i.e. the ``__dict__`` of the training protocol and of
  every strategy it wraps (:func:`protocol_objects`): the global weights,
  a Flower strategy's own state (FedAdam / FedYogi / FedAdagrad keep ``current_arrays``, ``m_t``,
  ``v_t``; FedAvgM ``current_arrays`` and ``momentum_vector``), compression's server state (the
  downlink reference and its error feedback, the replica round of every terminal, the traffic
  so far), split learning's server parts and optimisers, asynchronous protocols' event queue.
  Functions and bound methods are left out (the rebuilt run has its own), and so are objects
  whose class sets ``rebuilt_by_run = True`` (configuration-derived helpers); the run's Grid is
  saved by reference and restored as the new run's. One pickle for all of them, so objects
  shared between two levels stay shared;
- ``contexts``: every terminal's ``Context.state`` kept by fedsplit's engine (compression's
  error-feedback residuals and codec state, split learning's terminal parts, DP accountants);
  None on Flower's engine, whose contexts fedsplit cannot reach;
- ``ledger``: all rows and round records so far;
- ``rng``: the states of Python's ``random`` (Flower's client sampling), NumPy's global generator
  and torch's CPU generator in the server process;
- ``sim_elapsed_s``: the simulated seconds so far.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import os
import pickle
import random
import signal
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedsplit.ledger import Ledger

RESUME_FILE = "resume.pt"
FORMAT_VERSION = 1

_CODE = (types.FunctionType, types.MethodType, types.BuiltinFunctionType, types.BuiltinMethodType, functools.partial)
_METERED, _INNER = "fedsplit.metered-grid", "fedsplit.inner-grid"


class NotResumable(RuntimeError):
    """The protocol's state cannot be saved (e.g. it lives in a thread); the message says why."""


class ResumePointError(ValueError):
    """A resume point that cannot be read (truncated, corrupt, another format version).

    The message is one line naming the file, what is wrong with it and what to do; the
    ``fedsplit`` command prints it after ``fedsplit <command>: error:`` and exits with status 2.
    """


@dataclass
class ResumePoint:
    """A run's state after ``round`` (see the module docstring for each field)."""

    round: int
    protocol: bytes
    ledger: Ledger
    contexts: dict[int, RecordDict] | None
    rng: dict[str, Any]
    sim_elapsed_s: float
    version: int = FORMAT_VERSION


def protocol_objects(protocol: Any) -> dict[str, Any]:
    """The protocol and every strategy it wraps, by attribute path.

    Followed: each attribute that holds a Flower :class:`~flwr.serverapp.strategy.Strategy`, at
    any depth (fedsplit's wrappers keep theirs in ``inner``, Flower's DP wrappers in
    ``strategy``), each object once.
    """
    objects: dict[str, Any] = {"protocol": protocol}
    seen, queue = {id(protocol)}, [("protocol", protocol)]
    while queue:
        path, obj = queue.pop(0)
        for name, value in sorted(vars(obj).items()):
            if isinstance(value, Strategy) and id(value) not in seen:
                seen.add(id(value))
                objects[f"{path}.{name}"] = value
                queue.append((f"{path}.{name}", value))
    return objects


def _saved_attributes(obj: Any) -> dict[str, Any]:
    """``obj.__dict__`` without code (functions, bound methods), without the chain's strategies and
    without what the rebuilt run makes afresh from its configuration (an object whose class says
    ``rebuilt_by_run = True``, e.g. FedCS's completion predictor); those keep the new run's value."""
    return {
        k: v
        for k, v in vars(obj).items()
        if not isinstance(v, _CODE + (Strategy,)) and getattr(type(v), "rebuilt_by_run", False) is not True
    }


class _Pickler(pickle.Pickler):
    def __init__(self, fh: io.BytesIO, grid: Any) -> None:
        super().__init__(fh, protocol=pickle.HIGHEST_PROTOCOL)
        self.grid = grid

    def persistent_id(self, obj: Any) -> str | None:
        if obj is self.grid:
            return _METERED
        if obj is getattr(self.grid, "inner", None):
            return _INNER
        if isinstance(obj, Grid):
            raise NotResumable(f"a {type(obj).__name__} other than the run's grid is referenced")
        return None


class _Unpickler(pickle.Unpickler):
    def __init__(self, fh: io.BytesIO, grid: Any) -> None:
        super().__init__(fh)
        self.grid = grid

    def persistent_load(self, pid: str) -> Any:
        if pid == _METERED:
            return self.grid
        if pid == _INNER:
            return self.grid.inner
        raise pickle.UnpicklingError(f"unknown reference {pid!r}")


def capture_protocol(protocol: Any, grid: Any) -> bytes:
    """The server-side state of ``protocol`` (and its strategies) as bytes.

    Raises
    ------
    NotResumable
        Some of the state cannot be pickled (a thread, a lock, a closure...).
    """
    state = {path: _saved_attributes(obj) for path, obj in protocol_objects(protocol).items()}
    fh = io.BytesIO()
    try:
        _Pickler(fh, grid).dump(state)
    except NotResumable:
        raise
    except Exception as exc:  # noqa: BLE001 - pickle raises TypeError, AttributeError, PicklingError...
        raise NotResumable(f"{type(protocol).__name__}: {type(exc).__name__}: {exc}") from exc
    return fh.getvalue()


def restore_protocol(protocol: Any, blob: bytes, grid: Any) -> None:
    """Put the state of :func:`capture_protocol` back into a freshly built ``protocol``.

    The protocol must have the same wrapper chain as the one captured.
    """
    state = _Unpickler(io.BytesIO(blob), grid).load()
    objects = protocol_objects(protocol)
    if set(state) != set(objects):
        raise ValueError(f"saved protocol objects {sorted(state)} do not match this run's {sorted(objects)}")
    for path, attributes in state.items():
        vars(objects[path]).update(attributes)


def rng_states() -> dict[str, Any]:
    """States of the server process's global generators: Python, NumPy, torch (CPU)."""
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore :func:`rng_states`."""
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])


def _engine_of(grid: Any) -> Any:
    return getattr(getattr(grid, "inner", grid), "engine", None)


def context_states(grid: Any) -> dict[int, RecordDict] | None:
    """Every terminal's ``Context.state`` kept by fedsplit's engine, by node id; None elsewhere."""
    engine = _engine_of(grid)
    contexts = getattr(engine, "contexts", None)
    if contexts is None:
        return None
    return {node: ctx.state for node, ctx in sorted(contexts.items())}


def restore_context_states(grid: Any, states: dict[int, RecordDict] | None) -> bool:
    """Give each terminal its saved ``Context.state``; False where the engine keeps no contexts."""
    engine = _engine_of(grid)
    if states is None or getattr(engine, "contexts", None) is None:
        return False
    for node, state in states.items():
        engine.context_of(node).state = state
    return True


def restore_ledger(ledger: Ledger, saved: Ledger) -> None:
    """Make ``ledger`` (the object the run's grid writes to) equal to ``saved``."""
    vars(ledger).clear()
    vars(ledger).update(vars(saved))


KILL_ENV = "FEDSPLIT_SIGKILL_AT"
"""Fault injection for resume tests: ``before-rename:R`` or ``after-rename:R`` makes the process
SIGKILL itself while writing round R's resume point, before or after the rename (the moments a
killed server can leave on disk, chosen exactly instead of raced with a timer)."""


def _kill_here(moment: str, server_round: int) -> None:
    """SIGKILL this process if :data:`KILL_ENV` names this moment of this round."""
    if os.environ.get(KILL_ENV) == f"{moment}:{server_round}":
        os.kill(os.getpid(), signal.SIGKILL)


def write_resume_point(path: Path, point: ResumePoint) -> None:
    """Write ``point`` to ``path`` atomically (temporary file, fsync, rename, fsync of the folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        torch.save(vars(point), fh)
        fh.flush()
        os.fsync(fh.fileno())
    _kill_here("before-rename", point.round)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    _kill_here("after-rename", point.round)


def _first_sentence(exc: BaseException, limit: int = 160) -> str:
    """``Type: message`` of ``exc`` on one line, up to its first sentence (torch's run on)."""
    text = " ".join(str(exc).split())
    text = text.split(". ", 1)[0].rstrip(".")
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def check_unfinished(run_dir: str | Path) -> None:
    """Refuse to resume a run that already finished (its ``summary.json`` is written when it ends):
    resuming would rewrite its results.

    Raises
    ------
    ResumePointError
        One line naming the folder.
    """
    if (Path(run_dir) / "summary.json").is_file():
        raise ResumePointError(f"--resume {run_dir}: that run already finished (its summary.json is there); nothing to resume")


def read_resume_point(path: Path) -> ResumePoint | None:
    """The resume point at ``path``, or None when there is none (a run killed before its first).

    Parameters
    ----------
    path : Path
        ``<run folder>/checkpoints/resume.pt``.

    Raises
    ------
    ResumePointError
        The file is there but cannot be read as a resume point of this fedsplit (truncated,
        corrupt, another format version); the message names it and says what to do.
    PermissionError
        The file cannot be opened (the ``fedsplit`` command prints it in one line too).
    """
    path = Path(path)
    if not path.is_file():
        return None
    run_dir = path.parent.parent
    what_to_do = (
        f"the run cannot continue from it; move that file aside and run `fedsplit simulate --resume {run_dir}` "
        "again to redo the run from round 1 in its folder"
    )
    try:
        fields = torch.load(path, map_location="cpu", weights_only=False)
    except PermissionError:
        raise
    except Exception as exc:  # noqa: BLE001 - EOFError, RuntimeError (zip), OSError, UnpicklingError...: all "corrupt"
        raise ResumePointError(f"{path}: unreadable resume point, truncated or corrupt ({_first_sentence(exc)}); {what_to_do}") from exc
    if not isinstance(fields, dict):
        raise ResumePointError(f"{path}: not a resume point (it holds a {type(fields).__name__}); {what_to_do}")
    if fields.get("version") != FORMAT_VERSION:
        raise ResumePointError(
            f"{path}: resume point format {fields.get('version')!r}, this fedsplit reads {FORMAT_VERSION}; "
            f"resume with the fedsplit that wrote it, or {what_to_do.split('; ', 1)[1]}"
        )
    expected = {f.name for f in dataclasses.fields(ResumePoint)}
    if set(fields) != expected:
        missing, extra = sorted(expected - set(fields)), sorted(set(fields) - expected)
        raise ResumePointError(f"{path}: not a complete resume point (missing {missing}, unexpected {extra}); {what_to_do}")
    return ResumePoint(**fields)


def resuming_line(run_dir: Path, point: ResumePoint | None, rounds: int) -> str:
    """What ``fedsplit simulate --resume`` says before it continues: ``resuming RUN_DIR after round
    N of M``, or that it starts from round 1 when the folder has no resume point (a run stopped
    before its first, or one whose unreadable point was moved aside)."""
    if point is None:
        return f"resuming {run_dir} from round 1 of {rounds}: no checkpoints/{RESUME_FILE} there"
    return f"resuming {run_dir} after round {point.round} of {rounds}"


__all__ = [
    "KILL_ENV",
    "RESUME_FILE",
    "NotResumable",
    "ResumePoint",
    "ResumePointError",
    "capture_protocol",
    "context_states",
    "protocol_objects",
    "read_resume_point",
    "restore_context_states",
    "restore_ledger",
    "restore_protocol",
    "resuming_line",
    "rng_states",
    "set_rng_states",
    "write_resume_point",
]
