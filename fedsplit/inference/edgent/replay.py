"""Replay a bandwidth trace under an inference policy: deadline misses and accuracy.

One inference request per trace step. A policy picks the configuration for step ``t`` from the
bandwidth observed up to step ``t - lag`` (``lag = 0``: the step's bandwidth is measured as it starts,
e.g. by the transfer in progress); the request then takes the predicted latency of that configuration
at the step's *actual* bandwidth, and misses when that exceeds the requirement.

Policies (:data:`POLICIES`): ``edgent-dynamic`` (the offline state map, online change detection,
and never planning above the bandwidth just observed), ``edgent-static`` (the optimiser once, at the
training trace's median bandwidth), ``device-only`` and ``edge-only`` (the optimiser's special
cases, also configured once).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedsplit.inference.edgent.configs import ConfigTable
from fedsplit.inference.edgent.optimizer import plan
from fedsplit.inference.edgent.states import BandwidthStates, OnlineStateDetector, state_plans
from fedsplit.inference.edgent.traces import BandwidthTrace

POLICIES: tuple[str, ...] = ("edgent-dynamic", "edgent-static", "device-only", "edge-only")


@dataclass(frozen=True)
class ReplayResult:
    """Per-step choices and outcomes of one policy on one trace.

    Attributes
    ----------
    policy : str
        Policy name.
    index : numpy.ndarray of int
        Configuration row used at each step.
    latency_s : numpy.ndarray of float
        Latency of each request at the step's actual bandwidth [s].
    missed : numpy.ndarray of bool
        Whether the request missed the requirement.
    accuracy : numpy.ndarray of float
        Held-out accuracy of the exit used.
    """

    policy: str
    index: np.ndarray
    latency_s: np.ndarray
    missed: np.ndarray
    accuracy: np.ndarray

    @property
    def miss_rate(self) -> float:
        """Fraction of requests that missed the requirement."""
        return float(self.missed.mean())

    @property
    def mean_accuracy(self) -> float:
        """Mean held-out accuracy of the exits used (every request counts)."""
        return float(self.accuracy.mean())


def choose_indices(
    policy: str,
    table: ConfigTable,
    trace: BandwidthTrace,
    requirement_s: float,
    states: BandwidthStates,
    planning_bps: float,
    *,
    lag: int = 0,
) -> np.ndarray:
    """The configuration row each policy uses at each step (see module docstring)."""
    if policy not in POLICIES:
        raise ValueError(f"policy = {policy!r}: expected one of {', '.join(POLICIES)}")
    if lag < 0:
        raise ValueError(f"lag = {lag!r}: expected an integer >= 0 (steps)")
    n = len(trace)
    if policy != "edgent-dynamic":
        mode = {"edgent-static": "edgent", "device-only": "device-only", "edge-only": "edge-only"}[policy]
        return np.full(n, plan(table, requirement_s, planning_bps, mode).index)
    plans = state_plans(states, table, requirement_s)
    detector = OnlineStateDetector(states)
    chosen = np.empty(n, dtype=int)
    for t in range(n):
        seen = t - lag
        if seen < 0:  # nothing observed yet: the first state plan that fits the slowest state
            chosen[t] = plans[0].index
            continue
        observed = float(trace.bps[seen])
        state = detector.update(observed)
        choice = plans[state]
        if observed < states.planning_bps[state]:  # guard: never plan above what was just measured
            choice = plan(table, requirement_s, observed)
        chosen[t] = choice.index
    return chosen


def replay(
    policy: str,
    table: ConfigTable,
    trace: BandwidthTrace,
    requirement_s: float,
    states: BandwidthStates,
    planning_bps: float,
    *,
    lag: int = 0,
) -> ReplayResult:
    """Run ``policy`` over ``trace`` (see module docstring)."""
    index = choose_indices(policy, table, trace, requirement_s, states, planning_bps, lag=lag)
    transfer = np.where(table.cut_bytes[index] > 0, 8.0 * table.cut_bytes[index] / trace.bps + table.link_latency_s, 0.0)
    latency = table.device_s[index] + transfer + table.edge_s[index]
    return ReplayResult(policy, index, latency, latency > requirement_s, table.accuracy[index])


__all__ = ["POLICIES", "ReplayResult", "choose_indices", "replay"]
