"""Secure aggregation (SecAgg / SecAgg+) as a training protocol over the Message API.

Flower 1.41's ``SecAggPlusWorkflow`` only runs inside the legacy ``DefaultWorkflow``: it needs a
``LegacyContext`` (a legacy ``Strategy`` with ``configure_fit`` / ``aggregate_fit``, a
``ClientManager`` and ``ClientProxy`` objects), reads ``FitRes`` replies, and ends a failed
round with a log line. fedsplit's strategies are Message-API ones, so the server side is done
here, stage for stage as that workflow does it, with Flower's secure-aggregation primitives
(``flwr.common.secure_aggregation``: Shamir shares, key agreement, the mask generator,
quantization; all cryptography by the ``cryptography`` and ``pycryptodome`` packages). The
terminals run Flower's own ``secaggplus_mod`` (:mod:`fedsplit.clients.secagg_client`).

One round (:meth:`SecAggProtocol.step`), each stage a phase on the simulated clock (the server
needs every reply of a stage before the next):

0. ``train.secagg_setup``: the configuration; replies: two public keys;
1. ``train.secagg_share``: each terminal's neighbours' public keys; replies: Shamir shares of the
   terminal's self-mask seed and first private key, encrypted for each neighbour;
2. ``train``: the strategy's train message (global model, config) plus the ciphertexts for the
   terminal; replies: the masked quantized ``num-examples * update`` and the training metrics,
   never the update itself (a reply with ``"arrays"`` is rejected unread);
3. ``train.secagg_unmask``: who survived and who dropped; replies: the shares to unmask with.

The server adds the masked vectors, removes the survivors' self masks and the pairwise masks of
the terminals that dropped after sharing keys (their first private keys reconstructed from
``threshold`` shares), and obtains the weighted sum only. That sum, as one reply with the total
``num-examples``, goes to the configured strategy's ``aggregate_train``: FedAvg's result is the
weighted average; FedAdam, FedYogi, FedAdagrad and FedAvgM apply their server optimiser to it.

A round whose survivors are too few for the threshold (:func:`fedsplit.secagg.check_survivors`)
aggregates nothing: the survivors' updates are ``rejected`` in the ledger with the reason (the
stage, the terminal short of neighbours, the counts), and the server loop applies its policy
(``training.max_empty_rounds``, ``faults.min_clients``).

Differences from Flower's workflow, each a correction: a terminal that dropped before it shared
keys is simply out (the workflow asks survivors for shares they never received); only the
pairwise masks a survivor really added are removed (the workflow removes one per neighbour of a
dropped terminal, dropped neighbours included); secure ids are partition ids + 1 on every engine.

Ledger: every stage's exchanges are rows (``message_type`` ``train.secagg_*``; the masked upload
is the ``train`` row), with the bytes of what travelled and the terminals' cryptography as
``timed`` FLOPs; the server's secure-aggregation work (summing, unmasking, dequantizing) is
server work of the round, its CPU seconds in the round metric ``secagg-server-cpu-s``; dropped
terminals count in ``secagg-dropped``.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.secure_aggregation.crypto.shamir import combine_shares
from flwr.common.secure_aggregation.crypto.symmetric_encryption import generate_shared_key
from flwr.common.secure_aggregation.ndarrays_arithmetic import factor_extract, parameters_mod
from flwr.common.secure_aggregation.quantization import dequantize
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen
from flwr.serverapp.strategy import Strategy
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords
from flwr.supercore.primitives.asymmetric import bytes_to_private_key, bytes_to_public_key

from fedsplit.clients.arrays import array_record_from_state, record_views, state_dict_of
from fedsplit.config.names import SECAGG_STRATEGIES
from fedsplit.host_rate import timed_flops
from fedsplit.secagg import MASKED_KEY, STAGE_ACTIONS, WEIGHT_KEY, SecAggSettings, check_survivors, neighbour_graph
from fedsplit.strategies.fedavg_protocol import round_metrics
from fedsplit.strategies.protocol import ProtocolRun, TrainingProtocol

log = logging.getLogger("fedsplit")

__all__ = ["SECAGG_STRATEGIES", "SecAggProtocol", "SecAggRoundFailed", "secagg_protocol"]


class SecAggRoundFailed(RuntimeError):
    """Secure aggregation cannot finish the round (too few survivors, a malformed reply...)."""


@dataclass
class _Round:
    """What the server holds during one round (Flower's ``WorkflowState``, by secure id)."""

    node_of: dict[int, int]
    neighbours: dict[int, frozenset[int]]
    shares: int
    threshold: int
    public_keys: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)
    forward: dict[int, tuple[list[int], list[bytes]]] = field(default_factory=dict)
    shared_keys: set[int] = field(default_factory=set)  # U2: terminals whose shares went out
    masked_sum: list[np.ndarray] | None = None
    uploaded: dict[int, Message] = field(default_factory=dict)  # U3: their masked-upload replies
    server_cpu_s: float = 0.0


class SecAggProtocol(TrainingProtocol):
    """The FedAvg family with secure aggregation: the server never holds an individual update.

    Parameters
    ----------
    strategy : Strategy
        A Flower strategy of :data:`SECAGG_STRATEGIES` (possibly wrapped by FedCS selection): it
        samples the terminals, builds the train messages and aggregates the secure sum.
    settings : SecAggSettings
        Shares, threshold and quantization.
    seed : int
        Seed of the SecAgg+ neighbour graphs (one per round and attempt).
    """

    name = "fl-secagg"

    def __init__(self, strategy: Strategy, settings: SecAggSettings, seed: int = 0) -> None:
        self.strategy = strategy
        self.settings = settings
        self.seed = seed
        self.arrays: ArrayRecord | None = None

    def start(self, run: ProtocolRun) -> None:
        self.arrays = ArrayRecord(run.initial_state)

    def global_state(self) -> "OrderedDict[str, torch.Tensor]":
        assert self.arrays is not None, "start() first"
        return state_dict_of(self.arrays)

    # --- one round ----------------------------------------------------------------------------
    def step(self, run: ProtocolRun, server_round: int) -> dict[str, float]:
        assert self.arrays is not None, "start() first"
        grid = run.grid
        train_messages = list(self.strategy.configure_train(server_round, self.arrays, run.train_config, grid))
        metrics: dict[str, float] = {}
        state: _Round | None = None
        try:
            state = self._begin(run, server_round, train_messages)
            aggregate, train_metrics = self._secure_sum(run, server_round, state, train_messages)
        except SecAggRoundFailed as exc:
            self._fail(run, server_round, state, str(exc))
            aggregate, train_metrics = None, None
        if state is not None:
            grid.server_work(timed_flops(state.server_cpu_s))
            metrics["secagg-server-cpu-s"] = state.server_cpu_s
            metrics["secagg-dropped"] = float(len(state.node_of) - len(state.uploaded))
        if aggregate is not None:
            arrays, train_metrics = self.strategy.aggregate_train(server_round, [aggregate])
            if arrays is not None:
                self.arrays = _with_dtypes(arrays, self.arrays)
        replies = grid.send_and_receive(
            self.strategy.configure_evaluate(server_round, self.arrays, run.evaluate_config, grid), timeout=run.timeout_s
        )
        evaluate_metrics = self.strategy.aggregate_evaluate(server_round, replies)
        return round_metrics(train_metrics, evaluate_metrics) | metrics

    def _begin(self, run: ProtocolRun, server_round: int, train_messages: list[Message]) -> _Round:
        grid = run.grid
        node_of = {grid.partition_of(m.metadata.dst_node_id) + 1: m.metadata.dst_node_id for m in train_messages}
        if len(node_of) < 2:
            raise SecAggRoundFailed(f"secure aggregation needs at least 2 sampled terminals, the strategy sampled {len(node_of)}")
        s = self.settings
        if len(node_of) > s.max_summands():
            raise SecAggRoundFailed(
                f"secure aggregation: {len(node_of)} sampled terminals would wrap the sum around modulus {s.modulus_range} "
                f"(at most {s.max_summands()} with quantization_range {s.quantization_range})"
            )
        shares = s.shares_for(len(node_of))
        threshold = s.threshold_for(shares)
        if threshold > shares:
            raise SecAggRoundFailed(f"secure aggregation: threshold {threshold} > the {shares} shares of {len(node_of)} sampled terminals")
        neighbours = neighbour_graph(list(node_of), shares, [self.seed, server_round, getattr(grid, "attempt", 0)])
        return _Round(node_of=node_of, neighbours=neighbours, shares=shares, threshold=threshold)

    def _exchange(self, run: ProtocolRun, state: _Round, contents: dict[int, RecordDict], message_type: str, server_round: int) -> dict[int, Message]:
        """Send each secure id its content; the ok replies by secure id; a barrier after."""
        grid = run.grid
        messages = [
            Message(content, dst_node_id=state.node_of[sid], message_type=message_type, group_id=str(server_round))
            for sid, content in contents.items()
        ]
        replies = grid.send_and_receive(messages, timeout=run.timeout_s)
        grid.barrier()
        sid_of = {node: sid for sid, node in state.node_of.items()}
        return {sid_of[r.metadata.src_node_id]: r for r in replies if not r.has_error()}

    def _check(self, stage: str, needed: set[int], alive: set[int], state: _Round) -> None:
        reason = check_survivors(stage, needed, alive, state.neighbours, state.threshold)
        if reason is not None:
            raise SecAggRoundFailed(reason)

    def _secure_sum(
        self, run: ProtocolRun, server_round: int, state: _Round, train_messages: list[Message]
    ) -> tuple[Message, MetricRecord]:
        s = self.settings
        sampled = set(state.node_of)
        setup = {
            Key.STAGE: Stage.SETUP,
            Key.SAMPLE_NUMBER: len(sampled),
            Key.SHARE_NUMBER: state.shares,
            Key.THRESHOLD: state.threshold,
            Key.CLIPPING_RANGE: float(s.clipping_range),
            Key.TARGET_RANGE: int(s.quantization_range),
            Key.MOD_RANGE: int(s.modulus_range),
            Key.MAX_WEIGHT: float(s.max_weight),
        }
        # 0. setup: public keys
        replies = self._exchange(run, state, {sid: _configs(setup) for sid in sorted(sampled)}, _type(Stage.SETUP), server_round)
        for sid, reply in replies.items():
            keys = reply.content.config_records[RECORD_KEY_CONFIGS]
            state.public_keys[sid] = (bytes(keys[Key.PUBLIC_KEY_1]), bytes(keys[Key.PUBLIC_KEY_2]))
        advertised = set(state.public_keys)
        self._check("setup", advertised, advertised, state)
        # 1. share keys: neighbours' public keys out, encrypted shares back
        contents = {}
        for sid in sorted(advertised):
            keys = {str(n): list(state.public_keys[n]) for n in sorted(state.neighbours[sid] & advertised)}
            contents[sid] = _configs({**keys, Key.STAGE: Stage.SHARE_KEYS})
        replies = self._exchange(run, state, contents, _type(Stage.SHARE_KEYS), server_round)
        state.shared_keys = set(replies)
        state.forward = {sid: ([], []) for sid in state.shared_keys}
        for src, reply in sorted(replies.items()):
            record = reply.content.config_records[RECORD_KEY_CONFIGS]
            for dst, ciphertext in zip(record[Key.DESTINATION_LIST], record[Key.CIPHERTEXT_LIST], strict=True):
                if dst in state.forward and dst in state.neighbours[src]:
                    state.forward[dst][0].append(src)
                    state.forward[dst][1].append(bytes(ciphertext))
        self._check("share keys", state.shared_keys, state.shared_keys, state)
        # 2. masked upload: the strategy's train message + the ciphertexts for the terminal
        by_node = {m.metadata.dst_node_id: m for m in train_messages}
        contents = {}
        for sid in sorted(state.shared_keys):
            srcs, ciphertexts = state.forward[sid]
            content = RecordDict(dict(by_node[state.node_of[sid]].content.items()))
            content.config_records[RECORD_KEY_CONFIGS] = ConfigRecord(
                {Key.STAGE: Stage.COLLECT_MASKED_VECTORS, Key.CIPHERTEXT_LIST: ciphertexts, Key.SOURCE_LIST: srcs}
            )
            contents[sid] = content
        replies = self._exchange(run, state, contents, "train", server_round)
        started = time.process_time()
        shapes = [(1,)] + [tuple(a.shape) for a in self.arrays.values()]  # type: ignore[union-attr]
        for sid, reply in sorted(replies.items()):
            vector, problem = _masked_vector(reply, list(self.arrays), shapes)  # type: ignore[arg-type]
            if problem is not None:
                run.grid.reject(server_round, state.node_of[sid], f"secure aggregation: {problem}")  # type: ignore[attr-defined]
                continue
            state.masked_sum = vector if state.masked_sum is None else [a + b for a, b in zip(state.masked_sum, vector)]
            state.uploaded[sid] = reply
        state.server_cpu_s += time.process_time() - started
        survivors, dropped = set(state.uploaded), state.shared_keys - set(state.uploaded)
        self._check("the masked upload", survivors | dropped, survivors, state)
        # 3. unmask: shares of the survivors' self-mask seeds and of the dropped terminals' keys
        contents = {
            sid: _configs({
                Key.STAGE: Stage.UNMASK,
                Key.ACTIVE_NODE_ID_LIST: sorted(state.neighbours[sid] & survivors),
                Key.DEAD_NODE_ID_LIST: sorted(state.neighbours[sid] & dropped),
            })
            for sid in sorted(survivors)
        }
        replies = self._exchange(run, state, contents, _type(Stage.UNMASK), server_round)
        self._check("unmask", survivors | dropped, set(replies), state)
        started = time.process_time()
        try:
            aggregate = self._unmask(state, replies, survivors, dropped, shapes)
        finally:
            state.server_cpu_s += time.process_time() - started
        log.info(
            "round %d: secure aggregation of %d terminals (%d dropped after sharing keys, %d before), threshold %d of %d shares",
            server_round, len(survivors), len(dropped), len(sampled) - len(state.shared_keys), state.threshold, state.shares,
        )
        contents_of = [r.content for r in state.uploaded.values()]
        weight_key = getattr(self.strategy, "weighted_by_key", "num-examples")
        aggr = getattr(self.strategy, "train_metrics_aggr_fn", None) or aggregate_metricrecords
        metrics = aggr(contents_of, weight_key)
        metrics[weight_key] = sum(int(c.metric_records["metrics"][weight_key]) for c in contents_of)
        first = min(state.uploaded)
        sent = next(m for m in train_messages if m.metadata.dst_node_id == state.node_of[first])
        return Message(RecordDict({"arrays": aggregate, "metrics": metrics}), reply_to=sent), metrics

    def _unmask(self, state: _Round, replies: dict[int, Message], survivors: set[int], dropped: set[int], shapes: list[tuple[int, ...]]) -> ArrayRecord:
        s = self.settings
        shares: dict[int, list[bytes]] = {sid: [] for sid in survivors | dropped}
        for sid, reply in sorted(replies.items()):
            record = reply.content.config_records[RECORD_KEY_CONFIGS]
            for owner, share in zip(record[Key.NODE_ID_LIST], record[Key.SHARE_LIST], strict=True):
                if owner in shares and sid in state.neighbours[owner]:
                    shares[owner].append(bytes(share))
        vector = state.masked_sum
        assert vector is not None
        for owner in sorted(shares):
            if len(shares[owner]) < state.threshold:
                raise SecAggRoundFailed(f"secure aggregation failed in unmask: {len(shares[owner])} shares of terminal with secure id {owner}, fewer than the threshold {state.threshold}")
            try:
                secret = combine_shares(shares[owner][: state.threshold])
            except ValueError as exc:
                raise SecAggRoundFailed(f"secure aggregation failed in unmask: the shares of terminal with secure id {owner} do not combine ({exc})") from None
            if owner in survivors:  # its self mask
                vector = [v - m for v, m in zip(vector, pseudo_rand_gen(secret, s.modulus_range, shapes))]
                continue
            private_key = bytes_to_private_key(secret)  # a dropped terminal: the pairwise masks it left in the survivors' vectors
            for other in sorted(state.neighbours[owner] & survivors):
                shared = generate_shared_key(private_key, bytes_to_public_key(state.public_keys[other][0]))
                mask = pseudo_rand_gen(shared, s.modulus_range, shapes)
                sign = -1 if other > owner else 1  # the survivor added the mask if its id is the larger one
                vector = [v + sign * m for v, m in zip(vector, mask)]
        total_q, values = factor_extract(parameters_mod(vector, s.modulus_range))
        if int(total_q) <= 0:
            raise SecAggRoundFailed("secure aggregation: the survivors' total weight (num-examples) is 0")
        averaged = dequantize(values, s.clipping_range, s.quantization_range)
        offset = -(len(survivors) - 1) * s.clipping_range
        scale = s.quantization_range / int(total_q)
        assert self.arrays is not None
        return array_record_from_state({k: (a + offset) * scale for k, a in zip(self.arrays.keys(), averaged, strict=True)})

    def _fail(self, run: ProtocolRun, server_round: int, state: _Round | None, reason: str) -> None:
        """Log the reason; the updates of the round's surviving terminals are ``rejected`` with it."""
        log.warning("round %d: %s; nothing aggregated", server_round, reason)
        if state is None:
            return
        grid = run.grid
        for row in grid.ledger.rows_of(server_round):  # type: ignore[attr-defined]
            if row.phase == "train" and row.status == "ok" and row.attempt == getattr(grid, "attempt", 0):
                row.status, row.reason = "rejected", reason


def secagg_protocol(strategy: Strategy, cfg: Any) -> SecAggProtocol:
    """The :class:`SecAggProtocol` of a run configuration (``secagg.*``) around ``strategy``.

    ``secagg.max_weight = 0`` becomes the largest training set of the population (samples), so
    no terminal's weight exceeds it.
    """
    sa = cfg.secagg
    max_weight = sa.max_weight
    if max_weight <= 0:
        from fedsplit.learning import config_to_json, task_for

        data = task_for(config_to_json(cfg)).data
        max_weight = float(max([1, *(len(data.partition(pid)[0]) for pid in range(cfg.num_terminals))]))
    settings = SecAggSettings(sa.num_shares, sa.threshold, sa.clipping_range, sa.quantization_range, max_weight=max_weight)
    return SecAggProtocol(strategy, settings, seed=cfg.seed)


def _type(stage: str) -> str:
    return f"train.{STAGE_ACTIONS[stage]}"


def _configs(values: dict[str, Any]) -> RecordDict:
    return RecordDict({RECORD_KEY_CONFIGS: ConfigRecord(values)})


def _masked_vector(reply: Message, keys: list[str], shapes: list[tuple[int, ...]]) -> tuple[list[np.ndarray], str | None]:
    """The masked vector of a masked-upload reply (``int64``, weight first), or why it is refused."""
    content = reply.content
    plain = [k for k in content.array_records if k != MASKED_KEY]
    if plain:
        return [], f"the reply carries an unmasked ArrayRecord {plain[0]!r} (refused unread)"
    record = content.array_records.get(MASKED_KEY)
    if record is None:
        return [], f"the reply has no masked vector ({MASKED_KEY!r})"
    try:
        views = record_views(record)
    except Exception as exc:  # noqa: BLE001 - malformed Array bytes
        return [], f"the masked vector cannot be read: {type(exc).__name__}: {exc}"
    if list(views) != [WEIGHT_KEY, *keys]:
        return [], "the masked vector's tensors are not the model's"
    vector = [views[k].astype(np.int64) for k in [WEIGHT_KEY, *keys]]
    for v, shape in zip(vector, shapes):
        if v.shape != shape:
            return [], f"a masked tensor has shape {v.shape}, expected {shape}"
    if "metrics" not in content.metric_records:
        return [], "the reply has no 'metrics'"
    return vector, None


def _with_dtypes(arrays: ArrayRecord, like: ArrayRecord) -> ArrayRecord:
    """``arrays`` cast to the dtypes of ``like`` (integer tensors rounded): the global model keeps its dtypes."""
    views = record_views(arrays)
    out = {}
    for key, reference in record_views(like).items():
        value = views[key]
        if np.issubdtype(reference.dtype, np.integer):
            value = np.rint(value)
        out[key] = value.astype(reference.dtype, copy=False)
    return array_record_from_state(out)
