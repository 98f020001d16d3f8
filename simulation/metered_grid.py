"""A Grid wrapper that emulates the terminals' availability and writes the ledgers.

:class:`MeteredGrid` wraps any Flower :class:`~flwr.serverapp.Grid` (Flower's simulation grid,
fedsplit's Ray engine, or a deployment grid) and sits between a strategy and the terminals:

- ``get_node_ids()`` returns only the terminals online in the current round, ordered by terminal
  (partition) id, so a strategy's seeded sampling picks the same terminals on every engine;
- every exchange is measured: bytes are the serialised size of each message's ``RecordDict``
  (the protobuf that Flower puts on the wire), FLOPs come from the reply's ``"flops"`` metric, and
  both go through the terminal's device profile into simulated seconds and joules;
- replies that arrive after the round deadline (simulated) are stragglers: counted, logged and not
  handed to the strategy.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

import numpy as np
from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

from fedsplit.devices import Population, exchange_cost
from fedsplit.ledger import Ledger, LedgerRow
from fedsplit.simulation.wire_size import recorddict_wire_bytes

log = logging.getLogger("fedsplit")


def payload_bytes(content: RecordDict) -> int:
    """Bytes of a message's content as serialised for the wire (protobuf ``RecordDict``).

    Computed without serialising the arrays (:mod:`fedsplit.simulation.wire_size`).
    """
    return recorddict_wire_bytes(content)


class MeteredGrid(Grid):
    """Availability emulation and ledger metering around another Grid.

    Parameters
    ----------
    inner : Grid
        The Grid that really delivers messages.
    population : Population
        Device class of every terminal.
    ledger : Ledger
        Where rows are written.
    seed : int
        Seed of the availability draws.
    round_deadline_s : float
        Simulated round deadline in seconds (0 = none).
    partition_of : callable, optional
        ``node_id -> partition id``. When omitted (Flower's engines, whose node ids are random),
        the mapping is discovered once with a ``query`` message to every node.
    min_online : int
        If fewer terminals are online, seeded extra terminals are brought online (the server waits
        for them): a strategy needs at least its minimum number of nodes to sample from.
    rounds_from_train_calls : bool
        Number rounds by the strategy's train calls (for ServerApps that do not tell the grid
        when a round ends; fedsplit's own ServerApp sets ``current_round`` itself).
    emulate_availability : bool
        Draw who is online each round from the profiles' availability (off: everyone is online;
        used for third-party ServerApps, whose round boundaries fedsplit does not see).
    """

    def __init__(
        self,
        inner: Grid,
        population: Population,
        ledger: Ledger,
        *,
        seed: int,
        round_deadline_s: float = 0.0,
        partition_of: Callable[[int], int] | None = None,
        min_online: int = 1,
        emulate_availability: bool = True,
        rounds_from_train_calls: bool = False,
    ) -> None:
        self.inner = inner
        self.population = population
        self.ledger = ledger
        self.seed = seed
        self.round_deadline_s = round_deadline_s
        self.min_online = min_online
        self.emulate_availability = emulate_availability
        self.rounds_from_train_calls = rounds_from_train_calls
        self._train_calls = 0
        self._partition_of = partition_of
        self._node_of_partition: dict[int, int] | None = None
        self._node_array = np.zeros(0, dtype=np.uint64)
        self._partition_of_node: dict[int, int] | None = None
        self.current_round = 1
        self._online_cache: tuple[int, list[int]] | None = None

    # --- Grid interface: delegated -------------------------------------------------------------
    def set_run(self, run) -> None:  # noqa: ANN001 - flwr's Run
        self.inner.set_run(run)

    @property
    def run(self):  # noqa: ANN201
        return self.inner.run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None) -> Message:
        return self.inner.create_message(content, message_type, dst_node_id, group_id, ttl)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.inner.pull_messages(message_ids)

    # --- terminals -----------------------------------------------------------------------------
    def _discover(self) -> None:
        """Learn node id <-> partition id, by the engine's mapping or by asking every node once."""
        if self._node_of_partition is not None:
            return
        node_ids = self._wait_for_nodes()
        if self._partition_of is not None:
            mapping = {n: int(self._partition_of(n)) for n in node_ids}
        else:
            queries = [
                Message(RecordDict(), dst_node_id=n, message_type="query", group_id="discovery") for n in node_ids
            ]
            mapping = {}
            for reply in self.inner.send_and_receive(queries):
                if reply.has_error():
                    raise RuntimeError(f"node {reply.metadata.src_node_id} did not answer discovery: {reply.error.reason}")
                mapping[reply.metadata.src_node_id] = int(reply.content.metric_records["metrics"]["partition-id"])
        if len(mapping) != self.population.size:
            raise RuntimeError(f"engine has {len(mapping)} nodes but the population has {self.population.size} terminals")
        self._partition_of_node = mapping
        self._node_of_partition = {p: n for n, p in mapping.items()}
        self._node_array = np.array([self._node_of_partition[p] for p in range(self.population.size)], dtype=np.uint64)  # Flower ids are 64-bit unsigned

    def _wait_for_nodes(self, timeout_s: float = 300.0) -> list[int]:
        """All of the engine's nodes; an engine may still be registering them when the ServerApp starts."""
        deadline = time.monotonic() + timeout_s
        while len(node_ids := list(self.inner.get_node_ids())) < self.population.size:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"only {len(node_ids)} of {self.population.size} nodes connected within {timeout_s:.0f} s"
                )
            time.sleep(0.2)
        return node_ids

    def partition_of(self, node_id: int) -> int:
        """Terminal (partition) id of a node."""
        if self._partition_of is not None and self._partition_of_node is None:
            return int(self._partition_of(node_id))
        self._discover()
        assert self._partition_of_node is not None
        return self._partition_of_node[node_id]

    def node_of(self, partition_id: int) -> int:
        """Node id of a terminal."""
        self._discover()
        assert self._node_of_partition is not None
        return self._node_of_partition[partition_id]

    def online_partitions(self, server_round: int) -> np.ndarray:
        """Terminals online in ``server_round`` (at least ``min_online`` of them)."""
        if self._online_cache is not None and self._online_cache[0] == server_round:
            return self._online_cache[1]
        if not self.emulate_availability:
            online = np.arange(self.population.size)
            self.ledger.online[server_round] = len(online)
            return online
        online = self.population.online(server_round, self.seed)
        if len(online) < self.min_online:
            offline = np.setdiff1d(np.arange(self.population.size), online)
            extra = np.random.default_rng([self.seed, server_round, 0x0FF]).choice(
                offline, self.min_online - len(online), replace=False
            )
            online = np.sort(np.concatenate([online, extra]))
        self._online_cache = (server_round, online)
        self.ledger.online[server_round] = len(online)
        return online

    def get_node_ids(self) -> Iterable[int]:
        """Nodes of the terminals online this round, in terminal order."""
        self._discover()
        return self._node_array[self.online_partitions(self.current_round)].tolist()

    # --- metered exchange ----------------------------------------------------------------------
    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Deliver through the inner grid, write one ledger row per exchange, drop stragglers."""
        messages = list(messages)
        if not messages:
            return []
        if self.rounds_from_train_calls and messages[0].metadata.message_type == "train":
            self._train_calls += 1
            self.current_round = self._train_calls
        sent = {m.metadata.dst_node_id: (m, payload_bytes(m.content)) for m in messages}
        replies = {r.metadata.src_node_id: r for r in self.inner.send_and_receive(messages, timeout=timeout)}
        kept: list[Message] = []
        # Rows are written, and replies handed to the strategy, in terminal order whatever order
        # the replies arrived in: the ledger and the aggregate's float arithmetic of a seed are
        # then the same on every engine.
        for node, (out, bytes_down) in sorted(sent.items(), key=lambda item: self.partition_of(item[0])):
            reply = replies.get(node)
            if self._record(out, reply, bytes_down) and reply is not None:
                kept.append(reply)
        return kept

    def _record(self, out: Message, reply: Message | None, bytes_down: int) -> bool:
        pid = self.partition_of(out.metadata.dst_node_id)
        profile = self.population.profile_of(pid)
        phase = out.metadata.message_type
        try:
            server_round = int(out.metadata.group_id)
        except ValueError:
            server_round = self.current_round
        status, reason, flops, bytes_up = "ok", "", 0, 0
        if reply is None:
            status, reason = "failed", "no reply"
        elif reply.has_error():
            status, reason = "failed", reply.error.reason.splitlines()[0][:200] if reply.error.reason else "error"
        else:
            bytes_up = payload_bytes(reply.content)
            metrics = reply.content.metric_records.get("metrics")
            if metrics is not None and "flops" in metrics:
                flops = int(metrics["flops"])
        cost = exchange_cost(profile, flops, bytes_up, bytes_down)
        if status == "ok" and self.round_deadline_s > 0 and cost.total_s > self.round_deadline_s:
            status, reason = "straggler", f"{cost.total_s:.3f} s > deadline {self.round_deadline_s:.3f} s"
            log.info("round %d: terminal %d (%s) is a straggler: %s", server_round, pid, profile.name, reason)
        if status == "failed":
            log.warning("round %d: terminal %d (%s) failed: %s", server_round, pid, profile.name, reason)
        self.ledger.add(
            LedgerRow(
                round=server_round,
                phase=phase,
                client_id=pid,
                device=profile.name,
                status=status,
                reason=reason,
                flops=flops,
                compute_s=cost.compute_s,
                bytes_up=bytes_up,
                bytes_down=bytes_down,
                comm_s=cost.comm_s,
                energy_j=cost.energy_j,
            )
        )
        return status == "ok"

    def reject(self, server_round: int, node_id: int, reason: str) -> None:
        """Mark a delivered update as rejected before aggregation (called by strategy wrappers)."""
        pid = self.partition_of(node_id)
        log.warning("round %d: update of terminal %d rejected: %s", server_round, pid, reason)
        self.ledger.mark(server_round, pid, "rejected", reason)
