"""Central differential privacy: Flower's DP strategy wrappers, with the (epsilon, delta) they give.

``privacy.mode = "central"`` wraps the run's strategy in one of Flower's wrappers
(``privacy.clipping``): :class:`~flwr.serverapp.strategy.DifferentialPrivacyServerSideFixedClipping`,
``DifferentialPrivacyClientSideFixedClipping``, ``DifferentialPrivacyServerSideAdaptiveClipping``
or ``DifferentialPrivacyClientSideAdaptiveClipping``; the client-side ones rely on Flower's
``fixedclipping_mod`` / ``adaptiveclipping_mod`` on the terminals, which fedsplit's ClientApp runs
when the configuration asks for them (:mod:`fedsplit.clients.privacy_mod`).

:class:`CentralPrivacyStrategy` sits around that wrapper and accounts its releases: every round
whose aggregate got noise composes one Gaussian mechanism (:mod:`fedsplit.privacy.central`). It
adds the run's epsilon so far to the round's metrics (``dp-epsilon``, so ``rounds.csv`` has it)
and reports the final (epsilon, delta) for ``summary.json`` (:meth:`CentralPrivacyStrategy.privacy_report`).
Flower's wrappers draw their noise from NumPy's global generator; the wrapper seeds it each round
from the run's seed, so a run is reproducible.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    Strategy,
)

from fedsplit.config import RunConfig
from fedsplit.privacy.central import central_epsilon, central_noise
from fedsplit.strategies.compression import _DelegatingStrategy
from fedsplit.strategies.registry import StrategyLoadError

log = logging.getLogger("fedsplit")

EPSILON_METRIC = "dp-epsilon"


class CentralPrivacyStrategy(_DelegatingStrategy):
    """Accounts the noisy aggregates of one of Flower's DP wrappers.

    Parameters
    ----------
    inner : Strategy
        A Flower DP wrapper (around the run's strategy).
    noise_multiplier : float
        The wrapper's noise multiplier as configured (with adaptive clipping: of the update and the
        clipped count together).
    delta : float
        Delta of the reported epsilon.
    mechanism : str
        Opacus accountant, ``rdp`` or ``prv``.
    seed : int
        Seed of NumPy's global generator, reset every round (``seed``, round).
    """

    def __init__(self, inner: Strategy, *, noise_multiplier: float, delta: float, mechanism: str = "rdp", seed: int = 0) -> None:
        super().__init__(inner)
        self.noise_multiplier = noise_multiplier
        self.delta = delta
        self.mechanism = mechanism
        self.seed = seed
        self.releases = 0

    def epsilon(self) -> float:
        """Epsilon of the releases so far, at :attr:`delta`."""
        return central_epsilon(self.noise_multiplier, self.releases, self.delta, self.mechanism)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        np.random.seed([self.seed % 2**32, server_round, 0xD9])  # Flower's noise comes from NumPy's global generator
        arrays, metrics = self.inner.aggregate_train(server_round, replies)
        if arrays is not None:
            self.releases += 1
        if metrics is not None:
            metrics[EPSILON_METRIC] = self.epsilon()
        return arrays, metrics

    def privacy_report(self) -> dict[str, Any]:
        """The run's central DP for ``summary.json``: mode, wrapper, noise, releases, (epsilon, delta)."""
        return {
            "mode": "central",
            "wrapper": type(self.inner).__name__,
            "noise_multiplier": self.noise_multiplier,
            "releases": self.releases,
            "epsilon": self.epsilon(),
            "delta": self.delta,
            "accountant": self.mechanism,
            "sampling": "no amplification (every release counted at sampling rate 1)",
        }


def sampled_per_round(cfg: RunConfig) -> int:
    """Terminals a round samples when all are online: Flower's ``max(int(fraction * n), min_train_nodes)``."""
    s = cfg.strategy
    return max(int(s.fraction_train * cfg.num_terminals), s.min_train_nodes)


def central_privacy(strategy: Strategy, cfg: RunConfig) -> CentralPrivacyStrategy:
    """``strategy`` inside Flower's DP wrapper of ``privacy.clipping``, accounted.

    The noise multiplier is ``privacy.noise_multiplier``, or the one whose ``rounds`` releases
    spend ``privacy.epsilon``. ``num_sampled_clients`` (the divisor of the noise's standard
    deviation) is :func:`sampled_per_round`.

    Raises
    ------
    StrategyLoadError
        When Flower's wrapper refuses the settings (its message, naming the setting).
    """
    p = cfg.privacy
    noise = p.noise_multiplier or central_noise(p.epsilon, p.delta, cfg.rounds, p.accountant)
    sampled = sampled_per_round(cfg)
    try:
        if p.clipping in ("server-fixed", "client-fixed"):
            cls = DifferentialPrivacyServerSideFixedClipping if p.clipping == "server-fixed" else DifferentialPrivacyClientSideFixedClipping
            wrapped = cls(strategy, noise, p.max_grad_norm, sampled)
        else:
            cls = DifferentialPrivacyServerSideAdaptiveClipping if p.clipping == "server-adaptive" else DifferentialPrivacyClientSideAdaptiveClipping
            wrapped = cls(
                strategy, noise, sampled, initial_clipping_norm=p.max_grad_norm, target_clipped_quantile=p.target_quantile,
                clip_norm_lr=p.clip_lr, clipped_count_stddev=p.clipped_count_stddev or None,
            )
    except ValueError as exc:
        raise StrategyLoadError(f"privacy.clipping = {p.clipping!r}: {exc}") from None
    log.info("privacy: central DP (%s), noise multiplier %.4g, clipping norm %g, %d terminals per round", cls.__name__, noise, p.max_grad_norm, sampled)
    return CentralPrivacyStrategy(wrapped, noise_multiplier=noise, delta=p.delta, mechanism=p.accountant, seed=cfg.seed)
