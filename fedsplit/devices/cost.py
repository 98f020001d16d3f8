"""The simulated clock and energy model of one terminal's work in one round.

Everything is derived from what really happened (FLOPs executed, bytes serialised) through the
terminal's :class:`~fedsplit.devices.profile.DeviceProfile`:

- compute time ``compute_s = flops / flops_per_s`` (seconds);
- CPU cycles ``cycles = compute_s * cpu_hz``; compute energy ``kappa * cpu_hz**2 * cycles`` (joules);
- uplink time ``8 * bytes_up / uplink_bps``, downlink time ``8 * bytes_down / downlink_bps``,
  plus one link latency in each direction: ``comm_s`` (seconds);
- radio energy ``tx_power_w * uplink time`` (joules; reception energy is not modelled).
"""

from __future__ import annotations

from dataclasses import dataclass

from fedsplit.devices.profile import DeviceProfile


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
    compute_s = flops / profile.flops_per_s
    cycles = compute_s * profile.cpu_hz
    compute_j = profile.kappa * profile.cpu_hz**2 * cycles
    up_s = 8.0 * bytes_up / profile.uplink_bps
    down_s = 8.0 * bytes_down / profile.downlink_bps
    comm_s = up_s + down_s + 2.0 * profile.link_latency_s
    return ClientCost(compute_s=compute_s, comm_s=comm_s, energy_j=compute_j + profile.tx_power_w * up_s)
