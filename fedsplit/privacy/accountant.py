"""A DP-SGD accountant's state as a plain dict, and what is computed from it.

Opacus's accountants (:class:`opacus.accountants.RDPAccountant`, ``PRVAccountant``) keep their
whole state in ``history``: a list of ``(noise_multiplier, sample_rate, steps)`` entries, one per
run of identical steps. fedsplit keeps that history, not an accountant object, across rounds: a
terminal stores it in its ``Context.state`` (:mod:`fedsplit.clients.privacy_mod`), a checkpoint
can store it as it is, and each round's DP-SGD continues it (:mod:`fedsplit.privacy.dp_sgd`), so
the epsilon a terminal reports is that of every step it ever took, not of the last round only.

The state::

    {"mechanism": "rdp" | "prv", "history": [[noise_multiplier, sample_rate, steps], ...]}
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

from fedsplit.config.schema import DP_ACCOUNTANTS as ACCOUNTANTS

AccountantState = dict[str, Any]


def empty_state(mechanism: str = "rdp") -> AccountantState:
    """The state of an accountant that has seen no step."""
    if mechanism not in ACCOUNTANTS:
        raise ValueError(f"accountant {mechanism!r}: unknown (allowed: {', '.join(ACCOUNTANTS)})")
    return {"mechanism": mechanism, "history": []}


def make_accountant(state: AccountantState):  # noqa: ANN201 - an opacus IAccountant
    """An Opacus accountant holding ``state`` (a copy of its history)."""
    from opacus.accountants import create_accountant

    accountant = create_accountant(mechanism=state["mechanism"])
    accountant.history = [(float(s), float(q), int(n)) for s, q, n in state["history"]]
    return accountant


def state_of(accountant) -> AccountantState:  # noqa: ANN001 - an opacus IAccountant
    """The plain-dict state of an Opacus accountant."""
    return {"mechanism": accountant.mechanism(), "history": [[float(s), float(q), int(n)] for s, q, n in accountant.history]}


def total_steps(state: AccountantState) -> int:
    """Noisy steps the state accounts for."""
    return sum(int(n) for _, _, n in state["history"])


def epsilon(state: AccountantState, delta: float) -> float:
    """Epsilon spent by every step of ``state``, at ``delta`` (0.0 for no step)."""
    if not state["history"]:
        return 0.0
    return float(make_accountant(state).get_epsilon(delta=delta))


def with_steps(state: AccountantState, noise_multiplier: float, sample_rate: float, steps: int) -> AccountantState:
    """``state`` followed by ``steps`` more steps of ``(noise_multiplier, sample_rate)``, merged
    with the last entry where Opacus would merge it (same noise and rate)."""
    history = [list(entry) for entry in state["history"]]
    if steps > 0:
        if history and history[-1][0] == noise_multiplier and history[-1][1] == sample_rate:
            history[-1][2] += int(steps)
        else:
            history.append([float(noise_multiplier), float(sample_rate), int(steps)])
    return {"mechanism": state["mechanism"], "history": history}


@functools.lru_cache(maxsize=256)
def noise_for_budget(epsilon_target: float, delta: float, sample_rate: float, steps: int, mechanism: str = "rdp") -> float:
    """The noise multiplier whose ``steps`` steps at ``sample_rate`` spend ``(epsilon_target, delta)``.

    Opacus's :func:`~opacus.accountants.utils.get_noise_multiplier` (a binary search, epsilon
    within 0.01 below the target).

    Raises
    ------
    ValueError
        When no noise multiplier reaches the budget (Opacus: "The privacy budget is too low").
    """
    from opacus.accountants.utils import get_noise_multiplier

    with warnings.catch_warnings():  # the search tries noise so large that the best RDP order is the largest
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        return float(
            get_noise_multiplier(
                target_epsilon=epsilon_target, target_delta=delta, sample_rate=sample_rate, steps=int(steps), accountant=mechanism
            )
        )
