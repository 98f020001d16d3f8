"""A population of emulated terminals: which device class each terminal (partition id) is.

Terminals are numbered ``0 .. N-1`` in blocks, one block per device class in the order of the
``devices`` mapping, so a lookup is O(number of classes) and nothing is O(N) in memory except the
per-round availability draw (a vectorised Bernoulli over N, a few milliseconds at N = 100,000).
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping

import numpy as np

from fedsplit.devices.profile import DeviceProfile


class Population:
    """Device classes and counts of the emulated terminals.

    Parameters
    ----------
    counts : Mapping[str, int]
        Device profile name -> number of terminals of that class.
    profiles : Mapping[str, DeviceProfile]
        Known profiles (built-in plus the user's).
    """

    def __init__(self, counts: Mapping[str, int], profiles: Mapping[str, DeviceProfile]) -> None:
        for name, n in counts.items():
            if isinstance(n, bool) or int(n) != n or n < 0:
                raise ValueError(f"devices.{name} = {n!r}: a count is an integer >= 0")
        self.counts = {name: int(n) for name, n in counts.items() if int(n) > 0}  # a class of 0 terminals is left out
        missing = [name for name in self.counts if name not in profiles]
        if missing:
            raise ValueError(f"devices.{missing[0]}: unknown device profile (known: {', '.join(sorted(profiles))})")
        self.profiles = {name: profiles[name] for name in self.counts}
        self.names = list(self.counts)
        self._ends = list(np.cumsum([self.counts[n] for n in self.names]).tolist())
        if not self._ends or self._ends[-1] < 1:
            raise ValueError("devices: the population needs at least 1 terminal")
        self._availability = np.repeat(
            [self.profiles[n].availability for n in self.names], [self.counts[n] for n in self.names]
        )

    @property
    def size(self) -> int:
        """Number of terminals."""
        return self._ends[-1]

    def device_of(self, partition_id: int) -> str:
        """Device class name of terminal ``partition_id``."""
        if not 0 <= partition_id < self.size:
            raise IndexError(f"terminal {partition_id} outside population of {self.size}")
        return self.names[bisect.bisect_right(self._ends, partition_id)]

    def profile_of(self, partition_id: int) -> DeviceProfile:
        """Device profile of terminal ``partition_id``."""
        return self.profiles[self.device_of(partition_id)]

    def online(self, server_round: int, seed: int) -> np.ndarray:
        """Terminals online in ``server_round``: each independently with its class's availability.

        The draw depends only on ``(seed, server_round)``, so every engine sees the same terminals.
        """
        rng = np.random.default_rng([int(seed), int(server_round), 0xA5A1])
        return np.flatnonzero(rng.random(self.size) < self._availability)
