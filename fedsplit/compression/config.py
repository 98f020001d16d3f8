"""``CompressionConfig``: what the user writes as ``compression = {...}``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from fedsplit.compression.codec import Codec, check_choice, check_float_range, check_int_range
from fedsplit.compression.codecs_lowrank import MAX_RANK
from fedsplit.compression.codecs_quantized import MAX_BUCKET, MAX_LEVELS
from fedsplit.compression.codecs_sparse import VALUE_DTYPES
from fedsplit.compression.registry import available_codecs, codec_parameters, decoder_for, make_codec
from fedsplit.compression.warmup import warmup_density

__all__ = ["CompressionConfig", "STANDARD_CODEC_FIELDS"]

STANDARD_CODEC_FIELDS = ("density", "levels", "bucket_size", "rank", "value_dtype")
WIRE_SPEC_VERSION = 1


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"compression.{name}: got {value!r}; allowed: true or false")
    return value


def _check_codec_name(name: str, value: Any, *, optional: bool) -> None:
    if optional and value is None:
        return
    if not isinstance(value, str) or value not in available_codecs():
        allowed = ", ".join(available_codecs())
        raise ValueError(f"compression.{name}: got {value!r}; allowed: one of {allowed}" + (" (or omit it)" if optional else ""))


def _check_options(name: str, value: Any) -> None:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise ValueError(f"compression.{name}: got {value!r}; allowed: a table of codec parameters")


@dataclass(frozen=True)
class CompressionConfig:
    """Update compression settings; validated on construction.

    Attributes
    ----------
    uplink : str
        Codec for client updates (``identity``, ``fp16``, ``int8``, ``qsgd``,
        ``topk``, ``randk``, ``sign``, ``powersgd`` or a registered one).
    density : float
        Fraction of elements kept by ``topk``/``randk``, in (0, 1].
    levels : int
        QSGD levels ``s`` (1 to 127).
    bucket_size : int
        QSGD bucket size in elements.
    rank : int
        PowerSGD rank.
    value_dtype : str or None
        ``"float16"`` or ``"float32"`` for sparse values; ``None``: codec default
        (fp16 for top-k, fp32 for random-k).
    codec_options : Mapping[str, Any]
        Extra parameters for the uplink codec (for user-registered codecs).
    error_feedback : bool
        Keep a per-client residual of what compression dropped (on by default).
        Codecs that need other settings to be safe under error feedback get them
        (:attr:`~fedsplit.compression.codec.Codec.error_feedback_params`: random-k
        is sent unscaled, ``unbiased=false``) unless ``codec_options`` sets them.
    warmup_rounds : int
        Rounds of density warm-up (density codecs only); 0 disables it.
    warmup_start_density : float
        Density in round 1 of the warm-up.
    downlink : str or None
        Codec for the global-model delta sent to clients; ``None``: dense.
    downlink_options : Mapping[str, Any]
        Parameters for the downlink codec overriding the standard fields above.
    downlink_error_feedback : bool
        Server-side residual for the downlink.
    seed : int
        Seed of the codecs' randomness (mixed with node id and round).
    """

    uplink: str = "identity"
    density: float = 0.01
    levels: int = 16
    bucket_size: int = 512
    rank: int = 2
    value_dtype: str | None = None
    codec_options: Mapping[str, Any] = field(default_factory=dict)
    error_feedback: bool = True
    warmup_rounds: int = 0
    warmup_start_density: float = 0.25
    downlink: str | None = None
    downlink_options: Mapping[str, Any] = field(default_factory=dict)
    downlink_error_feedback: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        _check_codec_name("uplink", self.uplink, optional=False)
        _check_codec_name("downlink", self.downlink, optional=True)
        try:
            check_float_range("density", self.density, 0.0, 1.0)
            check_int_range("levels", self.levels, 1, MAX_LEVELS)
            check_int_range("bucket_size", self.bucket_size, 1, MAX_BUCKET)
            check_int_range("rank", self.rank, 1, MAX_RANK)
            if self.value_dtype is not None:
                check_choice("value_dtype", self.value_dtype, VALUE_DTYPES)
            check_int_range("warmup_rounds", self.warmup_rounds, 0, 1_000_000)
            check_float_range("warmup_start_density", self.warmup_start_density, 0.0, 1.0)
            check_int_range("seed", self.seed, 0, 2**63 - 1)
        except ValueError as exc:
            raise ValueError(f"compression.{exc}") from None
        _check_bool("error_feedback", self.error_feedback)
        _check_bool("downlink_error_feedback", self.downlink_error_feedback)
        _check_options("codec_options", self.codec_options)
        _check_options("downlink_options", self.downlink_options)
        if self.warmup_rounds and "density" not in codec_parameters(self.uplink):
            dense = ", ".join(c for c in available_codecs() if "density" in codec_parameters(c))
            raise ValueError(
                f"compression.warmup_rounds: got {self.warmup_rounds} with uplink {self.uplink!r}; "
                f"allowed: 0, or any count with a density codec ({dense})"
            )
        self.make_uplink_codec(1)
        self.make_downlink_codec()

    # -- construction -------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CompressionConfig:
        """Build from a TOML table / dict; ``ValueError`` names the field, value and what is allowed."""
        if not isinstance(data, Mapping):
            raise ValueError(f"compression: got {data!r}; allowed: a table of settings")
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ValueError(f"compression.{unknown[0]}: unknown setting; allowed: {', '.join(names)}")
        kwargs = dict(data)
        if isinstance(kwargs.get("downlink"), str) and kwargs["downlink"].lower() == "none":
            kwargs["downlink"] = None
        for key in ("codec_options", "downlink_options"):
            if key in kwargs and isinstance(kwargs[key], Mapping):
                kwargs[key] = dict(kwargs[key])
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (``None`` values dropped, as TOML has no null)."""
        return {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in asdict(self).items() if v is not None}

    # -- codec parameters per direction and round ------------------------------------
    def _standard_params(self, codec: str) -> dict[str, Any]:
        accepted = codec_parameters(codec)
        out = {f: getattr(self, f) for f in STANDARD_CODEC_FIELDS if f in accepted}
        if self.value_dtype is None:
            out.pop("value_dtype", None)
        return out

    @staticmethod
    def _feedback_params(codec: str, error_feedback: bool) -> dict[str, Any]:
        """The codec's :attr:`~fedsplit.compression.codec.Codec.error_feedback_params` when EF is on."""
        if not error_feedback:
            return {}
        wanted = getattr(decoder_for(codec), "error_feedback_params", None) or {}
        accepted = codec_parameters(codec)
        return {k: v for k, v in dict(wanted).items() if k in accepted}

    def uplink_params(self, server_round: int) -> dict[str, Any]:
        """Uplink codec parameters for ``server_round`` (density after warm-up; with error
        feedback, the codec's EF-safe settings unless ``codec_options`` sets them)."""
        params = self._standard_params(self.uplink)
        if "density" in params:
            params["density"] = warmup_density(
                server_round, self.density, self.warmup_rounds, self.warmup_start_density
            )
        params.update(self._feedback_params(self.uplink, self.error_feedback))
        params.update(self.codec_options)
        return params

    def downlink_params(self) -> dict[str, Any] | None:
        """Downlink codec parameters, or ``None`` without downlink compression."""
        if self.downlink is None:
            return None
        params = self._standard_params(self.downlink)
        params.update(self._feedback_params(self.downlink, self.downlink_error_feedback))
        params.update(self.downlink_options)
        return params

    def make_uplink_codec(self, server_round: int) -> Codec:
        """The uplink codec for ``server_round``."""
        try:
            return make_codec(self.uplink, **self.uplink_params(server_round))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"compression.codec_options: {exc}") from None

    def make_downlink_codec(self) -> Codec | None:
        """The downlink codec, or ``None``."""
        params = self.downlink_params()
        if params is None:
            return None
        try:
            return make_codec(self.downlink, **params)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"compression.downlink_options: {exc}") from None

    def wire_spec(self, server_round: int) -> dict[str, Any]:
        """JSON-able spec sent to clients in the train config (see :mod:`~fedsplit.compression.wire`)."""
        downlink = self.downlink_params()
        return {
            "version": WIRE_SPEC_VERSION,
            "uplink": {"codec": self.uplink, **self.uplink_params(server_round)},
            "downlink": None if downlink is None else {"codec": self.downlink, **downlink},
            "error_feedback": self.error_feedback,
            "warmup_rounds": self.warmup_rounds,
            "seed": self.seed,
        }
