"""The result of scheduling: models, allocation, totals, certified gap, and why anything failed."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from fedsplit.inference.feasibility import pair_reason, pair_table
from fedsplit.inference.model_choice import ACCURACY_TOL
from fedsplit.inference.system_model import FloatArray, Problem

#: Relative tolerance of the constraint checks of a finished schedule.
CHECK_RTOL = 1e-7


@dataclass
class Schedule:
    """A complete decision (or the reasons there is none).

    Attributes
    ----------
    solver : str
        Which solver or baseline produced it.
    feasible : bool
        Whether the schedule meets every constraint of the problem.
    models : ndarray of int or None
        Model index per terminal (``None`` when no decision was produced).
    bandwidth_hz, edge_cycles_per_s : ndarray or None
        Allocation per terminal [Hz], [cycles/s].
    latency_s, energy_j : ndarray or None
        Per-terminal latency [s] and energy [J].
    total_latency_s, total_energy_j : float
        Sums [s], [J] (``nan`` without a decision).
    accuracy : float
        Mean accuracy of the chosen models (``nan`` without a decision).
    lower_bound_s : float
        Certified lower bound on the optimal total latency [s] (``nan`` when none was computed).
    gap : float
        Certified relative optimality gap ``(total - bound) / total`` (0 for the exact solver,
        ``nan`` for baselines or when infeasible).
    reasons : list of str
        Why the problem is infeasible, or which constraints this schedule violates.
    solve_s : float
        Wall-clock solve time [s].
    """

    solver: str
    feasible: bool
    models: NDArray[np.intp] | None = None
    bandwidth_hz: FloatArray | None = None
    edge_cycles_per_s: FloatArray | None = None
    latency_s: FloatArray | None = None
    energy_j: FloatArray | None = None
    total_latency_s: float = float("nan")
    total_energy_j: float = float("nan")
    accuracy: float = float("nan")
    lower_bound_s: float = float("nan")
    gap: float = float("nan")
    reasons: list[str] = field(default_factory=list)
    solve_s: float = 0.0

    @property
    def has_decision(self) -> bool:
        """Whether models and an allocation were produced (even if they violate constraints)."""
        return self.models is not None

    def to_dict(self, problem: Problem) -> dict:
        """The JSON form printed by ``fedsplit schedule --json``."""

        def num(x: float) -> float | None:
            return None if x is None or not np.isfinite(x) else float(x)

        assignments = []
        if self.has_decision:
            for i in range(len(self.models)):
                assignments.append({
                    "terminal": i,
                    "model": problem.model_names[int(self.models[i])],
                    "bandwidth_hz": num(self.bandwidth_hz[i]),
                    "edge_cycles_per_s": num(self.edge_cycles_per_s[i]),
                    "latency_s": num(self.latency_s[i]),
                    "energy_j": num(self.energy_j[i]),
                })
        table = pair_table(problem)
        feasible_pairs = [
            [problem.model_names[m] for m in np.nonzero(table.feasible[i])[0]]
            for i in range(problem.n_terminals)
        ]
        return {
            "solver": self.solver,
            "feasible": bool(self.feasible),
            "total_latency_s": num(self.total_latency_s),
            "total_energy_j": num(self.total_energy_j),
            "accuracy": num(self.accuracy),
            "accuracy_target": float(problem.accuracy_target),
            "gap": num(self.gap),
            "lower_bound_s": num(self.lower_bound_s),
            "solve_s": float(self.solve_s),
            "reasons": list(self.reasons),
            "feasible_models": feasible_pairs,
            "assignments": assignments,
        }


def constraint_violations(
    problem: Problem, models: NDArray[np.intp], bandwidth_hz: FloatArray, edge_cycles_per_s: FloatArray
) -> list[str]:
    """Every constraint a complete decision violates (empty list when it meets them all)."""
    out = []
    B, F = problem.bandwidth_hz, problem.edge_cycles_per_s
    if float(np.sum(bandwidth_hz)) > B * (1 + CHECK_RTOL):
        out.append(f"bandwidth: allocated {np.sum(bandwidth_hz):.6g} Hz > B = {B:.6g} Hz")
    if float(np.sum(edge_cycles_per_s)) > F * (1 + CHECK_RTOL):
        out.append(f"compute: allocated {np.sum(edge_cycles_per_s):.6g} cycles/s > F = {F:.6g} cycles/s")
    latency, energy = problem.evaluate(models, bandwidth_hz, edge_cycles_per_s)
    late = np.nonzero(latency > problem.deadline_s * (1 + CHECK_RTOL))[0]
    if late.size:
        out.append(f"deadline: terminals {late.tolist()} exceed their deadline")
    over = np.nonzero(energy > problem.energy_budget_j * (1 + CHECK_RTOL))[0]
    if over.size:
        out.append(f"energy: terminals {over.tolist()} exceed their energy budget")
    acc = problem.system_accuracy(models)
    if acc * problem.n_terminals < problem.accuracy_target * problem.n_terminals - ACCURACY_TOL:
        out.append(f"accuracy: system accuracy {acc:.4f} < target {problem.accuracy_target:.4f}")
    return out


def make_schedule(
    problem: Problem,
    solver: str,
    models: NDArray[np.intp],
    bandwidth_hz: FloatArray,
    edge_cycles_per_s: FloatArray,
    *,
    lower_bound_s: float = float("nan"),
    solve_s: float = 0.0,
) -> Schedule:
    """Evaluate a complete decision, check it and wrap it in a :class:`Schedule`."""
    models = np.asarray(models, dtype=np.intp)
    latency, energy = problem.evaluate(models, bandwidth_hz, edge_cycles_per_s)
    violations = constraint_violations(problem, models, bandwidth_hz, edge_cycles_per_s)
    total = float(np.sum(latency))
    gap = float("nan")
    if np.isfinite(lower_bound_s) and not violations and total > 0:
        gap = max(0.0, (total - lower_bound_s) / total)
    return Schedule(
        solver=solver,
        feasible=not violations,
        models=models,
        bandwidth_hz=np.asarray(bandwidth_hz, dtype=float),
        edge_cycles_per_s=np.asarray(edge_cycles_per_s, dtype=float),
        latency_s=latency,
        energy_j=energy,
        total_latency_s=total,
        total_energy_j=float(np.sum(energy)),
        accuracy=problem.system_accuracy(models),
        lower_bound_s=lower_bound_s,
        gap=gap,
        reasons=violations,
        solve_s=solve_s,
    )


def infeasible_schedule(solver: str, reasons: list[str], *, solve_s: float = 0.0) -> Schedule:
    """A :class:`Schedule` saying that no decision meets the constraints, and why."""
    return Schedule(solver=solver, feasible=False, reasons=list(reasons), solve_s=solve_s)


def problem_level_reasons(problem: Problem) -> list[str]:
    """Infeasibility visible from single pairs alone: terminals without any model, unreachable chi."""
    table = pair_table(problem)
    reasons = []
    for i in np.nonzero(~np.any(table.feasible, axis=1))[0]:
        reasons.append(f"terminal {int(i)} can use no model:")
        reasons.extend("  " + pair_reason(problem, int(i), m) for m in range(problem.n_models))
    if not reasons:
        best = np.max(np.where(table.feasible, problem.accuracy[None, :], -np.inf), axis=1)
        reachable = float(np.mean(best))
        if reachable * problem.n_terminals < problem.accuracy_target * problem.n_terminals - ACCURACY_TOL:
            reasons.append(
                f"accuracy: even the most accurate feasible model for every terminal gives system "
                f"accuracy {reachable:.4f} < target {problem.accuracy_target:.4f}"
            )
    return reasons
