"""Joint solvers: exact equals brute force, fast is near-exact with a valid certified bound."""

import itertools

import numpy as np
import pytest

from fedsplit.inference.allocation import allocate
from fedsplit.inference.exact import solve_exact
from fedsplit.inference.feasibility import pair_table
from fedsplit.inference.instances import benchmark_problem, random_problem
from fedsplit.inference.lagrangian import solve_fast
from fedsplit.inference.model_choice import ACCURACY_TOL, accuracy_floor, accuracy_lagrangian, exact_choice
from fedsplit.inference.paper_scenario import generate_paper_scenario
from fedsplit.inference.solve import solve


def brute_force(p):
    n = p.n_terminals
    best = np.inf
    feasible = pair_table(p).feasible
    for vector in itertools.product(range(p.n_models), repeat=n):
        models = np.array(vector)
        if p.accuracy[models].sum() < p.accuracy_target * n - ACCURACY_TOL:
            continue
        if not feasible[np.arange(n), models].all():
            continue
        a = allocate(p, models)
        if a.feasible:
            best = min(best, a.objective_s)
    return best


def test_exact_matches_brute_force_and_fast_bound_is_valid():
    rng = np.random.default_rng(3)
    feasible = 0
    for _ in range(30):
        p = random_problem(rng, int(rng.integers(1, 6)))
        reference = brute_force(p)
        exact = solve_exact(p)
        fast = solve_fast(p)
        if np.isfinite(reference):
            feasible += 1
            assert exact.feasible and exact.gap == 0.0
            assert exact.total_latency_s == pytest.approx(reference, rel=1e-9)
            assert fast.feasible
            assert fast.lower_bound_s <= reference * (1 + 1e-9)  # the certified bound never lies
            assert fast.total_latency_s >= reference * (1 - 1e-9)
        else:
            assert not exact.feasible and exact.reasons
            assert not fast.feasible
    assert feasible >= 15


def test_fast_is_near_exact_on_small_instances():
    rng = np.random.default_rng(8)
    gaps = []
    while len(gaps) < 25:
        p = random_problem(rng, int(rng.integers(2, 8)))
        exact = solve_exact(p)
        if not exact.feasible:
            continue
        fast = solve_fast(p)
        gaps.append((fast.total_latency_s - exact.total_latency_s) / exact.total_latency_s)
    assert np.mean(gaps) <= 0.005 and np.max(gaps) <= 0.02


def test_certified_gap_at_100_terminals():
    p = benchmark_problem(100, 3, 0)
    s = solve_fast(p)
    assert s.feasible
    assert s.lower_bound_s <= s.total_latency_s
    assert s.gap <= 0.01
    assert s.accuracy >= p.accuracy_target - 1e-9


def test_schedule_meets_every_constraint():
    p = generate_paper_scenario(8, 4)
    s = solve(p, "fast")
    assert s.feasible
    assert s.bandwidth_hz.sum() <= p.bandwidth_hz * (1 + 1e-9)
    assert s.edge_cycles_per_s.sum() <= p.edge_cycles_per_s * (1 + 1e-9)
    assert np.all(s.latency_s <= p.deadline_s * (1 + 1e-7))
    assert np.all(s.energy_j <= p.energy_budget_j * (1 + 1e-7))
    assert s.total_latency_s == pytest.approx(s.latency_s.sum())


def test_unreachable_accuracy_and_unusable_terminal_are_reported():
    p = generate_paper_scenario(4, 1).with_updates(accuracy_target=0.99)
    for solver in ("exact", "fast"):
        s = solve(p, solver)
        assert not s.feasible and any(r.startswith("accuracy") for r in s.reasons)
    q = generate_paper_scenario(3, 1)
    gain = q.gain.copy()
    gain[2] = 1e-20
    s = solve(q.with_updates(gain=gain), "exact")
    assert not s.feasible and any("terminal 2 can use no model" in r for r in s.reasons)


def test_jointly_infeasible_instance_is_proven_by_exact():
    p = generate_paper_scenario(6, 2).with_updates(edge_cycles_per_s=2e8, accuracy_target=0.6)
    s = solve_exact(p)
    assert not s.feasible and s.reasons


def test_model_choice_lagrangian_bounds_and_exact_dp():
    rng = np.random.default_rng(0)
    for _ in range(100):
        n, m = int(rng.integers(1, 6)), int(rng.integers(1, 4))
        cost = rng.uniform(0, 1, (n, m))
        cost[rng.uniform(size=(n, m)) < 0.2] = np.inf
        acc = np.sort(rng.uniform(0.4, 0.95, m))
        required = rng.uniform(0.4, 0.9) * n
        best = np.inf
        for vector in itertools.product(range(m), repeat=n):
            v = np.array(vector)
            c = cost[np.arange(n), v].sum()
            if np.isfinite(c) and acc[v].sum() >= required - ACCURACY_TOL:
                best = min(best, c)
        choice = exact_choice(cost, acc, required)
        lp = accuracy_lagrangian(cost, acc, required)
        if not np.isfinite(best):
            assert choice is None and lp is None
            continue
        assert cost[np.arange(n), choice].sum() == pytest.approx(best)
        assert lp.dual_value <= best + 1e-12
        assert acc[lp.choice].sum() >= required - ACCURACY_TOL


def test_accuracy_floor_is_the_least_reachable_sum():
    assert accuracy_floor(np.array([0.6, 0.74, 0.88]), 100, 70.0) == pytest.approx(70.08)
    assert accuracy_floor(np.array([0.5, 1.0]), 3, 2.0) == pytest.approx(2.0)
