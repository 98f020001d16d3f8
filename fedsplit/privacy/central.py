"""The privacy of central DP: Gaussian noise on the aggregate of clipped updates.

Flower's DP strategy wrappers (:mod:`flwr.serverapp.strategy.dp_fixed_clipping`,
``dp_adaptive_clipping``) clip each terminal's update to a norm ``C`` and add Gaussian noise of
standard deviation ``noise_multiplier * C / m`` to the average of ``m`` updates. Each round with a
noisy aggregate is one release of a Gaussian mechanism with that noise multiplier, for
terminal-level (add/remove one terminal's whole data) privacy. fedsplit accounts the releases
with Opacus's accountant at sampling rate 1: no amplification by sampling terminals, as Flower's
own accountant requires for these wrappers (its ``no-amplification`` mode), so the epsilon holds
whichever terminals were sampled. With adaptive clipping the noise on the update and on the
clipped count together make one Gaussian mechanism of the configured noise multiplier (Andrew et
al., 2021), which is what is accounted.
"""

from __future__ import annotations

from fedsplit.privacy.accountant import empty_state, epsilon, noise_for_budget, with_steps

#: Sampling rate of a central release: every round counts fully (no amplification).
RELEASE_SAMPLE_RATE = 1.0


def central_epsilon(noise_multiplier: float, releases: int, delta: float, mechanism: str = "rdp") -> float:
    """Epsilon of ``releases`` noisy aggregates at ``delta`` (0.0 for none)."""
    if releases <= 0:
        return 0.0
    return epsilon(with_steps(empty_state(mechanism), noise_multiplier, RELEASE_SAMPLE_RATE, releases), delta)


def central_noise(epsilon_target: float, delta: float, rounds: int, mechanism: str = "rdp") -> float:
    """The noise multiplier whose ``rounds`` releases spend ``(epsilon_target, delta)``."""
    return noise_for_budget(epsilon_target, delta, RELEASE_SAMPLE_RATE, rounds, mechanism)
