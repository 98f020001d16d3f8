"""Scalable joint scheduling by Lagrangian relaxation, with a certified optimality gap.

Pricing the band (``lam`` [s/Hz]), the edge server (``nu`` [s per cycle/s]) and accuracy (``eta``)
decouples the problem into one tiny problem per (terminal, model) pair:

    h[i, m](lam, nu) = min  T_im(b, f) + lam b + nu f    over the pair's feasible (b, f),

solved in closed form or by one vectorised Newton solve (:mod:`.pricing`). For *any* prices,

    L(eta, lam, nu) = sum_i min_m (h[i, m] - eta a[m]) + eta N chi - lam B - nu F

is a lower bound on the optimal total latency (weak duality); ``eta`` is optimised exactly for given
``(lam, nu)`` by :func:`.model_choice.accuracy_lagrangian`.

The solver alternates: prices -> every pair's cost -> model choices (the accuracy-Lagrangian
choice rounded to meet chi, and for N <= 40 also the exact priced multiple-choice knapsack) ->
optimal allocation for those models, whose multipliers are the next prices -> ... keeping the best
feasible schedule and the best bound. A polish pass then tries the single-terminal changes and
up/down swaps that look cheapest at the incumbent's prices. The bound uses, instead of ``N chi``,
the least accuracy sum that model counts can actually reach above it
(:func:`.model_choice.accuracy_floor`), which removes the rounding slack of the accuracy
constraint. Every answer carries ``gap = (total - bound) / total``, an upper bound on its distance
from the optimum.
"""

from __future__ import annotations

import time

import numpy as np

from fedsplit.inference.allocation import Allocation, allocate
from fedsplit.inference.feasibility import pair_table
from fedsplit.inference.model_choice import (
    ACCURACY_TOL,
    accuracy_floor,
    accuracy_lagrangian,
    exact_choice,
)
from fedsplit.inference.pricing import Demand, best_response
from fedsplit.inference.schedule import Schedule, infeasible_schedule, make_schedule, problem_level_reasons
from fedsplit.inference.system_model import FloatArray, Problem


class PairPricer:
    """Evaluates ``h[i, m](lam, nu)`` for every feasible pair at once."""

    def __init__(self, problem: Problem) -> None:
        table = pair_table(problem)
        self.problem = problem
        self.shape = table.feasible.shape
        rows, cols = np.nonzero(table.feasible)
        self.rows, self.cols = rows, cols
        self.demand = Demand(
            snr_hz=problem.snr_bandwidth_hz[rows],
            bits=problem.input_bits[cols],
            edge_cycles=problem.edge_cycles[cols],
            time_budget_s=table.time_budget_s[rows, cols],
            min_bandwidth_hz=table.min_bandwidth_hz[rows, cols],
            deadline_bandwidth_hz=table.deadline_bandwidth_hz[rows, cols],
            local_time_s=problem.local_time_s[rows, cols],
        )

    def costs(self, lam: float, nu: float) -> FloatArray:
        """Priced cost ``h`` of every pair [s], ``inf`` for infeasible pairs, shape ``(N, M)``."""
        p = self.problem
        r = best_response(self.demand, lam, nu, p.bandwidth_hz, p.edge_cycles_per_s)
        b, f = r.bandwidth_hz, r.edge_cycles_per_s
        latency = self.demand.local_time_s + self.demand.upload_time_s(b) + self.demand.edge_cycles / f
        out = np.full(self.shape, np.inf)
        out[self.rows, self.cols] = latency + lam * b + nu * f
        return out

    def bound(self, lam: float, nu: float) -> tuple[float, np.ndarray | None]:
        """Best Lagrangian bound at ``(lam, nu)`` over ``eta``, and the rounded model choice."""
        p = self.problem
        h = self.costs(lam, nu)
        lp = accuracy_lagrangian(h, p.accuracy, p.accuracy_target * p.n_terminals)
        if lp is None:
            return np.inf, None
        return lp.dual_value - lam * p.bandwidth_hz - nu * p.edge_cycles_per_s, lp.choice


def _prices_of(alloc: Allocation) -> tuple[float, float] | None:
    """The allocation's resource prices, when it has finite ones."""
    lam, nu = alloc.bandwidth_price, alloc.compute_price
    if alloc.feasible and np.isfinite(lam) and np.isfinite(nu):
        return lam, nu
    return None


def _relaxed_prices(problem: Problem, models: np.ndarray) -> tuple[float, float]:
    """Prices of the deadline-free allocation (always defined): a starting point."""
    for respect_energy in (True, False):
        alloc = allocate(problem, models, respect_deadlines=False, respect_energy=respect_energy)
        if alloc.feasible and np.isfinite(alloc.bandwidth_price):
            return alloc.bandwidth_price, alloc.compute_price
    return 0.0, 0.0


#: Largest N for which each round also solves the priced model choice exactly (Pareto DP).
EXACT_CHOICE_MAX_TERMINALS = 40


class _Search:
    """State of the fast solver: best schedule and bound so far, and the candidates tried."""

    def __init__(self, problem: Problem, pricer: PairPricer) -> None:
        self.problem = problem
        self.pricer = pricer
        self.best: tuple[float, np.ndarray, Allocation] | None = None
        self.bound = -np.inf
        self.tried: dict[bytes, Allocation] = {}
        required = problem.accuracy_target * problem.n_terminals
        self.bound_requirement = accuracy_floor(problem.accuracy, problem.n_terminals, required)

    def evaluate(self, models: np.ndarray) -> Allocation:
        key = models.tobytes()
        if key not in self.tried:
            guess = self.best[2].bandwidth_price if self.best is not None else None
            alloc = allocate(self.problem, models, price_guess=guess)
            self.tried[key] = alloc
            if alloc.feasible and (self.best is None or alloc.objective_s < self.best[0]):
                self.best = (alloc.objective_s, models.copy(), alloc)
        return self.tried[key]

    def candidates_at(self, lam: float, nu: float) -> list[np.ndarray]:
        """Model choices suggested by the prices; also tightens the bound."""
        p = self.problem
        h = self.pricer.costs(lam, nu)
        required = p.accuracy_target * p.n_terminals
        lp = accuracy_lagrangian(h, p.accuracy, required)
        if lp is None:
            return []
        tight = lp
        if self.bound_requirement > required:
            tight = accuracy_lagrangian(h, p.accuracy, self.bound_requirement) or lp
        self.bound = max(self.bound, tight.dual_value - lam * p.bandwidth_hz - nu * p.edge_cycles_per_s)
        out = [lp.choice]
        if p.n_terminals <= EXACT_CHOICE_MAX_TERMINALS:
            try:
                exact = exact_choice(h, p.accuracy, required, max_states=20_000)
            except RuntimeError:
                exact = None
            if exact is not None and exact.tobytes() != lp.choice.tobytes():
                out.append(exact)
        return out

    @property
    def converged(self) -> bool:
        return self.best is not None and self.best[0] - self.bound <= 1e-9 * self.best[0]


def solve_fast(
    problem: Problem,
    *,
    max_rounds: int = 30,
    polish: bool = True,
    max_polish_moves: int | None = None,
) -> Schedule:
    """Near-optimal schedule with a certified gap, in time roughly linear in ``N * M``.

    Parameters
    ----------
    problem : Problem
    max_rounds : int
        Maximum alternations of pricing and allocation.
    polish : bool
        Try single-terminal model changes (and up/down swaps) suggested by the final prices.
    max_polish_moves : int, optional
        How many suggested changes of each kind to evaluate exactly per pass (default ``max(8, 2M)``).
    """
    start = time.perf_counter()
    reasons = problem_level_reasons(problem)
    if reasons:
        return infeasible_schedule("fast", reasons, solve_s=time.perf_counter() - start)
    pricer = PairPricer(problem)
    search = _Search(problem, pricer)
    table = pair_table(problem)

    # Start from the prices of the smallest feasible models.
    smallest = np.argmin(np.where(table.feasible, problem.input_bits[None, :], np.inf), axis=1)
    lam, nu = _relaxed_prices(problem, smallest)
    history: list[tuple[float, float]] = []
    for _ in range(max_rounds):
        history.append((lam, nu))
        candidates = search.candidates_at(lam, nu)
        if not candidates:
            break
        fresh = [c for c in candidates if c.tobytes() not in search.tried]
        allocs = [search.evaluate(c) for c in candidates]
        if search.converged:
            break
        priced = [_prices_of(a) for a in allocs]
        next_prices = next((q for q in priced if q is not None), None)
        if next_prices is None:
            # Every suggestion is infeasible: resources are dearer than priced; raise the prices.
            next_prices = (lam * 2.0 if lam > 0 else 1e-12, nu * 2.0 if nu > 0 else 1e-24)
        elif not fresh:
            # Nothing new: average with the previous prices to break a cycle, or stop.
            if len(history) >= 2 and (next_prices[0], next_prices[1]) in history:
                next_prices = (
                    float(np.sqrt(max(next_prices[0], 1e-300) * max(history[-1][0], 1e-300))),
                    float(np.sqrt(max(next_prices[1], 1e-300) * max(history[-1][1], 1e-300))),
                )
                if next_prices in history:
                    break
        lam, nu = next_prices

    if search.best is not None and polish:
        _polish(problem, search, max_polish_moves)

    elapsed = time.perf_counter() - start
    if search.best is None:
        return infeasible_schedule(
            "fast",
            ["no feasible schedule found by the fast solver (use --solver exact for a proof on small N)"],
            solve_s=elapsed,
        )
    value, models, alloc = search.best
    return make_schedule(
        problem, "fast", models, alloc.bandwidth_hz, alloc.edge_cycles_per_s,
        lower_bound_s=min(search.bound, value), solve_s=elapsed,
    )


def _polish(problem: Problem, search: _Search, max_moves: int | None) -> None:
    """Evaluate the model changes that look cheapest at the incumbent's prices; repeat on success."""
    n, m = problem.n_terminals, problem.n_models
    if max_moves is None:
        max_moves = max(8, 2 * m)
    acc = problem.accuracy
    required = problem.accuracy_target * n - ACCURACY_TOL
    rows = np.arange(n)
    for _ in range(6):
        value, models, alloc = search.best
        prices = _prices_of(alloc)
        if prices is None:
            return
        for candidate in search.candidates_at(*prices):
            search.evaluate(candidate)
        if search.best[0] < value:
            continue
        h = search.pricer.costs(*prices)
        slack = float(np.sum(acc[models])) - required
        delta = h - h[rows, models][:, None]
        allowed = np.isfinite(h) & ((acc[None, :] - acc[models][:, None]) >= -slack)
        allowed[rows, models] = False
        flat = np.where(allowed, delta, np.inf).ravel()
        take = min(max_moves, int(np.sum(np.isfinite(flat))))
        order = np.argpartition(flat, take - 1)[:take] if take > 0 else np.array([], dtype=int)
        order = order[np.argsort(flat[order])]
        moves = [[(int(k // m), int(k % m))] for k in order]
        moves += _swap_candidates(delta, h, acc, models, slack)[:max_moves]
        for move in moves:
            trial = models.copy()
            for i, k in move:
                trial[i] = k
            if float(np.sum(acc[trial])) < required or trial.tobytes() in search.tried:
                continue
            cand = allocate(problem, trial, cutoff_s=value, price_guess=prices[0])
            search.tried[trial.tobytes()] = cand
            if cand.feasible and cand.objective_s < value * (1 - 1e-12):
                search.best = (cand.objective_s, trial, cand)
                break
        if search.best[0] >= value:
            return


def _swap_candidates(
    delta: FloatArray, h: FloatArray, acc: FloatArray, models: np.ndarray, slack: float, keep: int = 12
) -> list[list[tuple[int, int]]]:
    """Pairs (upgrade one terminal, downgrade another) that keep the accuracy target, cheapest first."""
    m = h.shape[1]
    gain = acc[None, :] - acc[models][:, None]

    def cheapest(mask: np.ndarray) -> np.ndarray:
        flat = np.where(mask, delta, np.inf).ravel()
        count = min(keep, int(np.sum(np.isfinite(flat))))
        if count == 0:
            return np.array([], dtype=np.intp)
        idx = np.argpartition(flat, count - 1)[:count]
        return idx[np.argsort(flat[idx])]

    finite = np.isfinite(h)
    ups, downs = cheapest(finite & (gain > 0)), cheapest(finite & (gain < 0))
    out = []
    for u in ups:
        i, k = divmod(int(u), m)
        for d in downs:
            j, l = divmod(int(d), m)
            if i == j or gain[i, k] + gain[j, l] < -slack:
                continue
            out.append((float(delta[i, k] + delta[j, l]), [(i, k), (j, l)]))
    out.sort(key=lambda c: c[0])
    return [c[1] for c in out]
