"""The run folder: resolved config, per-round and per-client CSVs, ``summary.json``, plots.

Layout::

    <out_dir>/<run_name>/
        config.toml      resolved configuration
        rounds.csv       one line per round (RoundRecord + cumulative simulated time + metrics)
        clients.csv      one line per (round, phase, terminal) exchange (LedgerRow)
        summary.json     totals, per-device-class means, final metrics, wall time
        plots/*.png
        checkpoints/     final global weights (``final.pt``)
"""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import torch

from fedsplit.config import RunConfig, dump_config
from fedsplit.ledger import Ledger, RoundRecord
from fedsplit.report.plots import plot_run


def shown_path(path: Path) -> str:
    """``path`` as printed to users: relative to the working directory when it lies below it."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def fresh_folder(parent: str | Path, name: str | None = None) -> Path:
    """``parent/name`` (default name: the date and time, ``YYYYmmdd-HHMMSS``), or ``name-1``,
    ``name-2`` ... when that folder exists and holds anything: a path no earlier run wrote to."""
    name = name or time.strftime("%Y%m%d-%H%M%S")
    path, suffix = Path(parent) / name, 1
    while path.exists() and any(path.iterdir()):
        path, suffix = Path(parent) / f"{name}-{suffix}", suffix + 1
    return path


def make_run_dir(cfg: RunConfig) -> Path:
    """Create (and return) a fresh run folder for ``cfg`` (:func:`fresh_folder` of ``out_dir`` and ``run_name``)."""
    path = fresh_folder(cfg.out_dir, cfg.run_name or None)
    (path / "plots").mkdir(parents=True, exist_ok=True)
    (path / "checkpoints").mkdir(exist_ok=True)
    return path


def failure_warning(ledger: Ledger) -> str:
    """A sentence when more than half of the run's exchanges failed or were rejected, else ''."""
    rows = ledger.rows
    bad = [r for r in rows if r.status in ("failed", "rejected")]
    if not rows or 2 * len(bad) <= len(rows):
        return ""
    reasons = Counter(f"{r.status}: {r.reason}" if r.reason else r.status for r in bad)
    reason, count = reasons.most_common(1)[0]
    return (
        f"{len(bad)} of {len(rows)} exchanges failed or were rejected; the metrics below are not a "
        f"trained result (most common: {reason}, {count} times)"
    )


def gpu_memory(ledger: Ledger) -> dict[str, int]:
    """Peak CUDA memory per device class over the run's exchanges, bytes (classes that reported one)."""
    peaks: dict[str, int] = {}
    for row in ledger.rows:
        if row.gpu_mem_bytes > 0:
            peaks[row.device] = max(peaks.get(row.device, 0), row.gpu_mem_bytes)
    return dict(sorted(peaks.items()))


def steady_wall(rounds: list[RoundRecord]) -> dict[str, float]:
    """The first round's wall seconds and the mean of the later rounds' (empty with fewer than two rounds).

    The first round also starts the engine (Ray, its actors, their imports: seconds on a laptop),
    so the run's mean round says little about how long a round takes once running; the mean after
    the first does.
    """
    if len(rounds) < 2:
        return {}
    later = [r.wall_s for r in rounds[1:]]
    return {"first_round_wall_s": rounds[0].wall_s, "mean_round_wall_after_first_s": sum(later) / len(later)}


def summarize(ledger: Ledger, wall_s: float, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Totals and per-device-class means derived from the ledger."""
    rounds = [ledger.rounds[r] for r in sorted(ledger.rounds)]
    by_device: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for row in ledger.rows:
        if row.phase != "train":
            continue
        d = by_device[row.device]
        d["exchanges"] += 1
        d["compute_s"] += row.compute_s
        d["comm_s"] += row.comm_s
        d["energy_j"] += row.energy_j
        d["bytes_up"] += row.bytes_up
        d["bytes_down"] += row.bytes_down
        d["stragglers"] += row.status == "straggler"
    device_means = {
        name: {
            "exchanges": int(v["exchanges"]),
            "mean_compute_s": v["compute_s"] / v["exchanges"],
            "mean_comm_s": v["comm_s"] / v["exchanges"],
            "mean_energy_j": v["energy_j"] / v["exchanges"],
            "mean_bytes_up": v["bytes_up"] / v["exchanges"],
            "stragglers": int(v["stragglers"]),
        }
        for name, v in sorted(by_device.items())
    }
    final_metrics = rounds[-1].metrics if rounds else {}
    summary: dict[str, Any] = {}
    warning = failure_warning(ledger)
    if warning:
        summary["warning"] = warning  # first: a run that mostly failed must not read as a result
    summary |= {
        "rounds": len(rounds),
        "final_metrics": final_metrics,
        "sim_time_s": sum(r.sim_s for r in rounds),
        "mean_round_sim_s": sum(r.sim_s for r in rounds) / max(len(rounds), 1),
        "wall_time_s": wall_s,
        "mean_round_wall_s": wall_s / max(len(rounds), 1),
        **steady_wall(rounds),
        "bytes_up": sum(r.bytes_up for r in rounds),
        "bytes_down": sum(r.bytes_down for r in rounds),
        "energy_j": sum(r.energy_j for r in rounds),
        "flops": sum(r.flops for r in rounds),
        "stragglers": sum(r.stragglers for r in rounds),
        "failed": sum(r.failed for r in rounds),
        "rejected": sum(r.rejected for r in rounds),
        "server_s": sum(r.server_s for r in rounds),
        "server_flops": sum(r.server_flops for r in rounds),
        "server_energy_j": sum(r.server_energy_j for r in rounds),
        "devices": device_means,
    }
    peaks = gpu_memory(ledger)
    if peaks:  # only runs whose terminals computed on CUDA
        summary["max_gpu_mem_bytes"] = peaks
        for name, peak in peaks.items():
            if name in device_means:
                device_means[name]["max_gpu_mem_bytes"] = peak
    summary.update(extra or {})
    return summary


def write_run_folder(path: Path, cfg: RunConfig, ledger: Ledger, summary: dict[str, Any], state_dict: dict | None) -> None:
    """Write everything a finished run leaves behind into ``path``."""
    dump_config(cfg, path / "config.toml")
    ledger.write_rounds_csv(path / "rounds.csv")
    ledger.write_clients_csv(path / "clients.csv")
    (path / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True), encoding="utf-8")
    plot_run(ledger, path / "plots")
    if state_dict is not None:
        torch.save(state_dict, path / "checkpoints" / "final.pt")
