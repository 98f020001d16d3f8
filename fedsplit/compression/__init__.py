"""Update compression for federated training: codecs, wire format, error feedback.

Plain NumPy, no Flower import. The Flower glue lives in
``fedsplit.clients.compression_mod`` (client mod) and
``fedsplit.strategies.compression`` (strategy wrapper).

Typical use::

    from fedsplit.compression import CompressionConfig, compress_with_feedback, decode_update

    cfg = CompressionConfig.from_dict({"uplink": "topk", "density": 0.01, "error_feedback": True})
    step = compress_with_feedback(update, cfg.make_uplink_codec(server_round=1), residual=residual)
    len(step.payload)                      # bytes on the wire
    decode_update(step.payload).tensors    # what the server gets
"""

from fedsplit.compression.accounting import TrafficRecord, compression_ratio, dense_nbytes, summarize_traffic
from fedsplit.compression.codec import Codec, EncodeContext
from fedsplit.compression.codecs_dense import Float16Codec, IdentityCodec, Int8Codec
from fedsplit.compression.codecs_lowrank import PowerSGDCodec
from fedsplit.compression.codecs_quantized import QSGDCodec, ScaledSignCodec
from fedsplit.compression.codecs_sparse import RandomKCodec, TopKCodec, kept_count
from fedsplit.compression.config import CompressionConfig
from fedsplit.compression.delta import apply_update, model_update, specs_of
from fedsplit.compression.downlink import BroadcastReference, DownlinkStep, apply_downlink
from fedsplit.compression.errors import PayloadError
from fedsplit.compression.feedback import FeedbackStep, compress_with_feedback
from fedsplit.compression.payload import (
    DecodedUpdate,
    DecodeLimits,
    TensorSpec,
    decode_update,
    encode_update,
    framing_overhead,
)
from fedsplit.compression.registry import (
    available_codecs,
    codec_parameters,
    decoder_for,
    make_codec,
    register_codec,
    unregister_codec,
)
from fedsplit.compression.validation import check_arrays
from fedsplit.compression.warmup import warmup_density
from fedsplit.compression.wire import WireSpec

__all__ = [
    "BroadcastReference",
    "Codec",
    "CompressionConfig",
    "DecodeLimits",
    "DecodedUpdate",
    "DownlinkStep",
    "EncodeContext",
    "FeedbackStep",
    "Float16Codec",
    "IdentityCodec",
    "Int8Codec",
    "PayloadError",
    "PowerSGDCodec",
    "QSGDCodec",
    "RandomKCodec",
    "ScaledSignCodec",
    "TensorSpec",
    "TopKCodec",
    "TrafficRecord",
    "WireSpec",
    "apply_downlink",
    "apply_update",
    "available_codecs",
    "check_arrays",
    "codec_parameters",
    "compress_with_feedback",
    "compression_ratio",
    "decode_update",
    "decoder_for",
    "dense_nbytes",
    "encode_update",
    "framing_overhead",
    "kept_count",
    "make_codec",
    "model_update",
    "register_codec",
    "specs_of",
    "summarize_traffic",
    "unregister_codec",
    "warmup_density",
]
