"""A Grid wrapper that emulates the terminals' availability and writes the ledgers.

:class:`MeteredGrid` wraps any Flower :class:`~flwr.serverapp.Grid` (Flower's simulation grid,
fedsplit's Ray engine, or a deployment grid) and sits between a strategy and the terminals:

- ``get_node_ids()`` returns only the terminals online in the current round, ordered by terminal
  (partition) id, so a strategy's seeded sampling picks the same terminals on every engine;
- every exchange is measured and written to the ledger as one row: bytes are the serialised size of
  each message's ``RecordDict`` (the protobuf that Flower puts on the wire); FLOPs come from the
  reply's ``"flops"`` metric when the ClientApp reports one, else from the engine's own count
  (:meth:`fedsplit.simulation.engine.EngineGrid.measured_compute`); both go through the terminal's
  device profile into simulated seconds and joules, placed on the round's
  :class:`~fedsplit.devices.RoundClock`;
- replies that arrive after the phase deadline (simulated) are stragglers: counted, logged and not
  handed to the caller;
- the server's own work is put on the same clock (:meth:`MeteredGrid.server_work`) with the
  ``edge-server`` profile.

Under Flower's deployment engine (real SuperNodes) the grid also times every exchange itself
(:mod:`fedsplit.simulation.measured`: replies pulled every 0.1 s instead of Flower's 3 s), gives a
terminal that measures itself (node config ``profile = "measure"``) its measured profile and the
ledger's ``measured_compute_s``/``measured_comm_s``, and looks for SuperNodes that connected since
the last round (``deploy.min_nodes`` of them are enough to start). A node that declares its device
class (node config ``device-profile``) must be the class the run's ``devices`` give its terminal:
one that is not is left out with a warning naming both, so no terminal is modelled as a device it
is not.

The server loop tells the grid when a round begins (:meth:`MeteredGrid.begin_round`), when it is
tried again because too few updates arrived (:meth:`MeteredGrid.retry_round`: the attempt's kept
updates become ``rejected``, the clock goes on) and closes it (:meth:`MeteredGrid.close_round`). A third-party ServerApp that knows nothing of fedsplit gets
``auto_rounds=True``: each batch of ``train`` messages begins a round (a Flower strategy's
``start()`` sends one per round).
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import NamedTuple

import numpy as np
from flwr.app import Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from fedsplit.devices import EDGE_SERVER_PROFILE, ClientCost, DeviceProfile, Population, RoundClock, builtin_profiles, compute_cost, exchange_cost
from fedsplit.ledger import Ledger, LedgerRow, RoundRecord, terminal_statuses
from fedsplit.records import record_of
from fedsplit.simulation.measured import MeasuredTerminals, is_polled_grid, timed_send_and_receive
from fedsplit.simulation.wire_size import recorddict_wire_bytes

log = logging.getLogger("fedsplit")


def payload_bytes(content: RecordDict) -> int:
    """Bytes of a message's content as serialised for the wire (protobuf ``RecordDict``).

    Computed without serialising the arrays (:mod:`fedsplit.simulation.wire_size`).
    """
    return recorddict_wire_bytes(content)


def _app_metrics(reply: Message) -> Mapping[str, object]:
    """The reply's ``"metrics"`` record (the app's own metrics), empty without one."""
    metrics = record_of(reply.content, "metrics", MetricRecord)
    return metrics if metrics is not None else {}


def _gpu_mem_of(reply: Message, metrics: Mapping[str, object] | None = None) -> int:
    """The reply's ``"gpu-mem-bytes"`` metric (peak CUDA memory of the terminal, bytes), else 0.
    ``metrics``: the reply's :func:`_app_metrics`, when the caller has read them already."""
    return int((_app_metrics(reply) if metrics is None else metrics).get("gpu-mem-bytes", 0))


def _dp_epsilon_of(reply: Message, metrics: Mapping[str, object] | None = None) -> float:
    """The reply's ``"dp-epsilon"`` metric (the terminal's cumulative local-DP epsilon), else 0."""
    return float((_app_metrics(reply) if metrics is None else metrics).get("dp-epsilon", 0.0))


def accepts_keyword(fn: Callable | None, name: str) -> bool:
    """Whether ``fn`` takes a keyword argument ``name``: how callers tell a grid that takes the
    reply hooks (``on_replies``, ``on_reply``) from one that does not (Flower's, or a wrapper that
    does not pass them on)."""
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # no signature to read
        return False


def _size_once(sizes: dict[int, int], content: RecordDict) -> int:
    """:func:`payload_bytes` of ``content``, computed once per content object in ``sizes``."""
    size = sizes.get(id(content))
    if size is None:
        size = sizes[id(content)] = payload_bytes(content)
    return size


def declared_device(content: RecordDict) -> str | None:
    """The device class a node's discovery reply declares (its node config ``device-profile``,
    echoed by :func:`fedsplit.clients.app.handle_query`), None when it declares none."""
    from fedsplit.clients.app import DEVICE_PROFILE_KEY, NODE_RECORD

    record = content.config_records.get(NODE_RECORD)
    if record is None or DEVICE_PROFILE_KEY not in record:
        return None
    return str(record[DEVICE_PROFILE_KEY])


class _ReplyFacts(NamedTuple):
    """What a ledger row takes from one delivered reply, apart from its place on the round's clock:
    read as the reply arrives (:meth:`MeteredGrid._facts`), while other terminals still train, so
    that writing the round's rows after its last reply is little more than placing them."""

    profile: DeviceProfile
    cost: ClientCost
    flops: int
    flops_method: str
    bytes_up: int
    gpu_mem_bytes: int
    dp_epsilon: float
    measured_compute_s: float
    measured_comm_s: float


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
        the mapping is discovered with a ``query`` message to every node: to all of them before
        the first round, then, at each round, to nodes that connected since (a SuperNode that
        joins late, or comes back with a new node id, takes its terminal from that round on).
    min_online : int
        If fewer terminals are online, seeded extra terminals are brought online (the server waits
        for them): a strategy needs at least its minimum number of nodes to sample from.
    auto_rounds : bool
        Begin a round at each batch of ``train`` messages (for third-party ServerApps, which
        do not call :meth:`begin_round`; a Flower strategy's ``start()`` sends one per round).
    server_profile : DeviceProfile, optional
        The edge server's profile for server work (default: the built-in ``edge-server``).
    emulate_availability : bool
        Draw who is online each round from the profiles' availability (off: everyone is online;
        used for third-party ServerApps, whose round boundaries fedsplit does not see).
    min_nodes : int
        Nodes that must be connected before the first round (0 = one per terminal). With fewer
        than the population, a terminal whose node has not connected yet is offline in a round.
    wait_s : float
        Real seconds to wait for ``min_nodes`` nodes before giving up with an error.
    """

    #: Read replies (their rows' facts, :meth:`_facts`; ``on_reply``) as their batches arrive, where the inner grid
    #: hands them over so (fedsplit's engine); False: after the whole exchange, the same work
    #: done serially (``experiments/bench_overlap.py`` compares the two).
    stream_replies = True
    #: Let the server's own work between rounds (the evaluation of the model a round made) run
    #: during the next exchange, where the inner grid offers it (fedsplit's engine,
    #: :meth:`run_while_training`); False: always at once (``experiments/bench_overlap.py``).
    overlap_server_work = True

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
        auto_rounds: bool = False,
        server_profile: DeviceProfile | None = None,
        min_nodes: int = 0,
        wait_s: float = 300.0,
    ) -> None:
        self.inner = inner
        self.population = population
        self.ledger = ledger
        self.seed = seed
        self.round_deadline_s = round_deadline_s
        self.min_online = min_online
        self.emulate_availability = emulate_availability
        self.auto_rounds = auto_rounds
        self.server_profile = server_profile or builtin_profiles()[EDGE_SERVER_PROFILE]
        self._partition_of = partition_of
        self._node_of_partition: dict[int, int] | None = None
        self._partition_of_node: dict[int, int] | None = None
        self.min_nodes = min_nodes if min_nodes > 0 else population.size
        if self.min_nodes > population.size:
            raise ValueError(f"deploy.min_nodes = {min_nodes}: more than the {population.size} terminals of the population")
        self.wait_s = wait_s
        self._refreshed_round: int | None = None
        self._ignored: set[int] = set()  # nodes that are no terminal of this run (told once)
        self._timed = is_polled_grid(inner)  # a deployment: exchanges are timed, nodes may join late
        self._arrived: dict[int, tuple[Message, _ReplyFacts]] = {}  # id(reply) -> (reply, its row's facts) read on arrival
        self._streams = self.stream_replies and accepts_keyword(getattr(inner, "send_and_receive", None), "on_replies")
        self.measured = MeasuredTerminals()
        #: Terminal -> the device class its node declared (node config ``device-profile``; None:
        #: none declared), for the terminals found by asking the nodes (deployments).
        self.declared_devices: dict[int, str | None] = {}
        self.current_round = 0
        self.attempt = 0
        self.clock = RoundClock(round_deadline_s)
        self._round_started = time.perf_counter()
        self._online_cache: tuple[int, list[int]] | None = None

    # --- rounds --------------------------------------------------------------------------------
    def begin_round(self, server_round: int) -> None:
        """Start ``server_round``: a fresh clock; availability and ledger rows now refer to it."""
        self.current_round = int(server_round)
        self.attempt = 0
        self.clock = RoundClock(self.round_deadline_s)
        self._round_started = time.perf_counter()

    def retry_round(self, reason: str) -> None:
        """Discard the current attempt of the round and start the next one.

        The attempt's ``ok`` train exchanges become ``rejected`` with ``reason`` (their updates are
        not aggregated); its rows, bytes and seconds stay in the round. The next attempt starts
        after every exchange so far has ended (a barrier on the round's clock).
        """
        for row in self.ledger.rows_of(self.current_round):
            if row.attempt == self.attempt and row.phase == "train" and row.status == "ok":
                row.status, row.reason = "rejected", reason
        self.clock.barrier()
        self.attempt += 1

    def close_round(self, metrics: dict[str, float] | None = None) -> RoundRecord:
        """Close the current round in the ledger, with its simulated duration and server work."""
        now = time.perf_counter()
        online = self.ledger.online.get(self.current_round)
        return self.ledger.close_round(
            self.current_round,
            sim_s=self.clock.elapsed_s,
            server_s=self.clock.server_s,
            server_flops=self.clock.server_flops,
            server_energy_j=self.clock.server_energy_j,
            metrics=metrics,
            wall_s=now - self._round_started,
            offline=self.population.size - online if online is not None else 0,
        )

    def resources_used(self) -> tuple[float, float]:
        """What the run has used so far, the open round included: (simulated seconds, joules).

        Seconds are the closed rounds' ``sim_s`` plus the open round's clock; joules are every
        exchange's terminal energy plus the edge server's, closed rounds and the open one.
        """
        closed = [r for n, r in self.ledger.rounds.items() if n != self.current_round]
        seconds = sum(r.sim_s for r in closed) + self.clock.elapsed_s
        joules = sum(r.energy_j + r.server_energy_j for r in closed)
        joules += sum(r.energy_j for r in self.ledger.rows_of(self.current_round)) + self.clock.server_energy_j
        return seconds, joules

    def server_work(self, flops: float, *, partition_id: int | None = None, exclusive: bool = False) -> None:
        """Put ``flops`` of the server's computation on the round's clock (edge-server profile).

        Parameters
        ----------
        flops : float
            Floating-point operations the server executed.
        partition_id : int, optional
            The terminal the work serves (it then runs in that terminal's chain); without one
            the work follows a barrier, e.g. aggregation after every update arrived.
        exclusive : bool
            The server serves one terminal at a time: this work waits for the previous.
        """
        self.clock.server_work(self.server_profile, flops, lane=partition_id, exclusive=exclusive)

    def run_while_training(self, work: Callable[[], None]) -> bool:
        """Have ``work`` run in this process during the next exchange, once its messages are on
        their way (fedsplit's engine: after the first batches are dispatched, or at its first
        exchange while its actors start), so that it overlaps the terminals' work; True if so.
        False, and nothing kept, where the inner grid cannot (Flower's engine, a deployment) or
        :attr:`overlap_server_work` is off: the caller runs ``work`` itself. ``work`` must not
        raise; :meth:`run_deferred_work` runs it if no exchange comes."""
        offer = getattr(self.inner, "run_while_training", None)
        if not self.overlap_server_work or self._timed or not callable(offer):
            return False
        offer(work)
        return True

    def run_deferred_work(self) -> None:
        """Run now the work of :meth:`run_while_training` that no exchange has run yet."""
        flush = getattr(self.inner, "run_deferred_work", None)
        if callable(flush):
            flush()

    def kept_terminals(self, phase: str = "train") -> int:
        """Terminals of the current round attempt whose ``phase`` exchanges are all ``ok`` so far."""
        rows = [r for r in self.ledger.rows_of(self.current_round) if r.phase == phase and r.attempt == self.attempt]
        return list(terminal_statuses(rows).values()).count("ok")

    def selected_terminals(self, phase: str = "train") -> int:
        """Terminals of the current round attempt with at least one ``phase`` exchange so far."""
        return len({r.client_id for r in self.ledger.rows_of(self.current_round) if r.phase == phase and r.attempt == self.attempt})

    def barrier(self) -> None:
        """The server waits for every exchange so far before it goes on (e.g. between turns)."""
        self.clock.barrier()

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
        """Learn node id <-> partition id, by the engine's mapping or by asking the nodes (once)."""
        if self._node_of_partition is not None:
            return
        node_ids = self._wait_for_nodes()
        self._partition_of_node, self._node_of_partition = {}, {}
        self._map_nodes(node_ids)
        if self._partition_of is not None and len(self._partition_of_node) != self.population.size:
            raise RuntimeError(f"engine has {len(self._partition_of_node)} nodes but the population has {self.population.size} terminals")
        if len(self._node_of_partition) < self.min_nodes:
            raise RuntimeError(
                f"only {len(self._node_of_partition)} of the {len(node_ids)} connected nodes are terminals of this run "
                f"(at least {self.min_nodes} needed; see the warnings above)"
            )

    def _map_nodes(self, node_ids: list[int]) -> None:
        """Map ``node_ids`` to terminals: the engine's mapping, or a ``query`` to each node."""
        assert self._partition_of_node is not None and self._node_of_partition is not None
        if self._partition_of is not None:
            mapping = {n: int(self._partition_of(n)) for n in node_ids}
        else:
            queries = [
                Message(RecordDict(), dst_node_id=n, message_type="query", group_id="discovery") for n in node_ids
            ]
            sent = {q.metadata.dst_node_id: q for q in queries}
            replies, round_trip = self._exchange(queries, None)
            mapping = {}
            for reply in replies:
                node = reply.metadata.src_node_id
                if reply.has_error():
                    log.warning("node %d did not answer discovery (%s): not used", node, reply.error.reason)
                    self._ignored.add(node)
                    continue
                pid = int(reply.content.metric_records["metrics"]["partition-id"])
                if not 0 <= pid < self.population.size:
                    log.warning(
                        "node %d is terminal %d, outside this run's 0..%d (its node config partition-id does not match "
                        "the run's devices): not used", node, pid, self.population.size - 1,
                    )
                    self._ignored.add(node)
                    continue
                declared, device = declared_device(reply.content), self.population.device_of(pid)
                if declared is not None and declared != device:
                    log.warning(
                        'node %d is terminal %d and says it is a %s (node config device-profile), but the run\'s devices '
                        "make terminal %d a %s: not used (give the SuperNode the right device-profile, or the run devices "
                        "that match its nodes)", node, pid, declared, pid, device,
                    )
                    self._ignored.add(node)
                    continue
                self.declared_devices[pid] = declared
                mapping[node] = pid
                out = sent[reply.metadata.src_node_id]
                self._observe(pid, reply, payload_bytes(out.content), payload_bytes(reply.content), round_trip.get(out.metadata.message_id))
        claimed: dict[int, int] = {}
        for node, pid in mapping.items():
            if pid in claimed:
                raise RuntimeError(f"nodes {claimed[pid]} and {node} both say they are terminal {pid}: give every SuperNode its own partition-id")
            claimed[pid] = node
        for node, pid in sorted(mapping.items(), key=lambda item: item[1]):
            old = self._node_of_partition.get(pid)
            if old is not None and old != node:
                log.info("terminal %d is now node %d (was node %d)", pid, node, old)
                self._partition_of_node.pop(old, None)
            self._partition_of_node[node] = pid
            self._node_of_partition[pid] = node

    def _refresh(self, server_round: int) -> None:
        """Once per round, map nodes that connected since the last look (deployments only: the
        engines that run terminals here start them all before the first round)."""
        self._discover()
        if not self._timed or self._refreshed_round == server_round:
            return
        self._refreshed_round = server_round
        assert self._partition_of_node is not None
        new = [n for n in self.inner.get_node_ids() if n not in self._partition_of_node and n not in self._ignored]
        if new:
            before = set(self._node_of_partition or {})
            self._map_nodes(new)
            joined = sorted(set(self._node_of_partition or {}) - before)
            if joined:
                log.info("round %d: terminal(s) %s joined", server_round, ", ".join(map(str, joined)))

    def _wait_for_nodes(self) -> list[int]:
        """The engine's nodes once at least ``min_nodes`` are connected; an engine may still be
        registering them when the ServerApp starts."""
        deadline = time.monotonic() + self.wait_s
        while len(node_ids := list(self.inner.get_node_ids())) < self.min_nodes:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"only {len(node_ids)} of {self.min_nodes} nodes connected within {self.wait_s:.0f} s"
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

    def connected_partitions(self) -> np.ndarray:
        """Terminals whose node is known (all of them, except in a deployment still filling up)."""
        self._discover()
        assert self._node_of_partition is not None
        return np.array(sorted(self._node_of_partition), dtype=int)

    def nodes_summary(self) -> dict[str, dict[str, int | str | None]]:
        """Per terminal found by asking the nodes (keys are partition ids as strings): its node id
        and the device class its node declared, for ``summary.json`` (empty on engines that map
        nodes themselves)."""
        if self._node_of_partition is None or not self.declared_devices:
            return {}
        return {
            str(pid): {"node_id": self._node_of_partition[pid], "device": self.population.device_of(pid), "declared": self.declared_devices.get(pid)}
            for pid in sorted(self._node_of_partition)
        }

    def profile_of(self, partition_id: int) -> DeviceProfile:
        """The terminal's device profile: its class, with what it measured of itself if it did."""
        return self.measured.profile(partition_id, self.population.profile_of(partition_id))

    def online_partitions(self, server_round: int) -> np.ndarray:
        """Terminals online in ``server_round`` (at least ``min_online`` of them)."""
        if self._online_cache is not None and self._online_cache[0] == server_round:
            return self._online_cache[1]
        self._refresh(server_round)
        connected = self.connected_partitions()
        if not self.emulate_availability:
            online = connected
            self.ledger.online[server_round] = len(online)
            return online
        online = np.intersect1d(self.population.online(server_round, self.seed), connected)
        if len(online) < self.min_online:
            offline = np.setdiff1d(connected, online)
            extra = np.random.default_rng([self.seed, server_round, 0x0FF]).choice(
                offline, min(self.min_online - len(online), len(offline)), replace=False
            )
            online = np.sort(np.concatenate([online, extra]))
        self._online_cache = (server_round, online)
        self.ledger.online[server_round] = len(online)
        return online

    def get_node_ids(self) -> Iterable[int]:
        """Nodes of the terminals online this round, in terminal order."""
        online = self.online_partitions(self.current_round)
        assert self._node_of_partition is not None
        return [self._node_of_partition[int(p)] for p in online]

    # --- metered exchange ----------------------------------------------------------------------
    def send_and_receive(
        self,
        messages: Iterable[Message],
        *,
        timeout: float | None = None,
        on_device: bool = False,
        on_reply: Callable[[Message], None] | None = None,
    ) -> Iterable[Message]:
        """Deliver through the inner grid, write one ledger row per exchange, drop stragglers.

        Parameters
        ----------
        messages : iterable of Message
            The exchanges (one per terminal).
        timeout : float, optional
            Real seconds to wait for the replies.
        on_device : bool
            The messages stand for work a terminal does on its own state, which a deployment would
            not send over any link (gossip: a node training its own model, held server-side only
            because the engine reaches terminals through messages). Their rows count the compute
            (FLOPs, seconds, joules) and no bytes, no communication time and no link latency.
        on_reply : callable, optional
            Called once with each reply as it arrives (over fedsplit's engine, while other
            terminals still train; over other grids, after the exchange), before any row is
            written: per-reply work of the caller, such as checking an update, then overlaps the
            terminals' training. An exception in it is logged and the reply kept.
        """
        messages = list(messages)
        if not messages:
            return []
        message_type = messages[0].metadata.message_type
        if self.auto_rounds and message_type.startswith("train"):
            if self.current_round > 0:
                self.close_round()
            self.begin_round(self.current_round + 1)
        sizes: dict[int, int] = {}  # by id(content): a strategy sends one content to every node
        sent = {m.metadata.dst_node_id: (m, _size_once(sizes, m.content)) for m in messages}
        received, round_trip = self._exchange(messages, timeout, on_reply, sent, on_device)
        replies = {r.metadata.src_node_id: r for r in received}
        kept: list[Message] = []
        # Rows are written, and replies handed to the strategy, in terminal order whatever order
        # the replies arrived in: the ledger and the aggregate's float arithmetic of a seed are
        # then the same on every engine.
        for node, (out, bytes_down) in sorted(sent.items(), key=lambda item: self.partition_of(item[0])):
            reply = replies.get(node)
            seconds = round_trip.get(out.metadata.message_id)
            if self._record(out, reply, 0 if on_device else bytes_down, on_device=on_device, round_trip_s=seconds) and reply is not None:
                kept.append(reply)
        return kept

    def _exchange(
        self,
        messages: list[Message],
        timeout: float | None,
        on_reply: Callable[[Message], None] | None = None,
        sent: Mapping[int, tuple[Message, int]] | None = None,
        on_device: bool = False,
    ) -> tuple[list[Message], dict[str, float]]:
        """Deliver ``messages``: the replies, and the round trip of each in real seconds (by the
        id of the message sent) when the inner Grid reaches real nodes (else empty).

        Over a grid whose ``send_and_receive`` takes ``on_replies`` (fedsplit's
        :class:`~fedsplit.simulation.engine.EngineGrid`) each reply's row facts (:meth:`_facts`;
        ``sent``: node id -> the message sent and its bytes down, as :meth:`send_and_receive`
        meters them) are read, and ``on_reply`` called, as its batch arrives.
        """
        self._arrived = {}
        if self._timed:
            received, round_trip = timed_send_and_receive(self.inner, messages, timeout)
        elif self._streams:
            def arrived(batch: list[Message]) -> None:
                for reply in batch:
                    node = reply.metadata.src_node_id
                    if sent is not None and node in sent and not reply.has_error():
                        try:
                            facts = self._facts(self.partition_of(node), reply, 0 if on_device else sent[node][1], on_device=on_device)
                        except Exception:  # noqa: BLE001 - _record reads the reply again and raises where it did without streaming
                            pass
                        else:
                            self._arrived[id(reply)] = (reply, facts)
                    self._hand(on_reply, reply)

            return list(self.inner.send_and_receive(messages, timeout=timeout, on_replies=arrived)), {}
        else:
            received, round_trip = list(self.inner.send_and_receive(messages, timeout=timeout)), {}
        for reply in received:
            self._hand(on_reply, reply)
        return received, round_trip

    @staticmethod
    def _hand(on_reply: Callable[[Message], None] | None, reply: Message) -> None:
        if on_reply is None:
            return
        try:
            on_reply(reply)
        except Exception:  # noqa: BLE001 - the caller's early look at a reply must not lose the round
            log.exception("a reply hook failed on the reply of node %d; the reply is kept", reply.metadata.src_node_id)

    def _facts(self, pid: int, reply: Message, bytes_down: int, *, on_device: bool = False, round_trip_s: float | None = None) -> _ReplyFacts:
        """The row facts of terminal ``pid``'s delivered ``reply`` (one without error) to a
        message of ``bytes_down`` bytes: its uplink bytes (none ``on_device``), FLOPs, metrics and
        cost on the terminal's profile. A measuring terminal's measurements are taken out of the
        reply (:meth:`_observe`), and the engine's measurement of it read once, so they are read
        once per reply: on arrival (:meth:`_exchange`) or else when its row is written."""
        bytes_up = 0 if on_device else payload_bytes(reply.content)
        metrics = _app_metrics(reply)
        flops, method = self._compute_of(reply, metrics)
        gpu_mem = _gpu_mem_of(reply, metrics)
        dp_epsilon = _dp_epsilon_of(reply, metrics)
        measured_compute_s, measured_comm_s = self._observe(pid, reply, bytes_down, bytes_up, round_trip_s)
        profile = self.profile_of(pid)
        cost = compute_cost(profile, flops) if on_device else exchange_cost(profile, flops, bytes_up, bytes_down)
        return _ReplyFacts(profile, cost, flops, method, bytes_up, gpu_mem, dp_epsilon, measured_compute_s, measured_comm_s)

    def _observe(self, pid: int, reply: Message, bytes_moved_down: int, bytes_up: int, round_trip_s: float | None) -> tuple[float, float]:
        """Feed a measuring terminal's reply to :attr:`measured` and take its measurements out of
        the reply; its ``(measured_compute_s, measured_comm_s)`` (0, 0 for a terminal that does not
        measure)."""
        from fedsplit.clients.measure_mod import MEASURED_KEY, read_measured

        found = read_measured(reply.content)
        if found is None:
            return 0.0, 0.0
        # for the ledger only: a strategy expects the app's own records (Flower's FedAvg: one MetricRecord)
        reply.content = RecordDict({k: v for k, v in reply.content.items() if k != MEASURED_KEY})
        flops_per_s, compute_s = found
        comm_s = None if round_trip_s is None else max(round_trip_s - compute_s, 0.0)
        self.measured.observe(pid, flops_per_s, bytes_moved_down + bytes_up, comm_s)
        return compute_s, comm_s or 0.0

    def _compute_of(self, reply: Message, metrics: Mapping[str, object] | None = None) -> tuple[int, str]:
        """FLOPs of a reply's work and how they were obtained (see :class:`LedgerRow`).

        Precedence: the app's own ``"flops"`` metric (``reported``) > the engine's measurement
        (``EngineGrid.measured_compute``) > the record of :func:`fedsplit.clients.flop_meter.flop_meter_mod`
        (Flower's engine, deployed ClientApps) > ``none``.
        """
        from fedsplit.clients.flop_meter import read_meter_record

        metrics = _app_metrics(reply) if metrics is None else metrics
        if "flops" in metrics:
            return int(metrics["flops"]), "reported"
        measured = getattr(self.inner, "measured_compute", None)
        found = measured(reply) if callable(measured) else None
        if found is None:
            found = read_meter_record(reply.content)
        if found is not None:
            return int(found[0]), str(found[1])
        return 0, "none"

    def _record(self, out: Message, reply: Message | None, bytes_down: int, *, on_device: bool = False, round_trip_s: float | None = None) -> bool:
        pid = self.partition_of(out.metadata.dst_node_id)
        message_type = out.metadata.message_type
        server_round = self.current_round
        status, reason = "ok", ""
        if reply is None:
            status, reason = "failed", "no reply"
        elif reply.has_error():
            status, reason = "failed", reply.error.reason.splitlines()[0][:200] if reply.error.reason else "error"
        if status == "ok":
            found = self._arrived.pop(id(reply), None)
            facts = found[1] if found is not None and found[0] is reply else None
            if facts is None:
                facts = self._facts(pid, reply, bytes_down, on_device=on_device, round_trip_s=round_trip_s)
        else:
            profile = self.profile_of(pid)
            cost = compute_cost(profile, 0) if on_device else exchange_cost(profile, 0, 0, bytes_down)
            facts = _ReplyFacts(profile, cost, 0, "none", 0, 0, 0.0, 0.0, 0.0)
        profile, cost = facts.profile, facts.cost
        slot = self.clock.exchange(pid, cost.total_s, counts=status == "ok")
        if slot.straggler:
            lane_s = slot.end_s - self.clock.phase_start_s
            status, reason = "straggler", f"{lane_s:.3f} s > deadline {self.round_deadline_s:.3f} s"
            log.info("round %d: terminal %d (%s) is a straggler: %s", server_round, pid, profile.name, reason)
        if status == "failed":
            log.warning("round %d: terminal %d (%s) failed: %s", server_round, pid, profile.name, reason)
        self.ledger.add(
            LedgerRow(
                round=server_round,
                phase=message_type.split(".", 1)[0],
                client_id=pid,
                device=profile.name,
                status=status,
                reason=reason,
                flops=facts.flops,
                compute_s=cost.compute_s,
                bytes_up=facts.bytes_up,
                bytes_down=bytes_down,
                comm_s=cost.comm_s,
                energy_j=cost.energy_j,
                message_type=message_type,
                seq=self.ledger.next_seq(server_round, pid),
                start_s=slot.start_s,
                end_s=slot.end_s,
                flops_method=facts.flops_method,
                gpu_mem_bytes=facts.gpu_mem_bytes,
                dp_epsilon=facts.dp_epsilon,
                attempt=self.attempt,
                measured_compute_s=facts.measured_compute_s,
                measured_comm_s=facts.measured_comm_s,
            )
        )
        return status == "ok"

    def reject(self, server_round: int, node_id: int, reason: str) -> None:
        """Mark a delivered update as rejected before aggregation (called by strategy wrappers)."""
        pid = self.partition_of(node_id)
        log.warning("round %d: update of terminal %d rejected: %s", server_round, pid, reason)
        self.ledger.mark(server_round, pid, "rejected", reason)
