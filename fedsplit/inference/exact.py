"""Exact joint model choice and allocation for small N: branch and bound over model vectors.

Terminals are fixed one at a time (depth-first). A node is pruned when

* the accuracy target is out of reach even if every unfixed terminal takes its most accurate
  feasible model, or
* a relaxation's total latency is no better than the incumbent. The relaxation keeps the fixed
  terminals' models, gives every unfixed terminal a *virtual* model with the least input, work and
  minimum bandwidth among its feasible models, and drops deadlines; its optimal allocation (closed
  form for compute, one price search for bandwidth) is a valid lower bound because latency grows in
  ``D``, ``c_loc`` and ``c_edge`` and the relaxation's feasible set contains every completion's.

Leaves are solved to optimality by :func:`.allocation.allocate`. The incumbent starts from the fast
solver, so the search mostly certifies it; when the fast solver's Lagrangian bound already equals
the incumbent, that is a proof of optimality and no search is needed.
"""

from __future__ import annotations

import time

import numpy as np

from fedsplit.inference.allocation import allocate, allocate_demand
from fedsplit.inference.feasibility import pair_table
from fedsplit.inference.model_choice import ACCURACY_TOL
from fedsplit.inference.pricing import Demand
from fedsplit.inference.schedule import (
    Schedule,
    infeasible_schedule,
    make_schedule,
    problem_level_reasons,
)
from fedsplit.inference.system_model import Problem


class SearchLimitReached(RuntimeError):
    """The branch and bound visited more nodes than allowed."""


def solve_exact(
    problem: Problem,
    *,
    incumbent: Schedule | None = None,
    node_limit: int = 200_000,
    time_limit_s: float = 120.0,
) -> Schedule:
    """Optimal schedule by branch and bound (gap 0), or the proven reason there is none.

    Parameters
    ----------
    problem : Problem
    incumbent : Schedule, optional
        A feasible schedule to start from (default: the fast solver's).
    node_limit : int
        Maximum number of nodes before :class:`SearchLimitReached` is raised.
    time_limit_s : float
        Wall-clock limit [s] of the search, likewise.
    """
    start = time.perf_counter()
    reasons = problem_level_reasons(problem)
    if reasons:
        return infeasible_schedule("exact", reasons, solve_s=time.perf_counter() - start)
    if incumbent is None:
        from fedsplit.inference.lagrangian import solve_fast

        incumbent = solve_fast(problem, polish=False)
    if incumbent.feasible and incumbent.lower_bound_s >= incumbent.total_latency_s * (1 - 1e-12):
        # The Lagrangian bound already proves the incumbent optimal: nothing left to search.
        proven = make_schedule(
            problem, "exact", incumbent.models, incumbent.bandwidth_hz, incumbent.edge_cycles_per_s,
            lower_bound_s=incumbent.total_latency_s, solve_s=time.perf_counter() - start,
        )
        proven.gap = 0.0
        return proven
    search = _BranchAndBound(problem, incumbent, node_limit, start + time_limit_s)
    search.run()
    elapsed = time.perf_counter() - start
    if search.best_models is None:
        return infeasible_schedule(
            "exact",
            [
                "no combination of feasible models admits an allocation meeting every deadline and "
                "energy budget within B and F together with the accuracy target",
                *search.sample_reasons[:3],
            ],
            solve_s=elapsed,
        )
    alloc = search.best_allocation
    schedule = make_schedule(
        problem, "exact", search.best_models, alloc.bandwidth_hz, alloc.edge_cycles_per_s,
        lower_bound_s=alloc.objective_s, solve_s=elapsed,
    )
    schedule.gap = 0.0
    return schedule


class _BranchAndBound:
    def __init__(self, problem: Problem, incumbent: Schedule | None, node_limit: int, deadline: float) -> None:
        self.problem = problem
        self.node_limit = node_limit
        self.deadline = deadline
        self.nodes = 0
        table = pair_table(problem)
        self.feasible = table.feasible
        self.min_bw = table.min_bandwidth_hz
        n, m = self.feasible.shape
        acc = problem.accuracy
        self.required = problem.accuracy_target * n - ACCURACY_TOL
        self.best_acc = np.max(np.where(self.feasible, acc[None, :], -np.inf), axis=1)
        # Virtual (optimistic) model of each terminal: least of every cost over its feasible models.
        big = np.where(self.feasible, 0.0, np.inf)
        self.v_bits = np.min(problem.input_bits[None, :] + big, axis=1)
        self.v_cycles = np.min(problem.edge_cycles[None, :] + big, axis=1)
        self.v_local = np.min(problem.local_time_s + big, axis=1)
        self.v_min_bw = np.min(self.min_bw + big, axis=1)
        # Branch first on terminals whose model choice matters most (widest latency spread).
        spread = np.max(np.where(self.feasible, problem.input_bits[None, :] / problem.snr_bandwidth_hz[:, None], 0), axis=1)
        self.order = np.argsort(-spread)
        self.incumbent_value = np.inf
        self.best_models = None
        self.best_allocation = None
        self.sample_reasons: list[str] = []
        if incumbent is not None and incumbent.feasible and incumbent.models is not None:
            alloc = allocate(problem, incumbent.models)
            if alloc.feasible:
                self.incumbent_value = alloc.objective_s
                self.best_models = incumbent.models.copy()
                self.best_allocation = alloc
        # Child order: the incumbent's model first, then by increasing input size.
        self.preference = []
        for i in range(n):
            options = [int(k) for k in np.argsort(problem.input_bits) if self.feasible[i, k]]
            if self.best_models is not None:
                first = int(self.best_models[i])
                options = [first] + [k for k in options if k != first]
            self.preference.append(options)
        self.s = problem.snr_bandwidth_hz

    def _relaxed_bound(self, models: np.ndarray, depth: int) -> float:
        """Deadline-free optimal latency with fixed terminals real and the rest virtual."""
        p = self.problem
        fixed = self.order[:depth]
        bits, cycles, local, min_bw = (
            self.v_bits.copy(), self.v_cycles.copy(), self.v_local.copy(), self.v_min_bw.copy()
        )
        chosen = models[fixed]
        bits[fixed] = p.input_bits[chosen]
        cycles[fixed] = p.edge_cycles[chosen]
        local[fixed] = p.local_time_s[fixed, chosen]
        min_bw[fixed] = self.min_bw[fixed, chosen]
        n = p.n_terminals
        demand = Demand(
            snr_hz=self.s,
            bits=bits,
            edge_cycles=cycles,
            time_budget_s=np.full(n, np.inf),
            min_bandwidth_hz=min_bw,
            deadline_bandwidth_hz=np.zeros(n),
            local_time_s=local,
        )
        alloc = allocate_demand(demand, p.bandwidth_hz, p.edge_cycles_per_s, cutoff_s=self.incumbent_value)
        if alloc.pruned:
            return np.inf
        return alloc.objective_s if alloc.feasible else np.inf

    def run(self) -> None:
        n = self.problem.n_terminals
        models = np.full(n, -1, dtype=np.intp)
        rest = np.concatenate([np.cumsum(self.best_acc[self.order][::-1])[::-1], [0.0]])
        self._visit(models, 0, 0.0, rest)

    def _visit(self, models: np.ndarray, depth: int, acc_sum: float, rest: np.ndarray) -> None:
        self.nodes += 1
        if self.nodes > self.node_limit:
            raise SearchLimitReached(f"branch and bound exceeded {self.node_limit} nodes")
        if self.nodes % 256 == 0 and time.perf_counter() > self.deadline:
            raise SearchLimitReached("branch and bound exceeded its time limit")
        n = self.problem.n_terminals
        if depth == n:
            alloc = allocate(self.problem, models, cutoff_s=self.incumbent_value)
            if alloc.feasible and alloc.objective_s < self.incumbent_value:
                self.incumbent_value = alloc.objective_s
                self.best_models = models.copy()
                self.best_allocation = alloc
            elif not alloc.feasible and not alloc.pruned and len(self.sample_reasons) < 3:
                self.sample_reasons.extend(alloc.reasons[:1])
            return
        if depth > 0 and self._relaxed_bound(models, depth) >= self.incumbent_value:
            return
        i = int(self.order[depth])
        acc = self.problem.accuracy
        for k in self.preference[i]:
            if acc_sum + acc[k] + rest[depth + 1] < self.required:
                continue
            models[i] = k
            self._visit(models, depth + 1, acc_sum + acc[k], rest)
        models[i] = -1
