"""Strategy wrappers: update compression around any Flower strategy, and reply validation.

``CompressedStrategy(inner, compression)`` is itself a Flower
:class:`~flwr.serverapp.strategy.Strategy`. It lets ``inner`` configure each
train round, adds the JSON codec spec to every train message's config under
``"fedsplit.compression"`` (the client's :func:`~fedsplit.clients.compression_mod.compression_mod`
acts on it) and, with downlink compression, replaces the dense global model by a
compressed delta for clients whose replica is current. On aggregation it decodes
every reply's ``"fedsplit.update"`` payload against the arrays that node was sent,
rejects bad ones (truncated, corrupted, mis-shaped, oversized, NaN/Inf: one log
line naming the node and the reason, plus ``on_reject(server_round, node_id,
reason)``), rebuilds ``"arrays"`` = sent + decoded delta, and hands the clean
replies to ``inner.aggregate_train``. Evaluation and everything else delegate to
``inner``.

``GuardedStrategy(inner)`` applies the same rejection rule to plain ``"arrays"``
replies (names, shapes, dtypes, NaN/Inf) without any compression.
"""

from __future__ import annotations

import json
import logging
from logging import INFO
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.supercore import log as flwr_log

from fedsplit.clients.arrays import array_record_from_state, array_view, parsed_record, record_views, sectioned
from fedsplit.clients.arrays import array_record_from_state as to_array_record
from fedsplit.compression import (
    BroadcastReference,
    CompressionConfig,
    DecodeLimits,
    PayloadError,
    TensorSpec,
    TrafficRecord,
    apply_update,
    check_arrays,
    compression_ratio,
    decode_update,
    dense_nbytes,
    specs_of,
    summarize_traffic,
)
from fedsplit.compression.wire import (
    CONFIG_KEY,
    DENSE_BYTES_METRIC,
    DOWNLINK_KEY,
    PAYLOAD_BYTES_METRIC,
    UPDATE_KEY,
)
from fedsplit.records import record_key, section, to_numpy
from fedsplit.strategies.fedavg_aggregate import aggregate_train as fedavg_aggregate_train
from fedsplit.strategies.fedavg_aggregate import uses_flower_fedavg_aggregate

__all__ = ["CompressedStrategy", "GuardedStrategy", "RejectCallback", "TrafficCallback"]

log = logging.getLogger(__name__)

RejectCallback = Callable[[int, int, str], None]
"""``on_reject(server_round, node_id, reason)``."""
TrafficCallback = Callable[[TrafficRecord], None]

ARRAYS_KEY = "arrays"
CONFIG_RECORD_KEY = "config"


@dataclass
class _Sent:
    """What one node was sent for training this round."""

    arrays_key: str
    reference: dict[str, np.ndarray]
    specs: dict[str, TensorSpec]
    limits: DecodeLimits


class _DelegatingStrategy(Strategy):
    """Forwards every Strategy method (and unknown attributes) to ``inner``."""

    def __init__(self, inner: Strategy, on_reject: RejectCallback | None = None) -> None:
        if not isinstance(inner, Strategy):
            raise TypeError(f"inner must be a flwr Strategy, got {type(inner).__name__}")
        self.inner = inner
        self.on_reject = on_reject
        self.rejections: list[tuple[int, int, str]] = []

    def __getattr__(self, name: str) -> Any:
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        return self.inner.configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return self.inner.aggregate_train(server_round, replies)

    def _inner_aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """``self.inner.aggregate_train(server_round, replies)``: for an inner strategy that
        aggregates with Flower's own ``FedAvg.aggregate_train`` (FedAvg, FedProx), the same result
        reading every array without a copy (:mod:`fedsplit.strategies.fedavg_aggregate`)."""
        if uses_flower_fedavg_aggregate(self.inner):
            return fedavg_aggregate_train(self.inner, replies)
        return self.inner.aggregate_train(server_round, replies)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        return self.inner.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.inner.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        self.inner.summary()

    def _reject(self, server_round: int, node_id: int, reason: str) -> None:
        self.rejections.append((server_round, node_id, reason))
        if self.on_reject is not None:  # the callback logs it (with the terminal's id)
            self.on_reject(server_round, node_id, reason)
        else:
            log.warning("round %d: rejected update from node %d: %s", server_round, node_id, reason)


def keep_dtypes(arrays: ArrayRecord | None, specs: dict[str, TensorSpec] | None) -> ArrayRecord | None:
    """Cast an aggregate back to the dtypes of the model that was sent.

    Averaging strategies turn integer buffers (BatchNorm's ``num_batches_tracked``) into float64;
    left so, the next round's replies (cast back to int64 by the model) would no longer match the
    global model, and the global model would drift in type.
    """
    if arrays is None or not specs:
        return arrays
    fixed = {}
    changed = False
    for key, array in arrays.items():
        value = array_view(array)
        spec = specs.get(key)
        if spec is not None and value.dtype != np.dtype(spec.dtype):
            target = np.dtype(spec.dtype)
            value = np.asarray(np.rint(value) if target.kind in "iu" else value).astype(target)
            changed = True
        fixed[key] = value
    return array_record_from_state(fixed) if changed else arrays


class GuardedStrategy(_DelegatingStrategy):
    """Reject train replies whose ``"arrays"`` do not match what was sent, or hold NaN/Inf.

    Parameters
    ----------
    inner : Strategy
        Any Flower strategy; it aggregates the replies that pass.
    on_reject : Callable[[int, int, str], None], optional
        Called as ``on_reject(server_round, node_id, reason)`` for each rejected reply.
    """

    def __init__(self, inner: Strategy, on_reject: RejectCallback | None = None) -> None:
        super().__init__(inner, on_reject)
        self._expected: dict[int, tuple[str, dict[str, TensorSpec]]] = {}
        self._verdicts: dict[int, tuple[Message, str | None]] = {}  # id(reply) -> (reply, reason) checked on arrival

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        messages = list(self.inner.configure_train(server_round, arrays, config, grid))
        self._expected = {}
        self._verdicts.clear()  # of a round whose aggregation never came
        cache: dict[int, dict[str, TensorSpec]] = {}
        for msg in messages:
            key = record_key(section(msg.content, ArrayRecord), ARRAYS_KEY)
            if key is None:
                continue
            record = msg.content[key]
            if id(record) not in cache:
                cache[id(record)] = {k: TensorSpec(tuple(a.shape), np.dtype(a.dtype).str) for k, a in record.items()}
            self._expected[msg.metadata.dst_node_id] = (key, cache[id(record)])
        return messages

    def precheck_reply(self, msg: Message) -> None:
        """Check a train reply as soon as it arrives, while other terminals still train (the
        ``on_reply`` hook of :meth:`fedsplit.simulation.metered_grid.MeteredGrid.send_and_receive`);
        :meth:`aggregate_train` then takes the verdict instead of checking the reply again."""
        if not msg.has_error():
            self._verdicts[id(msg)] = (msg, self._accept(msg))

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        clean = []
        for msg in replies:
            if msg.has_error():
                clean.append(msg)
                continue
            early = self._verdicts.pop(id(msg), None)
            reason = early[1] if early is not None and early[0] is msg else self._accept(msg)
            if reason is None:
                msg.content = sectioned(msg.content)  # again: a meter may have replaced the content since
                clean.append(msg)
            else:
                self._reject(server_round, msg.metadata.src_node_id, reason)
        self._verdicts.clear()
        arrays, metrics = self._inner_aggregate_train(server_round, clean)
        specs = next(iter(self._expected.values()), (None, None))[1]
        return keep_dtypes(arrays, specs), metrics

    def _accept(self, msg: Message) -> str | None:
        """None when ``msg``'s update passes :meth:`_check` (its content is then a
        :class:`~fedsplit.clients.arrays.SectionedRecordDict`, whose views the inner strategy
        reads several times, with the update as ParsedArrays: its bytes are checked, parse them
        once); else the reason to reject it."""
        node = msg.metadata.src_node_id
        reason, views = self._check(node, msg)
        if reason is None:
            key = self._expected[node][0]
            msg.content = sectioned(msg.content)
            msg.content[key] = parsed_record(msg.content[key], views)  # the checked views: not parsed again
        return reason

    def _check(self, node: int, msg: Message) -> tuple[str | None, dict[str, np.ndarray]]:
        """Why ``msg``'s update cannot be aggregated (None when it can), and the views of its arrays read for the check."""
        expected = self._expected.get(node)
        if expected is None:
            return "no train message was sent to this node in this round", {}
        key, specs = expected
        record = msg.content.get(key)
        if not isinstance(record, ArrayRecord):
            return f"reply carries no ArrayRecord {key!r}", {}
        try:
            arrays = record_views(record)  # read-only views: no copy of the update
        except Exception as exc:  # malformed Array bytes
            return f"arrays cannot be read: {type(exc).__name__}: {exc}", {}
        return check_arrays(arrays, specs), arrays


class CompressedStrategy(_DelegatingStrategy):
    """Compress updates (and optionally the downlink) around any Flower strategy.

    Parameters
    ----------
    inner : Strategy
        The strategy that samples clients and aggregates plain weights (FedAvg,
        FedProx, FedAdam, a user's own...).
    compression : CompressionConfig
        Codecs and error-feedback settings.
    on_reject : Callable[[int, int, str], None], optional
        Called as ``on_reject(server_round, node_id, reason)`` for each rejected reply.
    on_traffic : Callable[[TrafficRecord], None], optional
        Called for every model transfer (up and down) with its byte counts, for ledgers.
    payload_slack : float
        A payload longer than ``payload_slack`` x the fp32 size of the model (plus
        framing) is rejected as oversized before parsing.

    Attributes
    ----------
    traffic : list[TrafficRecord]
        Every transfer so far; bytes up are ``len(payload)`` of accepted and
        rejected replies alike, bytes down are ``len(payload)`` of the downlink
        delta or the dense fp32 size of a dense send.
    rejections : list[tuple[int, int, str]]
        ``(server_round, node_id, reason)`` of every rejected reply.
    """

    def __init__(
        self,
        inner: Strategy,
        compression: CompressionConfig,
        on_reject: RejectCallback | None = None,
        *,
        on_traffic: TrafficCallback | None = None,
        payload_slack: float = 2.0,
    ) -> None:
        super().__init__(inner, on_reject)
        if not isinstance(compression, CompressionConfig):
            raise TypeError(f"compression must be a CompressionConfig, got {type(compression).__name__}")
        self.compression = compression
        self.on_traffic = on_traffic
        self.payload_slack = payload_slack
        self.traffic: list[TrafficRecord] = []
        self._sent: dict[int, _Sent] = {}
        self._replica_round: dict[int, int] = {}
        downlink = compression.make_downlink_codec()
        self._broadcast = (
            None
            if downlink is None
            else BroadcastReference(downlink, error_feedback=compression.downlink_error_feedback, seed=compression.seed)
        )

    # -- bookkeeping --------------------------------------------------------------
    def _count(self, record: TrafficRecord) -> None:
        self.traffic.append(record)
        if self.on_traffic is not None:
            self.on_traffic(record)

    def traffic_summary(self) -> dict[str, float]:
        """Total bytes and fp32 ratios per direction over all rounds so far."""
        return summarize_traffic(self.traffic)

    def summary(self) -> None:
        self.inner.summary()
        c = self.compression
        flwr_log(
            INFO,
            "\t├──> Compression: uplink=%s %s | error feedback: %s | warm-up rounds: %d | downlink: %s",
            c.uplink, c.uplink_params(c.warmup_rounds + 1), c.error_feedback, c.warmup_rounds, c.downlink,
        )
        if self.traffic:
            s = self.traffic_summary()
            flwr_log(
                INFO,
                "\t└──> Traffic so far: up %d bytes (%.1fx smaller than fp32), down %d bytes (%.1fx)",
                s["up-bytes"], s["up-ratio"], s["down-bytes"], s["down-ratio"],
            )

    # -- train --------------------------------------------------------------------
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        messages = list(self.inner.configure_train(server_round, arrays, config, grid))
        self._sent = {}
        if not messages:
            return messages
        spec_json = json.dumps(self.compression.wire_spec(server_round))
        step = None
        if self._broadcast is not None:
            step = self._broadcast.advance(server_round, to_numpy(arrays))
            ref_specs = specs_of(step.reference)
            dense_record = to_array_record(step.reference)
        numpy_cache: dict[int, tuple[dict[str, np.ndarray], dict[str, TensorSpec], DecodeLimits]] = {}

        for msg in messages:
            node = msg.metadata.dst_node_id
            content = RecordDict(dict(msg.content.items()))
            cfg_key = record_key(section(content, ConfigRecord), CONFIG_RECORD_KEY) or CONFIG_RECORD_KEY
            cfg = ConfigRecord(dict(content[cfg_key])) if cfg_key in content else ConfigRecord()
            cfg[CONFIG_KEY] = spec_json
            cfg.setdefault("server-round", server_round)
            content[cfg_key] = cfg
            arrays_key = record_key(section(content, ArrayRecord), ARRAYS_KEY)
            if arrays_key is None:
                raise ValueError(f"{type(self.inner).__name__}.configure_train sent no single ArrayRecord to node {node}")

            if step is not None:
                reference, specs = step.reference, ref_specs
                if step.base_round is not None and self._replica_round.get(node) == step.base_round:
                    del content[arrays_key]
                    content[DOWNLINK_KEY] = ConfigRecord(
                        {
                            "mode": "delta",
                            "codec": self.compression.downlink,
                            "payload": step.payload,
                            "round": server_round,
                            "base-round": step.base_round,
                        }
                    )
                    down_bytes, codec = len(step.payload), str(self.compression.downlink)
                else:
                    content[arrays_key] = dense_record
                    content[DOWNLINK_KEY] = ConfigRecord({"mode": "dense", "round": server_round})
                    down_bytes, codec = dense_nbytes(specs), "dense"
                self._replica_round[node] = server_round
                limits = DecodeLimits.for_specs(specs, slack=self.payload_slack)
            else:
                record = content[arrays_key]
                if id(record) not in numpy_cache:
                    ref = to_numpy(record)
                    sp = specs_of(ref)
                    numpy_cache[id(record)] = (ref, sp, DecodeLimits.for_specs(sp, slack=self.payload_slack))
                reference, specs, limits = numpy_cache[id(record)]
                down_bytes, codec = dense_nbytes(specs), "dense"
            self._sent[node] = _Sent(arrays_key, reference, specs, limits)
            self._count(TrafficRecord(server_round, node, "down", down_bytes, dense_nbytes(specs), codec))
            msg.content = content
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        clean: list[Message] = []
        replied: set[int] = set()
        up_bytes = up_dense = rejected = 0
        for msg in replies:
            node = msg.metadata.src_node_id
            replied.add(node)
            if msg.has_error():
                self._replica_round.pop(node, None)  # its replica may not have advanced
                clean.append(msg)
                continue
            reason, nbytes = self._rebuild(server_round, node, msg)
            sent = self._sent.get(node)
            if nbytes is not None and sent is not None:
                dense = dense_nbytes(sent.specs)
                up_bytes += nbytes
                up_dense += dense
                self._count(TrafficRecord(server_round, node, "up", nbytes, dense, self.compression.uplink))
            if reason is None:
                clean.append(msg)
            else:
                rejected += 1
                self._replica_round.pop(node, None)
                self._reject(server_round, node, reason)
        for node in set(self._sent) - replied:
            self._replica_round.pop(node, None)
        sent_specs = next(iter(self._sent.values())).specs if self._sent else None
        self._sent = {}

        arrays, metrics = self._inner_aggregate_train(server_round, clean)
        arrays = keep_dtypes(arrays, sent_specs)
        if metrics is not None:
            down = [r for r in self.traffic if r.server_round == server_round and r.direction == "down"]
            metrics[PAYLOAD_BYTES_METRIC] = up_bytes
            metrics[DENSE_BYTES_METRIC] = up_dense
            metrics["fedsplit.uplink-ratio"] = compression_ratio(up_dense, up_bytes) if up_bytes else 0.0
            metrics["fedsplit.downlink-bytes"] = sum(r.payload_bytes for r in down)
            metrics["fedsplit.downlink-dense-bytes"] = sum(r.dense_bytes for r in down)
            metrics["fedsplit.rejected"] = rejected
        return arrays, metrics

    def _rebuild(self, server_round: int, node: int, msg: Message) -> tuple[str | None, int | None]:
        """Decode ``msg``'s update in place; returns (rejection reason or None, payload bytes)."""
        sent = self._sent.get(node)
        if sent is None:
            return "no train message was sent to this node in this round", None
        record = msg.content.get(UPDATE_KEY)
        if not isinstance(record, ConfigRecord):
            return f"reply carries no '{UPDATE_KEY}' ConfigRecord (is compression_mod installed?)", None
        payload = record.get("payload")
        if not isinstance(payload, bytes):
            return f"'{UPDATE_KEY}' has no bytes payload", None
        try:
            decoded = decode_update(payload, expected=sent.specs, limits=sent.limits, codec=self.compression.uplink)
        except PayloadError as exc:
            return f"bad payload ({len(payload)} bytes): {exc}", len(payload)
        rebuilt = apply_update(sent.reference, decoded.tensors)
        reason = check_arrays(rebuilt, sent.specs)
        if reason is not None:
            return f"rebuilt weights invalid: {reason}", len(payload)
        content = RecordDict({k: v for k, v in msg.content.items() if k != UPDATE_KEY})
        content[sent.arrays_key] = parsed_record(to_array_record(rebuilt))  # the inner strategy's numpy() skips np.load
        msg.content = content
        return None, len(payload)
