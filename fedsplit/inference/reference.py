"""A general-purpose convex solver for the fixed-model allocation, to cross-check :mod:`.allocation`.

It hands the problem, with deadlines and energy budgets as explicit nonlinear constraints, to
SciPy's SLSQP (sequential quadratic programming) with analytic gradients. It shares no code path
with the KKT/price solver except the rate formula, so agreement of the two is evidence that both
are right. It is slow (dense SQP) and meant for small instances and tests.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize

from fedsplit.inference.spectral import LN2
from fedsplit.inference.system_model import FloatArray, Problem


def _rate_and_slope(b: FloatArray, s: FloatArray) -> tuple[FloatArray, FloatArray]:
    """``r(b) = b log2(1 + s/b)`` [bit/s] and ``dr/db`` [bit/s/Hz], written out independently."""
    ratio = s / b
    rate = b * np.log1p(ratio) / LN2
    slope = (np.log1p(ratio) - ratio / (1.0 + ratio)) / LN2
    return rate, slope


def reference_allocation(
    problem: Problem,
    models: np.ndarray,
    *,
    respect_deadlines: bool = True,
    respect_energy: bool = True,
    starts: int = 3,
) -> tuple[bool, float, FloatArray, FloatArray]:
    """Solve the fixed-model allocation with SLSQP.

    Parameters
    ----------
    problem : Problem
    models : ndarray of int, shape (N,)
    respect_deadlines, respect_energy : bool
        Keep or drop the per-terminal constraints.
    starts : int
        Number of starting points tried (equal split, and weighted splits).

    Returns
    -------
    feasible : bool
        Whether SLSQP found a point meeting every constraint (to 1e-7 relative).
    total_latency_s : float
        Best objective found [s] (``inf`` if none feasible).
    bandwidth_hz, edge_cycles_per_s : ndarray
        The allocation [Hz], [cycles/s].
    """
    models = np.asarray(models, dtype=np.intp)
    n = problem.n_terminals
    rows = np.arange(n)
    B, F = problem.bandwidth_hz, problem.edge_cycles_per_s
    s = problem.snr_bandwidth_hz
    bits = problem.input_bits[models]
    cycles = problem.edge_cycles[models]
    t_loc = problem.local_time_s[rows, models]
    e_loc = problem.local_energy_j[rows, models]
    p = problem.tx_power_w
    deadline = problem.deadline_s
    budget = problem.energy_budget_j
    floor = 1e-9

    def unpack(z: FloatArray) -> tuple[FloatArray, FloatArray]:
        return z[:n] * B, z[n:] * F

    def objective(z: FloatArray) -> tuple[float, FloatArray]:
        b, f = unpack(z)
        rate, slope = _rate_and_slope(b, s)
        value = np.sum(t_loc + bits / rate + cycles / f)
        grad = np.concatenate([-bits * slope / rate**2 * B, -cycles / f**2 * F])
        return float(value), grad

    constraints = [
        {"type": "ineq", "fun": lambda z: 1.0 - np.sum(z[:n]), "jac": lambda z: np.concatenate([-np.ones(n), np.zeros(n)])},
        {"type": "ineq", "fun": lambda z: 1.0 - np.sum(z[n:]), "jac": lambda z: np.concatenate([np.zeros(n), -np.ones(n)])},
    ]
    if respect_deadlines:
        def deadline_fun(z: FloatArray) -> FloatArray:
            b, f = unpack(z)
            rate, _ = _rate_and_slope(b, s)
            return (deadline - t_loc - bits / rate - cycles / f) / deadline

        def deadline_jac(z: FloatArray) -> FloatArray:
            b, f = unpack(z)
            rate, slope = _rate_and_slope(b, s)
            jac = np.zeros((n, 2 * n))
            jac[rows, rows] = bits * slope / rate**2 * B / deadline
            jac[rows, n + rows] = cycles / f**2 * F / deadline
            return jac

        constraints.append({"type": "ineq", "fun": deadline_fun, "jac": deadline_jac})
    if respect_energy:
        def energy_fun(z: FloatArray) -> FloatArray:
            b, _ = unpack(z)
            rate, _ = _rate_and_slope(b, s)
            return (budget - e_loc - p * bits / rate) / budget

        def energy_jac(z: FloatArray) -> FloatArray:
            b, _ = unpack(z)
            rate, slope = _rate_and_slope(b, s)
            jac = np.zeros((n, 2 * n))
            jac[rows, rows] = p * bits * slope / rate**2 * B / budget
            return jac

        constraints.append({"type": "ineq", "fun": energy_fun, "jac": energy_jac})

    starts_z = [np.full(2 * n, 1.0 / n)]
    weights_b = bits / s
    weights_f = np.sqrt(cycles)
    starts_z.append(np.concatenate([weights_b / weights_b.sum(), weights_f / weights_f.sum()]) * 0.999)
    mixed = 0.5 * (starts_z[0] + starts_z[1])
    starts_z.append(mixed)

    best = (False, np.inf, np.full(n, np.nan), np.full(n, np.nan))
    bounds = [(floor, 1.0)] * (2 * n)
    for z0 in starts_z[: max(1, starts)]:
        result = minimize(
            objective, z0, jac=True, method="SLSQP", bounds=bounds, constraints=constraints,
            options={"ftol": 1e-14, "maxiter": 1000},
        )
        z = np.clip(result.x, floor, 1.0)
        z[:n] *= min(1.0, 1.0 / np.sum(z[:n]))
        z[n:] *= min(1.0, 1.0 / np.sum(z[n:]))
        ok = all(np.all(c["fun"](z) >= -1e-7) for c in constraints[2:])
        value, _ = objective(z)
        if ok and value < best[1]:
            b, f = unpack(z)
            best = (True, value, b, f)
    return best
