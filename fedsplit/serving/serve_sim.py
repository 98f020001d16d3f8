"""Serving a schedule: each terminal's chosen model runs on held-out inputs at its own resolution.

The scheduler decides from numbers: each model's accuracy, input bits and edge cycles as the
scenario states them (from a catalog, :mod:`fedsplit.inference.catalog`). :func:`serve` checks
those numbers against the models themselves:

* **accuracy** — every chosen model is loaded from its catalog entry's run folder
  (:func:`fedsplit.report.members.load_member`: trained, pruned or int8) and classifies the
  held-out server test set of the run (the same images the catalog measured), taken at the
  dataset's native resolution and resized by each terminal to its model's input resolution
  (:func:`fedsplit.data.arrays.resize_images`), as a terminal would. Each terminal serves either
  every held-out image (``requests=0``: the realised accuracy of a model then equals the
  catalog's up to resize-then-normalise vs normalise-then-resize rounding, so a gap exposes a
  wrong checkpoint, resolution or name mapping) or ``requests`` images drawn with replacement (a
  sample: the gap then has a binomial standard error, reported). A serve set disjoint from the
  catalog's test set would measure generalisation, not the hand-over; on digits it would have
  to come out of the 1,437 images the terminals train on, or halve the 360 test images
  (standard error of one model's accuracy about 1.6 pp at 0.9), so it could not support a
  1 pp check.
* **latency** — the latency the allocation promised (the scheduler's ``T_i`` from the scenario's
  numbers) against the one modelled from what is served: the bits of the resized input tensor
  at the catalog's ``bits_per_value``, the FLOPs counted on the served model's architecture, the
  same cost constants (:class:`~fedsplit.inference.catalog.CatalogCosts`) and the same bandwidth
  and edge compute the schedule allocated. A difference means the scenario's models are not
  the catalog's (stale file, other constants). The median batch-1 CPU time of each served model
  on this host is reported next to them.

A scenario's terminals may carry an optional ``"device"`` label (the pipeline writes the device
class there); the scenario reader ignores it, the report groups by it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch

from fedsplit.inference.catalog import CatalogCosts
from fedsplit.inference.errors import ScenarioError
from fedsplit.inference.schedule import Schedule
from fedsplit.inference.system_model import Problem


@dataclass
class ServedTerminal:
    """What one terminal got: its model, the accuracy realised, and promised vs modelled latency.

    Attributes
    ----------
    terminal : int
        Index in the scenario.
    device : str
        The terminal's ``device`` label in the scenario ('' when it has none).
    model : str
        The chosen model.
    requests : int
        Held-out images it classified.
    catalog_accuracy, realised_accuracy : float
        The catalog's accuracy of the model, and the fraction of its requests it got right.
    promised_latency_s, modelled_latency_s : float
        The schedule's latency (scenario numbers) and the one modelled from the served model [s].
    served_input_bits : int
        Bits of one resized input at the catalog's bits per value.
    served_flops : int
        FLOPs of one inference of the served architecture (batch of one).
    cpu_latency_s : float
        Median batch-1 inference time of the served model on this host [s].
    """

    terminal: int
    device: str
    model: str
    requests: int
    catalog_accuracy: float
    realised_accuracy: float
    promised_latency_s: float
    modelled_latency_s: float
    served_input_bits: int
    served_flops: int
    cpu_latency_s: float


@dataclass
class ServeReport:
    """The outcome of serving a schedule (see the module docstring)."""

    terminals: list[ServedTerminal]
    feasible: bool
    solver: str
    accuracy_target: float
    test_samples: int
    notes: list[str] = field(default_factory=list)

    @property
    def catalog_mean_accuracy(self) -> float:
        """Mean over terminals of the catalog accuracy of their models."""
        return float(np.mean([t.catalog_accuracy for t in self.terminals]))

    @property
    def realised_mean_accuracy(self) -> float:
        """Mean over terminals of their realised accuracy."""
        return float(np.mean([t.realised_accuracy for t in self.terminals]))

    @property
    def accuracy_gap_pp(self) -> float:
        """Realised minus catalog mean accuracy [percentage points]."""
        return 100.0 * (self.realised_mean_accuracy - self.catalog_mean_accuracy)

    @property
    def accuracy_stderr_pp(self) -> float:
        """Binomial standard error of the realised mean [pp] (0 when every terminal served the whole set)."""
        var = 0.0
        for t in self.terminals:
            if t.requests < self.test_samples:
                var += t.catalog_accuracy * (1 - t.catalog_accuracy) / t.requests
        return 100.0 * math.sqrt(var) / len(self.terminals)

    @property
    def promised_total_latency_s(self) -> float:
        """Sum of the promised latencies [s]."""
        return float(sum(t.promised_latency_s for t in self.terminals))

    @property
    def modelled_total_latency_s(self) -> float:
        """Sum of the latencies modelled from the served models [s]."""
        return float(sum(t.modelled_latency_s for t in self.terminals))

    @property
    def max_latency_rel_diff(self) -> float:
        """Largest ``|modelled - promised| / promised`` over terminals."""
        return float(max(abs(t.modelled_latency_s - t.promised_latency_s) / t.promised_latency_s for t in self.terminals))

    def summary(self) -> dict[str, Any]:
        """The key numbers, JSON-ready."""
        return {
            "solver": self.solver,
            "feasible": self.feasible,
            "terminals": len(self.terminals),
            "accuracy_target": self.accuracy_target,
            "catalog_mean_accuracy": self.catalog_mean_accuracy,
            "realised_mean_accuracy": self.realised_mean_accuracy,
            "accuracy_gap_pp": self.accuracy_gap_pp,
            "accuracy_stderr_pp": self.accuracy_stderr_pp,
            "promised_total_latency_s": self.promised_total_latency_s,
            "modelled_total_latency_s": self.modelled_total_latency_s,
            "max_latency_rel_diff": self.max_latency_rel_diff,
            "notes": list(self.notes),
        }

    def to_dict(self) -> dict[str, Any]:
        """Summary plus one record per terminal."""
        return {**self.summary(), "assignments": [vars(t).copy() for t in self.terminals]}


def _held_out_native(members: Sequence[Any]) -> Any:
    """The held-out server test set at native resolution, shared by every chosen member."""
    from fedsplit.data import make_federated_data

    def data_key(m: Any) -> tuple:
        d = replace(m.cfg.data, resolution=0)
        return (m.cfg.seed, json.dumps(asdict(d), sort_keys=True), m.cfg.num_terminals)

    keys = {data_key(m) for m in members}
    if len(keys) > 1:
        names = ", ".join(m.name for m in members)
        raise ScenarioError("catalog", names, "chosen models trained on the same dataset, seed and split "
                            "(their held-out test sets differ)")
    cfg = members[0].cfg
    native = replace(cfg, data=replace(cfg.data, resolution=0))
    return make_federated_data(native).server_test


def serve(
    catalog: dict[str, Any],
    problem: Problem,
    schedule: Schedule,
    *,
    costs: CatalogCosts | None = None,
    devices: Sequence[str] | None = None,
    requests: int = 0,
    seed: int = 0,
    latency_repeats: int = 20,
) -> ServeReport:
    """Serve a schedule's model choice with the catalog's models (see the module docstring).

    Parameters
    ----------
    catalog : dict
        A validated catalog (:func:`fedsplit.inference.catalog.read_catalog`).
    problem : Problem
        The scenario the schedule solved; its models must be named in the catalog.
    schedule : Schedule
        A schedule with a decision (feasible or not).
    costs : CatalogCosts, optional
        The constants the scenario's models were mapped with (default: the defaults).
    devices : sequence of str, optional
        A label per terminal (device class) for the report.
    requests : int
        Held-out images per terminal: 0 = all of them; else drawn with replacement (``seed``).
    seed : int
        Seed of the drawn requests.
    latency_repeats : int
        Timed batch-1 CPU runs per served model (median).
    """
    from fedsplit.data.arrays import resize_images
    from fedsplit.models.flops import inference_flops
    from fedsplit.report.members import cpu_latency_s, load_member, predict

    costs = costs or CatalogCosts()
    if not schedule.has_decision:
        raise ScenarioError("schedule", schedule.solver, "a schedule with a model per terminal (" + "; ".join(schedule.reasons) + ")")
    if requests < 0:
        raise ScenarioError("--requests", requests, "an integer >= 0")
    entries = {m["name"]: m for m in catalog["models"]}
    chosen = sorted({problem.model_names[int(m)] for m in schedule.models})
    for name in problem.model_names:
        if name not in entries:
            raise ScenarioError("scenario.models", name, f"a model of the catalog ({', '.join(entries)})")
    members = {name: load_member(entries[name]["run_dir"]) for name in chosen}
    held_out = _held_out_native(list(members.values()))
    n = int(held_out.y.shape[0])
    correct: dict[str, torch.Tensor] = {}
    served_bits: dict[str, int] = {}
    served_flops: dict[str, int] = {}
    cpu_s: dict[str, float] = {}
    for name, member in members.items():
        c, h, w = member.input_shape
        x = resize_images(held_out.x, (h, w))
        correct[name] = predict(member.model, x) == held_out.y
        served_bits[name] = int(x[0].numel()) * int(entries[name]["bits_per_value"])
        served_flops[name] = int(inference_flops(member.float_model, (c, h, w)))
        cpu_s[name] = cpu_latency_s(member.model, x[:1], repeats=latency_repeats)
    # The scenario's models, with what is served in place of what the scenario says.
    served = [
        costs.model_spec({**entries[name], "input_bits": served_bits.get(name, entries[name]["input_bits"]),
                          "flops": served_flops.get(name, entries[name]["flops"])})
        for name in problem.model_names
    ]
    served_problem = problem.with_updates(
        input_bits=[s.input_bits for s in served], local_cycles=[s.local_cycles for s in served],
        edge_cycles=[s.edge_cycles for s in served],
    )
    modelled, _ = served_problem.evaluate(schedule.models, schedule.bandwidth_hz, schedule.edge_cycles_per_s)
    rng = np.random.default_rng(seed)
    rows = []
    for i, m in enumerate(schedule.models):
        name = problem.model_names[int(m)]
        hits = correct[name]
        if requests:
            hits = hits[torch.from_numpy(rng.integers(0, n, size=requests))]
        rows.append(ServedTerminal(
            terminal=i,
            device=str(devices[i]) if devices is not None else "",
            model=name,
            requests=int(hits.shape[0]),
            catalog_accuracy=float(entries[name]["accuracy"]),
            realised_accuracy=int(hits.sum()) / int(hits.shape[0]),
            promised_latency_s=float(schedule.latency_s[i]),
            modelled_latency_s=float(modelled[i]),
            served_input_bits=served_bits[name],
            served_flops=served_flops[name],
            cpu_latency_s=cpu_s[name],
        ))
    notes = []
    for i, name in enumerate(problem.model_names):
        if name in entries and not math.isclose(problem.accuracy[i], entries[name]["accuracy"], rel_tol=0, abs_tol=1e-12):
            notes.append(f"scenario accuracy of {name} ({problem.accuracy[i]:.4f}) differs from the catalog's "
                         f"({entries[name]['accuracy']:.4f})")
    return ServeReport(rows, schedule.feasible, schedule.solver, problem.accuracy_target, n, notes)


__all__ = ["ServeReport", "ServedTerminal", "serve"]
