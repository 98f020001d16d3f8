"""Message keys shared by the client mod and the server strategy, and the wire spec.

The server switches compression on per message by putting a JSON spec in the
train message's config record under :data:`CONFIG_KEY`, e.g.::

    {"version": 1, "uplink": {"codec": "topk", "density": 0.01},
     "downlink": null, "error_feedback": true, "warmup_rounds": 0, "seed": 0}
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from fedsplit.compression.codec import Codec
from fedsplit.compression.config import WIRE_SPEC_VERSION
from fedsplit.compression.registry import make_codec

__all__ = [
    "CONFIG_KEY",
    "UPDATE_KEY",
    "DOWNLINK_KEY",
    "PAYLOAD_BYTES_METRIC",
    "DENSE_BYTES_METRIC",
    "RESIDUAL_STATE_KEY",
    "CODEC_STATE_KEY",
    "REPLICA_STATE_KEY",
    "REPLICA_META_KEY",
    "WireSpec",
]

CONFIG_KEY = "fedsplit.compression"  # train config: JSON wire spec
UPDATE_KEY = "fedsplit.update"  # reply content: ConfigRecord(codec, payload, ...)
DOWNLINK_KEY = "fedsplit.downlink"  # train content: ConfigRecord(mode, payload, round, ...)
PAYLOAD_BYTES_METRIC = "fedsplit.payload-bytes"  # reply metrics: len(payload)
DENSE_BYTES_METRIC = "fedsplit.dense-bytes"  # reply metrics: fp32 size of the same tensors
RESIDUAL_STATE_KEY = "fedsplit.ef-residual"  # client state: ArrayRecord
CODEC_STATE_KEY = "fedsplit.codec-state"  # client state: ArrayRecord ("<codec>/<tensor>")
REPLICA_STATE_KEY = "fedsplit.dl-replica"  # client state: ArrayRecord (downlink replica)
REPLICA_META_KEY = "fedsplit.dl-meta"  # client state: ConfigRecord {"round": int}


@dataclass(frozen=True)
class WireSpec:
    """The parsed per-message spec, as a client sees it."""

    uplink: Codec
    downlink: str | None
    error_feedback: bool
    seed: int

    @classmethod
    def from_json(cls, text: Any) -> WireSpec:
        """Parse and validate; ``ValueError`` with a reason for anything malformed."""
        if not isinstance(text, str):
            raise ValueError(f"{CONFIG_KEY} is {type(text).__name__}, not a JSON string")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{CONFIG_KEY} is not valid JSON: {exc}") from None
        if not isinstance(data, dict) or data.get("version") != WIRE_SPEC_VERSION:
            raise ValueError(f"{CONFIG_KEY}: unsupported spec (version {data.get('version') if isinstance(data, dict) else None})")
        up = data.get("uplink")
        if not isinstance(up, dict) or not isinstance(up.get("codec"), str):
            raise ValueError(f"{CONFIG_KEY}: 'uplink' must be an object with a 'codec' name")
        params = {k: v for k, v in up.items() if k != "codec"}
        codec = make_codec(up["codec"], **params)
        down = data.get("downlink")
        if down is not None and (not isinstance(down, dict) or not isinstance(down.get("codec"), str)):
            raise ValueError(f"{CONFIG_KEY}: 'downlink' must be null or an object with a 'codec' name")
        ef = data.get("error_feedback", True)
        seed = data.get("seed", 0)
        if not isinstance(ef, bool) or not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"{CONFIG_KEY}: 'error_feedback' must be a bool and 'seed' a non-negative int")
        return cls(uplink=codec, downlink=None if down is None else down["codec"], error_feedback=ef, seed=seed)
