"""Differential privacy and Byzantine-terminal emulation: plain PyTorch / NumPy / Opacus, no Flower.

- :mod:`~fedsplit.privacy.accountant`: a DP accountant's state as a plain dict (what a terminal
  keeps in its ``Context.state`` across rounds), epsilon of a state, noise for a target budget;
- :mod:`~fedsplit.privacy.dp_sgd`: one round of local DP-SGD with Opacus that continues a state;
- :mod:`~fedsplit.privacy.split_dp`: a DP-SGD step of split learning's terminal part(s) from the
  gradient at the cut (per-sample gradients with Opacus's GradSampleModule), Poisson batches;
- :mod:`~fedsplit.privacy.central`: the (epsilon, delta) of central DP (noise on the aggregate);
- :mod:`~fedsplit.privacy.attacks`: which terminals attack, and what they do to an honest update;
- :mod:`~fedsplit.privacy.norms`: update norms, clipping and rejection thresholds of the
  norm defence;
- :mod:`~fedsplit.privacy.report`: the run's privacy for ``summary.json``.

Making a model Opacus-compatible is the model zoo's (:mod:`fedsplit.models.opacus_compat`), since
the learning task applies it on both sides; the configuration's rules are in
:func:`fedsplit.config.names.check_privacy`. Opacus is imported by the functions that need it.
"""

from fedsplit.privacy.attacks import ATTACK_KINDS, attacker_ids, flip_labels, poison_update

__all__ = ["ATTACK_KINDS", "attacker_ids", "flip_labels", "poison_update"]
