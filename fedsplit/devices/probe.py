"""Measuring a real terminal: a short FLOP/s probe, a link fit, and the device profile they give.

A deployed device (``flower-supernode`` with ``profile = "measure"`` in its node config) need not
declare how fast it is: its ClientApp times a few matrix products on its first message
(:func:`probe_flops_per_s`), and the server fits the device's link from the exchanges it times
(:func:`fit_link`: real seconds not spent computing against bytes moved). The declared class
keeps what cannot be measured from software (``cpu_hz``, ``kappa``, ``tx_power_w``, the budgets,
``availability``); :func:`measured_profile` puts the measured fields over it.

What the numbers mean:

- ``flops_per_s`` is the best float32 matmul rate with the threads torch trains with: a peak.
  Training a small model reaches a fraction of it (many small operators), so compute seconds
  modelled from it are a lower bound of the measured ones; the ledger keeps both.
- the link is what a byte costs through Flower's deployment engine on that device: the fit's
  intercept is the per-exchange overhead (polling, starting the ClientApp process, latency)
  and its slope the throughput. Up- and downlink are not told apart (one slope for both
  directions). The slope counts only when it stands out of the exchanges' jitter (a t statistic
  of at least :data:`MIN_SLOPE_T`, so three exchanges of two sizes at least); when the transfers
  are too short for that (loopback, small models) the declared bandwidths stay.

Plain PyTorch/NumPy: no Flower imports.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
import torch

from fedsplit.devices.profile import DeviceProfile

#: Side of the square float32 matrices the FLOP/s probe multiplies.
PROBE_N = 256
#: Seconds the FLOP/s probe may take (the first product, a warm-up, included); well under 0.5 s.
PROBE_BUDGET_S = 0.2
#: A fitted throughput counts when its slope is at least this many standard errors above zero.
MIN_SLOPE_T = 3.0


@dataclass(frozen=True)
class FlopsProbe:
    """Result of :func:`probe_flops_per_s`.

    Attributes
    ----------
    flops_per_s : float
        Best measured rate, FLOP/s (multiply and add counted separately: ``2 n^3`` per product).
    seconds : float
        Wall-clock seconds the probe took, warm-up included.
    products : int
        Matrix products timed (warm-up excluded).
    n : int
        Side of the square matrices.
    threads : int
        torch intra-op threads used (those the terminal trains with).
    """

    flops_per_s: float
    seconds: float
    products: int
    n: int
    threads: int


def probe_flops_per_s(budget_s: float = PROBE_BUDGET_S, n: int = PROBE_N, device: str | torch.device = "cpu") -> FlopsProbe:
    """Time float32 ``(n, n) @ (n, n)`` products on ``device`` for about ``budget_s`` seconds.

    One warm-up product, then products timed one by one until the budget is spent (at least
    three); the rate is that of the fastest one (the least disturbed by other work).

    Parameters
    ----------
    budget_s : float
        Seconds to spend, > 0 (the last product may run past it).
    n : int
        Matrix side, >= 16.
    device : str or torch.device
        Where to compute (a CUDA device is synchronised around each product).

    Returns
    -------
    FlopsProbe
    """
    if not budget_s > 0:
        raise ValueError(f"probe budget_s = {budget_s!r}: must be > 0 seconds")
    if n < 16:
        raise ValueError(f"probe n = {n!r}: must be >= 16")
    device = torch.device(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=generator).to(device)
    b = torch.randn(n, n, generator=generator).to(device)
    started = time.perf_counter()
    with torch.no_grad():
        torch.mm(a, b)  # warm-up: allocation and BLAS initialisation are not the device's speed
        sync()
        best = float("inf")
        products = 0
        while products < 3 or time.perf_counter() - started < budget_s:
            t0 = time.perf_counter()
            torch.mm(a, b)
            sync()
            best = min(best, time.perf_counter() - t0)
            products += 1
    seconds = time.perf_counter() - started
    return FlopsProbe(2.0 * n**3 / max(best, 1e-9), seconds, products, n, torch.get_num_threads())


@dataclass(frozen=True)
class LinkFit:
    """A device's link as fitted by :func:`fit_link`.

    Attributes
    ----------
    overhead_s : float
        Seconds an exchange costs whatever its size (both directions; >= 0).
    bps : float or None
        Throughput in bit/s (up and down alike); None when not resolvable.
    samples : int
        Exchanges the fit used.
    """

    overhead_s: float
    bps: float | None
    samples: int


def fit_link(bytes_moved: Sequence[float], seconds: Sequence[float], min_t: float = MIN_SLOPE_T) -> LinkFit:
    """Fit ``seconds = overhead_s + 8 * bytes / bps`` over a device's exchanges (least squares).

    Parameters
    ----------
    bytes_moved : sequence of float
        Bytes each exchange moved, both directions together.
    seconds : sequence of float
        Real seconds each exchange took apart from the device's compute (round trip observed
        by the server minus the compute seconds the device reported).
    min_t : float
        The slope counts when it is at least ``min_t`` standard errors above zero (from the
        residuals, so three exchanges at least; an exact fit of three or more counts whenever
        its slope is positive).

    Returns
    -------
    LinkFit
        ``bps`` is None with fewer than three exchanges or two distinct sizes, or a slope that
        does not stand out of the exchanges' jitter; ``overhead_s`` is then the mean of ``seconds``.
    """
    x = np.asarray(bytes_moved, dtype=float)
    y = np.asarray(seconds, dtype=float)
    if x.shape != y.shape or x.ndim != 1 or len(x) == 0:
        raise ValueError(f"fit_link: {len(x)} byte counts and {len(y)} durations: need as many of each, at least one")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))) or np.any(x < 0):
        raise ValueError("fit_link: byte counts must be finite and >= 0, durations finite")
    if np.ptp(x) > 0:
        slope, intercept = np.polyfit(x, y, 1)
        residual = y - (intercept + slope * x)
        sxx = float(np.sum((x - x.mean()) ** 2))
        ssr = float(np.sum(residual**2))
        exact = ssr <= 1e-18 * max(float(np.sum(y**2)), 1e-300)
        if slope > 0 and len(x) > 2 and (exact or slope / np.sqrt(ssr / (len(x) - 2) / sxx) >= min_t):
            return LinkFit(overhead_s=max(float(intercept), 0.0), bps=8.0 / float(slope), samples=len(x))
    return LinkFit(overhead_s=max(float(np.mean(y)), 0.0), bps=None, samples=len(x))


def measured_profile(base: DeviceProfile, flops_per_s: float | None = None, link: LinkFit | None = None) -> DeviceProfile:
    """``base`` with what was measured in place of what was declared.

    Parameters
    ----------
    base : DeviceProfile
        The declared class of the terminal (its other fields are kept).
    flops_per_s : float, optional
        Measured compute rate, FLOP/s (:func:`probe_flops_per_s`).
    link : LinkFit, optional
        Fitted link: its throughput becomes ``uplink_bps`` and ``downlink_bps`` when resolved,
        half its overhead the one-way ``link_latency_s`` (an exchange pays the latency twice).

    Returns
    -------
    DeviceProfile
        Same name as ``base`` (ledger rows stay grouped by device class).
    """
    changes: dict[str, float] = {}
    if flops_per_s is not None:
        if not (np.isfinite(flops_per_s) and flops_per_s > 0):
            raise ValueError(f"measured flops_per_s = {flops_per_s!r}: must be a finite number > 0 (FLOP/s)")
        changes["flops_per_s"] = float(flops_per_s)
    if link is not None:
        changes["link_latency_s"] = link.overhead_s / 2.0
        if link.bps is not None:
            changes["uplink_bps"] = changes["downlink_bps"] = float(link.bps)
    return replace(base, **changes)


__all__ = ["MIN_SLOPE_T", "PROBE_BUDGET_S", "PROBE_N", "FlopsProbe", "LinkFit", "fit_link", "measured_profile", "probe_flops_per_s"]
