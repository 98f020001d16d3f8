"""Bandwidth states: offline change-point segmentation, the state -> configuration map, online detection.

Offline (:func:`fit_states`): the log-bandwidth of a training trace is segmented with PELT
(``ruptures``, L2 cost; penalty ``penalty * sigma**2 * log(n)``, ``sigma`` the noise level estimated
from first differences); segments whose median levels lie within ``merge_ratio`` of each other are
merged into one *state*. A state plans for a conservative bandwidth: the ``quantile`` of the
samples in its segments.

Online (:class:`OnlineStateDetector`): a two-sided CUSUM on the live log-bandwidth against the mean
of the current segment flags a change; the segment then restarts, and the current state is the
one whose level is nearest the running mean of the current segment.

:func:`state_plans` builds the state -> best configuration map with the static optimiser.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedsplit.inference.edgent.configs import ConfigTable
from fedsplit.inference.edgent.optimizer import Plan, plan


def noise_sigma(log_bps: np.ndarray) -> float:
    """Robust noise level of a log series: MAD of first differences / (0.6745 * sqrt 2)."""
    if len(log_bps) < 3:
        return 1e-3
    return max(float(np.median(np.abs(np.diff(log_bps)))) / (0.6745 * np.sqrt(2.0)), 1e-3)


def segment(bps: np.ndarray, *, penalty: float = 3.0, min_size: int = 5) -> list[int]:
    """Change points of a bandwidth series (PELT on its log), as segment end indices (last = len).

    Parameters
    ----------
    bps : numpy.ndarray
        Bandwidth samples [bit/s].
    penalty : float
        Penalty factor (times ``sigma**2 * log(n)``); larger gives fewer segments.
    min_size : int
        Shortest segment (samples).
    """
    import ruptures

    log_bps = np.log(np.asarray(bps, dtype=float))
    n = len(log_bps)
    if n < 2 * min_size:
        return [n]
    sigma = noise_sigma(log_bps)
    algo = ruptures.Pelt(model="l2", min_size=min_size, jump=1).fit(log_bps.reshape(-1, 1))
    return [int(b) for b in algo.predict(pen=penalty * sigma**2 * np.log(n))]


@dataclass(frozen=True)
class BandwidthStates:
    """Bandwidth states found offline.

    Attributes
    ----------
    centers_log : numpy.ndarray
        Level of each state (mean log-bandwidth, ascending).
    planning_bps : numpy.ndarray
        Bandwidth each state plans for [bit/s] (a low quantile of its samples).
    sigma : float
        Noise level of the log series (used by the online detector).
    breakpoints : tuple of int
        Offline segment ends.
    """

    centers_log: np.ndarray
    planning_bps: np.ndarray
    sigma: float
    breakpoints: tuple[int, ...]

    def __len__(self) -> int:
        return int(self.centers_log.shape[0])

    def nearest(self, mean_log: float) -> int:
        """The state whose level is nearest ``mean_log`` (natural log of bit/s)."""
        return int(np.argmin(np.abs(self.centers_log - mean_log)))


def fit_states(
    bps: np.ndarray, *, penalty: float = 3.0, min_size: int = 5, merge_ratio: float = 1.6, quantile: float = 0.1
) -> BandwidthStates:
    """Segment a training trace and merge segments into states (see module docstring).

    Parameters
    ----------
    bps : numpy.ndarray
        Bandwidth samples [bit/s].
    penalty, min_size
        See :func:`segment`.
    merge_ratio : float
        Segments whose median bandwidths differ by less than this factor share a state.
    quantile : float
        Quantile of a state's samples it plans for, in (0, 1).
    """
    if not 0 < quantile < 1:
        raise ValueError(f"quantile = {quantile!r}: expected a number in (0, 1)")
    if not merge_ratio > 1:
        raise ValueError(f"merge_ratio = {merge_ratio!r}: expected a factor > 1")
    log_bps = np.log(np.asarray(bps, dtype=float))
    ends = segment(bps, penalty=penalty, min_size=min_size)
    starts = [0, *ends[:-1]]
    segments = sorted(((float(np.median(log_bps[a:b])), a, b) for a, b in zip(starts, ends)))
    groups: list[list[tuple[float, int, int]]] = []
    for seg in segments:
        if groups and seg[0] - groups[-1][0][0] < np.log(merge_ratio):
            groups[-1].append(seg)
        else:
            groups.append([seg])
    centers, planning = [], []
    for group in groups:
        samples = np.concatenate([log_bps[a:b] for _, a, b in group])
        centers.append(float(samples.mean()))
        planning.append(float(np.exp(np.quantile(samples, quantile))))
    return BandwidthStates(np.asarray(centers), np.asarray(planning), noise_sigma(log_bps), tuple(ends))


class OnlineStateDetector:
    """Two-sided CUSUM change detection on a live bandwidth series, mapped to offline states.

    Parameters
    ----------
    states : BandwidthStates
        The offline states.
    threshold : float
        Alarm level of the CUSUM statistics, in units of ``states.sigma``.
    drift : float
        Allowed drift per sample, in units of ``states.sigma``.
    """

    def __init__(self, states: BandwidthStates, *, threshold: float = 5.0, drift: float = 1.0) -> None:
        self.states = states
        self.h = threshold * states.sigma
        self.k = drift * states.sigma
        self.reset()

    def reset(self) -> None:
        """Forget the series."""
        self._sum = 0.0
        self._count = 0
        self._pos = self._neg = 0.0
        self.changes: list[int] = []
        self._t = -1

    def update(self, bps: float) -> int:
        """Feed one sample [bit/s]; return the current state index."""
        if not bps > 0:
            raise ValueError(f"bandwidth sample = {bps!r}: expected a number of bit/s > 0")
        self._t += 1
        x = float(np.log(bps))
        if self._count:
            mean = self._sum / self._count
            self._pos = max(0.0, self._pos + x - mean - self.k)
            self._neg = max(0.0, self._neg + mean - x - self.k)
            if self._pos > self.h or self._neg > self.h:
                self.changes.append(self._t)
                self._sum, self._count, self._pos, self._neg = 0.0, 0, 0.0, 0.0
        self._sum += x
        self._count += 1
        return self.states.nearest(self._sum / self._count)


def state_plans(states: BandwidthStates, table: ConfigTable, requirement_s: float) -> list[Plan]:
    """The best configuration of every state, planned at the state's ``planning_bps``."""
    return [plan(table, requirement_s, float(b)) for b in states.planning_bps]


__all__ = ["BandwidthStates", "OnlineStateDetector", "fit_states", "noise_sigma", "segment", "state_plans"]
