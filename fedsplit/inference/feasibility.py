"""Which (terminal, model) pairs can work at all, how much bandwidth they need, and why not.

A pair is *feasible on its own* when the terminal could meet its deadline and energy budget with that
model if it had the whole band ``B`` and the whole edge server ``F``. From the system model:

* uplink energy ``p D / r(b) <= E_max - E_loc``  gives  ``b >= b_energy``;
* deadline ``t_loc + D / r(b) + c_edge / F <= deadline``  gives  ``b >= b_deadline``.

``b_min = max(b_energy, b_deadline)`` is a hard lower bound on the pair's bandwidth in any feasible
schedule, and the pair is feasible on its own iff ``b_min <= B``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np
from numpy.typing import NDArray

from fedsplit.inference.spectral import PHI_MAX, bandwidth_for_rate_hz, uplink_rate_bps
from fedsplit.inference.system_model import FloatArray, Problem


class PairStatus(IntEnum):
    """Why a (terminal, model) pair is or is not feasible on its own (first failing check)."""

    FEASIBLE = 0
    LOCAL_ENERGY = 1
    LOCAL_TIME = 2
    EDGE_TIME = 3
    UPLINK_ENERGY = 4
    DEADLINE = 5


@dataclass(frozen=True)
class PairTable:
    """Per-pair quantities, each of shape ``(N, M)``.

    Attributes
    ----------
    time_budget_s : ndarray
        Time left for upload plus edge inference, ``deadline - t_loc`` [s].
    uplink_energy_budget_j : ndarray
        Energy left for the upload, ``E_max - E_loc`` [J].
    energy_bandwidth_hz : ndarray
        Least bandwidth meeting the energy budget [Hz] (``inf`` if none does).
    deadline_bandwidth_hz : ndarray
        Least bandwidth meeting the deadline with the whole edge server [Hz] (``inf`` if none).
    min_bandwidth_hz : ndarray
        ``max`` of the two [Hz].
    status : ndarray of int
        :class:`PairStatus` code of each pair.
    """

    time_budget_s: FloatArray
    uplink_energy_budget_j: FloatArray
    energy_bandwidth_hz: FloatArray
    deadline_bandwidth_hz: FloatArray
    min_bandwidth_hz: FloatArray
    status: NDArray[np.int8]

    @property
    def feasible(self) -> NDArray[np.bool_]:
        """Mask of pairs feasible on their own."""
        return self.status == PairStatus.FEASIBLE


def pair_table(problem: Problem) -> PairTable:
    """Compute the :class:`PairTable` of a problem (cached on the problem)."""
    cached = problem._cache.get("pair_table")
    if cached is not None:
        return cached
    s = problem.snr_bandwidth_hz[:, None]
    bits = problem.input_bits[None, :]
    p = problem.tx_power_w[:, None]
    time_budget = problem.deadline_s[:, None] - problem.local_time_s
    energy_left = problem.energy_budget_j[:, None] - problem.local_energy_j
    upload_window = time_budget - problem.edge_cycles[None, :] / problem.edge_cycles_per_s

    with np.errstate(divide="ignore", invalid="ignore"):
        needed_rate_energy = np.where(energy_left > 0, p * bits / energy_left, np.inf)
        needed_rate_deadline = np.where(upload_window > 0, bits / upload_window, np.inf)
    energy_bw = _bandwidth_or_inf(needed_rate_energy, s)
    deadline_bw = _bandwidth_or_inf(needed_rate_deadline, s)
    min_bw = np.maximum(energy_bw, deadline_bw)

    B = problem.bandwidth_hz
    status = np.full(time_budget.shape, PairStatus.FEASIBLE, dtype=np.int8)
    conditions = [
        (energy_left <= 0, PairStatus.LOCAL_ENERGY),
        (time_budget <= 0, PairStatus.LOCAL_TIME),
        (upload_window <= 0, PairStatus.EDGE_TIME),
        (energy_bw > B, PairStatus.UPLINK_ENERGY),
        (deadline_bw > B, PairStatus.DEADLINE),
    ]
    undecided = np.ones(time_budget.shape, dtype=bool)
    for mask, code in conditions:
        hit = mask & undecided
        status[hit] = code
        undecided &= ~mask
    table = PairTable(
        time_budget_s=time_budget,
        uplink_energy_budget_j=energy_left,
        energy_bandwidth_hz=energy_bw,
        deadline_bandwidth_hz=deadline_bw,
        min_bandwidth_hz=min_bw,
        status=status,
    )
    problem._cache["pair_table"] = table
    return table


def _bandwidth_or_inf(rate: FloatArray, s: FloatArray) -> FloatArray:
    s_full = np.broadcast_to(s, rate.shape)
    out = np.full(rate.shape, np.inf)
    ok = np.isfinite(rate) & (rate < PHI_MAX * s_full)
    out[ok] = bandwidth_for_rate_hz(rate[ok], s_full[ok])
    return out


def pair_reason(problem: Problem, terminal: int, model: int) -> str:
    """One sentence saying why pair ``(terminal, model)`` is infeasible ('' if it is feasible)."""
    table = pair_table(problem)
    code = PairStatus(int(table.status[terminal, model]))
    name = problem.model_names[model]
    head = f"terminal {terminal} with model {name!r}"
    e_loc = float(problem.local_energy_j[terminal, model])
    t_loc = float(problem.local_time_s[terminal, model])
    budget = float(problem.energy_budget_j[terminal])
    deadline = float(problem.deadline_s[terminal])
    t_edge_min = float(problem.edge_cycles[model] / problem.edge_cycles_per_s)
    if code == PairStatus.FEASIBLE:
        return ""
    if code == PairStatus.LOCAL_ENERGY:
        return f"{head}: local preprocessing alone uses {e_loc:.4g} J, over the energy budget {budget:.4g} J"
    if code == PairStatus.LOCAL_TIME:
        return f"{head}: local preprocessing alone takes {t_loc:.4g} s, over the deadline {deadline:.4g} s"
    if code == PairStatus.EDGE_TIME:
        return (
            f"{head}: local preprocessing ({t_loc:.4g} s) plus inference on the whole edge server "
            f"({t_edge_min:.4g} s) exceed the deadline {deadline:.4g} s"
        )
    B = problem.bandwidth_hz
    if code == PairStatus.UPLINK_ENERGY:
        need = float(table.energy_bandwidth_hz[terminal, model])
        left = float(table.uplink_energy_budget_j[terminal, model])
        need_text = f"{need:.4g} Hz" if np.isfinite(need) else "more than any bandwidth gives"
        return (
            f"{head}: uploading {problem.input_bits[model]:.4g} bits within the {left:.4g} J left of "
            f"the energy budget needs {need_text}, over the whole band B = {B:.4g} Hz"
        )
    rate = float(uplink_rate_bps(B, problem.snr_bandwidth_hz[terminal]))
    best = t_loc + float(problem.input_bits[model]) / rate + t_edge_min
    return (
        f"{head}: even with the whole band and the whole edge server the latency is {best:.4g} s, "
        f"over the deadline {deadline:.4g} s"
    )


def infeasible_pairs(problem: Problem) -> list[tuple[int, int, str]]:
    """All infeasible pairs as ``(terminal, model, reason)``."""
    table = pair_table(problem)
    rows, cols = np.nonzero(~table.feasible)
    return [(int(i), int(m), pair_reason(problem, int(i), int(m))) for i, m in zip(rows, cols)]
