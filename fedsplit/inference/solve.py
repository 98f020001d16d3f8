"""One entry point for every solver and baseline."""

from __future__ import annotations

from fedsplit.inference.baselines import BASELINES, run_baseline
from fedsplit.inference.exact import solve_exact
from fedsplit.inference.lagrangian import solve_fast
from fedsplit.inference.schedule import Schedule
from fedsplit.inference.system_model import Problem

SOLVERS = ("auto", "exact", "fast", *BASELINES)

#: ``auto`` uses the exact solver while the model vectors number at most this many.
AUTO_EXACT_MAX_VECTORS = 20_000
#: Default wall-clock limit [s] of the exact search.
EXACT_TIME_LIMIT_S = 120.0


def solve(problem: Problem, solver: str = "auto", *, seed: int = 0, time_limit_s: float = EXACT_TIME_LIMIT_S) -> Schedule:
    """Schedule a problem with the named solver.

    Parameters
    ----------
    problem : Problem
    solver : str
        ``"exact"`` (branch and bound, gap 0), ``"fast"`` (Lagrangian, certified gap), ``"auto"``
        (exact when ``M**N <= 20000``, else fast) or a baseline from :data:`BASELINES`.
    seed : int
        Seed of the ``random`` baseline.
    time_limit_s : float
        Wall-clock limit [s] of the exact search; past it
        :class:`~fedsplit.inference.exact.SearchLimitReached` is raised.
    """
    if solver == "auto":
        small = problem.n_models ** problem.n_terminals <= AUTO_EXACT_MAX_VECTORS
        solver = "exact" if small else "fast"
    if solver == "exact":
        return solve_exact(problem, time_limit_s=time_limit_s)
    if solver == "fast":
        return solve_fast(problem)
    if solver in BASELINES:
        return run_baseline(problem, solver, seed=seed)
    raise ValueError(f"unknown solver {solver!r}; expected one of {', '.join(SOLVERS)}")
