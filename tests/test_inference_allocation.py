"""Fixed-model allocation: optimal by KKT, cross-checked against a general convex solver."""

import numpy as np
import pytest

from fedsplit.inference.allocation import allocate
from fedsplit.inference.feasibility import pair_table
from fedsplit.inference.instances import random_problem
from fedsplit.inference.paper_scenario import generate_paper_scenario
from fedsplit.inference.reference import reference_allocation
from fedsplit.inference.spectral import psi


def test_slack_allocation_closed_form_and_equal_marginals():
    p = generate_paper_scenario(6, 3)
    models = np.array([0, 1, 0, 1, 0, 1])
    assert pair_table(p).feasible[np.arange(6), models].all()
    a = allocate(p, models, respect_deadlines=False, respect_energy=False)
    assert a.feasible
    c = p.edge_cycles[models]
    # Compute: f_i proportional to sqrt(c_i), using all of F.
    assert np.allclose(a.edge_cycles_per_s, p.edge_cycles_per_s * np.sqrt(c) / np.sqrt(c).sum(), rtol=1e-12)
    assert a.bandwidth_hz.sum() == pytest.approx(p.bandwidth_hz, rel=1e-9)
    # Bandwidth: equal marginal upload-time saving (D/s^2) psi(b/s) = lambda for every terminal.
    s = p.snr_bandwidth_hz
    marginal = p.input_bits[models] / s**2 * psi(a.bandwidth_hz / s)
    assert np.allclose(marginal, a.bandwidth_price, rtol=1e-6)


def test_single_terminal_gets_everything():
    p = generate_paper_scenario(1, 0)
    a = allocate(p, np.array([0]))
    assert a.feasible
    assert a.bandwidth_hz[0] == p.bandwidth_hz and a.edge_cycles_per_s[0] == p.edge_cycles_per_s


def test_matches_general_convex_solver_including_binding_deadlines():
    rng = np.random.default_rng(11)
    checked = binding = 0
    while checked < 25:
        n = int(rng.integers(2, 6))
        p = random_problem(rng, n)
        models = rng.integers(0, 3, n)
        if not pair_table(p).feasible[np.arange(n), models].all():
            continue
        ours = allocate(p, models)
        ok, value, _, _ = reference_allocation(p, models)
        assert ours.feasible == ok
        if ok:
            assert ours.objective_s <= value * (1 + 1e-9)
            assert ours.objective_s == pytest.approx(value, rel=1e-6)
            latency, energy = p.evaluate(models, ours.bandwidth_hz, ours.edge_cycles_per_s)
            assert np.all(latency <= p.deadline_s * (1 + 1e-7))
            assert np.all(energy <= p.energy_budget_j * (1 + 1e-7))
            binding += int(np.any(latency >= p.deadline_s * (1 - 1e-6)))
        checked += 1
    assert binding >= 3  # the general (deadline-binding) path was exercised


def test_infeasible_allocations_say_which_resource_is_short():
    p = generate_paper_scenario(6, 3)
    models = np.array([1] * 6)
    tight = p.with_updates(bandwidth_hz=2e6)
    a = allocate(tight, models)
    assert not a.feasible and any(r.startswith(("bandwidth", "terminals")) for r in a.reasons)
    short = p.with_updates(edge_cycles_per_s=1e9)
    a = allocate(short, models)
    assert not a.feasible
    assert any(r.startswith(("compute", "deadlines")) for r in a.reasons)
    assert not np.isfinite(a.objective_s)


def test_cutoff_prunes_with_a_valid_bound():
    p = generate_paper_scenario(4, 5)
    models = np.array([0, 1, 0, 1])
    full = allocate(p, models)
    pruned = allocate(p, models, cutoff_s=full.objective_s * 0.5)
    assert pruned.pruned and not pruned.feasible
    assert pruned.lower_bound_s <= full.objective_s
