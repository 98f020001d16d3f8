"""The norm defence: update norms, clipping and rejection bounds (``defence.*``).

An update is ``local - global`` over the floating-point tensors; its size is the L2 norm of all of
them together. Bounds are absolute (``clip_norm``, ``reject_norm``) or relative to the median norm
of the round's updates (``clip_factor``, ``reject_factor``), which follows the honest updates as
they shrink over training; with fewer than half the terminals attacking, the median is an honest
terminal's norm.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np


def _floating(value: np.ndarray) -> bool:
    return np.issubdtype(np.asarray(value).dtype, np.floating)


def update_norm(received: Mapping[str, np.ndarray], local: Mapping[str, np.ndarray]) -> float:
    """L2 norm of ``local - received`` over all floating-point tensors (weight units)."""
    total = 0.0
    for key, value in local.items():
        if _floating(value):
            diff = np.asarray(value, dtype=np.float64) - np.asarray(received[key], dtype=np.float64)
            total += float(np.dot(diff.ravel(), diff.ravel()))
    return math.sqrt(total)


def bound(norms: Sequence[float], absolute: float, factor: float) -> float:
    """The tighter of ``absolute`` and ``factor * median(norms)``; a zero setting is off (inf)."""
    limits = [math.inf]
    if absolute > 0:
        limits.append(absolute)
    if factor > 0 and len(norms):
        limits.append(factor * float(np.median(norms)))
    return min(limits)


def clip_update(received: Mapping[str, np.ndarray], local: Mapping[str, np.ndarray], norm: float, limit: float) -> dict[str, np.ndarray]:
    """``received + update * min(1, limit / norm)``: the update scaled down to norm ``limit``.

    Non-floating tensors are kept as ``local`` has them.
    """
    scale = 1.0 if norm <= limit or norm == 0 else limit / norm
    out = {}
    for key, value in local.items():
        value = np.asarray(value)
        if _floating(value) and scale != 1.0:
            base = np.asarray(received[key], dtype=np.float64)
            out[key] = (base + scale * (value.astype(np.float64) - base)).astype(value.dtype)
        else:
            out[key] = value
    return out
