"""Model updates as deltas: local minus reference for floating tensors, raw otherwise."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fedsplit.compression.payload import TensorSpec, is_coded

__all__ = ["model_update", "apply_update", "specs_of"]


def specs_of(arrays: Mapping[str, np.ndarray]) -> dict[str, TensorSpec]:
    """Shape/dtype spec of every array, in order."""
    return {name: TensorSpec.of(np.asarray(a)) for name, a in arrays.items()}


def model_update(local: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The update a sender transmits, in ``reference`` order.

    Floating tensors: ``local - reference`` in ``float32``. Other tensors (integer
    or bool buffers): ``local`` itself, exactly, in the reference dtype.

    Raises
    ------
    ValueError
        If the names or shapes of ``local`` and ``reference`` differ.
    """
    if set(local.keys()) != set(reference.keys()):
        missing = sorted(set(reference) - set(local))
        extra = sorted(set(local) - set(reference))
        raise ValueError(f"update keys differ from the reference: missing {missing}, unexpected {extra}")
    out: dict[str, np.ndarray] = {}
    for name, ref in reference.items():
        ref = np.asarray(ref)
        loc = np.asarray(local[name])
        if loc.shape != ref.shape:
            raise ValueError(f"tensor {name!r}: shape {loc.shape} differs from the reference {ref.shape}")
        if is_coded(ref.dtype):
            out[name] = loc.astype(np.float32) - ref.astype(np.float32)
        else:
            out[name] = loc.astype(ref.dtype, copy=True)
    return out


def apply_update(reference: Mapping[str, np.ndarray], decoded: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Inverse of :func:`model_update` given the decoded update; keeps reference dtypes.

    Floating tensors: ``(reference as float32 + delta)`` cast back to the
    reference dtype; other tensors: the received value. Sender and receiver call
    this same function, so replicas built on both sides are bit-identical.
    """
    out: dict[str, np.ndarray] = {}
    for name, ref in reference.items():
        ref = np.asarray(ref)
        value = decoded[name]
        if is_coded(ref.dtype):
            out[name] = (ref.astype(np.float32) + value.astype(np.float32, copy=False)).astype(ref.dtype, copy=False)
        else:
            out[name] = np.asarray(value).astype(ref.dtype, copy=True).reshape(ref.shape)
    return out
