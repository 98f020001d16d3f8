"""Local DP-SGD on a split-learning terminal (``privacy.mode = "local"`` with a split mode).

The terminal's side of :mod:`fedsplit.privacy.split_dp`, for :mod:`fedsplit.clients.split_client`:

- the round's plan is FedAvg's (:class:`fedsplit.clients.privacy_mod.RoundPlan`): the noise
  (``privacy.noise_multiplier``, or the one that spends ``privacy.epsilon`` over the run), the
  sampling rate ``q = 1 / steps_per_epoch`` and ``local_epochs * steps_per_epoch`` steps a round;
- batch ``k`` is a seeded Poisson sample of the local data (an empty one is a noise-only step taken
  on the terminal, with no exchange: the server part has nothing to learn from it);
- each step goes into the terminal's accountant in ``Context.state`` (the same record, key
  :data:`~fedsplit.clients.privacy_mod.ACCOUNTANT_STATE_KEY`, as FedAvg's local DP), so epsilon is
  cumulative over the rounds wherever the terminal runs;
- a round that would take the terminal past ``privacy.epsilon`` is refused at ``begin`` (an error
  reply with code :data:`~fedsplit.clients.privacy_mod.PRIVACY_BUDGET_CODE`, its reason starting
  with "privacy budget spent");
- the reply that carries the trained part(s) adds ``dp-epsilon`` (at ``privacy.delta``),
  ``dp-noise-multiplier`` and ``dp-steps`` to its metrics: the ledger's ``dp_epsilon``.
"""

from __future__ import annotations

import torch
from flwr.app import Context, Error, Message

from fedsplit.clients.privacy_mod import (
    EPSILON_METRIC,
    NOISE_METRIC,
    PRIVACY_BUDGET_CODE,
    STEPS_METRIC,
    RoundPlan,
    load_accountant,
    store_accountant,
)
from fedsplit.config import RunConfig
from fedsplit.privacy import accountant as acc
from fedsplit.privacy.split_dp import DPTerm, derived_seed, dp_step, poisson_batch

#: Purposes mixed into :func:`~fedsplit.privacy.split_dp.derived_seed` with the round's seed and the batch.
_SAMPLING, _NOISE = 1, 2


class SplitPrivacy:
    """One terminal's DP-SGD for the duration of a message.

    Parameters
    ----------
    cfg : RunConfig
        The run's configuration (``privacy.*``, ``train.local_epochs``, ``rounds``).
    context : Context
        The terminal's context (its accountant lives in ``context.state``).
    n : int
        Local training samples.
    batch_size, epochs : int
        The round's expected batch size (samples) and local epochs.
    round_seed : int
        The terminal's seed of this round (batch sampling and noise derive from it).
    """

    def __init__(self, cfg: RunConfig, context: Context, n: int, batch_size: int, epochs: int, round_seed: int) -> None:
        self.p = cfg.privacy
        self.context = context
        self.n = n
        self.plan = RoundPlan.of(cfg, n, batch_size, epochs)
        self.round_seed = round_seed
        #: Opacus's divisor of the noisy sum: ``int(n * q)`` (``make_private`` with a DPDataLoader).
        self.expected_batch_size = max(1, int(n * self.plan.schedule.sample_rate))

    @property
    def num_batches(self) -> int:
        """Steps this round (0 without local data)."""
        return self.plan.steps if self.n else 0

    def indices(self, k: int) -> torch.Tensor:
        """Sample indices of batch ``k`` (a Poisson sample at rate ``q``; may be empty)."""
        return poisson_batch(self.n, self.plan.schedule.sample_rate, derived_seed(self.round_seed, k, _SAMPLING))

    def refusal(self, msg: Message) -> Message | None:
        """The error reply of a terminal whose budget this round would exceed, else None."""
        if self.p.epsilon <= 0 or self.n == 0:
            return None
        state = load_accountant(self.context, self.p.accountant)
        spent, would_be = acc.epsilon(state, self.p.delta), acc.epsilon(self.plan.after(state), self.p.delta)
        if would_be <= self.p.epsilon:
            return None
        reason = (
            f"privacy budget spent: epsilon {spent:.4g}, this round would reach {would_be:.4g} > "
            f"privacy.epsilon = {self.p.epsilon:g} (delta {self.p.delta:g})"
        )
        return Message(Error(code=PRIVACY_BUDGET_CODE, reason=reason), reply_to=msg)

    def step(self, k: int, terms: list[DPTerm], optimizer: torch.optim.Optimizer | None) -> None:
        """DP-SGD step ``k`` on ``terms`` (none: the noise-only step of an empty batch), accounted."""
        if optimizer is None:  # nothing trainable on the terminal: nothing released, nothing spent
            return
        dp_step(
            terms, optimizer, noise_multiplier=self.plan.noise_multiplier, max_grad_norm=self.p.max_grad_norm,
            expected_batch_size=self.expected_batch_size, noise_seed=derived_seed(self.round_seed, k, _NOISE),
        )
        state = acc.with_steps(load_accountant(self.context, self.p.accountant), self.plan.noise_multiplier, self.plan.schedule.sample_rate, 1)
        store_accountant(self.context, state)

    def metrics(self) -> dict[str, float]:
        """``dp-epsilon`` (cumulative, at ``privacy.delta``), ``dp-noise-multiplier``, ``dp-steps``."""
        state = load_accountant(self.context, self.p.accountant)
        return {EPSILON_METRIC: acc.epsilon(state, self.p.delta), NOISE_METRIC: float(self.plan.noise_multiplier), STEPS_METRIC: acc.total_steps(state)}


__all__ = ["SplitPrivacy"]
