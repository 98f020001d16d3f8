"""Byzantine terminals: which terminals attack, and what they send instead of their honest update.

An attacker trains like everyone else, then lies about the result (``update = local - received``,
floating-point tensors only; integer buffers such as BatchNorm's step count are sent as trained):

- ``signflip``: ``received - k * update`` (the honest update reversed and amplified);
- ``scale``: ``received + k * update`` (the honest update amplified);
- ``noise``: ``received + N(0, noise_std^2)`` per value (the honest update replaced by Gaussian noise);
- ``labelflip``: the update is honest, but trained on flipped labels ``y -> num_classes - 1 - y``
  (:func:`flip_labels`, applied to the terminal's local data before training).

Which terminals attack is a seeded draw (:func:`attacker_ids`), the same in every process.
"""

from __future__ import annotations

import math
from typing import Mapping, TypeVar

import numpy as np

from fedsplit.config.schema import ATTACK_KINDS

__all__ = ["ATTACK_KINDS", "UPDATE_ATTACKS", "attacker_ids", "flip_labels", "num_attackers", "poison_update"]

#: Attacks that rewrite the update a terminal sends (the rest change its training data).
UPDATE_ATTACKS: tuple[str, ...] = ("signflip", "scale", "noise")

Labels = TypeVar("Labels")


def num_attackers(num_terminals: int, fraction: float) -> int:
    """How many of ``num_terminals`` attack: ``fraction`` of them, rounded half up."""
    return min(num_terminals, int(math.floor(fraction * num_terminals + 0.5)))


def attacker_ids(num_terminals: int, fraction: float, seed: int) -> frozenset[int]:
    """The terminals (partition ids) that attack: a seeded draw of :func:`num_attackers` of them."""
    count = num_attackers(num_terminals, fraction)
    rng = np.random.default_rng([int(seed) % 2**32, 0xB12A])
    return frozenset(int(i) for i in rng.choice(num_terminals, size=count, replace=False))


def poison_update(
    received: Mapping[str, np.ndarray],
    local: Mapping[str, np.ndarray],
    kind: str,
    *,
    k: float = 5.0,
    noise_std: float = 1.0,
    rng: np.random.Generator | None = None,
) -> dict[str, np.ndarray]:
    """The weights an attacker of ``kind`` sends instead of ``local`` (see the module docstring).

    Parameters
    ----------
    received : mapping of str to ndarray
        The global weights the terminal was sent.
    local : mapping of str to ndarray
        The weights it trained (same keys, shapes and dtypes).
    kind : str
        ``signflip``, ``scale`` or ``noise`` (:data:`UPDATE_ATTACKS`).
    k : float
        Multiplier of the honest update for ``signflip`` and ``scale``.
    noise_std : float
        Standard deviation of ``noise`` (weight units).
    rng : numpy.random.Generator, optional
        Source of the ``noise`` values.
    """
    if kind not in UPDATE_ATTACKS:
        raise ValueError(f"attack.kind = {kind!r}: not an update attack (allowed: {', '.join(UPDATE_ATTACKS)})")
    rng = rng if rng is not None else np.random.default_rng(0)
    out: dict[str, np.ndarray] = {}
    for key, value in local.items():
        value = np.asarray(value)
        if not np.issubdtype(value.dtype, np.floating):
            out[key] = value
            continue
        base = np.asarray(received[key], dtype=np.float64)
        update = value.astype(np.float64) - base
        if kind == "signflip":
            poisoned = base - k * update
        elif kind == "scale":
            poisoned = base + k * update
        else:
            poisoned = base + rng.normal(0.0, noise_std, size=value.shape)
        out[key] = poisoned.astype(value.dtype)
    return out


def flip_labels(y: Labels, num_classes: int) -> Labels:
    """Labels flipped for the ``labelflip`` attack: class ``c`` becomes ``num_classes - 1 - c``."""
    return (num_classes - 1) - y  # type: ignore[operator]
