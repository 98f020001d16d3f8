"""The simulated clock: every rule that turns what really ran into simulated seconds and joules.

This one module holds the whole clock; the metered Grid, the ledger and the server loop only call
it. Everything is derived from what really happened (FLOPs executed, bytes serialised) through a
:class:`~fedsplit.devices.profile.DeviceProfile` (a terminal's, or the edge server's):

Cost of one exchange (server -> terminal -> server), :func:`exchange_cost`:

- compute time ``compute_s = flops / flops_per_s`` (seconds);
- CPU cycles ``cycles = compute_s * cpu_hz``; compute energy ``kappa * cpu_hz**2 * cycles`` (joules);
- uplink time ``8 * bytes_up / uplink_bps``, downlink time ``8 * bytes_down / downlink_bps``,
  plus one link latency in each direction: ``comm_s`` (seconds);
- radio energy ``tx_power_w * uplink time`` (joules; reception energy is not modelled).

Server work, :func:`compute_cost`: ``flops / flops_per_s`` seconds and ``kappa * cpu_hz**2 *
cycles`` joules on the edge server's profile (``edge-server`` in ``profiles.toml``).

Time within a round, :class:`RoundClock` (simulated seconds since the round began):

- a round is a sequence of *phases* separated by barriers; a barrier is where the server needs
  every reply before it goes on (FedAvg: all updates, then aggregation, then evaluation);
- within a phase every terminal has a *lane*: its exchanges form a chain, each starting when the
  previous one ended (FedAvg: one exchange per lane; split learning: one per batch);
- a phase ends when its slowest lane ends, but never later than ``deadline_s`` after it began:
  an exchange that ends past that is a straggler (dropped by the server), failed exchanges do not
  hold the phase up;
- server work either runs in a lane (split learning's server part of that terminal's step; with
  ``exclusive=True`` it also waits for the server to be free, which serialises the server across
  terminals) or, without a lane, after a barrier (FedAvg's aggregation);
- the round ends at the end of its last phase or server work: ``RoundClock.elapsed_s``.

For FedAvg this gives, per round: slowest kept training exchange (capped by the deadline) +
aggregation + slowest evaluation exchange. For turn-taking protocols (vanilla split learning) a
barrier after each terminal's turn puts the turns one after the other.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedsplit.devices.profile import DeviceProfile

EDGE_SERVER_PROFILE = "edge-server"
"""Name of the built-in profile of the edge server."""


@dataclass(frozen=True)
class ClientCost:
    """Simulated cost of one exchange (server -> terminal -> server).

    Attributes
    ----------
    compute_s : float
        Local compute time in seconds.
    comm_s : float
        Downlink + uplink transfer time plus both link latencies, in seconds.
    energy_j : float
        Compute energy plus transmit energy, in joules.
    """

    compute_s: float
    comm_s: float
    energy_j: float

    @property
    def total_s(self) -> float:
        """Time from the server's send to the reply's arrival, in seconds."""
        return self.compute_s + self.comm_s


def exchange_cost(profile: DeviceProfile, flops: float, bytes_up: int, bytes_down: int) -> ClientCost:
    """Cost of one exchange on ``profile``.

    Parameters
    ----------
    profile : DeviceProfile
        The terminal's device class.
    flops : float
        Floating-point operations executed locally.
    bytes_up, bytes_down : int
        Bytes sent to and received from the server.
    """
    compute = compute_cost(profile, flops)
    up_s = 8.0 * bytes_up / profile.uplink_bps
    down_s = 8.0 * bytes_down / profile.downlink_bps
    comm_s = up_s + down_s + 2.0 * profile.link_latency_s
    return ClientCost(compute_s=compute.compute_s, comm_s=comm_s, energy_j=compute.energy_j + profile.tx_power_w * up_s)


def compute_cost(profile: DeviceProfile, flops: float) -> ClientCost:
    """Cost of ``flops`` floating-point operations on ``profile`` (no communication).

    Returns
    -------
    ClientCost
        ``compute_s = flops / flops_per_s`` seconds and ``kappa * cpu_hz**2 * compute_s * cpu_hz``
        joules; ``comm_s`` is 0.
    """
    compute_s = flops / profile.flops_per_s
    cycles = compute_s * profile.cpu_hz
    return ClientCost(compute_s=compute_s, comm_s=0.0, energy_j=profile.kappa * profile.cpu_hz**2 * cycles)


def aggregation_flops(num_params: int, num_updates: int) -> int:
    """FLOPs of a weighted average of ``num_updates`` updates of ``num_params`` values.

    One multiply (by the update's weight) and one add (into the sum) per value per update.
    """
    return 2 * int(num_params) * int(num_updates)


@dataclass(frozen=True)
class Slot:
    """Where one exchange or one piece of server work sits on the round's clock.

    Attributes
    ----------
    start_s, end_s : float
        Simulated seconds since the round began.
    straggler : bool
        The exchange ended after its phase's deadline.
    """

    start_s: float
    end_s: float
    straggler: bool = False


class RoundClock:
    """Simulated time within one round (see the module docstring for the rules).

    Parameters
    ----------
    deadline_s : float
        Per-phase deadline in simulated seconds (0 = none).
    """

    def __init__(self, deadline_s: float = 0.0) -> None:
        self.deadline_s = float(deadline_s)
        self.phase_start_s = 0.0
        # Lane ends and the phase's end as offsets from the phase's start (seconds), so that the
        # deadline compares a chain's own duration, not a difference of two clock readings.
        self._lanes: dict[int, float] = {}
        self._phase_len_s = 0.0
        self._server_free_s = 0.0
        self.server_s = 0.0
        self.server_flops = 0
        self.server_energy_j = 0.0

    def _extend_phase(self, lane_len_s: float) -> None:
        if self.deadline_s > 0:
            lane_len_s = min(lane_len_s, self.deadline_s)
        self._phase_len_s = max(self._phase_len_s, lane_len_s)

    def exchange(self, lane: int, duration_s: float, *, counts: bool = True) -> Slot:
        """Place an exchange of ``duration_s`` seconds at the end of ``lane``'s chain.

        Parameters
        ----------
        lane : int
            The terminal (partition) id.
        duration_s : float
            Simulated seconds from send to reply (:attr:`ClientCost.total_s`).
        counts : bool
            False for a failed exchange: it is placed, but neither extends the lane nor holds
            the phase up.
        """
        offset = self._lanes.get(lane, 0.0)
        lane_len = offset + duration_s
        straggler = counts and self.deadline_s > 0 and lane_len > self.deadline_s
        if counts:
            self._lanes[lane] = lane_len
            self._extend_phase(lane_len)
        return Slot(self.phase_start_s + offset, self.phase_start_s + lane_len, straggler)

    def server_work(self, profile: DeviceProfile, flops: float, *, lane: int | None = None, exclusive: bool = False) -> Slot:
        """Put ``flops`` of server computation on the clock.

        Parameters
        ----------
        profile : DeviceProfile
            The edge server's profile.
        flops : float
            Floating-point operations the server executed.
        lane : int, optional
            The terminal this work serves: it runs in that terminal's chain. Without a lane the
            work follows a barrier (every lane ends first).
        exclusive : bool
            With a lane: the server does this work for one terminal at a time, so it also waits
            until the server's previous exclusive work has finished.
        """
        cost = compute_cost(profile, flops)
        self.server_s += cost.compute_s
        self.server_flops += int(flops)
        self.server_energy_j += cost.energy_j
        if lane is None:
            start = self.barrier()
            self.phase_start_s = start + cost.compute_s
            self._server_free_s = max(self._server_free_s, self.phase_start_s)
            return Slot(start, self.phase_start_s)
        offset = self._lanes.get(lane, 0.0)
        if exclusive:
            offset = max(offset, self._server_free_s - self.phase_start_s)
        lane_len = offset + cost.compute_s
        if exclusive:
            self._server_free_s = self.phase_start_s + lane_len
        self._lanes[lane] = lane_len
        self._extend_phase(lane_len)
        return Slot(self.phase_start_s + offset, self.phase_start_s + lane_len)

    def barrier(self) -> float:
        """End the current phase: the next exchanges start when its slowest lane ended.

        Returns
        -------
        float
            The simulated time of the barrier, seconds since the round began.
        """
        self.phase_start_s += self._phase_len_s
        self._phase_len_s = 0.0
        self._lanes.clear()
        return self.phase_start_s

    @property
    def elapsed_s(self) -> float:
        """Simulated seconds from the round's start to the end of everything placed so far."""
        return self.phase_start_s + self._phase_len_s


__all__ = [
    "ClientCost",
    "EDGE_SERVER_PROFILE",
    "RoundClock",
    "Slot",
    "aggregation_flops",
    "compute_cost",
    "exchange_cost",
]
