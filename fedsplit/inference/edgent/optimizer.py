"""Edgent's static optimiser: the most accurate (exit, partition) that meets a latency requirement.

For a requirement ``T`` [s] and an uplink bandwidth ``b`` [bit/s], :func:`plan` picks, among the
configurations of a :class:`~fedsplit.inference.edgent.configs.ConfigTable` whose predicted latency
is ``<= T``, the one with the highest exit accuracy (ties: the lowest latency). Device-only and
edge-only are the special cases ``mode="device-only"`` / ``"edge-only"`` (the partition is forced to
all-on-terminal / all-on-edge). When nothing meets ``T`` the plan is infeasible; it then names the
fastest configuration and its latency, so the caller can tell by how much.

Planning is a few vectorised operations over the table (tens of microseconds), cheap enough to
re-plan on every bandwidth change.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from fedsplit.inference.edgent.configs import ConfigTable

#: Which partitions a plan may use.
MODES: tuple[str, ...] = ("edgent", "device-only", "edge-only")


@dataclass(frozen=True)
class Plan:
    """A chosen configuration and its predicted costs.

    Attributes
    ----------
    feasible : bool
        Whether the predicted latency meets the requirement.
    exit, partition : int
        The exit and the number of blocks run on the terminal.
    cut : str
        Last block run on the terminal (``"<input>"``: edge-only).
    placement : str
        ``device-only``, ``edge-only`` or ``partitioned``.
    device_s, transfer_s, edge_s, latency_s : float
        Predicted terminal compute, uplink transfer, edge compute and total latency [s].
    cut_bytes : int
        Bytes sent to the edge.
    accuracy : float
        Held-out accuracy of the exit.
    requirement_s, bandwidth_bps : float
        The inputs [s] and [bit/s].
    reason : str
        Why infeasible (empty when feasible).
    index : int
        Row in the table.
    """

    feasible: bool
    exit: int
    partition: int
    cut: str
    placement: str
    device_s: float
    transfer_s: float
    edge_s: float
    latency_s: float
    cut_bytes: int
    accuracy: float
    requirement_s: float
    bandwidth_bps: float
    reason: str
    index: int

    def to_dict(self) -> dict:
        """Plain dict of the fields."""
        return asdict(self)


def _check_inputs(requirement_s: float, bandwidth_bps: float, mode: str) -> None:
    if not isinstance(requirement_s, (int, float)) or not math.isfinite(requirement_s) or requirement_s <= 0:
        raise ValueError(f"latency requirement = {requirement_s!r}: expected a number of seconds > 0")
    if not isinstance(bandwidth_bps, (int, float)) or not bandwidth_bps > 0 or math.isnan(bandwidth_bps):
        raise ValueError(f"bandwidth = {bandwidth_bps!r}: expected a number of bit/s > 0")
    if mode not in MODES:
        raise ValueError(f"mode = {mode!r}: expected one of {', '.join(MODES)}")


def mode_mask(table: ConfigTable, mode: str) -> np.ndarray:
    """Configurations allowed in ``mode`` (see :data:`MODES`)."""
    if mode == "device-only":
        return table.partition == table.blocks_on_path
    if mode == "edge-only":
        return table.partition == 0
    if mode == "edgent":
        return np.ones(len(table), dtype=bool)
    raise ValueError(f"mode = {mode!r}: expected one of {', '.join(MODES)}")


def make_plan(table: ConfigTable, index: int, requirement_s: float, bandwidth_bps: float) -> Plan:
    """The :class:`Plan` of configuration ``index`` for this requirement and bandwidth."""
    transfer = table.transfer_s(index, bandwidth_bps)
    latency = float(table.device_s[index] + transfer + table.edge_s[index])
    partition, n = int(table.partition[index]), int(table.blocks_on_path[index])
    placement = "edge-only" if partition == 0 else "device-only" if partition == n else "partitioned"
    feasible = latency <= requirement_s
    reason = "" if feasible else (
        f"no configuration meets {requirement_s * 1e3:.3g} ms at {bandwidth_bps / 1e6:.3g} Mbit/s; "
        f"the fastest allowed takes {latency * 1e3:.3g} ms"
    )
    return Plan(
        feasible=feasible,
        exit=int(table.exit[index]),
        partition=partition,
        cut=table.cut_name[index],
        placement=placement,
        device_s=float(table.device_s[index]),
        transfer_s=transfer,
        edge_s=float(table.edge_s[index]),
        latency_s=latency,
        cut_bytes=int(table.cut_bytes[index]),
        accuracy=float(table.accuracy[index]),
        requirement_s=float(requirement_s),
        bandwidth_bps=float(bandwidth_bps),
        reason=reason,
        index=int(index),
    )


def plan(table: ConfigTable, requirement_s: float, bandwidth_bps: float, mode: str = "edgent") -> Plan:
    """The most accurate configuration whose predicted latency is ``<= requirement_s``.

    Parameters
    ----------
    table : ConfigTable
        Every configuration's predicted costs.
    requirement_s : float
        Latency requirement [s].
    bandwidth_bps : float
        Uplink bandwidth [bit/s].
    mode : str
        ``edgent`` (any partition), ``device-only`` or ``edge-only``.

    Returns
    -------
    Plan
        Feasible: the most accurate configuration meeting the requirement (ties: the fastest).
        Infeasible: the fastest allowed configuration, ``feasible=False`` and a ``reason``.
    """
    _check_inputs(requirement_s, bandwidth_bps, mode)
    allowed = mode_mask(table, mode)
    latency = table.latency_s(bandwidth_bps)
    ok = allowed & (latency <= requirement_s)
    if ok.any():
        best_accuracy = table.accuracy[ok].max()
        candidates = ok & (table.accuracy >= best_accuracy)
        index = int(np.argmin(np.where(candidates, latency, np.inf)))
    else:
        index = int(np.argmin(np.where(allowed, latency, np.inf)))
    return make_plan(table, index, requirement_s, bandwidth_bps)


__all__ = ["MODES", "Plan", "make_plan", "mode_mask", "plan"]
