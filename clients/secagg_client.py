"""The terminal's side of secure aggregation: Flower's own ``secaggplus_mod``, driven over
fedsplit's Message-API replies.

Flower 1.41's :func:`flwr.client.mod.secaggplus_mod` does the whole client side of SecAgg+ (key
pairs, Shamir shares of the self-mask seed and of the first private key encrypted for each
neighbour, quantization and masking, shares for unmasking) and keeps its state in
``Context.state``. It expects every stage as a plain ``train`` message and the app's reply in the
legacy ``FitRes`` layout (``fitres.parameters`` ...). fedsplit runs it unchanged and translates:

- the stages that carry no training, ``train.secagg_setup``, ``train.secagg_share`` and
  ``train.secagg_unmask`` (their own message types, so the ledger shows each stage's bytes), are
  answered by :func:`handle_secagg_stage`;
- the masked upload is the ordinary ``train`` message with Flower's ``secaggplus_configs``
  record added: :func:`secagg_mod`, the outermost mod, lets the terminal train (and the inner
  mods attack or add DP noise) as usual, hands the trained ``"arrays"`` and ``num-examples`` to
  Flower's mod as a ``FitRes``, and sends back only the masked vector, as ``uint32`` (the masks
  are modulo ``2**32``) in the :data:`MASKED_KEY` record, next to the ``"metrics"``. The reply
  carries no ``"arrays"``: the update never leaves the terminal unmasked.

Terminals are known to the protocol by a *secure id*, their partition id + 1, the same on every
engine (Flower's node ids are random 64-bit numbers).

Compute: the CPU seconds of each stage's cryptography (and of the masking) are reported as
``"flops"`` at this host's calibrated rate (:func:`fedsplit.clients.flop_meter.timed_flops`,
the ``timed`` method of compute metering) and as ``"secagg-cpu-s"``, so the ledger's simulated
seconds and joules include them. Flower quantizes with stochastic rounding drawn from NumPy's
global generator: it is seeded per (run, terminal, round) here, so a run's aggregate is the same
on every engine and every time.
"""

from __future__ import annotations

import copy
import time
import zlib
from collections.abc import Callable

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.app.message import make_message
from flwr.app.message_type import MessageType
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import Code, FitRes, Status, bytes_to_ndarray, ndarrays_to_parameters
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key
from flwr.compat.common.recorddict_compat import fitres_to_recorddict

from fedsplit.clients.arrays import array_record_from_state, record_views
from fedsplit.clients.flop_meter import timed_flops
from fedsplit.records import record_of
from fedsplit.secagg import MASKED_KEY, STAGE_ACTIONS, WEIGHT_KEY

__all__ = [
    "MASKED_KEY",
    "STAGE_ACTIONS",
    "WEIGHT_KEY",
    "handle_secagg_stage",
    "make_secagg_mod",
    "secure_id",
]


_STAGE_OF_ACTION = {action: stage for stage, action in STAGE_ACTIONS.items()}


def secure_id(context: Context) -> int:
    """The terminal's id in the protocol: its partition id + 1 (0 is no id)."""
    return int(context.node_config["partition-id"]) + 1


def _as_flower_train(msg: Message, context: Context, configs: ConfigRecord, extra: RecordDict | None = None) -> Message:
    """``msg`` as Flower's mod wants it: a ``train`` message to the terminal's secure id, with a
    copy of the ``secaggplus_configs`` record (the mod pops from it) and nothing else."""
    metadata = copy.copy(msg.metadata)
    metadata.message_type = MessageType.TRAIN
    metadata.dst_node_id = secure_id(context)
    content = RecordDict(dict(extra.items()) if extra is not None else {})
    content.config_records[RECORD_KEY_CONFIGS] = ConfigRecord(dict(configs))
    return make_message(metadata, content)


def _not_training(msg: Message, context: Context) -> Message:  # noqa: ARG001 - a ClientAppCallable
    raise RuntimeError("secure aggregation: a stage without training asked the app to train")


def _stage_metrics(context: Context, cpu_s: float) -> MetricRecord:
    return MetricRecord({"flops": timed_flops(cpu_s), "secagg-cpu-s": cpu_s, "partition-id": int(context.node_config["partition-id"])})


def handle_secagg_stage(msg: Message, context: Context) -> Message:
    """Answer ``train.secagg_setup`` / ``train.secagg_share`` / ``train.secagg_unmask`` with
    Flower's ``secaggplus_mod``: its ``secaggplus_configs`` reply plus ``"metrics"`` (the stage's
    CPU seconds, as ``flops`` and ``secagg-cpu-s``).

    Raises
    ------
    ValueError
        The message type and the stage in its ``secaggplus_configs`` disagree (or it has none).
    """
    action = msg.metadata.message_type.partition(".")[2]
    stage = _STAGE_OF_ACTION.get(action)
    configs = msg.content.config_records.get(RECORD_KEY_CONFIGS) if msg.has_content() else None
    if stage is None or configs is None or configs.get(Key.STAGE) != stage:
        found = None if configs is None else configs.get(Key.STAGE)
        raise ValueError(f"secure aggregation: a {msg.metadata.message_type!r} message with stage {found!r}")
    started = time.process_time()
    out = secaggplus_mod(_as_flower_train(msg, context, configs), context, _not_training)
    cpu_s = time.process_time() - started
    content = RecordDict({RECORD_KEY_CONFIGS: out.content.config_records[RECORD_KEY_CONFIGS], "metrics": _stage_metrics(context, cpu_s)})
    return Message(content, reply_to=msg)


def quantization_seed(seed: int, partition_id: int, server_round: int) -> int:
    """Seed of Flower's stochastic rounding for one terminal and round (stable across processes)."""
    return zlib.crc32(f"secagg:{seed}:{partition_id}:{server_round}".encode())


def make_secagg_mod(config_json: str | None = None) -> Callable[[Message, Context, ClientAppCallable], Message]:
    """The outermost mod of fedsplit's ClientApp: the masked upload of secure aggregation.

    A ``train`` message without a ``secaggplus_configs`` record passes through untouched. With
    one, the app trains as usual; then the reply's ``"arrays"`` and ``num-examples`` go through
    Flower's ``secaggplus_mod`` (collect-masked-vectors stage) and the reply becomes
    ``{"metrics": ..., MASKED_KEY: masked uint32 vector}``.

    Parameters
    ----------
    config_json : str, optional
        The run's resolved configuration (for the run's seed); without it, the run config's.
    """

    def secagg_mod(msg: Message, ctx: Context, call_next: ClientAppCallable) -> Message:
        if msg.metadata.message_type != MessageType.TRAIN or not msg.has_content():
            return call_next(msg, ctx)
        configs = record_of(msg.content, RECORD_KEY_CONFIGS, ConfigRecord)
        if configs is None:
            return call_next(msg, ctx)
        reply = call_next(msg, ctx)
        if reply.has_error():
            return reply
        arrays = reply.content.array_records.get("arrays")
        metrics = reply.content.metric_records.get("metrics")
        if arrays is None or metrics is None or "num-examples" not in metrics:
            raise ValueError("secure aggregation: the train reply has no 'arrays' or no 'num-examples' to mask")
        update = record_views(arrays)
        if WEIGHT_KEY in update:
            raise ValueError(f"secure aggregation: the model has a tensor named {WEIGHT_KEY!r}")
        fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(list(update.values())), int(metrics["num-examples"]), {})
        legacy = fitres_to_recorddict(fitres, keep_input=False)
        from fedsplit.clients.privacy_mod import run_config

        train_config = msg.content.config_records.get("config", ConfigRecord())
        seed = quantization_seed(run_config(ctx, config_json).seed, int(ctx.node_config["partition-id"]), int(train_config.get("server-round", 0)))
        saved = np.random.get_state()
        started = time.process_time()
        try:
            np.random.seed(seed)
            out = secaggplus_mod(_as_flower_train(msg, ctx, configs), ctx, lambda m, c: Message(legacy, reply_to=m))
        finally:
            np.random.set_state(saved)
        masked = [bytes_to_ndarray(b) for b in out.content.config_records[RECORD_KEY_CONFIGS][Key.MASKED_PARAMETERS]]
        record = array_record_from_state({WEIGHT_KEY: masked[0].astype(np.uint32)} | {k: a.astype(np.uint32) for k, a in zip(update, masked[1:], strict=True)})
        cpu_s = time.process_time() - started
        out_metrics = MetricRecord(dict(metrics))
        out_metrics["flops"] = int(metrics.get("flops", 0)) + timed_flops(cpu_s)
        out_metrics["secagg-cpu-s"] = cpu_s
        return Message(RecordDict({"metrics": out_metrics, MASKED_KEY: record}), reply_to=msg)

    return secagg_mod
