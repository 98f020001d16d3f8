"""Error feedback (residual memory): transmit ``update + residual``, keep what was lost.

With error feedback the sender keeps ``residual = intended - sent`` where
``intended = update + previous residual`` and ``sent`` is exactly what the
receiver decodes from the payload, so nothing a biased codec drops is lost for
good (Seide et al., 2014; Karimireddy et al., 2019; Lin et al., 2018).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fedsplit.compression.codec import Codec, EncodeContext
from fedsplit.compression.errors import PayloadError
from fedsplit.compression.payload import decode_update, encode_update, is_coded

__all__ = ["FeedbackStep", "compress_with_feedback", "usable_residual"]


@dataclass(frozen=True)
class FeedbackStep:
    """One compression step.

    Attributes
    ----------
    payload : bytes
        What goes on the wire; ``len(payload)`` bytes.
    intended : dict[str, np.ndarray]
        Update plus the previous residual (floating tensors) and raw tensors.
    sent : dict[str, np.ndarray]
        What the receiver decodes from ``payload`` (same names as ``intended``).
    residual : dict[str, np.ndarray]
        New residual (floating tensors only); empty with error feedback off.
        Unchanged previous residual if the update was not finite.
    finite : bool
        Whether the intended update, as decoded, is finite. A non-finite update
        is still encoded (the receiver rejects it) but never enters the
        residual, and ``sent`` is then ``None``.
    """

    payload: bytes
    intended: dict[str, np.ndarray]
    sent: dict[str, np.ndarray] | None
    residual: dict[str, np.ndarray]
    finite: bool


def usable_residual(
    residual: Mapping[str, np.ndarray] | None, update: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Residual entries that match a floating tensor of ``update`` in name and shape."""
    if not residual:
        return {}
    out = {}
    for name, r in residual.items():
        u = update.get(name)
        if u is not None and is_coded(np.asarray(u).dtype) and np.shape(r) == np.shape(u):
            out[name] = np.asarray(r, dtype=np.float32)
    return out


def compress_with_feedback(
    update: Mapping[str, np.ndarray],
    codec: Codec,
    *,
    residual: Mapping[str, np.ndarray] | None = None,
    error_feedback: bool = True,
    ctx: EncodeContext | None = None,
) -> FeedbackStep:
    """Encode ``update`` (plus the residual, with error feedback) and update the residual.

    Parameters
    ----------
    update : Mapping[str, np.ndarray]
        Floating deltas (compressed) and non-floating tensors (sent raw).
    codec : Codec
        Encoder for the floating tensors.
    residual : Mapping[str, np.ndarray], optional
        Previous residual; entries that do not match ``update`` are ignored.
    error_feedback : bool
        Keep and apply the residual.
    ctx : EncodeContext, optional
        Randomness and codec state.

    Returns
    -------
    FeedbackStep
        With error feedback, ``residual + sent == intended`` for every floating
        tensor (up to float32 rounding of the subtraction).
    """
    old = usable_residual(residual, update) if error_feedback else {}
    intended: dict[str, np.ndarray] = {}
    for name, value in update.items():
        arr = np.asarray(value)
        if name in old:
            intended[name] = arr.astype(np.float32) + old[name]
        elif is_coded(arr.dtype):
            intended[name] = arr.astype(np.float32, copy=False)
        else:
            intended[name] = arr
    finite = all(np.isfinite(a).all() for a in intended.values() if is_coded(a.dtype))
    payload = encode_update(intended, codec, ctx)
    if not finite:
        return FeedbackStep(payload, intended, None, dict(old), False)
    try:
        sent = decode_update(payload).tensors
    except PayloadError:  # e.g. a finite value that the codec scaled to Inf
        return FeedbackStep(payload, intended, None, dict(old), False)
    new_residual: dict[str, np.ndarray] = {}
    if error_feedback:
        for name, value in intended.items():
            if is_coded(value.dtype):
                new_residual[name] = value - sent[name]
    return FeedbackStep(payload, intended, sent, new_residual, True)
