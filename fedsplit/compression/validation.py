"""Checks of plain (uncompressed) model arrays before aggregation."""

from __future__ import annotations

import functools
from collections.abc import Mapping

import numpy as np

from fedsplit.compression.payload import TensorSpec, is_coded

__all__ = ["check_arrays"]


def check_arrays(arrays: Mapping[str, np.ndarray], expected: Mapping[str, TensorSpec]) -> str | None:
    """Return why ``arrays`` cannot be aggregated against ``expected``, or ``None``.

    Checks: the same names, the same shape and dtype per name, and only finite
    values in floating tensors.
    """
    if len(arrays) != len(expected) or any(n not in expected for n in arrays):
        missing = [n for n in expected if n not in arrays]
        if missing:
            return f"missing tensor {missing[0]!r} ({len(missing)} missing)"
        extra = [n for n in arrays if n not in expected]
        return f"unexpected tensor {extra[0]!r} ({len(extra)} unexpected)"
    for name, spec in expected.items():
        arr = np.asarray(arrays[name])
        dtype, coded = _dtype_of(spec.dtype)
        if arr.shape != tuple(spec.shape):
            return f"tensor {name!r} has shape {tuple(arr.shape)}, expected {tuple(spec.shape)}"
        if arr.dtype != dtype:
            return f"tensor {name!r} has dtype {arr.dtype}, expected {dtype}"
        if coded and not np.isfinite(arr).all():
            return f"tensor {name!r} contains NaN/Inf"
    return None


@functools.lru_cache(maxsize=256)
def _dtype_of(name: str) -> tuple[np.dtype, bool]:
    """The dtype a spec names, and whether it is floating (checked for NaN/Inf): built once, not
    per tensor of every update."""
    return np.dtype(name), is_coded(name)
