"""Flower mod that compresses a ClientApp's train reply (and applies downlink deltas).

Install it once on the ClientApp (``ClientApp(mods=[compression_mod])`` or
``@app.train(mods=[compression_mod])``); the server turns it on per message by
putting a JSON spec under ``"fedsplit.compression"`` in the train config (see
:class:`fedsplit.strategies.compression.CompressedStrategy`). Without that key,
or for evaluate/query messages, messages pass through unchanged.

On a compressed train message the mod

1. applies a downlink record ``"fedsplit.downlink"`` if present: ``mode =
   "dense"`` stores the sent ``"arrays"`` as this node's replica; ``mode =
   "delta"`` decodes the payload onto the replica kept in ``context.state``
   (``"fedsplit.dl-replica"``, round in ``"fedsplit.dl-meta"``) and hands the
   result to the app as ``"arrays"``. A replica at the wrong round gives an
   error reply (the server then sends a dense copy next time);
2. runs the app, then replaces the reply's ``"arrays"`` by
   ``"fedsplit.update"`` = ``ConfigRecord({"codec", "payload", "server-round"})``.
   The payload encodes ``local - received`` for floating tensors; non-float
   buffers (e.g. BatchNorm's ``num_batches_tracked``) travel inside the same
   payload as raw records holding their exact local values (counted in its length);
3. keeps the error-feedback residual in ``context.state["fedsplit.ef-residual"]``
   (an ArrayRecord) and codec state such as PowerSGD's warm-start factors in
   ``context.state["fedsplit.codec-state"]``;
4. adds ``"fedsplit.payload-bytes"`` (``len(payload)``) and
   ``"fedsplit.dense-bytes"`` (fp32 size of the same tensors) to the reply metrics.

Like Flower's own mods it owns the delivered message: it replaces that message's
content (by a shallow copy, so records shared with other messages are never
modified) before calling the app.
"""

from __future__ import annotations

import logging

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.app.message_type import MessageType
from flwr.clientapp.typing import ClientAppCallable

from fedsplit.clients.arrays import array_record_from_state
from fedsplit.compression import (
    EncodeContext,
    PayloadError,
    WireSpec,
    apply_downlink,
    compress_with_feedback,
    dense_nbytes,
    model_update,
)
from fedsplit.compression.wire import (
    CODEC_STATE_KEY,
    CONFIG_KEY,
    DENSE_BYTES_METRIC,
    DOWNLINK_KEY,
    PAYLOAD_BYTES_METRIC,
    REPLICA_META_KEY,
    REPLICA_STATE_KEY,
    RESIDUAL_STATE_KEY,
    UPDATE_KEY,
)
from fedsplit.records import record_key, section, to_numpy

__all__ = ["compression_mod", "COMPRESSION_ERROR_CODE", "to_numpy", "to_array_record"]

log = logging.getLogger(__name__)

COMPRESSION_ERROR_CODE = 4610
"""``Error.code`` of replies the mod turns into errors (bad spec, stale replica, ...)."""

ARRAYS_KEY = "arrays"
CONFIG_RECORD_KEY = "config"
METRICS_KEY = "metrics"


class _ModError(Exception):
    """A condition that turns the reply into an error message."""


def to_array_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    """Ordered dict of NumPy arrays to an ArrayRecord (same keys and order)."""
    return array_record_from_state(arrays)


def _error_reply(msg: Message, reason: str) -> Message:
    log.warning("compression_mod: %s", reason)
    return Message(Error(code=COMPRESSION_ERROR_CODE, reason=f"fedsplit.compression: {reason}"), reply_to=msg)


def _receive_downlink(content: RecordDict, arrays_key: str | None, ctx: Context) -> str:
    """Apply the downlink record in ``content``; returns the key the arrays are under."""
    record = content[DOWNLINK_KEY]
    if not isinstance(record, ConfigRecord):
        raise _ModError(f"'{DOWNLINK_KEY}' is not a ConfigRecord")
    mode, server_round = record.get("mode"), record.get("round")
    if not isinstance(server_round, int):
        raise _ModError("downlink record has no integer 'round'")
    key = arrays_key or ARRAYS_KEY
    if mode == "dense":
        if arrays_key is None:
            raise _ModError("dense downlink without an ArrayRecord")
        ctx.state[REPLICA_STATE_KEY] = content[arrays_key]
    elif mode == "delta":
        meta = ctx.state.get(REPLICA_META_KEY)
        have = meta.get("round") if isinstance(meta, ConfigRecord) else None
        if have is None or have != record.get("base-round") or REPLICA_STATE_KEY not in ctx.state:
            raise _ModError(f"stale downlink replica: have round {have}, need {record.get('base-round')}")
        payload = record.get("payload")
        if not isinstance(payload, bytes):
            raise _ModError("downlink delta has no bytes payload")
        try:
            replica = apply_downlink(to_numpy(ctx.state[REPLICA_STATE_KEY]), payload)
        except PayloadError as exc:
            raise _ModError(f"bad downlink payload: {exc}") from None
        new_record = to_array_record(replica)
        ctx.state[REPLICA_STATE_KEY] = new_record
        content[key] = new_record
    else:
        raise _ModError(f"unknown downlink mode {mode!r}")
    ctx.state[REPLICA_META_KEY] = ConfigRecord({"round": server_round})
    del content[DOWNLINK_KEY]
    return key


def _load_codec_state(ctx: Context, codec_name: str) -> dict[str, np.ndarray]:
    record = ctx.state.get(CODEC_STATE_KEY)
    if not isinstance(record, ArrayRecord):
        return {}
    prefix = f"{codec_name}/"
    return {k[len(prefix) :]: v.numpy() for k, v in record.items() if k.startswith(prefix)}


def _store_codec_state(ctx: Context, codec_name: str, state: dict[str, np.ndarray]) -> None:
    if state:
        ctx.state[CODEC_STATE_KEY] = to_array_record({f"{codec_name}/{k}": v for k, v in state.items()})
    elif CODEC_STATE_KEY in ctx.state:
        del ctx.state[CODEC_STATE_KEY]


def _compress_reply(
    reply: Message, received: dict[str, np.ndarray], arrays_key: str, spec: WireSpec, server_round: int, ctx: Context
) -> None:
    content = reply.content
    local_key = record_key(section(content, ArrayRecord), arrays_key)
    if local_key is None:
        raise _ModError("train reply carries no single ArrayRecord to compress")
    try:
        update = model_update(to_numpy(content[local_key]), received)
    except ValueError as exc:
        raise _ModError(str(exc)) from None

    residual = None
    if spec.error_feedback and isinstance(ctx.state.get(RESIDUAL_STATE_KEY), ArrayRecord):
        residual = to_numpy(ctx.state[RESIDUAL_STATE_KEY])
    codec = spec.uplink
    codec_state = _load_codec_state(ctx, codec.name)
    rng = np.random.default_rng([spec.seed, int(ctx.node_id) % 2**64, max(server_round, 0)])
    step = compress_with_feedback(
        update,
        codec,
        residual=residual,
        error_feedback=spec.error_feedback,
        ctx=EncodeContext(rng=rng, state=codec_state),
    )
    if not step.finite:
        log.warning("compression_mod: node %s round %s: update is not finite; residual kept", ctx.node_id, server_round)
    if spec.error_feedback and step.finite:
        ctx.state[RESIDUAL_STATE_KEY] = to_array_record(step.residual)
    elif not spec.error_feedback and RESIDUAL_STATE_KEY in ctx.state:
        del ctx.state[RESIDUAL_STATE_KEY]
    _store_codec_state(ctx, codec.name, codec_state)

    new_content = RecordDict({k: v for k, v in content.items() if k != local_key})
    new_content[UPDATE_KEY] = ConfigRecord(
        {"codec": codec.name, "payload": step.payload, "server-round": server_round}
    )
    metrics_key = record_key(section(new_content, MetricRecord), METRICS_KEY)
    if metrics_key is None:
        metrics_key = METRICS_KEY
        new_content[metrics_key] = MetricRecord()
    metrics = new_content[metrics_key]
    metrics[PAYLOAD_BYTES_METRIC] = len(step.payload)
    metrics[DENSE_BYTES_METRIC] = dense_nbytes(update)
    reply.content = new_content


def compression_mod(msg: Message, ctx: Context, call_next: ClientAppCallable) -> Message:
    """Flower mod: see the module docstring."""
    if msg.metadata.message_type.split(".")[0] != MessageType.TRAIN or not msg.has_content():
        return call_next(msg, ctx)
    config_key = record_key(section(msg.content, ConfigRecord), CONFIG_RECORD_KEY)
    if config_key is None or CONFIG_KEY not in msg.content[config_key]:
        return call_next(msg, ctx)
    config = msg.content[config_key]
    try:
        spec = WireSpec.from_json(config[CONFIG_KEY])
    except (TypeError, ValueError) as exc:
        return _error_reply(msg, f"bad compression spec: {exc}")
    server_round = config.get("server-round", 0)
    server_round = server_round if isinstance(server_round, int) else 0

    # Work on a shallow copy: the server may share one RecordDict between messages.
    content = RecordDict(dict(msg.content.items()))
    arrays_key = record_key(section(content, ArrayRecord), ARRAYS_KEY)
    try:
        if DOWNLINK_KEY in content:
            arrays_key = _receive_downlink(content, arrays_key, ctx)
        if arrays_key is None:
            raise _ModError("train message carries no single ArrayRecord")
        received = to_numpy(content[arrays_key])
    except _ModError as exc:
        return _error_reply(msg, str(exc))
    msg.content = content

    reply = call_next(msg, ctx)
    if reply.has_error():
        return reply
    try:
        _compress_reply(reply, received, arrays_key, spec, server_round, ctx)
    except _ModError as exc:
        return _error_reply(msg, str(exc))
    return reply
