"""The codec interface: one float tensor to a self-describing byte body and back.

A codec only sees one tensor at a time; :mod:`fedsplit.compression.payload`
frames the bodies of a whole set of named tensors. Bodies carry their own
parameters (levels, rank, value width...), so decoding never needs the encoder's
configuration: :meth:`Codec.decode` must work on an instance built with default
arguments.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

__all__ = ["Codec", "EncodeContext", "check_choice", "check_float_range", "check_int_range"]


@dataclass
class EncodeContext:
    """What an encoder may use besides the tensor itself.

    Attributes
    ----------
    rng : np.random.Generator
        Source of randomness for stochastic codecs (QSGD, random-k).
    state : MutableMapping[str, np.ndarray]
        Per-sender memory that persists across rounds (e.g. PowerSGD's warm-start
        factor), keyed by tensor name. Codecs read and replace their own entries.
    """

    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))
    state: MutableMapping[str, np.ndarray] = field(default_factory=dict)


class Codec(ABC):
    """Lossy or lossless encoder/decoder of one ``float32`` tensor.

    Subclasses set :attr:`name` and implement :meth:`encode` and :meth:`decode`.
    Constructor keyword arguments are the codec's parameters; they must all have
    defaults, validate their values (``ValueError`` naming the parameter), and be
    reported by :meth:`params` so that the codec can be rebuilt from a wire spec.
    """

    name: ClassVar[str] = ""
    error_feedback_params: ClassVar[dict[str, Any]] = {}
    """Parameters :class:`~fedsplit.compression.config.CompressionConfig` applies when the codec
    runs under error feedback, unless the user sets them: error feedback needs a contractive
    compressor (``||x - C(x)|| < ||x||``), e.g. random-k without its ``n / k`` scaling."""

    @abstractmethod
    def encode(self, name: str, x: np.ndarray, ctx: EncodeContext) -> bytes:
        """Encode a C-contiguous ``float32`` array ``x`` (any shape) to a body."""

    @abstractmethod
    def decode(self, body: memoryview, shape: tuple[int, ...]) -> np.ndarray:
        """Decode a body into a ``float32`` array of ``shape``.

        Must raise :class:`~fedsplit.compression.errors.PayloadError` for any
        malformed body. Once it has read the body's own header, a decoder
        checks that the rest of the body has exactly the length in bytes that
        ``shape`` and the header's parameters imply
        (:meth:`~fedsplit.compression.bitpack.BodyReader.expect_remaining`),
        before allocating anything; it then allocates the ``float32`` result
        (``4 * prod(shape)`` bytes) and scratch space bounded by
        ``O(prod(shape) + len(body))``, never by a parameter read from the body.
        """

    def params(self) -> dict[str, Any]:
        """Constructor arguments that rebuild this codec (JSON-serialisable)."""
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"


def check_float_range(param: str, value: Any, low: float, high: float, *, low_open: bool = True) -> float:
    """Validate a float parameter in ``(low, high]`` (or ``[low, high]``)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok:
        v = float(value)
        ok = (v > low if low_open else v >= low) and v <= high
    if not ok:
        bracket = "(" if low_open else "["
        raise ValueError(f"{param}: got {value!r}; allowed: a number in {bracket}{low}, {high}]")
    return float(value)


def check_int_range(param: str, value: Any, low: int, high: int) -> int:
    """Validate an integer parameter in ``[low, high]``."""
    if not (isinstance(value, int) and not isinstance(value, bool) and low <= value <= high):
        raise ValueError(f"{param}: got {value!r}; allowed: an integer in [{low}, {high}]")
    return int(value)


def check_choice(param: str, value: Any, allowed: tuple[Any, ...]) -> Any:
    """Validate that ``value`` is one of ``allowed``."""
    if value not in allowed:
        raise ValueError(f"{param}: got {value!r}; allowed: one of {', '.join(map(repr, allowed))}")
    return value
