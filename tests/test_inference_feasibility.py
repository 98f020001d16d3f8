"""Pair feasibility: each failing check is detected, named, and the minimum bandwidths are tight."""

import numpy as np

from fedsplit.inference.feasibility import PairStatus, infeasible_pairs, pair_reason, pair_table
from fedsplit.inference.spectral import uplink_rate_bps
from fedsplit.inference.system_model import ModelSpec, Problem, TerminalSpec

NOISE = 10 ** (-17.4) / 1000


def make(terminal: TerminalSpec, model: ModelSpec, *, B=20e6, F=14e9) -> Problem:
    return Problem.from_specs(bandwidth_hz=B, edge_cycles_per_s=F, noise_w_per_hz=NOISE,
                              accuracy_target=0.5, terminals=[terminal], models=[model])


T = TerminalSpec(gain=1e-12, cpu_hz=1.5e9, tx_power_w=0.3, energy_budget_j=0.05, deadline_s=0.5, kappa=1e-28)
M = ModelSpec(name="m", input_bits=2.16e6, local_cycles=1e7, edge_cycles=2e8, accuracy=0.7)


def test_feasible_pair_and_tight_minimum_bandwidths():
    p = make(T, M)
    table = pair_table(p)
    assert table.status[0, 0] == PairStatus.FEASIBLE
    b_e = table.energy_bandwidth_hz[0, 0]
    rate = uplink_rate_bps(b_e, p.snr_bandwidth_hz[0])
    energy = p.local_energy_j[0, 0] + T.tx_power_w * M.input_bits / rate
    assert abs(energy - T.energy_budget_j) < 1e-9
    b_d = table.deadline_bandwidth_hz[0, 0]
    latency, _ = p.evaluate(np.array([0]), np.array([b_d]), np.array([p.edge_cycles_per_s]))
    assert abs(latency[0] - T.deadline_s) < 1e-9
    assert pair_reason(p, 0, 0) == ""


def test_local_energy_over_budget():
    p = make(T, ModelSpec("big", 2.4e5, 2.4e8, 2e8, 0.7))  # the paper's 1000 cycles/bit locally
    assert pair_table(p).status[0, 0] == PairStatus.LOCAL_ENERGY
    assert "local preprocessing alone uses 0.054 J" in pair_reason(p, 0, 0)


def test_local_time_over_deadline():
    t = TerminalSpec(gain=1e-12, cpu_hz=1e9, tx_power_w=0.3, energy_budget_j=10, deadline_s=0.5, kappa=1e-28)
    p = make(t, ModelSpec("slow", 1e5, 6e8, 1e6, 0.7))
    assert pair_table(p).status[0, 0] == PairStatus.LOCAL_TIME


def test_edge_time_over_deadline():
    p = make(T, ModelSpec("huge", 2.4e5, 1e5, 8.64e9, 0.9))  # paper's 1000 cycles/bit at the edge
    assert pair_table(p).status[0, 0] == PairStatus.EDGE_TIME
    assert "whole edge server" in pair_reason(p, 0, 0)


def test_uplink_energy_and_deadline_failures():
    weak = TerminalSpec(gain=1e-14, cpu_hz=1.5e9, tx_power_w=0.3, energy_budget_j=0.05, deadline_s=0.5, kappa=1e-28)
    p = make(weak, ModelSpec("big", 8.64e6, 1e6, 1e8, 0.9))
    assert pair_table(p).status[0, 0] == PairStatus.UPLINK_ENERGY
    assert "energy budget" in pair_reason(p, 0, 0)
    rich = TerminalSpec(gain=1e-13, cpu_hz=1.5e9, tx_power_w=0.3, energy_budget_j=100, deadline_s=0.2, kappa=1e-28)
    p = make(rich, ModelSpec("big", 8.64e6, 1e6, 1e8, 0.9))
    assert pair_table(p).status[0, 0] == PairStatus.DEADLINE
    assert "even with the whole band" in pair_reason(p, 0, 0)
    assert len(infeasible_pairs(p)) == 1
