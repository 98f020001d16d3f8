"""Codec registry: built-in codecs by name, plus user codecs registered at run time."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from fedsplit.compression.codec import Codec
from fedsplit.compression.codecs_dense import Float16Codec, IdentityCodec, Int8Codec
from fedsplit.compression.codecs_lowrank import PowerSGDCodec
from fedsplit.compression.codecs_quantized import QSGDCodec, ScaledSignCodec
from fedsplit.compression.codecs_sparse import RandomKCodec, TopKCodec

__all__ = [
    "BUILTIN_CODECS",
    "register_codec",
    "unregister_codec",
    "available_codecs",
    "make_codec",
    "decoder_for",
    "codec_parameters",
]

CodecFactory = Callable[..., Codec]

BUILTIN_CODECS: dict[str, CodecFactory] = {
    IdentityCodec.name: IdentityCodec,
    Float16Codec.name: Float16Codec,
    Int8Codec.name: Int8Codec,
    QSGDCodec.name: QSGDCodec,
    TopKCodec.name: TopKCodec,
    RandomKCodec.name: RandomKCodec,
    ScaledSignCodec.name: ScaledSignCodec,
    PowerSGDCodec.name: PowerSGDCodec,
}

_registry: dict[str, CodecFactory] = dict(BUILTIN_CODECS)
_decoders: dict[str, Codec] = {}
MAX_NAME_BYTES = 255


def register_codec(name: str, factory: CodecFactory, *, replace: bool = False) -> None:
    """Make a codec available by ``name`` (in config files and on the wire).

    Parameters
    ----------
    name : str
        ASCII name, 1 to 255 bytes; written into every payload's header.
    factory : Callable[..., Codec]
        Usually the codec class. Called with keyword parameters to encode, and
        with no arguments to decode (so every parameter needs a default).
    replace : bool
        Allow replacing an existing registration (built-ins included).
    """
    if not isinstance(name, str) or not name or not name.isascii() or len(name) > MAX_NAME_BYTES:
        raise ValueError(f"codec name: got {name!r}; allowed: 1 to {MAX_NAME_BYTES} ASCII characters")
    if name in _registry and not replace:
        raise ValueError(f"codec name: {name!r} is already registered (pass replace=True to override)")
    if not callable(factory):
        raise TypeError(f"codec factory for {name!r} is not callable")
    _registry[name] = factory
    _decoders.pop(name, None)


def unregister_codec(name: str) -> None:
    """Remove a user codec; a replaced built-in goes back to its original."""
    if name in BUILTIN_CODECS:
        _registry[name] = BUILTIN_CODECS[name]
    else:
        _registry.pop(name, None)
    _decoders.pop(name, None)


def available_codecs() -> tuple[str, ...]:
    """Names of all registered codecs, sorted."""
    return tuple(sorted(_registry))


def _factory(name: str) -> CodecFactory:
    try:
        return _registry[name]
    except (KeyError, TypeError):
        raise ValueError(f"codec: got {name!r}; allowed: one of {', '.join(available_codecs())}") from None


def codec_parameters(name: str) -> tuple[str, ...]:
    """Keyword parameters that the codec ``name`` accepts."""
    sig = inspect.signature(_factory(name))
    return tuple(
        p.name
        for p in sig.parameters.values()
        if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    )


def make_codec(name: str, **params: Any) -> Codec:
    """Build codec ``name`` with ``params``; ``ValueError`` names a bad or unknown parameter."""
    factory = _factory(name)
    allowed = codec_parameters(name)
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(
            f"codec {name!r}: unknown parameter {unknown[0]!r}; allowed: {', '.join(allowed) or '(none)'}"
        )
    codec = factory(**params)
    if not isinstance(codec, Codec):
        raise TypeError(f"codec factory for {name!r} returned {type(codec).__name__}, not a Codec")
    return codec


def decoder_for(name: str) -> Codec:
    """A default-parameter instance of codec ``name``, used for decoding (cached)."""
    codec = _decoders.get(name)
    if codec is None:
        codec = make_codec(name)
        _decoders[name] = codec
    return codec
