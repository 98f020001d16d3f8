"""A terminal's best response to prices for bandwidth and edge compute.

Dualising ``sum b <= B`` with a price ``lam`` [s/Hz] and ``sum f <= F`` with a price ``nu``
[s per cycle/s] splits the allocation problem into one small convex problem per terminal:

    minimise   u(b) + c / f + lam b + nu f
    subject to u(b) + c / f <= tau,   b_min <= b <= B,   0 < f <= F,

with ``u(b) = D / r(b)`` the upload time [s], ``c`` the edge cycles and ``tau`` the time left for
upload plus inference. Its KKT conditions, with ``w = 1 + mu >= 1`` weighting a binding deadline,
read ``w (D/s^2) psi(b/s) = lam`` and ``w c / f^2 = nu``:

* deadline slack (``w = 1``): ``b = s psi^-1(lam s^2 / D)`` clipped to ``[b_min, B]`` and
  ``f = sqrt(c / nu)`` clipped to ``F`` (closed form, up to the tabulated ``psi^-1``);
* deadline binding: eliminating ``w`` and ``f = c / (tau - u(b))`` leaves one monotone equation in
  ``x = b/s``, ``psi(x) / (tau - u(x))^2 = lam s^2 / (c nu D)``, solved by safeguarded Newton.

The same binding equation, with ``lam / nu`` replaced by a single price ``sigma``, gives the least
edge compute that lets every deadline be met (:func:`least_compute_split`).

Everything is vectorised over terminals (or over (terminal, model) pairs), and the responses'
derivatives with respect to ``ln lam`` and ``ln nu`` are available for Newton's method on the prices.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedsplit.inference.spectral import LN2, log_psi_slope, phi, phi_and_slope, psi_inverse
from fedsplit.inference.system_model import FloatArray

#: Relative slack allowed on a deadline before it counts as violated.
DEADLINE_RTOL = 1e-9


@dataclass(frozen=True)
class Demand:
    """What each terminal needs once its model is fixed (arrays of shape ``(K,)``).

    Attributes
    ----------
    snr_hz : ndarray
        SNR bandwidth ``s = p h / N0`` [Hz].
    bits : ndarray
        Input size ``D`` [bit].
    edge_cycles : ndarray
        Edge-server work ``c`` [cycles].
    time_budget_s : ndarray
        Time for upload plus edge inference, ``deadline - t_loc`` [s]; ``inf`` drops the deadline.
    min_bandwidth_hz : ndarray
        Least bandwidth allowed [Hz] (energy budget and deadline); 0 for none.
    deadline_bandwidth_hz : ndarray
        Least bandwidth meeting the deadline with ``f = F`` [Hz]; 0 when the deadline is dropped.
    local_time_s : ndarray
        Local preprocessing time [s] (a constant of the objective).
    """

    snr_hz: FloatArray
    bits: FloatArray
    edge_cycles: FloatArray
    time_budget_s: FloatArray
    min_bandwidth_hz: FloatArray
    deadline_bandwidth_hz: FloatArray
    local_time_s: FloatArray

    def __len__(self) -> int:
        return int(self.snr_hz.shape[0])

    def take(self, idx: np.ndarray) -> Demand:
        """The demand of a subset of terminals."""
        return Demand(*(getattr(self, name)[idx] for name in self.__dataclass_fields__))

    def upload_time_s(self, bandwidth_hz: FloatArray) -> FloatArray:
        """Upload time ``D / r(b)`` [s]."""
        with np.errstate(divide="ignore"):
            return self.bits / (self.snr_hz * phi(bandwidth_hz / self.snr_hz))

    @property
    def has_deadlines(self) -> bool:
        """Whether any terminal has a finite deadline."""
        return bool(np.any(np.isfinite(self.time_budget_s)))


@dataclass
class Response:
    """Best responses ``b`` [Hz], ``f`` [cycles/s] and, optionally, their log-price derivatives."""

    bandwidth_hz: FloatArray
    edge_cycles_per_s: FloatArray
    db_dloglam: FloatArray | None = None
    db_dlognu: FloatArray | None = None
    df_dloglam: FloatArray | None = None
    df_dlognu: FloatArray | None = None


def slack_bandwidth(demand: Demand, lam: float, bandwidth_hz: float) -> FloatArray:
    """Bandwidth [Hz] each terminal buys at price ``lam`` [s/Hz] ignoring deadlines."""
    if lam <= 0:
        return np.full(len(demand), float(bandwidth_hz))
    s = demand.snr_hz
    b = s * psi_inverse(lam * s * s / demand.bits)
    return np.clip(b, demand.min_bandwidth_hz, bandwidth_hz)


def best_response(
    demand: Demand,
    lam: float,
    nu: float,
    bandwidth_hz: float,
    edge_cycles_per_s: float,
    *,
    jacobian: bool = False,
    start_hz: FloatArray | None = None,
) -> Response:
    """Each terminal's optimal ``(b, f)`` at prices ``lam`` [s/Hz] and ``nu`` [s^2/cycle].

    Parameters
    ----------
    demand : Demand
        Terminals and their fixed models.
    lam, nu : float
        Prices of bandwidth and edge compute (``>= 0``).
    bandwidth_hz, edge_cycles_per_s : float
        Caps ``B`` [Hz] and ``F`` [cycles/s] on a single terminal's share.
    jacobian : bool
        Also return ``d b / d ln lam``, ``d b / d ln nu``, ``d f / d ln lam``, ``d f / d ln nu``.
    start_hz : ndarray, optional
        A guess of the binding terminals' bandwidth [Hz] (e.g. the previous iterate's) to warm-start
        their Newton solve.
    """
    B, F = float(bandwidth_hz), float(edge_cycles_per_s)
    n = len(demand)
    b = slack_bandwidth(demand, lam, B)
    if nu > 0:
        f = np.minimum(F, np.sqrt(demand.edge_cycles / nu))
    else:
        f = np.full(n, F)
    out = Response(b, f)
    if jacobian:
        s = demand.snr_hz
        interior_b = (b > demand.min_bandwidth_hz) & (b < B)
        db = np.zeros(n)
        if lam > 0 and np.any(interior_b):
            db[interior_b] = b[interior_b] / log_psi_slope(b[interior_b] / s[interior_b])
        out.db_dloglam = db
        out.db_dlognu = np.zeros(n)
        out.df_dloglam = np.zeros(n)
        out.df_dlognu = np.where(f < F, -0.5 * f, 0.0) if nu > 0 else np.zeros(n)
    if not demand.has_deadlines:
        return out
    late = demand.upload_time_s(b) + demand.edge_cycles / f > demand.time_budget_s * (1 + DEADLINE_RTOL)
    if np.any(late):
        idx = np.nonzero(late)[0]
        start = None if start_hz is None else start_hz[idx]
        late_out = _binding_response(demand.take(idx), b[idx], lam, nu, B, F, jacobian, start)
        b[idx] = late_out.bandwidth_hz
        f[idx] = late_out.edge_cycles_per_s
        if jacobian:
            out.db_dloglam[idx] = late_out.db_dloglam
            out.db_dlognu[idx] = late_out.db_dlognu
            out.df_dloglam[idx] = late_out.df_dloglam
            out.df_dlognu[idx] = late_out.df_dlognu
    return out


def _binding_response(
    d: Demand,
    b_start: FloatArray,
    lam: float,
    nu: float,
    B: float,
    F: float,
    jacobian: bool,
    guess_hz: FloatArray | None,
) -> Response:
    """Response of terminals whose deadline binds: ``u(b) + c/f = tau`` exactly."""
    s, tau = d.snr_hz, d.time_budget_s
    n = len(d)
    zeros = np.zeros(n)
    if nu <= 0:
        # Compute is free: f = F and the deadline fixes the least bandwidth.
        b = np.maximum(d.deadline_bandwidth_hz, b_start)
        return Response(b, np.full(n, F), zeros, zeros.copy(), zeros.copy(), zeros.copy())
    if lam <= 0:
        b = np.full(n, B)
        t = np.log(B / s)
        interior = np.zeros(n, dtype=bool)
    else:
        log_target = np.log(lam * s * s / (d.edge_cycles * nu * d.bits))
        # Below the deadline bandwidth the exact-deadline compute would exceed F, so the root of
        # interest lies above it (where the equation is also finite).
        lo = np.log(np.maximum(b_start, d.deadline_bandwidth_hz) / s)
        hi = np.full(n, np.log(B / s))
        t0 = None if guess_hz is None else np.clip(np.log(guess_hz / s), lo, hi)
        t, interior = solve_binding_equation(d, log_target, lo, hi, t0)
        b = s * np.exp(t)
    f = d.edge_cycles / np.maximum(tau - d.upload_time_s(b), 1e-300)
    over = f > F
    b = np.where(over, np.maximum(d.deadline_bandwidth_hz, b_start), b)
    f = np.where(over, F, f)
    out = Response(b, f)
    if jacobian:
        moving = interior & ~over
        db_dl = np.zeros(n)
        dlogf_dt = np.zeros(n)
        if np.any(moving):
            dm = d.take(np.nonzero(moving)[0])
            _, slope, dlogf = _binding_terms(dm, t[moving], np.zeros(int(moving.sum())))
            db_dl[moving] = b[moving] / slope
            dlogf_dt[moving] = dlogf
        out.db_dloglam = db_dl
        out.db_dlognu = -db_dl
        # d f / d ln lam = f * (d ln f / dt) * (dt / d ln lam), and dt/d ln lam = db_dl / b.
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = np.where(moving, db_dl / b, 0.0)
        out.df_dloglam = f * dlogf_dt * ratio
        out.df_dlognu = -out.df_dloglam
    return out


def _binding_terms(
    d: Demand, t: FloatArray, log_target: FloatArray
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """At ``x = e^t``: ``g = ln psi(x) - 2 ln(tau - u(x)) - ln target``, ``dg/dt``, ``d ln f / dt``.

    ``f = c / (tau - u)`` is the compute that meets the deadline exactly; ``g = +inf`` where the
    upload alone already overruns ``tau``.
    """
    x = np.exp(t)
    value, d1 = phi_and_slope(x)
    d2 = -1.0 / (LN2 * x * (1.0 + x) ** 2)
    u = d.bits / (d.snr_hz * value)
    gap = d.time_budget_s - u
    elasticity = x * d1 / value  # d ln phi / d ln x
    with np.errstate(divide="ignore", invalid="ignore"):
        g = np.log(d1) - 2.0 * np.log(value) - 2.0 * np.log(gap) - log_target
        dlogf = -u * elasticity / gap
        slope = x * d2 / d1 - 2.0 * elasticity + 2.0 * dlogf
    g = np.where(gap > 0, g, np.inf)
    return g, slope, dlogf


def solve_binding_equation(
    d: Demand,
    log_target: FloatArray,
    lo: FloatArray,
    hi: FloatArray,
    start: FloatArray | None = None,
) -> tuple[FloatArray, np.ndarray]:
    """Solve ``ln psi(x) - 2 ln(tau - u(x)) = ln target`` for ``t = ln x`` in ``[lo, hi]``.

    The left side decreases in ``t``; a root outside the bracket is clamped to its end.
    Safeguarded Newton (bisection when a step leaves the bracket), vectorised.

    Returns
    -------
    t : ndarray
        The root (clamped).
    interior : ndarray of bool
        Whether the root lies strictly inside the bracket (derivatives are then nonzero).
    """
    lo, hi = lo.copy(), hi.copy()
    g_hi, _, _ = _binding_terms(d, hi, log_target)
    g_lo, _, _ = _binding_terms(d, lo, log_target)
    at_hi = g_hi >= 0
    at_lo = (g_lo <= 0) & ~at_hi
    t = lo.copy() if start is None else np.clip(start, lo, hi)
    active = ~(at_hi | at_lo)
    work = np.nonzero(active)[0]
    sub = d.take(work)
    sub_target = log_target[work]
    for _ in range(100):
        if work.size == 0:
            break
        g, slope, _ = _binding_terms(sub, t[work], sub_target)
        positive = g > 0
        t_w, lo_w, hi_w = t[work], lo[work], hi[work]
        lo_w = np.where(positive, t_w, lo_w)
        hi_w = np.where(positive, hi_w, t_w)
        with np.errstate(invalid="ignore", divide="ignore"):
            step = t_w - g / slope
        outside = ~((step > lo_w) & (step < hi_w)) | ~np.isfinite(step)
        new_t = np.where(outside, 0.5 * (lo_w + hi_w), step)
        done = (np.abs(new_t - t_w) < 1e-13) | (hi_w - lo_w < 1e-13)
        t[work], lo[work], hi[work] = new_t, lo_w, hi_w
        if np.all(done):
            break
        if done.sum() * 2 > done.size:
            keep = ~done
            work = work[keep]
            sub = sub.take(np.nonzero(keep)[0])
            sub_target = sub_target[keep]
    t = np.where(at_hi, hi, np.where(at_lo, lo, t))
    return t, ~(at_hi | at_lo)


def least_compute_split(
    demand: Demand, sigma: float, bandwidth_hz: float
) -> tuple[FloatArray, FloatArray]:
    """Bandwidth [Hz] and compute [cycles/s] of the least-compute way to meet every deadline.

    Minimising ``sum_i c_i / (tau_i - u_i(b_i))`` (the compute that meets each deadline exactly)
    over ``sum b = B`` has the KKT condition ``(D/s^2) psi(x) c / (tau - u)^2 = sigma`` — the binding
    equation with target ``sigma s^2 / (c D)``. Terminals without a deadline take ``b_min`` and no
    compute.
    """
    B = float(bandwidth_hz)
    n = len(demand)
    b = demand.min_bandwidth_hz.copy()
    f = np.zeros(n)
    has = np.isfinite(demand.time_budget_s)
    if not np.any(has):
        return b, f
    idx = np.nonzero(has)[0]
    d = demand.take(idx)
    lo = np.log(np.maximum(d.min_bandwidth_hz, 1e-300) / d.snr_hz)
    hi = np.log(B / d.snr_hz)
    log_target = np.log(sigma * d.snr_hz**2 / (d.edge_cycles * d.bits))
    t, _ = solve_binding_equation(d, log_target, lo, hi)
    b[idx] = d.snr_hz * np.exp(t)
    gap = d.time_budget_s - d.upload_time_s(b[idx])
    f[idx] = np.where(gap > 0, d.edge_cycles / np.maximum(gap, 1e-300), np.inf)
    return b, f
