"""Optimal bandwidth and edge-compute allocation for fixed model choices.

For fixed models the problem

    minimise  sum_i  t_loc_i + D_i / r_i(b_i) + c_i / f_i
    s.t.      sum b <= B,  sum f <= F,  b_i >= b_min_i,  deadlines

is convex (``1/r`` is convex in ``b``, ``1/f`` in ``f``) with a strictly convex objective, so its
Lagrange dual in the two resource prices ``(lam, nu)`` has no gap and a unique optimal primal:

* **deadlines slack** — compute has the closed form ``f_i = F sqrt(c_i) / sum_j sqrt(c_j)``
  (value ``(sum sqrt c)^2 / F``) and bandwidth is one monotone search over ``lam`` where each
  terminal's ``b_i(lam)`` comes from the tabulated ``psi^-1`` (see :mod:`.pricing`);
* **deadlines binding** — the deadline-aware best responses of :mod:`.pricing`; the two prices
  solving ``sum b = B``, ``sum f = F`` are found by Newton's method on ``(ln lam, ln nu)`` with
  the responses' analytic derivatives (a handful of steps), falling back to nested Brent searches
  (``lam`` for each ``nu``: ``sum b`` decreases in ``lam``; ``nu`` outside: ``sum f`` at the inner
  optimum decreases in ``nu``, being the derivative of a concave function). When Newton stalls,
  the least compute that meets every deadline (:func:`least_compute_hz`, one more price search)
  first decides whether the deadlines can be met at all.

Price searches stop at ~1e-13 in log-price, so allocations are optimal to ~1e-12 relative; the
SLSQP reference (:mod:`.reference`) agrees to 1e-12 on random instances.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import brentq

from fedsplit.inference.feasibility import pair_table
from fedsplit.inference.pricing import (
    DEADLINE_RTOL,
    Demand,
    best_response,
    least_compute_split,
    slack_bandwidth,
)
from fedsplit.inference.spectral import psi
from fedsplit.inference.system_model import FloatArray, Problem

_LOG_XTOL = 1e-13
_MAX_EXPANSIONS = 80


@dataclass
class Allocation:
    """Result of allocating resources to terminals with fixed models.

    Attributes
    ----------
    feasible : bool
        Whether every constraint (resources, deadlines, energy budgets) can be met.
    bandwidth_hz, edge_cycles_per_s : ndarray
        Allocated bandwidth [Hz] and edge compute [cycles/s] per terminal.
    latency_s : ndarray
        Per-terminal latency ``t_loc + t_up + t_edge`` [s].
    objective_s : float
        Total latency [s] (``inf`` if infeasible).
    bandwidth_price : float
        Optimal multiplier of ``sum b <= B`` [s/Hz].
    compute_price : float
        Optimal multiplier of ``sum f <= F`` [s per cycle/s].
    reasons : list of str
        Why the allocation is infeasible (empty when feasible).
    lower_bound_s : float
        Total latency of the deadline-free relaxation [s], a lower bound on ``objective_s``.
    pruned : bool
        The search stopped because ``lower_bound_s`` reached the caller's cutoff.
    """

    feasible: bool
    bandwidth_hz: FloatArray
    edge_cycles_per_s: FloatArray
    latency_s: FloatArray
    objective_s: float
    bandwidth_price: float = 0.0
    compute_price: float = 0.0
    reasons: list[str] = field(default_factory=list)
    lower_bound_s: float = float("nan")
    pruned: bool = False


def demand_for_models(
    problem: Problem,
    models: np.ndarray,
    *,
    respect_deadlines: bool = True,
    respect_energy: bool = True,
) -> Demand:
    """The :class:`Demand` of a problem's terminals with the given model indices.

    Parameters
    ----------
    problem : Problem
    models : ndarray of int, shape (N,)
    respect_deadlines, respect_energy : bool
        Dropping a constraint (as the greedy baselines do) removes it from the demand.
    """
    table = pair_table(problem)
    rows = np.arange(problem.n_terminals)
    models = np.asarray(models, dtype=np.intp)
    energy_bw = table.energy_bandwidth_hz[rows, models] if respect_energy else np.zeros(len(rows))
    deadline_bw = table.deadline_bandwidth_hz[rows, models] if respect_deadlines else np.zeros(len(rows))
    time_budget = table.time_budget_s[rows, models] if respect_deadlines else np.full(len(rows), np.inf)
    return Demand(
        snr_hz=problem.snr_bandwidth_hz,
        bits=problem.input_bits[models],
        edge_cycles=problem.edge_cycles[models],
        time_budget_s=time_budget,
        min_bandwidth_hz=np.maximum(energy_bw, deadline_bw),
        deadline_bandwidth_hz=deadline_bw,
        local_time_s=problem.local_time_s[rows, models],
    )


def allocate(
    problem: Problem,
    models: np.ndarray,
    *,
    respect_deadlines: bool = True,
    respect_energy: bool = True,
    cutoff_s: float = np.inf,
    price_guess: float | None = None,
) -> Allocation:
    """Optimal allocation of the problem's band and edge server for fixed models.

    Parameters
    ----------
    problem : Problem
    models : ndarray of int, shape (N,)
        Model index of each terminal.
    respect_deadlines, respect_energy : bool
        Keep (default) or drop the per-terminal deadline / energy constraints.
    cutoff_s, price_guess : float
        See :func:`allocate_demand`.
    """
    demand = demand_for_models(
        problem, models, respect_deadlines=respect_deadlines, respect_energy=respect_energy
    )
    return allocate_demand(
        demand, problem.bandwidth_hz, problem.edge_cycles_per_s, cutoff_s=cutoff_s, price_guess=price_guess
    )


def allocate_demand(
    demand: Demand,
    bandwidth_hz: float,
    edge_cycles_per_s: float,
    *,
    cutoff_s: float = np.inf,
    price_guess: float | None = None,
) -> Allocation:
    """Optimal allocation for a :class:`Demand` (see the module docstring for the method).

    Parameters
    ----------
    demand : Demand
    bandwidth_hz : float
        Total bandwidth ``B`` [Hz].
    edge_cycles_per_s : float
        Total edge compute ``F`` [cycles/s].
    cutoff_s : float
        Stop early (``pruned=True``) once the deadline-free relaxation's total latency [s] is at
        least this (branch and bound passes its incumbent).
    price_guess : float, optional
        A guess of the bandwidth price [s/Hz] (e.g. a similar allocation's) to shorten the search.
    """
    B, F = float(bandwidth_hz), float(edge_cycles_per_s)
    n = len(demand)
    reasons = _necessary_conditions(demand, B, F)
    if reasons:
        return _infeasible(n, reasons)
    if n == 1:
        b, f = np.array([B]), np.array([F])
        return _finish(demand, b, f, 0.0, 0.0, B, F)

    nu = float(np.sum(np.sqrt(demand.edge_cycles)) / F) ** 2
    f = np.minimum(F, np.sqrt(demand.edge_cycles / nu))
    lam = _bandwidth_price(demand, B, price_guess)
    if not np.isfinite(lam):
        return _compute_only(demand, demand.min_bandwidth_hz.copy(), B, F)
    b = slack_bandwidth(demand, lam, B)
    upload = demand.upload_time_s(b)
    relaxed = float(np.sum(demand.local_time_s + upload + demand.edge_cycles / f))
    if relaxed >= cutoff_s:
        out = _infeasible(n, ["cutoff: the deadline-free relaxation already reaches the cutoff"])
        out.lower_bound_s, out.pruned = relaxed, True
        return out
    if not demand.has_deadlines or np.all(
        upload + demand.edge_cycles / f <= demand.time_budget_s * (1 + DEADLINE_RTOL)
    ):
        out = _finish(demand, b, f, lam, nu, B, F)
    else:
        out = _allocate_with_deadlines(demand, B, F, lam, nu)
    out.lower_bound_s = relaxed
    return out


def _necessary_conditions(demand: Demand, B: float, F: float) -> list[str]:
    """Quick infeasibility certificates (empty list when none applies)."""
    reasons = []
    if np.any(~np.isfinite(demand.min_bandwidth_hz)) or np.any(demand.min_bandwidth_hz > B):
        bad = np.nonzero(~(demand.min_bandwidth_hz <= B))[0]
        reasons.append(
            f"terminals {bad.tolist()} cannot meet their energy budget or deadline even with the whole band"
        )
        return reasons
    total_min = float(np.sum(demand.min_bandwidth_hz))
    if total_min > B * (1 + 1e-12):
        reasons.append(
            f"bandwidth: energy budgets and deadlines need at least {total_min:.6g} Hz in total, "
            f"more than B = {B:.6g} Hz"
        )
    if demand.has_deadlines:
        with np.errstate(divide="ignore"):
            window = demand.time_budget_s - demand.upload_time_s(np.full(len(demand), B))
            least_compute = np.where(window > 0, demand.edge_cycles / window, np.inf)
        need = float(np.sum(least_compute[np.isfinite(demand.time_budget_s)]))
        if need > F * (1 + 1e-12):
            reasons.append(
                f"compute: even with the whole band each, deadlines need at least {need:.6g} cycles/s "
                f"of edge compute, more than F = {F:.6g} cycles/s"
            )
    return reasons


def _bandwidth_price(demand: Demand, B: float, guess: float | None = None) -> float:
    """Price ``lam`` [s/Hz] at which the deadline-free responses use exactly ``B`` Hz."""
    total_min = float(np.sum(demand.min_bandwidth_hz))
    if total_min >= B * (1 - 1e-12):
        return np.inf

    def excess(log_lam: float) -> float:
        return float(np.sum(slack_bandwidth(demand, float(np.exp(log_lam)), B))) / B - 1.0

    if guess is not None and np.isfinite(guess) and guess > 0:
        return float(np.exp(_bracketed_root(excess, np.log(guess), step=0.05)))
    s = demand.snr_hz
    share = B / len(demand)
    guess = float(np.median(demand.bits / (s * s) * psi(share / s)))
    return float(np.exp(_bracketed_root(excess, np.log(guess))))


def _bracketed_root(func, start: float, step: float = 2.3) -> float:
    """Root of a decreasing function of one variable, bracketing outward from ``start``.

    The bracket grows by ``step``, then geometrically (doubling), so a good guess costs little and
    a bad one is still found; :class:`_NoRoot` when ``func`` never changes sign.
    """
    lo = hi = start
    f_lo = f_hi = func(start)
    if f_lo == 0:
        return start
    expansions = 0
    if f_lo > 0:
        while f_hi > 0:
            lo, f_lo = hi, f_hi
            hi += step
            step = min(step * 2.0, 8.0)
            f_hi = func(hi)
            expansions += 1
            if expansions > _MAX_EXPANSIONS:
                raise _NoRoot
    else:
        while f_lo < 0:
            hi, f_hi = lo, f_lo
            lo -= step
            step = min(step * 2.0, 8.0)
            f_lo = func(lo)
            expansions += 1
            if expansions > _MAX_EXPANSIONS:
                raise _NoRoot
    if f_lo == 0:
        return lo
    if f_hi == 0:
        return hi
    return brentq(func, lo, hi, xtol=_LOG_XTOL, rtol=4 * np.finfo(float).eps)


class _NoRoot(Exception):
    """The bracket search ran out of range (the constraint cannot be met)."""


def _allocate_with_deadlines(demand: Demand, B: float, F: float, lam0: float, nu0: float) -> Allocation:
    """General path: find the prices at which the deadline-aware responses fill B and F exactly."""
    prices = _newton_prices(demand, B, F, lam0, nu0)
    if prices is None:
        least = least_compute_hz(demand, B)
        if least > F * (1 + 1e-9):
            return _infeasible(
                len(demand),
                [
                    f"deadlines: meeting every deadline at once needs at least {least:.6g} cycles/s "
                    f"of edge compute however the band is split, more than F = {F:.6g} cycles/s"
                ],
            )
        prices = _nested_prices(demand, B, F, lam0, nu0)
        if prices is None:
            return _infeasible(len(demand), ["deadlines: the price search did not converge"])
    lam, nu, response = prices
    return _finish(demand, response.bandwidth_hz, response.edge_cycles_per_s, lam, nu, B, F)


def _newton_prices(demand: Demand, B: float, F: float, lam0: float, nu0: float):
    """Newton's method on ``(ln lam, ln nu)`` for ``sum b = B``, ``sum f = F`` (None if it stalls)."""
    z = np.array([np.log(lam0), np.log(nu0)])
    guess = None

    def residual(point: np.ndarray, jacobian: bool):
        r = best_response(demand, float(np.exp(point[0])), float(np.exp(point[1])), B, F,
                          jacobian=jacobian, start_hz=guess)
        g = np.array([np.sum(r.bandwidth_hz) / B - 1.0, np.sum(r.edge_cycles_per_s) / F - 1.0])
        return r, g

    response, g = residual(z, True)
    for _ in range(60):
        norm = float(np.max(np.abs(g)))
        if norm < 1e-12:
            return float(np.exp(z[0])), float(np.exp(z[1])), response
        guess = response.bandwidth_hz
        jac = np.array([
            [np.sum(response.db_dloglam) / B, np.sum(response.db_dlognu) / B],
            [np.sum(response.df_dloglam) / F, np.sum(response.df_dlognu) / F],
        ])
        try:
            step = np.linalg.solve(jac, -g)
        except np.linalg.LinAlgError:
            return None
        if not np.all(np.isfinite(step)):
            return None
        longest = float(np.max(np.abs(step)))
        if longest > 4.0:
            step *= 4.0 / longest
        t = 1.0
        while True:
            candidate, g_new = residual(z + t * step, False)
            if float(np.max(np.abs(g_new))) < (1 - 1e-4 * t) * norm:
                break
            t *= 0.5
            if t < 1e-6:
                return None
        z = z + t * step
        response, g = residual(z, True)
    return None


def _nested_prices(demand: Demand, B: float, F: float, lam0: float, nu0: float):
    """Robust fallback: Brent on ``ln nu`` outside, Brent on ``ln lam`` inside (None if no root)."""
    inner = {"log": np.log(lam0)}

    def lam_for(nu: float) -> float:
        def excess(log_lam: float) -> float:
            r = best_response(demand, float(np.exp(log_lam)), nu, B, F)
            return float(np.sum(r.bandwidth_hz)) / B - 1.0

        inner["log"] = _bracketed_root(excess, inner["log"], step=1.0)
        return float(np.exp(inner["log"]))

    def compute_excess(log_nu: float) -> float:
        nu = float(np.exp(log_nu))
        r = best_response(demand, lam_for(nu), nu, B, F)
        return float(np.sum(r.edge_cycles_per_s)) / F - 1.0

    try:
        nu = float(np.exp(_bracketed_root(compute_excess, np.log(nu0), step=1.0)))
    except _NoRoot:
        return None
    lam = lam_for(nu)
    return lam, nu, best_response(demand, lam, nu, B, F)


def least_compute_hz(demand: Demand, bandwidth_hz: float) -> float:
    """Least total edge compute [cycles/s] with which every deadline can be met (band ``B``)."""
    B = float(bandwidth_hz)
    if float(np.sum(demand.min_bandwidth_hz)) >= B * (1 - 1e-12):
        _, f = least_compute_split(demand, np.inf, B)
        return float(np.sum(f))
    has = np.isfinite(demand.time_budget_s)
    if not np.any(has):
        return 0.0
    d = demand.take(np.nonzero(has)[0])
    share = np.full(len(d), B / len(demand))
    window = np.maximum(d.time_budget_s - d.upload_time_s(share), 1e-12 * d.time_budget_s)
    guess = float(np.median(d.bits / d.snr_hz**2 * psi(share / d.snr_hz) * d.edge_cycles / window**2))

    def excess(log_sigma: float) -> float:
        b, _ = least_compute_split(demand, float(np.exp(log_sigma)), B)
        return float(np.sum(b)) / B - 1.0

    try:
        sigma = float(np.exp(_bracketed_root(excess, np.log(guess), step=2.0)))
    except _NoRoot:
        return np.inf
    _, f = least_compute_split(demand, sigma, B)
    return float(np.sum(f))


def _compute_only(demand: Demand, b: FloatArray, B: float, F: float) -> Allocation:
    """Allocation when the band is exhausted by minimum bandwidths: only compute is free."""
    with np.errstate(divide="ignore"):
        window = demand.time_budget_s - demand.upload_time_s(b)
        floor = np.where(np.isfinite(window), demand.edge_cycles / np.maximum(window, 1e-300), 0.0)
    if float(np.sum(floor)) > F:
        return _infeasible(len(demand), ["compute: deadlines need more edge compute than F"])

    def excess(log_nu: float) -> float:
        f_ = np.maximum(floor, np.sqrt(demand.edge_cycles / np.exp(log_nu)))
        return float(np.sum(f_)) / F - 1.0

    nu0 = float(np.sum(np.sqrt(demand.edge_cycles)) / F) ** 2
    nu = float(np.exp(_bracketed_root(excess, np.log(nu0))))
    f = np.maximum(floor, np.sqrt(demand.edge_cycles / nu))
    return _finish(demand, b, f, np.inf, nu, B, F)


def _finish(
    demand: Demand, b: FloatArray, f: FloatArray, lam: float, nu: float, B: float, F: float
) -> Allocation:
    """Trim rounding excess off the sums, evaluate latency and check the deadlines."""
    b = b * min(1.0, B / float(np.sum(b)))
    f = f * min(1.0, F / float(np.sum(f)))
    latency = demand.local_time_s + demand.upload_time_s(b) + demand.edge_cycles / f
    late = demand.upload_time_s(b) + demand.edge_cycles / f > demand.time_budget_s * (1 + 1e-7)
    if np.any(late):
        return _infeasible(
            len(demand),
            [f"deadlines: terminals {np.nonzero(late)[0].tolist()} miss their deadline at the optimum"],
        )
    return Allocation(
        feasible=True,
        bandwidth_hz=b,
        edge_cycles_per_s=f,
        latency_s=latency,
        objective_s=float(np.sum(latency)),
        bandwidth_price=float(lam),
        compute_price=float(nu),
    )


def _infeasible(n: int, reasons: list[str]) -> Allocation:
    nan = np.full(n, np.nan)
    return Allocation(
        feasible=False,
        bandwidth_hz=nan,
        edge_cycles_per_s=nan.copy(),
        latency_s=nan.copy(),
        objective_s=np.inf,
        reasons=reasons,
    )
