"""Shannon uplink rate as a function of bandwidth, and the inverses the solvers need.

A terminal with transmit power ``p`` [W], linear channel power gain ``h`` and noise power
spectral density ``N0`` [W/Hz] reaches, on ``b`` Hz of interference-free OFDMA bandwidth, the rate

    r(b) = b log2(1 + p h / (N0 b))   [bit/s].

Writing ``s = p h / N0`` (the *SNR bandwidth*, in Hz) and ``x = b / s`` (dimensionless) gives
``r = s * phi(x)`` with the universal function ``phi(x) = x log2(1 + 1/x)``: concave, increasing,
``phi(0) = 0`` and ``phi(inf) = 1/ln 2``. Every terminal's rate curve is this one curve rescaled, so
the few scalar inverses below, tabulated once and polished with Newton steps, serve every terminal.

Uploading ``D`` bits takes ``u(b) = D / (s phi(b/s))`` seconds, whose slope is
``u'(b) = -(D / s**2) psi(b/s)`` with ``psi = phi' / phi**2`` (positive, decreasing). The bandwidth
that a terminal buys at a price ``lam`` [s/Hz] therefore solves ``psi(b/s) = lam s**2 / D``.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

LN2 = float(np.log(2.0))
#: Upper limit of ``phi``: the rate of infinite bandwidth is ``s / ln 2`` bit/s.
PHI_MAX = 1.0 / LN2

# Table of the universal curves on t = ln x; x from 2e-22 to 2e17 covers any bandwidth from
# fractions of a hertz on a superb channel to the whole band on a hopeless one.
_T_MIN, _T_MAX, _T_POINTS = -50.0, 40.0, 9001
_NEWTON_STEPS = 3


def phi(x: ArrayLike) -> NDArray[np.float64]:
    """Spectral efficiency per unit SNR bandwidth, ``x log2(1 + 1/x)`` (dimensionless).

    Parameters
    ----------
    x : array_like
        Bandwidth divided by the SNR bandwidth ``s = p h / N0``; ``x >= 0``.
    """
    x = np.asarray(x, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = x * np.log1p(1.0 / x) / LN2
    out = np.where(x > 0, out, 0.0)
    return np.where(np.isinf(x), PHI_MAX, out)


def phi_prime(x: ArrayLike) -> NDArray[np.float64]:
    """Derivative ``d phi / dx = (ln(1 + 1/x) - 1/(1 + x)) / ln 2``, accurate for large ``x``."""
    x = np.asarray(x, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        y = 1.0 / x
        direct = np.log1p(y) - y / (1.0 + y)
        # Series of the difference for small y: the direct form cancels catastrophically there.
        series = y * y * (0.5 - y * (2.0 / 3.0 - y * (0.75 - 0.8 * y)))
        out = np.where(y < 1e-3, series, direct) / LN2
    return out


def phi_second(x: ArrayLike) -> NDArray[np.float64]:
    """Second derivative ``-1 / (ln 2 x (1 + x)**2)`` (negative: ``phi`` is concave)."""
    x = np.asarray(x, dtype=float)
    with np.errstate(divide="ignore", over="ignore"):
        return -1.0 / (LN2 * x * (1.0 + x) ** 2)


def psi(x: ArrayLike) -> NDArray[np.float64]:
    """Marginal value of bandwidth in normalised form, ``phi'(x) / phi(x)**2`` (decreasing)."""
    x = np.asarray(x, dtype=float)
    p = phi(x)
    with np.errstate(divide="ignore", invalid="ignore"):
        return phi_prime(x) / (p * p)


def _log_psi_slope(x: NDArray[np.float64]) -> NDArray[np.float64]:
    """``d ln psi / d ln x = x phi''/phi' - 2 x phi'/phi`` (negative)."""
    d1 = phi_prime(x)
    return x * phi_second(x) / d1 - 2.0 * x * d1 / phi(x)


def _build_tables() -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    t = np.linspace(_T_MIN, _T_MAX, _T_POINTS)
    x = np.exp(t)
    log_psi = np.log(psi(x))
    log_phi = np.log(phi(x))
    # Guard against ties where float precision flattens the curves at the extremes.
    log_phi = np.maximum.accumulate(log_phi)
    return t, log_psi, log_phi


_T, _LOG_PSI, _LOG_PHI = _build_tables()


class _UniformInverse:
    """Inverse of a monotone curve tabulated on a *uniform* grid of its values.

    Lookup is an index computation plus linear interpolation (no binary search), which keeps
    the hot path of the solvers memory-friendly for 10^5 queries at a time.
    """

    def __init__(self, values: NDArray[np.float64], args: NDArray[np.float64]) -> None:
        self.v0 = float(values[0])
        self.step = float(values[1] - values[0])
        self.args = args
        self.last = len(args) - 2

    def __call__(self, v: NDArray[np.float64]) -> NDArray[np.float64]:
        pos = (v - self.v0) / self.step
        np.clip(pos, 0.0, self.last + 1.0, out=pos)
        idx = np.minimum(pos.astype(np.intp), self.last)
        frac = pos - idx
        lo = self.args[idx]
        return lo + frac * (self.args[idx + 1] - lo)


def _build_psi_inverse_table(points: int = 40001) -> _UniformInverse:
    """Tabulate ``ln x`` on a uniform grid of ``ln psi`` (Newton-polished from the ``t`` table)."""
    log_psi_grid = np.linspace(_LOG_PSI[-1], _LOG_PSI[0], points)
    t = np.interp(log_psi_grid, _LOG_PSI[::-1], _T[::-1])
    for _ in range(4):
        x = np.exp(t)
        d1 = phi_prime(x)
        value = phi(x)
        g = np.log(d1) - 2.0 * np.log(value) - log_psi_grid
        t = t - g / _log_psi_slope(x)
    return _UniformInverse(log_psi_grid, t)


_PSI_INVERSE_TABLE = _build_psi_inverse_table()


def phi_and_slope(x: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """``(phi(x), phi'(x))`` for finite ``x > 0`` in one pass (the hot loop of every solver)."""
    y = 1.0 / x
    log_term = np.log1p(y)
    value = x * log_term / LN2
    small = y < 1e-3
    slope = log_term - y / (1.0 + y)
    if np.any(small):
        ys = y[small]
        slope[small] = ys * ys * (0.5 - ys * (2.0 / 3.0 - ys * (0.75 - 0.8 * ys)))
    return value, slope / LN2


def psi_inverse(y: ArrayLike) -> NDArray[np.float64]:
    """Solve ``psi(x) = y`` for ``x`` (vectorised); ``y = 0`` gives ``inf``, ``y = inf`` gives 0.

    Parameters
    ----------
    y : array_like
        Target marginal value, ``y >= 0`` (dimensionless).
    """
    y = np.asarray(y, dtype=float)
    regular = (y > 0) & np.isfinite(y)
    if not np.all(regular):
        out = np.where(y <= 0, np.inf, 0.0)
        if np.any(regular):
            out[regular] = psi_inverse(y[regular])
        return out
    log_y = np.log(y)
    t = _PSI_INVERSE_TABLE(log_y)
    # The table's linear interpolation is good to ~1e-7 in ln x; one Newton step squares that.
    for _ in range(1):
        x = np.exp(t)
        value, d1 = phi_and_slope(x)
        d2 = -1.0 / (LN2 * x * (1.0 + x) ** 2)
        g = np.log(d1) - 2.0 * np.log(value) - log_y
        slope = x * d2 / d1 - 2.0 * x * d1 / value
        t = t - g / slope
    return np.exp(t)


def phi_inverse(y: ArrayLike) -> NDArray[np.float64]:
    """Solve ``phi(x) = y`` for ``x`` (vectorised); ``y >= 1/ln 2`` is unreachable and gives ``inf``.

    Parameters
    ----------
    y : array_like
        Required spectral efficiency per unit SNR bandwidth, ``y >= 0`` (dimensionless).
    """
    y = np.asarray(y, dtype=float)
    out = np.empty_like(y)
    zero = y <= 0
    unreachable = y >= PHI_MAX
    regular = ~(zero | unreachable)
    out[zero] = 0.0
    out[unreachable] = np.inf
    if np.any(regular):
        log_y = np.log(y[regular])
        t = np.interp(log_y, _LOG_PHI, _T)
        for _ in range(_NEWTON_STEPS + 3):
            x = np.exp(t)
            g = np.log(phi(x)) - log_y
            slope = x * phi_prime(x) / phi(x)
            t = t - g / np.maximum(slope, 1e-300)
            t = np.minimum(t, 700.0)
        out[regular] = np.exp(t)
    return out


def uplink_rate_bps(bandwidth_hz: ArrayLike, snr_bandwidth_hz: ArrayLike) -> NDArray[np.float64]:
    """Shannon rate ``b log2(1 + s/b)`` [bit/s] of ``b`` Hz for SNR bandwidth ``s`` [Hz]."""
    b = np.asarray(bandwidth_hz, dtype=float)
    s = np.asarray(snr_bandwidth_hz, dtype=float)
    return s * phi(b / s)


def bandwidth_for_rate_hz(rate_bps: ArrayLike, snr_bandwidth_hz: ArrayLike) -> NDArray[np.float64]:
    """Least bandwidth [Hz] reaching ``rate_bps``; ``inf`` where the rate exceeds ``s / ln 2``."""
    r = np.asarray(rate_bps, dtype=float)
    s = np.asarray(snr_bandwidth_hz, dtype=float)
    return s * phi_inverse(r / s)


def log_psi_slope(x: NDArray[np.float64]) -> NDArray[np.float64]:
    """``d ln psi / d ln x`` for finite ``x > 0`` (negative), in one pass."""
    value, d1 = phi_and_slope(x)
    d2 = -1.0 / (LN2 * x * (1.0 + x) ** 2)
    return x * d2 / d1 - 2.0 * x * d1 / value
