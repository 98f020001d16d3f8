"""The model catalog: trained models measured for the inference scheduler.

``catalog.json`` is what training hands to the scheduler (``fedsplit scenario --catalog``). Its
format is the JSON schema shipped with :mod:`fedsplit.inference.catalog`; every catalog written
here is validated against it first. Per model:

* ``name``, ``kind`` (:data:`fedsplit.report.members.KINDS`), ``parent`` (of a derived or distilled member),
  ``architecture``, ``width``;
* ``input_shape`` ``[C, H, W]`` (channels and the model's own input resolution), ``input_bits``
  (``C * H * W * bits_per_value``: the raw input a terminal uploads);
* ``params`` and ``nonzero_params`` (pruned members keep their shape, not their non-zeros);
* ``flops``: one inference, batch of one, counted with ``torch.utils.flop_counter`` (an int8
  member: the float graph's count, the same multiply-adds in integer arithmetic);
* ``accuracy`` on the run's held-out server test set (``test_samples`` images) at the member's own
  resolution, measured by running the model;
* ``cpu_latency_s``: median of ``cpu_latency_repeats`` batch-1 inferences on this host's CPU, one
  thread (``host`` names the CPU);
* ``devices``: per device profile, the modelled ``latency_s = flops / flops_per_s`` and
  ``energy_j = kappa * cpu_hz**2 * cycles`` (:func:`fedsplit.devices.compute_cost`).

The catalog measures trained runs, so it comes after :mod:`fedsplit.learning` in the data flow
(config -> data/models -> learning -> report); it lives with the other readers and writers of run
folders rather than in :mod:`fedsplit.models`, which training itself imports.
"""

from __future__ import annotations

import json
import math
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedsplit.devices import compute_cost, resolve_profiles
from fedsplit.inference.catalog import CATALOG_FORMAT, validate_catalog
from fedsplit.models.compress import count_nonzero_parameters
from fedsplit.models.flops import inference_flops
from fedsplit.report.members import (
    accuracy,
    cpu_latency_s,
    load_member,
    read_run_config,
)


def host_name() -> str:
    """The CPU the latencies are measured on (model name from ``/proc/cpuinfo`` where readable)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def catalog_entry(run_dir: str | Path, bits_per_value: int = 8, latency_repeats: int = 50) -> dict[str, Any]:
    """Measure one member's folder (a finished run, or a derived member).

    Parameters
    ----------
    run_dir : str or Path
        ``config.toml`` + ``checkpoints/final.pt`` (+ ``member.json`` for a derived member).
    bits_per_value : int
        Bits per input value a terminal uploads.
    latency_repeats : int
        Timed batch-1 runs behind the median CPU latency.
    """
    if bits_per_value < 1:
        raise ValueError(f"bits_per_value = {bits_per_value}: must be >= 1")
    member = load_member(run_dir)
    cfg = member.cfg
    test = member.task.data.server_test
    input_shape = member.input_shape
    flops = inference_flops(member.float_model, input_shape)
    # an int8 member's float_model is its architecture only: its parent's count is in member.json
    nonzero = int(member.info["nonzero_params"]) if member.kind == "int8" else count_nonzero_parameters(member.float_model)
    profiles = resolve_profiles(cfg.profiles)
    devices = {}
    for name, profile in sorted(profiles.items()):
        cost = compute_cost(profile, flops)
        devices[name] = {"latency_s": cost.compute_s, "energy_j": cost.energy_j}
    entry: dict[str, Any] = {
        "name": member.name,
        "kind": member.kind,
        "architecture": cfg.model.name,
        "width": float(cfg.model.width),
        "input_shape": list(input_shape),
        "input_bits": math.prod(input_shape) * bits_per_value,
        "bits_per_value": bits_per_value,
        "params": sum(p.numel() for p in member.float_model.parameters()),  # frozen ones too
        "nonzero_params": nonzero,
        "flops": flops,
        "accuracy": accuracy(member.model, test.x, test.y),
        "test_samples": int(test.y.shape[0]),
        "cpu_latency_s": cpu_latency_s(member.model, test.x[:1], repeats=latency_repeats),
        "cpu_latency_repeats": latency_repeats,
        "devices": devices,
        "run_dir": str(member.run_dir),
    }
    if "parent" in member.info:
        entry["parent"] = member.info["parent"]
    return entry


def build_catalog(run_dirs: Sequence[str | Path], bits_per_value: int = 8, latency_repeats: int = 50) -> dict[str, Any]:
    """Measure member folders into a validated catalog, sorted by FLOPs (then accuracy)."""
    entries = [catalog_entry(d, bits_per_value, latency_repeats) for d in run_dirs]
    names = [m["name"] for m in entries]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        name = duplicates[0]
        folders = ", ".join(str(d) for d, m in zip(run_dirs, entries) if m["name"] == name)
        raise ValueError(f"catalog: model names must be unique: {folders} are all named {name!r} (a member is named by "
                         "its run's run_name, else its folder; train them with distinct --set run_name=...)")
    models = sorted(entries, key=lambda m: (m["flops"], m["accuracy"], m["name"]))
    datasets = sorted({read_run_config(d).data.name for d in run_dirs})
    catalog = {"schema": CATALOG_FORMAT, "dataset": ", ".join(datasets), "host": host_name(), "models": models}
    return validate_catalog(catalog)


def write_catalog(
    run_dirs: Sequence[str | Path], out: str | Path, bits_per_value: int = 8, latency_repeats: int = 50
) -> dict[str, Any]:
    """Build ``catalog.json`` from member folders (see :func:`build_catalog`) and write it.

    The file holds each ``run_dir`` relative to its own folder (``members/cnn-w0.5``), so the
    catalog and its runs can move together; :func:`fedsplit.inference.catalog.read_catalog`
    resolves them. The returned catalog keeps the paths as given.
    """
    catalog = build_catalog(run_dirs, bits_per_value, latency_repeats)
    folder = Path(out).resolve().parent
    stored = {**catalog, "models": [{**m, "run_dir": os.path.relpath(Path(m["run_dir"]).resolve(), folder)} for m in catalog["models"]]}
    Path(out).write_text(json.dumps(stored, indent=2) + "\n", encoding="utf-8")
    return catalog


def catalog_rows(catalog: dict[str, Any]) -> list[dict[str, Any]]:
    """One flat row per model (the ``catalog show`` table and the pipeline's CSV)."""
    rows = []
    for m in catalog["models"]:
        c, h, w = m["input_shape"]
        row = {
            "name": m["name"], "kind": m["kind"], "resolution": f"{h}x{w}", "channels": c,
            "input_bits": m["input_bits"], "params": m["params"], "nonzero_params": m["nonzero_params"],
            "flops": m["flops"], "accuracy": m["accuracy"], "cpu_latency_ms": 1e3 * m["cpu_latency_s"],
        }
        for device, cost in m["devices"].items():
            row[f"{device}_ms"] = 1e3 * cost["latency_s"]
            row[f"{device}_mj"] = 1e3 * cost["energy_j"]
        rows.append(row)
    return rows


def catalog_tables(catalog: dict[str, Any], title: str | None = None) -> list[Any]:
    """Two :class:`rich.table.Table` of a catalog: the measured models, then modelled costs per profile.

    The first has one row per model (input ``CxHxW``, input bits, parameters, non-zero
    parameters, FLOPs, accuracy, median CPU latency [ms]); the second the modelled
    ``latency [ms] / energy [mJ]`` of each model on each device profile.
    """
    from rich.table import Table

    models = catalog["models"]
    measured = Table(title=title)
    for column in ("model", "kind", "input", "bits", "params", "nonzero", "FLOPs", "accuracy", "CPU ms"):
        measured.add_column(column, justify="left" if column in ("model", "kind") else "right")
    for m in models:
        c, h, w = m["input_shape"]
        measured.add_row(
            m["name"], m["kind"], f"{c}x{h}x{w}", f"{m['input_bits']:,}", f"{m['params']:,}",
            f"{m['nonzero_params']:,}", f"{m['flops']:,.0f}", f"{m['accuracy']:.4f}", f"{1e3 * m['cpu_latency_s']:.3f}",
        )
    devices = sorted({d for m in models for d in m["devices"]})
    modelled = Table(title="modelled on each device profile: latency ms / energy mJ")
    modelled.add_column("model")
    for device in devices:
        modelled.add_column(device, justify="right")
    for m in models:
        cells = [m["name"]]
        for device in devices:
            cost = m["devices"].get(device)
            cells.append("-" if cost is None else f"{1e3 * cost['latency_s']:.3g} / {1e3 * cost['energy_j']:.3g}")
        modelled.add_row(*cells)
    return [measured, modelled]


__all__ = ["build_catalog", "catalog_entry", "catalog_rows", "catalog_tables", "host_name", "write_catalog"]
