"""Choosing one model per terminal under the accuracy constraint, for given per-pair costs.

With a cost ``C[i, m]`` for terminal ``i`` using model ``m`` (``inf`` where impossible), choosing
models to minimise ``sum_i C[i, m_i]`` subject to ``sum_i a[m_i] >= A`` is a multiple-choice
knapsack problem. Two solvers:

* :func:`accuracy_lagrangian` — the Lagrangian relaxation of the accuracy constraint, solved exactly
  over its multiplier ``eta`` [cost per unit accuracy] by a search over the finitely many breakpoints.
  Its value is a lower bound (the LP relaxation's), and it returns a rounded choice that meets the
  accuracy constraint.
* :func:`exact_choice` — exact minimisation by dynamic programming over Pareto-optimal
  (accuracy, cost) partial sums (small instances).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from fedsplit.inference.system_model import FloatArray

#: Tolerance on the accuracy sum (so that e.g. 0.67 * 6 is met by 4.02 computed in floats).
ACCURACY_TOL = 1e-9


@dataclass(frozen=True)
class LagrangianChoice:
    """Outcome of :func:`accuracy_lagrangian`.

    Attributes
    ----------
    eta : float
        Optimal multiplier of the accuracy constraint [cost units per unit of accuracy sum].
    choice : ndarray of int
        A model per terminal meeting the accuracy constraint (ties at ``eta`` rounded up, then
        trimmed back while the constraint still holds).
    dual_value : float
        ``sum_i min_m (C[i,m] - eta a[m]) + eta A``: a lower bound on the constrained minimum.
    """

    eta: float
    choice: NDArray[np.intp]
    dual_value: float


def _argmin_with_ties(reduced: FloatArray, accuracy: FloatArray, prefer_high: bool) -> NDArray[np.intp]:
    """Row-wise argmin of ``reduced``, breaking (relative 1e-12) ties by accuracy."""
    best = np.min(reduced, axis=1, keepdims=True)
    scale = np.maximum(np.abs(best), 1e-300)
    tied = reduced <= best + 1e-12 * scale
    key = np.where(tied, accuracy[None, :] if prefer_high else -accuracy[None, :], -np.inf)
    return np.argmax(key, axis=1)


def accuracy_lagrangian(cost: FloatArray, accuracy: FloatArray, required: float) -> LagrangianChoice | None:
    """Solve the Lagrangian relaxation of the accuracy constraint exactly.

    Parameters
    ----------
    cost : ndarray, shape (N, M)
        Cost of each (terminal, model) pair; ``inf`` marks impossible pairs.
    accuracy : ndarray, shape (M,)
        Accuracy of each model.
    required : float
        Required accuracy sum ``A = N chi``.

    Returns
    -------
    LagrangianChoice or None
        ``None`` when some terminal has no possible model or ``A`` is out of reach.
    """
    finite = np.isfinite(cost)
    if not np.all(np.any(finite, axis=1)):
        return None
    best_acc = np.max(np.where(finite, accuracy[None, :], -np.inf), axis=1)
    if float(np.sum(best_acc)) < required - ACCURACY_TOL:
        return None
    need = required - ACCURACY_TOL

    def choose(eta: float, prefer_high: bool) -> NDArray[np.intp]:
        return _argmin_with_ties(cost - eta * accuracy[None, :], accuracy, prefer_high)

    def reached(choice: NDArray[np.intp]) -> float:
        return float(np.sum(accuracy[choice]))

    eta = 0.0
    choice = choose(0.0, True)
    if reached(choice) < need:
        breakpoints = _breakpoints(cost, accuracy)
        lo, hi = 0, len(breakpoints) - 1
        # Smallest breakpoint whose (ties-up) choice reaches the requirement; the largest always does.
        while lo < hi:
            mid = (lo + hi) // 2
            if reached(choose(float(breakpoints[mid]), True)) >= need:
                hi = mid
            else:
                lo = mid + 1
        eta = float(breakpoints[lo])
        choice = choose(eta, True)
        choice = _trim_ties(cost, accuracy, eta, choice, need)
    reduced = cost - eta * accuracy[None, :]
    dual = float(np.sum(np.min(reduced, axis=1)) + eta * required)
    return LagrangianChoice(eta=eta, choice=choice, dual_value=dual)


def _breakpoints(cost: FloatArray, accuracy: FloatArray) -> FloatArray:
    """Sorted positive multipliers at which some terminal's preferred model can change."""
    values = []
    m = len(accuracy)
    for j in range(m):
        for k in range(m):
            da = accuracy[k] - accuracy[j]
            if da <= 0:
                continue
            with np.errstate(invalid="ignore"):
                eta = (cost[:, k] - cost[:, j]) / da
            ok = np.isfinite(eta) & (eta > 0)
            values.append(eta[ok])
    if not values:
        return np.array([0.0])
    out = np.unique(np.concatenate(values))
    return out if out.size else np.array([0.0])


def _trim_ties(
    cost: FloatArray, accuracy: FloatArray, eta: float, choice: NDArray[np.intp], need: float
) -> NDArray[np.intp]:
    """Move tied terminals back to their lower-accuracy option while the requirement still holds."""
    low = _argmin_with_ties(cost - eta * accuracy[None, :], accuracy, False)
    rows = np.nonzero(low != choice)[0]
    if rows.size == 0:
        return choice
    drop = accuracy[choice[rows]] - accuracy[low[rows]]
    slack = float(np.sum(accuracy[choice])) - need
    out = choice.copy()
    for r in rows[np.argsort(-drop)]:
        d = accuracy[out[r]] - accuracy[low[r]]
        if d <= slack:
            out[r] = low[r]
            slack -= d
    return out


def exact_choice(
    cost: FloatArray, accuracy: FloatArray, required: float, *, max_states: int = 200_000
) -> NDArray[np.intp] | None:
    """Exact multiple-choice knapsack by dynamic programming over Pareto-optimal partial sums.

    Returns the optimal choice, or ``None`` if infeasible. Raises ``RuntimeError`` when the Pareto
    front grows past ``max_states`` (use :func:`accuracy_lagrangian` for such sizes).
    """
    n, m = cost.shape
    need = required - ACCURACY_TOL
    best_rest = np.max(np.where(np.isfinite(cost), accuracy[None, :], -np.inf), axis=1)
    if not np.all(np.isfinite(best_rest)) or float(best_rest.sum()) < need:
        return None
    rest_after = np.concatenate([np.cumsum(best_rest[::-1])[::-1][1:], [0.0]])
    acc_states = np.array([0.0])
    cost_states = np.array([0.0])
    parents: list[tuple[NDArray[np.intp], NDArray[np.intp]]] = []
    for i in range(n):
        options = np.nonzero(np.isfinite(cost[i]))[0]
        acc_new = (acc_states[:, None] + accuracy[options][None, :]).ravel()
        cost_new = (cost_states[:, None] + cost[i, options][None, :]).ravel()
        parent = np.repeat(np.arange(acc_states.size), options.size)
        model = np.tile(options, acc_states.size)
        keep = acc_new + rest_after[i] >= need
        acc_new, cost_new, parent, model = acc_new[keep], cost_new[keep], parent[keep], model[keep]
        # Pareto filter: sort by accuracy descending, keep strictly decreasing cost prefix minima.
        order = np.lexsort((cost_new, -acc_new))
        acc_new, cost_new, parent, model = acc_new[order], cost_new[order], parent[order], model[order]
        running = np.minimum.accumulate(cost_new)
        pareto = np.ones(cost_new.size, dtype=bool)
        pareto[1:] = cost_new[1:] < running[:-1]
        acc_states, cost_states = acc_new[pareto], cost_new[pareto]
        parents.append((parent[pareto], model[pareto]))
        if acc_states.size > max_states:
            raise RuntimeError("Pareto front too large for the exact model choice")
    if acc_states.size == 0:
        return None
    k = int(np.argmin(cost_states))
    choice = np.empty(n, dtype=np.intp)
    for i in range(n - 1, -1, -1):
        parent, model = parents[i]
        choice[i] = model[k]
        k = int(parent[k])
    return choice


def accuracy_floor(accuracy: FloatArray, n_terminals: int, required: float, *, max_work: float = 2e6) -> float:
    """Least accuracy sum ``>= required`` that ``n_terminals`` model choices can actually reach.

    Every feasible choice has ``sum a >= required``; since ``sum a`` only takes the values
    ``sum_m count_m a[m]``, it is in fact ``>=`` the smallest such value above ``required``, and
    using that value tightens the Lagrangian bound (it removes the rounding slack of the accuracy
    constraint, often the whole gap for N of a few hundred). Found by dynamic programming over the
    distinct reachable sums; returns ``required`` unchanged if that would take more than
    ``max_work`` elementary steps.
    """
    values = np.unique(np.round(np.asarray(accuracy, dtype=float), 12))
    need = required - ACCURACY_TOL
    # Even in the best case (sums on a lattice) the work grows like N^2 M (M - 1) / 2.
    if 0.5 * n_terminals**2 * values.size * max(values.size - 1, 1) > max_work:
        return required
    sums = np.array([0.0])
    work = 0.0
    for k in range(n_terminals):
        work += sums.size * values.size
        if work > max_work:
            return required
        # Prune sums that can no longer reach the requirement with the remaining terminals.
        sums = np.unique(np.round((sums[:, None] + values[None, :]).ravel(), 9))
        remaining = n_terminals - k - 1
        sums = sums[sums + remaining * values[-1] >= need]
    reachable = sums[sums >= need]
    if reachable.size == 0:
        return required
    return max(required, float(reachable.min()))
