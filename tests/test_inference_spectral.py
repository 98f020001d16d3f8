"""Shannon-rate helpers: the tabulated inverses must invert, and the rate must be Shannon's."""

import numpy as np
import pytest

from fedsplit.inference.spectral import (
    PHI_MAX,
    bandwidth_for_rate_hz,
    log_psi_slope,
    phi,
    phi_inverse,
    phi_prime,
    psi,
    psi_inverse,
    uplink_rate_bps,
)


def test_rate_is_shannon_capacity_of_the_band():
    b = np.array([1e3, 1e6, 2e7])
    s = np.array([1e8, 5e7, 3e9])
    expected = b * np.log2(1 + s / b)
    assert np.allclose(uplink_rate_bps(b, s), expected, rtol=1e-14)


def test_phi_limits_and_monotonicity():
    x = np.logspace(-12, 12, 500)
    values = phi(x)
    assert np.all(np.diff(values) > 0)
    assert phi(np.array([0.0]))[0] == 0.0
    assert values[-1] == pytest.approx(PHI_MAX, rel=1e-9)


def test_psi_inverse_recovers_x_over_thirty_decades():
    x = np.exp(np.random.default_rng(0).uniform(-45, 35, 20000))
    assert np.max(np.abs(psi_inverse(psi(x)) / x - 1)) < 1e-9


def test_psi_inverse_edge_values():
    out = psi_inverse(np.array([0.0, np.inf]))
    assert out[0] == np.inf and out[1] == 0.0


def test_phi_inverse_recovers_x_and_rejects_unreachable_rates():
    x = np.exp(np.random.default_rng(1).uniform(-30, 15, 5000))
    assert np.max(np.abs(phi(phi_inverse(phi(x))) / phi(x) - 1)) < 1e-12
    assert phi_inverse(np.array([PHI_MAX * 1.0001]))[0] == np.inf


def test_bandwidth_for_rate_is_least_bandwidth_reaching_the_rate():
    s = 2e8
    b = bandwidth_for_rate_hz(np.array([5e6, 5e7]), np.array([s, s]))
    assert np.allclose(uplink_rate_bps(b, s), [5e6, 5e7], rtol=1e-10)
    assert np.all(uplink_rate_bps(b * 0.999, s) < [5e6, 5e7])


def test_derivatives_match_finite_differences():
    x = np.logspace(-6, 6, 200)
    h = 1e-6 * x
    numeric = (phi(x + h) - phi(x - h)) / (2 * h)
    assert np.allclose(numeric, phi_prime(x), rtol=1e-5)
    t = np.log(x)
    numeric_slope = (np.log(psi(np.exp(t + 1e-6))) - np.log(psi(np.exp(t - 1e-6)))) / 2e-6
    assert np.allclose(numeric_slope, log_psi_slope(x), rtol=1e-5)
