"""Bandwidth traces: a seeded regime-switching generator and a loader for public throughput logs.

A :class:`BandwidthTrace` is a series of uplink bandwidth samples [bit/s], one per step of
``step_s`` seconds. :func:`generate_trace` draws one whose bandwidth switches between regimes
(a Markov chain over ``levels_bps`` with mean dwell ``mean_dwell`` steps) with log-normal noise
around each level. :func:`load_throughput_log` reads the 4G/LTE logs of van der Hooft et al.
(Ghent/Belgium, 2016) and similar logs: one line per sample, either
``timestamp_ms lat lon bytes elapsed_ms`` (the published 5-column format) or
``timestamp_ms bytes elapsed_ms``, separated by blanks or commas; bandwidth = 8 * bytes / elapsed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class BandwidthTrace:
    """Uplink bandwidth over time.

    Attributes
    ----------
    bps : numpy.ndarray
        Bandwidth of each step [bit/s], all > 0.
    step_s : float
        Duration of one step [s].
    regime : numpy.ndarray or None
        For generated traces, the true regime index of each step.
    """

    bps: np.ndarray
    step_s: float = 1.0
    regime: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.bps.ndim != 1 or not len(self.bps):
            raise ValueError(f"bps: expected a non-empty 1-D series, got shape {self.bps.shape}")
        if not np.all(np.isfinite(self.bps)) or np.any(self.bps <= 0):
            raise ValueError("bps: every bandwidth sample must be a finite number of bit/s > 0")
        if not self.step_s > 0:
            raise ValueError(f"step_s = {self.step_s!r}: expected a duration in seconds > 0")

    def __len__(self) -> int:
        return int(self.bps.shape[0])

    @property
    def times_s(self) -> np.ndarray:
        """Start time of each step [s]."""
        return np.arange(len(self)) * self.step_s


def generate_trace(
    steps: int,
    seed: int,
    *,
    levels_bps: Sequence[float] = (0.15e6, 0.6e6, 2.0e6, 8.0e6),
    mean_dwell: float = 40.0,
    noise_sigma: float = 0.2,
    step_s: float = 1.0,
) -> BandwidthTrace:
    """A regime-switching bandwidth trace.

    Parameters
    ----------
    steps : int
        Number of samples.
    seed : int
        Seed (same seed, same trace).
    levels_bps : sequence of float
        Mean bandwidth of each regime [bit/s].
    mean_dwell : float
        Mean number of steps spent in a regime (geometric dwell times); a switch goes to another
        regime drawn uniformly.
    noise_sigma : float
        Standard deviation of the log-normal noise around the regime's level (natural log).
    step_s : float
        Duration of one step [s].
    """
    if steps < 1:
        raise ValueError(f"steps = {steps!r}: expected an integer >= 1")
    levels = np.asarray(levels_bps, dtype=float)
    if levels.ndim != 1 or len(levels) < 1 or np.any(levels <= 0):
        raise ValueError(f"levels_bps = {levels_bps!r}: expected one or more bandwidths in bit/s > 0")
    if not mean_dwell >= 1:
        raise ValueError(f"mean_dwell = {mean_dwell!r}: expected a number of steps >= 1")
    if not noise_sigma >= 0:
        raise ValueError(f"noise_sigma = {noise_sigma!r}: expected a number >= 0")
    rng = np.random.default_rng(seed)
    regime = np.empty(steps, dtype=int)
    current = int(rng.integers(len(levels)))
    for t in range(steps):
        if t and len(levels) > 1 and rng.random() < 1.0 / mean_dwell:
            current = int(rng.choice([k for k in range(len(levels)) if k != current]))
        regime[t] = current
    bps = levels[regime] * np.exp(noise_sigma * rng.standard_normal(steps) - noise_sigma**2 / 2)
    return BandwidthTrace(bps, step_s, regime)


def load_throughput_log(path: str | Path, *, min_elapsed_ms: float = 1.0) -> BandwidthTrace:
    """Read a throughput log (see module docstring) as a trace.

    Samples with a zero byte count get a floor of 1 kbit/s (an outage is not a zero-bit/s link the
    latency formula could divide by). The step is the median elapsed time.

    Raises
    ------
    ValueError
        For a line that is neither 3 nor 5 numbers, or a non-positive elapsed time; the message
        names the file and the line number.
    """
    path = Path(path)
    rates, elapsed_all = [], []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        fields = text.replace(",", " ").split()
        try:
            values = [float(v) for v in fields]
        except ValueError:
            if not rates and number == 1:
                continue  # a header line
            raise ValueError(f"{path}:{number}: expected numbers, got {text!r}") from None
        if len(values) == 5:
            _, _, _, size, elapsed = values
        elif len(values) == 3:
            _, size, elapsed = values
        else:
            raise ValueError(
                f"{path}:{number}: expected 'timestamp_ms lat lon bytes elapsed_ms' or "
                f"'timestamp_ms bytes elapsed_ms', got {len(values)} fields"
            )
        if elapsed < min_elapsed_ms or size < 0:
            raise ValueError(f"{path}:{number}: elapsed = {elapsed!r} ms, bytes = {size!r}: expected "
                             f"elapsed >= {min_elapsed_ms} ms and bytes >= 0")
        rates.append(max(8.0 * size / (elapsed / 1e3), 1e3))
        elapsed_all.append(elapsed)
    if not rates:
        raise ValueError(f"{path}: no samples")
    return BandwidthTrace(np.asarray(rates), float(np.median(elapsed_all)) / 1e3)


__all__ = ["BandwidthTrace", "generate_trace", "load_throughput_log"]
