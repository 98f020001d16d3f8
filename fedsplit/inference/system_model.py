"""The edge-inference system: terminals, candidate models and the shared uplink and edge server.

Terminal ``i`` running model ``m`` on ``b`` Hz of uplink and ``f`` cycles/s of the edge server:

* local preprocessing ``t_loc = c_loc(m) / f_local_i`` [s], energy ``kappa_i f_local_i**2 c_loc(m)`` [J];
* uplink ``t_up = D(m) / r_i(b)`` [s] with ``r_i(b) = b log2(1 + p_i h_i / (N0 b))`` [bit/s],
  energy ``p_i t_up`` [J];
* edge inference ``t_edge = c_edge(m) / f`` [s].

Constraints: ``T_i = t_loc + t_up + t_edge <= deadline_i``, ``E_i <= budget_i``, ``sum b <= B``,
``sum f <= F`` and mean accuracy of the chosen models ``>= chi``. Objective: minimise ``sum T_i``.

:class:`Problem` holds the data as NumPy arrays (one entry per terminal or per model) so every
solver works on whole vectors.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from fedsplit.inference.spectral import uplink_rate_bps

FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class ModelSpec:
    """One candidate model served by the edge server.

    Parameters
    ----------
    name : str
        Model name (unique in a problem).
    input_bits : float
        Bits uploaded per inference, ``D`` [bit].
    local_cycles : float
        Terminal CPU cycles of local preprocessing per inference, ``c_loc`` [cycles].
    edge_cycles : float
        Edge-server cycles per inference, ``c_edge`` [cycles].
    accuracy : float
        Accuracy of the model in ``[0, 1]``.
    """

    name: str
    input_bits: float
    local_cycles: float
    edge_cycles: float
    accuracy: float


@dataclass(frozen=True)
class TerminalSpec:
    """One terminal (mobile device) attached to the base station.

    Parameters
    ----------
    gain : float
        Linear channel power gain ``h`` (path loss times fading), dimensionless.
    cpu_hz : float
        Local CPU frequency ``f_local`` [cycles/s].
    tx_power_w : float
        Uplink transmit power ``p`` [W].
    energy_budget_j : float
        Energy budget per inference ``E_max`` [J].
    deadline_s : float
        Latency deadline per inference [s].
    kappa : float
        Effective switched capacitance of the CPU [J s^2 / cycle^3].
    """

    gain: float
    cpu_hz: float
    tx_power_w: float
    energy_budget_j: float
    deadline_s: float
    kappa: float


@dataclass(frozen=True, eq=False)
class Problem:
    """A scheduling instance: N terminals, M models, one uplink band and one edge server.

    Parameters
    ----------
    bandwidth_hz : float
        Total uplink bandwidth ``B`` [Hz].
    edge_cycles_per_s : float
        Total edge-server compute ``F`` [cycles/s].
    noise_w_per_hz : float
        Noise power spectral density ``N0`` [W/Hz].
    accuracy_target : float
        Required mean accuracy ``chi`` over terminals, in ``[0, 1]``.
    terminals : tuple of TerminalSpec
    models : tuple of ModelSpec
    """

    bandwidth_hz: float
    edge_cycles_per_s: float
    noise_w_per_hz: float
    accuracy_target: float
    gain: FloatArray
    cpu_hz: FloatArray
    tx_power_w: FloatArray
    energy_budget_j: FloatArray
    deadline_s: FloatArray
    kappa: FloatArray
    model_names: tuple[str, ...]
    input_bits: FloatArray
    local_cycles: FloatArray
    edge_cycles: FloatArray
    accuracy: FloatArray
    _cache: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_specs(
        cls,
        *,
        bandwidth_hz: float,
        edge_cycles_per_s: float,
        noise_w_per_hz: float,
        accuracy_target: float,
        terminals: list[TerminalSpec] | tuple[TerminalSpec, ...],
        models: list[ModelSpec] | tuple[ModelSpec, ...],
    ) -> Problem:
        """Build a problem from per-terminal and per-model records."""

        def column(items: list | tuple, name: str) -> FloatArray:
            return np.array([float(getattr(item, name)) for item in items], dtype=float)

        return cls(
            bandwidth_hz=float(bandwidth_hz),
            edge_cycles_per_s=float(edge_cycles_per_s),
            noise_w_per_hz=float(noise_w_per_hz),
            accuracy_target=float(accuracy_target),
            gain=column(terminals, "gain"),
            cpu_hz=column(terminals, "cpu_hz"),
            tx_power_w=column(terminals, "tx_power_w"),
            energy_budget_j=column(terminals, "energy_budget_j"),
            deadline_s=column(terminals, "deadline_s"),
            kappa=column(terminals, "kappa"),
            model_names=tuple(str(m.name) for m in models),
            input_bits=column(models, "input_bits"),
            local_cycles=column(models, "local_cycles"),
            edge_cycles=column(models, "edge_cycles"),
            accuracy=column(models, "accuracy"),
        )

    # ----------------------------------------------------------------- sizes and records
    @property
    def n_terminals(self) -> int:
        """Number of terminals ``N``."""
        return int(self.gain.shape[0])

    @property
    def n_models(self) -> int:
        """Number of candidate models ``M``."""
        return int(self.input_bits.shape[0])

    def terminal(self, i: int) -> TerminalSpec:
        """Terminal ``i`` as a record."""
        return TerminalSpec(
            gain=float(self.gain[i]),
            cpu_hz=float(self.cpu_hz[i]),
            tx_power_w=float(self.tx_power_w[i]),
            energy_budget_j=float(self.energy_budget_j[i]),
            deadline_s=float(self.deadline_s[i]),
            kappa=float(self.kappa[i]),
        )

    def model(self, m: int) -> ModelSpec:
        """Model ``m`` as a record."""
        return ModelSpec(
            name=self.model_names[m],
            input_bits=float(self.input_bits[m]),
            local_cycles=float(self.local_cycles[m]),
            edge_cycles=float(self.edge_cycles[m]),
            accuracy=float(self.accuracy[m]),
        )

    def with_updates(self, **changes: object) -> Problem:
        """A copy with some fields replaced (derived quantities are recomputed)."""
        values = {name: getattr(self, name) for name in self.__dataclass_fields__ if name != "_cache"}
        values.update(changes)
        for name in ("gain", "cpu_hz", "tx_power_w", "energy_budget_j", "deadline_s", "kappa",
                     "input_bits", "local_cycles", "edge_cycles", "accuracy"):
            values[name] = np.asarray(values[name], dtype=float)
        return Problem(**values)

    def subset(self, terminals: NDArray[np.intp] | list[int]) -> Problem:
        """The problem restricted to some terminals (same models and shared resources)."""
        idx = np.asarray(terminals, dtype=np.intp)
        return self.with_updates(**{
            name: getattr(self, name)[idx]
            for name in ("gain", "cpu_hz", "tx_power_w", "energy_budget_j", "deadline_s", "kappa")
        })

    # ------------------------------------------------------------------ derived quantities
    @property
    def snr_bandwidth_hz(self) -> FloatArray:
        """``s_i = p_i h_i / N0`` [Hz]: the rate on ``b`` Hz is ``b log2(1 + s_i / b)``."""
        return self.tx_power_w * self.gain / self.noise_w_per_hz

    @property
    def local_time_s(self) -> FloatArray:
        """Local preprocessing time ``c_loc(m) / f_local_i`` [s], shape ``(N, M)``."""
        if "local_time_s" not in self._cache:
            self._cache["local_time_s"] = self.local_cycles[None, :] / self.cpu_hz[:, None]
        return self._cache["local_time_s"]

    @property
    def local_energy_j(self) -> FloatArray:
        """Local preprocessing energy ``kappa_i f_local_i**2 c_loc(m)`` [J], shape ``(N, M)``."""
        if "local_energy_j" not in self._cache:
            self._cache["local_energy_j"] = (
                (self.kappa * self.cpu_hz**2)[:, None] * self.local_cycles[None, :]
            )
        return self._cache["local_energy_j"]

    def uplink_time_s(self, models: NDArray[np.intp], bandwidth_hz: FloatArray) -> FloatArray:
        """Upload time ``D(m_i) / r_i(b_i)`` [s] of each terminal's input."""
        rate = uplink_rate_bps(bandwidth_hz, self.snr_bandwidth_hz)
        with np.errstate(divide="ignore"):
            return np.where(rate > 0, self.input_bits[models] / np.maximum(rate, 1e-300), np.inf)

    def evaluate(
        self, models: NDArray[np.intp], bandwidth_hz: FloatArray, edge_cycles_per_s: FloatArray
    ) -> tuple[FloatArray, FloatArray]:
        """Per-terminal latency [s] and energy [J] of a complete decision.

        Parameters
        ----------
        models : ndarray of int, shape (N,)
            Model index of each terminal.
        bandwidth_hz : ndarray, shape (N,)
            Uplink bandwidth of each terminal [Hz].
        edge_cycles_per_s : ndarray, shape (N,)
            Edge compute of each terminal [cycles/s].

        Returns
        -------
        latency_s, energy_j : ndarray, shape (N,)
        """
        rows = np.arange(self.n_terminals)
        t_up = self.uplink_time_s(models, bandwidth_hz)
        with np.errstate(divide="ignore"):
            t_edge = np.where(
                edge_cycles_per_s > 0,
                self.edge_cycles[models] / np.maximum(edge_cycles_per_s, 1e-300),
                np.inf,
            )
        latency = self.local_time_s[rows, models] + t_up + t_edge
        energy = self.local_energy_j[rows, models] + self.tx_power_w * t_up
        return latency, energy

    def system_accuracy(self, models: NDArray[np.intp]) -> float:
        """Mean accuracy of the chosen models over terminals."""
        return float(np.mean(self.accuracy[models]))
