"""The four comparison schemes of Deng et al. (2022), section III.

* **Greedy Latency** — every terminal takes the smallest model (least input); resources allocated
  optimally under deadlines and energy budgets; the accuracy target is ignored.
* **Greedy Accuracy** — every terminal takes the most accurate model; resources allocated to
  minimise latency with deadlines and energy budgets ignored.
* **Random Model Decision** — each terminal draws a model uniformly (seeded); resources allocated
  optimally.
* **Equal Resource Allocation** — every terminal gets ``B/N`` Hz and ``F/N`` cycles/s; models chosen
  optimally for those shares (an exact multiple-choice knapsack for small N).

A baseline always returns a decision when one can be computed; when its policy breaks a constraint
(as Greedy Latency breaks the accuracy target by design) the schedule has ``feasible = False`` and
lists the violations in ``reasons``. Where a baseline's models admit no allocation meeting every
deadline and budget, it falls back to the latency-optimal allocation without those constraints
and reports what it violates.
"""

from __future__ import annotations

import time

import numpy as np

from fedsplit.inference.allocation import allocate
from fedsplit.inference.feasibility import pair_table
from fedsplit.inference.model_choice import accuracy_lagrangian, exact_choice
from fedsplit.inference.schedule import Schedule, infeasible_schedule, make_schedule
from fedsplit.inference.system_model import Problem

BASELINES = ("greedy-latency", "greedy-accuracy", "random", "equal-resource")


def _allocate_or_relax(problem: Problem, models: np.ndarray, name: str, start: float) -> Schedule:
    """Optimal allocation for the models; without deadlines/energy if they cannot all be met."""
    for respect in (True, False):
        alloc = allocate(problem, models, respect_deadlines=respect, respect_energy=respect)
        if alloc.feasible:
            return make_schedule(
                problem, name, models, alloc.bandwidth_hz, alloc.edge_cycles_per_s,
                solve_s=time.perf_counter() - start,
            )
    return infeasible_schedule(name, alloc.reasons, solve_s=time.perf_counter() - start)


def greedy_latency(problem: Problem) -> Schedule:
    """Smallest model everywhere, optimal allocation, accuracy ignored."""
    start = time.perf_counter()
    models = np.full(problem.n_terminals, int(np.argmin(problem.input_bits)), dtype=np.intp)
    return _allocate_or_relax(problem, models, "greedy-latency", start)


def greedy_accuracy(problem: Problem) -> Schedule:
    """Most accurate model everywhere, latency-optimal allocation ignoring deadlines and energy."""
    start = time.perf_counter()
    models = np.full(problem.n_terminals, int(np.argmax(problem.accuracy)), dtype=np.intp)
    alloc = allocate(problem, models, respect_deadlines=False, respect_energy=False)
    return make_schedule(
        problem, "greedy-accuracy", models, alloc.bandwidth_hz, alloc.edge_cycles_per_s,
        solve_s=time.perf_counter() - start,
    )


def random_models(problem: Problem, seed: int = 0) -> Schedule:
    """Uniformly random model per terminal (seeded), optimal allocation."""
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    models = rng.integers(0, problem.n_models, size=problem.n_terminals).astype(np.intp)
    return _allocate_or_relax(problem, models, "random", start)


def equal_resource(problem: Problem) -> Schedule:
    """Equal shares of band and server; models chosen optimally for those shares."""
    start = time.perf_counter()
    n, m = problem.n_terminals, problem.n_models
    b = np.full(n, problem.bandwidth_hz / n)
    f = np.full(n, problem.edge_cycles_per_s / n)
    latency = np.empty((n, m))
    energy = np.empty((n, m))
    for k in range(m):
        latency[:, k], energy[:, k] = problem.evaluate(np.full(n, k, dtype=np.intp), b, f)
    ok = (latency <= problem.deadline_s[:, None]) & (energy <= problem.energy_budget_j[:, None])
    ok &= pair_table(problem).feasible
    required = problem.accuracy_target * n
    choice = None
    for cost in (np.where(ok, latency, np.inf), latency):
        choice = _choose(cost, problem.accuracy, required)
        if choice is not None:
            break
    if choice is None:
        choice = np.argmin(latency, axis=1).astype(np.intp)
    return make_schedule(problem, "equal-resource", choice, b, f, solve_s=time.perf_counter() - start)


def _choose(cost: np.ndarray, accuracy: np.ndarray, required: float) -> np.ndarray | None:
    try:
        return exact_choice(cost, accuracy, required)
    except RuntimeError:
        lp = accuracy_lagrangian(cost, accuracy, required)
        return None if lp is None else lp.choice


def run_baseline(problem: Problem, name: str, *, seed: int = 0) -> Schedule:
    """Run the baseline called ``name`` (one of :data:`BASELINES`)."""
    if name == "greedy-latency":
        return greedy_latency(problem)
    if name == "greedy-accuracy":
        return greedy_accuracy(problem)
    if name == "random":
        return random_models(problem, seed)
    if name == "equal-resource":
        return equal_resource(problem)
    raise ValueError(f"unknown baseline {name!r}; expected one of {', '.join(BASELINES)}")
