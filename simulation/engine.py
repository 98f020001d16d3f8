"""fedsplit's emulation engine: Flower ClientApps on Ray actors with per-device budgets.

:class:`RayEngine` keeps one pool of Ray actors per distinct device budget (``num_cpus``,
``num_gpus``); each actor hosts the ClientApp and runs with as many torch threads as CPUs it holds.
:class:`EngineGrid` implements Flower's :class:`~flwr.serverapp.Grid` over those pools, so any
Flower strategy or ServerApp runs on it unchanged.

Why it is fast: a round's messages are sent to the actors in a few batched calls (not one Ray call
per client), actors are reused for every client and round, and nothing is O(population) per round:
a terminal's :class:`~flwr.app.Context` is created the first time it is sampled and then kept by the
driver (so ``Context.state`` persists across rounds whichever actor runs the terminal next). A
large record that the round's batches share (the global model) is put in Ray's object store once
a round instead of being pickled into every call (:mod:`fedsplit.simulation.shared_content`;
``engine.shared_record_bytes`` is the size from which it is). With ``transport = "channel"`` (the
default) an actor on the driver's machine gets its batches through a Unix socket of its own
(:mod:`fedsplit.simulation.actor_channel`), which costs the driver a fraction of a Ray call's CPU;
Ray still starts, places, replaces and kills the actors, and carries the rounds whose model goes
through its object store.

Failures: an exception inside the ClientApp becomes an error reply for that client only; an actor
process that dies (a failed Ray call, or its channel closing) is replaced, and the messages of the
batches it held are retried one by one, each alone on an actor, so only the client that kills its
process loses its reply.

Injected faults (:mod:`fedsplit.faults`): with ``engine.faults`` set (``message -> "crash" | "kill" |
None``), a ``crash`` raises :class:`~fedsplit.faults.InjectedCrash` in place of the ClientApp (an
error reply, the context unchanged) and a ``kill`` ends the actor process (``os._exit``) before the
message runs, so the engine replaces it as it does any dying actor. :class:`SerialEngine`, which
has no process to lose, answers a ``kill`` with the same ``CLIENT_APP_CRASHED`` error reply.

Compute metering: unless the ClientApp reports its own FLOPs (``app.reports_flops = True``, as
fedsplit's ClientApp does), the actor runs each message through
:func:`fedsplit.clients.flop_meter.metered_call` (FlopCounterMode, else a timed fallback) and returns
``(flops, method)`` beside the reply, not inside it: the reply's bytes are what the app sent.
:meth:`EngineGrid.measured_compute` hands the measurement to :class:`MeteredGrid` once. The
``meter`` option (or the ``FEDSPLIT_METER`` environment variable) is ``auto`` (that rule),
``always`` or ``off``.
"""

from __future__ import annotations

import gc
import heapq
import logging
import math
import os
import queue
import re
import socket
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import islice
from dataclasses import dataclass
from uuid import uuid4

import ray
from flwr.app import ArrayRecord, Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from fedsplit.clients.flop_meter import metered_call
from fedsplit.config.errors import ActorStartError, ClusterTooSmallError, RayUnreachableError
from fedsplit.config.schema import DEFAULT_TRANSPORT, TRANSPORTS
from fedsplit.devices import DeviceProfile, Population
from fedsplit.faults import InjectedCrash
from fedsplit.simulation import warm_actors as warm
from fedsplit.simulation.actor_channel import PAUSE, ActorEnd, ChannelClosed, DriverChannel, Listener, answer_chunks
from fedsplit.simulation.actor_payload import pack, unpack
from fedsplit.simulation.shared_content import SHARED_RECORD_BYTES, Layout, restore, shared_records, strip

log = logging.getLogger("fedsplit")

Budget = tuple[float, float]  # (num_cpus, num_gpus)
Measured = tuple[int, str]  # (FLOPs, method): the engine's measurement of one reply's compute
FaultHook = Callable[[Message], "str | None"]  # message -> "crash" | "kill" | None (injected faults)
RepliesHook = Callable[[list[Message]], None]  # called with each batch of replies as it arrives
KILLED_REASON = "actor process died: injected kill"
METER_MODES = ("auto", "always", "off")
#: Seconds the engine waits for its actors to start and connect their channels at its first
#: execute; an actor not up by then is reached through Ray's calls (as with ``transport = "ray"``).
CHANNEL_OPEN_S = 120.0
#: Objects up to this size (bytes) travel inline in the reply to a Ray call, in place of Ray's
#: shared-memory object store (Ray's default cut is 100 KiB). A batch's replies are just above it
#: for small models: measured on this project's 2-core machine, 10 lists of 20 KB come back in
#: 1.05 ms inline against 2.19 ms through the store, 1 MB in 1.85 against 4.42 ms; from about 4 MB
#: on the two ways cost the same, so larger objects (CNN weights) still go through the store.
INLINE_OBJECT_BYTES = 2 * 1024 * 1024


def check_ray_reachable(address: str | None, timeout_s: float = 5.0) -> None:
    """Raise :class:`RayUnreachableError` unless a TCP connection to ``address`` (``HOST:PORT`` or
    ``ray://HOST:PORT``) opens within ``timeout_s`` seconds; empty and ``auto`` are not checked.

    Without it ``ray.init`` retries an address where nothing listens for minutes, printing
    "Failed to connect to GCS" again and again.
    """
    if not address or address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise RayUnreachableError(
            f"engine.ray_address = {address!r}: no Ray cluster answers there ({reason}); start one with "
            "`ray start --head --port=6379` on that machine, or leave engine.ray_address empty for a local Ray"
        ) from None


def ray_init_options(address: str | None = None, num_cpus: int | None = None) -> dict:
    """Keyword arguments of ``ray.init`` for a run's engine.

    Attaching to a cluster (``address``) takes that cluster's settings as they are; a local
    cluster started here also returns objects up to :data:`INLINE_OBJECT_BYTES` inline.
    """
    kwargs: dict = {"include_dashboard": False, "logging_level": logging.WARNING, "log_to_driver": True}
    if address:
        kwargs["address"] = address
        return kwargs
    if num_cpus:
        kwargs["num_cpus"] = num_cpus
    kwargs["_system_config"] = {"max_direct_call_object_size": INLINE_OBJECT_BYTES}
    return kwargs


def meter_mode(mode: str | None = None) -> str:
    """The metering mode: ``mode`` if given, else ``$FEDSPLIT_METER``, else ``auto``."""
    mode = mode or os.environ.get("FEDSPLIT_METER") or "auto"
    if mode not in METER_MODES:
        raise ValueError(f"meter mode {mode!r}: expected one of {', '.join(METER_MODES)}")
    return mode


def meters(app: ClientApp, mode: str) -> bool:
    """Whether the engine meters ``app``'s calls (``auto``: unless it reports its own FLOPs)."""
    if mode == "auto":
        return not getattr(app, "reports_flops", False)
    return mode == "always"


_ERROR_LINE = re.compile(r"^\s*((?:\w+\.)*\w*(?:Error|Exception)\b: .+)$", re.MULTILINE)


def error_line(exc: BaseException) -> str:
    """The line of a (Ray) error's text that names the root cause (its last ``SomeError: ...``
    line; Ray's wrap the worker's traceback), else its first line; at most 500 characters."""
    text = str(exc)
    found = _ERROR_LINE.findall(text)
    line = found[-1].strip() if found else (text.strip().splitlines() or [type(exc).__name__])[0]
    return line[:500]


def start_failure(exc: BaseException) -> ActorStartError | None:
    """:class:`ActorStartError` when ``exc`` (a failed actor call) says that the actor's creation
    raised (Ray's ``actor_init_failed``: e.g. the ClientApp could not be unpickled there), not
    that a running actor died; else None."""
    if isinstance(exc, ray.exceptions.RayActorError) and exc.actor_init_failed:
        hint = ""
        if "No module named" in str(exc):
            hint = " (Ray's worker processes, on every node, must be able to import the ClientApp's code: install it there)"
        return ActorStartError(f"a Ray actor could not start the ClientApp: {error_line(exc)}{hint}")
    return None


def _error_reply(msg: Message, code: int, reason: str) -> Message:
    return Message(Error(code=code, reason=reason), reply_to=msg)


def run_client_app(
    app: ClientApp, msg: Message, context: Context, meter: bool = False, fault: str | None = None
) -> tuple[Message, Context, Measured | None]:
    """Run ``app`` on one message; an exception becomes an error reply (the context is kept).

    With ``meter`` the call's compute is measured (:func:`~fedsplit.clients.flop_meter.metered_call`)
    and returned as ``(flops, method)``; else, and for an error reply, None. With ``fault =
    "crash"`` the app does not run: :class:`~fedsplit.faults.InjectedCrash` is raised in its place.
    """
    try:
        if fault == "crash":
            raise InjectedCrash(f"injected crash of terminal {context.node_config.get('partition-id')}")
        if meter:
            reply, flops, method = metered_call(app, msg, context)
            return reply, context, (flops, method)
        return app(msg, context), context, None
    except Exception as exc:  # noqa: BLE001 - any ClientApp failure is that client's failure
        reason = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}"
        return _error_reply(msg, ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason), context, None


@ray.remote
class ClientAppActor:
    """A Ray actor hosting a ClientApp, running with ``num_threads`` torch threads.

    With ``meter`` every call's compute is measured (see :func:`run_client_app`).
    """

    def __init__(self, client_app: ClientApp, num_threads: int, meter: bool = False) -> None:
        import torch

        torch.set_num_threads(max(1, num_threads))
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, num_threads)))
        self._channel: ActorEnd | None = None  # opened by open_channel, answered by answer_channel
        self.load_app(client_app, meter)
        # Its imports and its app live as long as the process: out of the cyclic collector's full
        # walks (0.12 s each, at random between messages), as the server's (simulation/frozen_heap.py).
        gc.freeze()

    def load_app(self, client_app: ClientApp, meter: bool = False) -> None:
        """Host another run's ClientApp (a warm actor, :mod:`fedsplit.simulation.warm_actors`)."""
        self.app = client_app
        self.meter = meter

    def run_batch(self, payload: bytes, shared: Sequence[ArrayRecord] | None = None) -> bytes:
        """Run the ClientApp on each ``(message, context)`` of a batch in turn.

        ``payload`` is ``(items, faults, layouts)`` packed by
        :func:`~fedsplit.simulation.actor_payload.pack`, and so is the result: one ``(reply,
        context, measured, seconds)`` per item, ``seconds`` being the real seconds the app took
        on this actor. ``faults[i]`` is the injected fault of item ``i``: ``"kill"`` ends this
        process when the item is reached (the replies of the batch not yet sent are lost, as
        when any process dies). ``shared`` are the round's records sent once through the object store and
        ``layouts[i]`` where they go back into message ``i``
        (:mod:`fedsplit.simulation.shared_content`).
        """
        items, faults, layouts = unpack(payload)
        return pack(self._run_items(items, faults, shared, layouts))

    def answer_batch(self, payload: bytes) -> Iterator[bytes]:
        """:meth:`run_batch` for a channel: the results packed in the groups of
        :func:`~fedsplit.simulation.actor_channel.answer_chunks`, each yielded (and sent) as soon
        as its items have run, so the driver handles them while the rest of the batch runs."""
        items, faults, layouts = unpack(payload)
        faults = faults or [None] * len(items)
        layouts = layouts or [None] * len(items)
        start = 0
        for size in answer_chunks(len(items)):
            end = start + size
            yield pack(self._run_items(items[start:end], faults[start:end], None, layouts[start:end]))
            start = end

    def open_channel(self, path: str, driver_node_id: str) -> bool:
        """Connect to the engine's channel at ``path`` (:mod:`fedsplit.simulation.actor_channel`);
        False, and nothing opened, when this actor is not on the driver's node or cannot connect.
        The batches sent through it are answered by :meth:`answer_channel`."""
        if ray.get_runtime_context().get_node_id() != driver_node_id:
            return False
        if self._channel is not None:  # an earlier engine's, closed or paused
            self._channel.close()
            self._channel = None
        try:
            self._channel = ActorEnd(path)
        except OSError:
            return False
        return True

    def answer_channel(self) -> None:
        """Answer the channel's batches, as :meth:`run_batch` answers a call, until the engine
        pauses it (:data:`~fedsplit.simulation.actor_channel.PAUSE`) or closes it.

        It runs on the thread Ray runs this actor's calls on (the process's main thread), as the
        calls do, and holds it: a call to this actor waits until the channel pauses or closes.
        """
        if self._channel is not None and not self._channel.answer_all(self.answer_batch):
            self._channel = None

    def _run_items(
        self,
        items: Sequence[tuple[Message, Context]],
        faults: Sequence[str | None] | None,
        shared: Sequence[ArrayRecord] | None,
        layouts: Sequence[Layout | None] | None,
    ) -> list[tuple[Message, Context, Measured | None, float]]:
        faults = faults or [None] * len(items)
        layouts = layouts or [None] * len(items)
        out = []
        for (msg, ctx), fault, layout in zip(items, faults, layouts):
            if fault == "kill":
                os._exit(1)
            msg = restore(msg, layout, shared)
            started = time.perf_counter()
            out.append((*run_client_app(self.app, msg, ctx, self.meter, fault), time.perf_counter() - started))
        return out

    def pid(self) -> int:
        """Process id of the actor (tests kill it to emulate a crash)."""
        return os.getpid()


class _ChannelCall:
    """The key of a batch sent through a channel (:meth:`RayEngine._execute_batches`), with the
    number of its answer frames still to come (:func:`~fedsplit.simulation.actor_channel.answer_chunks`)
    and of its items answered so far."""

    __slots__ = ("answered", "frames_left")

    def __init__(self, items: int) -> None:
        self.frames_left = len(answer_chunks(items))
        self.answered = 0


def _raises(exc: BaseException) -> Callable[[], bytes]:
    """A fetch that raises ``exc`` (a batch whose channel closed)."""

    def fetch() -> bytes:
        raise exc

    return fetch


def split_evenly(items: Sequence, parts: int) -> list[list]:
    """``items`` in at most ``parts`` consecutive batches whose sizes differ by at most one.

    Equal-sized batches keep the actors of a pool busy for the same time (10 clients on 2 actors
    in 4 batches are 3+2 per actor, not 3+3 and 3+1).
    """
    parts = max(1, min(parts, len(items)))
    base, extra = divmod(len(items), parts)
    batches, start = [], 0
    for i in range(parts):
        end = start + base + (1 if i < extra else 0)
        batches.append(list(items[start:end]))
        start = end
    return [b for b in batches if b]


def split_balanced(items: Sequence, parts: int, cost: Callable[[object], float]) -> list[list]:
    """``items`` in at most ``parts`` batches of about equal total ``cost`` (longest first: each
    item, heaviest first, joins the batch with the least cost so far), heaviest batch first.

    A batch lists its items heaviest first. With equal costs the items are dealt in turn (batch
    sizes differ by at most one), each batch keeping their order. The engine uses each terminal's
    last measured seconds as the cost, so that a pool's actors finish a round together however
    unequal the terminals' data (Dirichlet partitions).
    """
    parts = max(1, min(parts, len(items)))
    batches: list[list] = [[] for _ in range(parts)]
    heap = [(0.0, i) for i in range(parts)]  # (cost so far, batch index): ties go to the lower index
    for item in sorted(items, key=cost, reverse=True):  # a stable sort: equal costs keep their order
        load, i = heapq.heappop(heap)
        batches[i].append(item)
        heapq.heappush(heap, (load + cost(item), i))
    loads = {i: load for load, i in heap}
    return [batches[i] for i in sorted(range(parts), key=lambda i: -loads[i]) if batches[i]]


@dataclass
class ActorPool:
    """The actors of one device budget."""

    budget: Budget
    size: int
    actors: list

    def options(self) -> dict[str, float]:
        """Ray resource options of this pool's actors."""
        return {"num_cpus": self.budget[0], "num_gpus": self.budget[1]}


def check_local_budgets(population: Population, num_cpus: float | None = None) -> None:
    """Refuse a population that a local Ray of ``num_cpus`` CPUs (default: this machine's cores)
    cannot host: some device class's ``num_cpus`` is above it, so none of its actors could start.

    Raises
    ------
    ClusterTooSmallError
        Naming the first such class, its budget and what to change.
    """
    local_cpus = float(num_cpus or os.cpu_count() or 1)
    for name, profile in population.profiles.items():
        if profile.num_cpus > local_cpus:
            raise ClusterTooSmallError(
                f"device class {name!r} needs num_cpus = {profile.num_cpus:g} per terminal, and the local Ray "
                f"has {local_cpus:g} CPUs (engine.num_cpus, default: this machine's cores): lower that "
                "profile's num_cpus, or attach a larger cluster (engine.ray_address)"
            )


def plan_pools(
    budgets: Iterable[Budget], cluster_cpus: float, cluster_gpus: float, actors_per_budget: int = 0
) -> dict[Budget, int]:
    """Number of actors per budget so that all of them fit the cluster at once.

    Each budget gets CPUs in proportion to its demand (at least one actor each); with
    ``actors_per_budget`` > 0 that number is used as is. GPU fractions are dropped where the
    cluster has no GPU. Raises ``ValueError`` naming the budget that cannot fit.
    """
    budgets = sorted(set(budgets))
    if actors_per_budget > 0:
        return {b: actors_per_budget for b in budgets}
    plan: dict[Budget, int] = {}
    share = cluster_cpus / max(len(budgets), 1)
    for cpus, gpus in budgets:
        if cpus > cluster_cpus:
            raise ClusterTooSmallError(
                f"a device class needs num_cpus = {cpus} but the Ray cluster has {cluster_cpus} CPUs"
            )
        count = max(1, int(share // cpus))
        if gpus > 0 and cluster_gpus > 0:
            count = min(count, max(1, int(cluster_gpus // gpus)))
        plan[(cpus, gpus)] = count
    return plan


class RayEngine:
    """Ray actor pools hosting a ClientApp for a population of emulated terminals.

    Parameters
    ----------
    client_app : ClientApp
        The app every terminal runs.
    population : Population
        Device class of every terminal (its Ray budget selects the actor pool).
    run_config : dict, optional
        Flower run config handed to every terminal's Context.
    ray_address : str, optional
        Attach to an existing Ray cluster (``ray start --head``) instead of starting one.
    num_cpus : int, optional
        CPUs of a locally started Ray (default: all).
    num_actors : int, optional
        Force this many actors per budget (0 = as many as fit).
    cpus_per_actor : float, optional
        Override every device's CPU budget (benchmarks: one actor of 1 CPU).
    batch_factor : int
        A round's messages go out in ``actors x batch_factor`` batches per pool, balanced by each
        terminal's measured seconds (:func:`split_balanced`; default 1: one Ray call per actor
        and round). More batches than ``actors x inflight_per_actor`` let
        the least busy actor take the next one (balancing uneven clients) at the cost of a Ray
        call each (~1 ms of the driver's time on a 2-core machine, during which actors wait).
    inflight_per_actor : int
        Batches queued at an actor at once (2: the next one starts without a round trip).
    meter : str, optional
        Compute metering: ``auto`` (meter the app unless it has ``reports_flops = True``),
        ``always`` or ``off``; default ``$FEDSPLIT_METER``, else ``auto``.
    transport : str
        How batches reach the actors: ``channel`` (default), a Unix socket to each actor on
        this machine (:mod:`fedsplit.simulation.actor_channel`, opened at the first
        :meth:`execute`; measured against Ray calls there), except in rounds whose global model
        goes through Ray's object store, and Ray calls to other actors; ``ray``, Ray calls only.
    """

    def __init__(
        self,
        client_app: ClientApp,
        population: Population,
        *,
        run_config: dict | None = None,
        ray_address: str | None = None,
        num_cpus: int | None = None,
        num_actors: int = 0,
        cpus_per_actor: float | None = None,
        batch_factor: int = 1,
        inflight_per_actor: int = 2,
        meter: str | None = None,
        transport: str = DEFAULT_TRANSPORT,
    ) -> None:
        if transport not in TRANSPORTS:
            raise ValueError(f"engine transport {transport!r}: expected one of {', '.join(TRANSPORTS)}")
        self.client_app = client_app
        self.population = population
        self.run_config = dict(run_config or {})
        self.ray_address = ray_address
        self.num_cpus = num_cpus
        self.num_actors = num_actors
        self.cpus_per_actor = cpus_per_actor
        self.batch_factor = batch_factor
        self.inflight_per_actor = max(1, inflight_per_actor)
        self.meter = meters(client_app, meter_mode(meter))
        self.run_id = int.from_bytes(os.urandom(6), "big")
        self.contexts: dict[int, Context] = {}
        self.seconds: dict[tuple[int, str], float] = {}  # (node, message type) -> last real seconds
        self.last_batches: list[list[int]] = []  # terminals of each batch of the last execute, as dispatched
        self.execute_s = 0.0  # wall seconds spent in execute (dispatch, the actors' work, replies), all calls
        self.app_s = 0.0  # real seconds the actors spent running the ClientApp, summed over messages, all calls
        self._while_training: list[Callable[[], None]] = []  # driver work for the next exchange (run_while_training)
        self.pools: dict[Budget, ActorPool] = {}
        self._started_ray = False
        self.actor_restarts = 0
        self.faults: FaultHook | None = None
        self.shared_record_bytes = SHARED_RECORD_BYTES  # records sent once a round from this size on
        self.transport = transport
        self._channels: dict[int, DriverChannel] = {}  # id(actor) -> its channel (actors on this machine)
        self._arrivals: queue.SimpleQueue = queue.SimpleQueue()  # (channel, answer or ChannelClosed), every channel's
        self._channels_opened = False
        self._answering: dict[int, object] = {}  # id(actor) -> its running answer_channel call
        self._loading: list = []  # warm actors' load_app calls, checked before the engine is used
        self._start_failed = False  # an actor could not start the app: none is kept for a later run

    @classmethod
    def from_run_config(cls, cfg, client_app: ClientApp) -> "RayEngine":  # noqa: ANN001 - RunConfig
        """An engine for a fedsplit :class:`~fedsplit.config.RunConfig`."""
        from fedsplit.devices import resolve_profiles

        return cls(
            client_app,
            Population(cfg.devices, resolve_profiles(cfg.profiles)),
            ray_address=cfg.engine.ray_address or None,
            num_cpus=cfg.engine.num_cpus or None,
            num_actors=cfg.engine.actors_per_device,
            transport=cfg.engine.transport,
        )

    # --- lifecycle -----------------------------------------------------------------------------
    def start(self) -> "RayEngine":
        """Start (or attach to) Ray and create the actor pools."""
        self.claim_task_identity()
        if not ray.is_initialized():
            if not self.ray_address:  # a local Ray of num_cpus (default: every core): checked before it starts
                check_local_budgets(self.population, self.num_cpus)
            check_ray_reachable(self.ray_address)
            ray.init(**ray_init_options(self.ray_address, self.num_cpus))
            self._started_ray = True
        resources = ray.cluster_resources()
        cluster_cpus = float(resources.get("CPU", 1))
        cluster_gpus = float(resources.get("GPU", 0))
        budgets = [self.budget_of(p, cluster_gpus) for p in self.population.profiles.values()]
        plan = plan_pools(budgets, cluster_cpus, cluster_gpus, self.num_actors)
        warm.release_idle(keep=plan)  # idle actors this run cannot use give their resources back
        for budget, count in plan.items():
            pool = ActorPool(budget=budget, size=count, actors=[])
            pool.actors = [self._new_actor(pool) for _ in range(count)]
            self.pools[budget] = pool
        self._check_loaded()
        return self

    def _check_loaded(self) -> None:
        """Wait for the warm actors' ``load_app`` calls (milliseconds: the actors run already).

        A warm actor that died while idle gives its place to a new actor. One whose ``load_app``
        raised still holds the previous run's app: the engine shuts down and raises
        :class:`ActorStartError`. New actors' failures show at their first call (:func:`start_failure`).
        """
        loading, self._loading = self._loading, []
        for actor, pool, ref in loading:
            try:
                ray.get(ref)
            except ray.exceptions.RayActorError:  # died while idle
                pool.actors[pool.actors.index(actor)] = self._fresh_actor(pool)
            except ray.exceptions.RayError as exc:
                self._start_failed = True
                self.shutdown()
                raise ActorStartError(f"a warm Ray actor could not load the ClientApp: {error_line(exc)}") from None

    def claim_task_identity(self) -> None:
        """Make this process the run's server: messages the ServerApp creates take this run's id."""
        TaskIdentity.task_id = 1
        TaskIdentity.run_id = self.run_id
        TaskIdentity.node_id = SUPERLINK_NODE_ID

    def describe(self) -> dict[str, object]:
        """Where the engine runs: Ray cluster address, nodes, and actors per budget."""
        return {
            "ray_address": ray.get_runtime_context().gcs_address,
            "ray_nodes": sum(1 for n in ray.nodes() if n.get("Alive")),
            "actors": {f"cpus={b[0]:g},gpus={b[1]:g}": p.size for b, p in self.pools.items()},
        }

    def budget_of(self, profile: DeviceProfile, cluster_gpus: float) -> Budget:
        """The Ray budget of a device class on this cluster (GPU only where one exists)."""
        cpus = self.cpus_per_actor if self.cpus_per_actor is not None else profile.num_cpus
        return (float(cpus), float(profile.num_gpus) if cluster_gpus > 0 else 0.0)

    def _new_actor(self, pool: ActorPool):  # noqa: ANN202
        actor = warm.take(pool.budget)
        if actor is not None:
            self._loading.append((actor, pool, actor.load_app.remote(self.client_app, self.meter)))  # runs before any later call
            return actor
        return self._fresh_actor(pool)

    def _fresh_actor(self, pool: ActorPool):  # noqa: ANN202
        """A new actor of ``pool``'s budget (its process starts in the background)."""
        threads = max(1, math.floor(pool.budget[0]))
        return ClientAppActor.options(**pool.options()).remote(self.client_app, threads, self.meter)

    def shutdown(self) -> None:
        """Kill the actors (and Ray, if this engine started it); inside
        :func:`~fedsplit.simulation.warm_actors.warm_actors` keep them for the next run instead."""
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()
        self._answering.clear()
        self._channels_opened = False
        for pool in self.pools.values():
            for actor in pool.actors:
                if self._started_ray or self._start_failed or not warm.give_back(pool.budget, actor):
                    ray.kill(actor, no_restart=True)
        self.pools.clear()
        if self._started_ray:
            ray.shutdown()
            self._started_ray = False

    def __enter__(self) -> "RayEngine":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # --- terminals -----------------------------------------------------------------------------
    @staticmethod
    def node_id_of(partition_id: int) -> int:
        """Node id of a terminal (ids are ``partition id + 1``; 0 is reserved by Flower)."""
        return partition_id + 1

    @staticmethod
    def partition_of(node_id: int) -> int:
        """Terminal (partition) id of a node."""
        return node_id - 1

    def context_of(self, node_id: int) -> Context:
        """The node's Context, created the first time the node is used."""
        ctx = self.contexts.get(node_id)
        if ctx is None:
            pid = self.partition_of(node_id)
            ctx = Context(
                run_id=self.run_id,
                node_id=node_id,
                node_config={"partition-id": pid, "num-partitions": self.population.size},
                state=RecordDict(),
                run_config=dict(self.run_config),
            )
            self.contexts[node_id] = ctx
        return ctx

    def grid(self) -> "EngineGrid":
        """A Flower Grid over this engine."""
        return EngineGrid(self)

    # --- execution -----------------------------------------------------------------------------
    def run_while_training(self, work: Callable[[], None]) -> None:
        """Run ``work`` in this process during the next :meth:`execute`, once its first batches
        are on their way to the actors: the driver's own work (the server's evaluation of the
        model the round just made) then overlaps the terminals' training instead of delaying it.
        At an engine's first exchange it runs earlier, while the channels wait for the actors to
        start (seconds for new processes, during which the driver would only wait).
        :meth:`run_deferred_work` runs it at once instead (no exchange came). ``work`` must not
        raise (the server loop's wraps its own)."""
        self._while_training.append(work)

    def run_deferred_work(self) -> None:
        """Run the work given to :meth:`run_while_training` and not yet run, in the order given."""
        work, self._while_training = self._while_training, []
        for fn in work:
            fn()

    def execute(
        self,
        messages: Sequence[Message],
        timeout: float | None = None,
        measured: dict[str, Measured] | None = None,
        on_replies: RepliesHook | None = None,
    ) -> list[Message]:
        """Run every message on an actor of its terminal's pool; return the replies.

        When the engine meters the app, each reply's ``(flops, method)`` is put in ``measured``
        under the id of the message it replies to. ``on_replies`` is called with the replies of
        each answer as it comes back (a Ray call's: its whole batch; a channel's batch answers in
        parts, :func:`~fedsplit.simulation.actor_channel.answer_chunks`), after the next batches
        are dispatched: the caller's per-reply work then runs while the actors still train (the
        returned list is unchanged).
        """
        started = time.perf_counter()
        try:
            return self._execute_batches(messages, timeout, measured, on_replies)
        finally:
            self.execute_s += time.perf_counter() - started

    def _execute_batches(
        self, messages: Sequence[Message], timeout: float | None, measured: dict[str, Measured] | None, on_replies: RepliesHook | None
    ) -> list[Message]:
        cluster_gpus = 1.0 if any(b[1] > 0 for b in self.pools) else 0.0
        by_pool: dict[Budget, list[Message]] = {}
        for msg in messages:
            profile = self.population.profile_of(self.partition_of(msg.metadata.dst_node_id))
            by_pool.setdefault(self.budget_of(profile, cluster_gpus), []).append(msg)
        queue: deque[tuple[Budget, list[Message], bool]] = deque()
        for budget, msgs in by_pool.items():
            pool = self.pools[budget]
            batches = split_balanced(msgs, pool.size * self.batch_factor, self._expected_seconds(msgs))
            queue.extend((budget, batch, False) for batch in batches)
        self.last_batches = [[self.partition_of(m.metadata.dst_node_id) for m in batch] for _, batch, _ in queue]
        # The round's large records that several batches carry (the global model) go to the
        # object store once; each call carries a reference and the messages without them.
        shared = shared_records([batch for _, batch, _ in queue], self.shared_record_bytes)
        positions = {id(record): index for index, record in enumerate(shared)}
        shared_ref = ray.put(shared) if shared else None
        # Batches go through the actors' channels when every actor that may get one has a channel
        # and nothing travels through the object store; else through Ray calls.
        if self.transport == "channel" and not self._channels_opened:
            self._open_channels([actor for pool in self.pools.values() for actor in pool.actors])
        by_channel = shared_ref is None and all(
            id(actor) in self._channels for budget in by_pool for actor in self.pools[budget].actors
        )
        # Each actor takes up to ``inflight_per_actor`` batches at once: the next batch is already
        # queued at the actor when the current one ends, so no round trip is spent idle. A retry
        # (a message whose actor died) runs alone on its actor, so that if it kills the process
        # again no other message is lost with it.
        inflight: dict[int, int] = {}  # id(actor) -> batches queued at it
        exclusive: set[int] = set()  # actors running a retry
        replaced: dict[int, object] = {}  # id -> dead actor (kept referenced: ids stay unique)
        running: dict = {}  # a Ray call's ObjectRef, or a _ChannelCall -> (actor, budget, batch, retry)
        ended: deque[tuple[object, Callable[[], bytes], bool]] = deque()  # channel calls that failed as they were sent
        replies: list[Message] = []
        deadline = None if timeout is None else time.monotonic() + timeout

        def pick(budget: Budget, retry: bool):  # noqa: ANN202 - the least busy actor with room
            limit = 1 if retry else self.inflight_per_actor
            candidates = [a for a in self.pools[budget].actors if id(a) not in exclusive and inflight.get(id(a), 0) < limit]
            return min(candidates, key=lambda a: inflight.get(id(a), 0), default=None)

        def send(actor, payload: bytes, items: int) -> object:  # noqa: ANN001 - the key of the batch in ``running``
            channel = self._channels.get(id(actor)) if by_channel else None
            if channel is None:  # Ray calls (or a replacement actor whose channel did not open)
                self._pause_channel(actor)
                return actor.run_batch.remote(payload, shared_ref)
            if id(actor) not in self._answering:
                self._answering[id(actor)] = actor.answer_channel.remote()
            call = _ChannelCall(items)
            channel.pending.append(call)
            try:
                channel.send(payload)
            except ChannelClosed as exc:  # its process died: fail the batch now, as a dead actor's call
                ended.append((call, _raises(exc), True))
            return call

        def dispatch() -> None:
            for _ in range(len(queue)):
                budget, batch, retry = queue.popleft()
                actor = pick(budget, retry)
                if actor is None:
                    queue.append((budget, batch, retry))
                    continue
                inflight[id(actor)] = inflight.get(id(actor), 0) + 1
                if retry:
                    exclusive.add(id(actor))
                stripped = [strip(m, positions) for m in batch] if positions else [(m, None) for m in batch]
                items = [(sent, self.context_of(m.metadata.dst_node_id)) for (sent, _), m in zip(stripped, batch)]
                layouts = [layout for _, layout in stripped] if positions else None
                faults = [self.faults(m) for m in batch] if self.faults is not None else None
                running[send(actor, pack((items, faults, layouts)), len(batch))] = (actor, budget, batch, retry)

        dispatch()
        self.run_deferred_work()  # while the batches just sent train
        while running:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            done = [ended.popleft()] if ended else self._answers(running, left)
            if not done:
                log.warning("engine: %d batches still running at the %.1f s timeout", len(running), timeout)
                break
            arrived: list[Message] = []
            for key, answer, last in done:  # ``last``: the batch's last answer (a channel's come in parts)
                if key not in running:  # a batch of an earlier call that timed out
                    continue
                actor, budget, batch, retry = running[key]
                if last:
                    del running[key]
                    inflight[id(actor)] -= 1
                    exclusive.discard(id(actor))
                try:
                    results = unpack(answer())
                except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError, ChannelClosed) as exc:
                    failure = start_failure(exc)
                    if failure is not None:  # every actor, and any replacement, would fail alike
                        self._start_failed = True
                        raise failure from None
                    if id(actor) not in replaced:  # the first of its batches to fail replaces it
                        replaced[id(actor)] = actor
                        self._replace(actor, budget)
                    batch = batch[getattr(key, "answered", 0):]  # a channel's replies that came before its death stand
                    if retry:  # it died alone on its actor: this message killed it
                        for msg in batch:
                            injected = self.faults is not None and self.faults(msg) == "kill"
                            reason = KILLED_REASON if injected else f"actor process died: {type(exc).__name__}: {str(exc)[-1500:]}"
                            arrived.append(_error_reply(msg, ErrorCode.CLIENT_APP_CRASHED, reason))
                    else:
                        queue.extend((budget, [m], True) for m in batch)
                else:
                    if isinstance(key, _ChannelCall):
                        key.answered += len(results)
                    for reply, ctx, found, seconds in results:
                        self.contexts[ctx.node_id] = ctx
                        self.seconds[(ctx.node_id, reply.metadata.message_type)] = seconds
                        self.app_s += seconds
                        arrived.append(reply)
                        if found is not None and measured is not None:
                            measured[reply.metadata.reply_to_message_id] = found
            dispatch()
            replies += arrived
            if on_replies is not None and arrived:
                on_replies(arrived)
        return replies

    def _answers(self, running: dict, left: float | None) -> list[tuple[object, Callable[[], bytes], bool]]:
        """The next answers, as ``[(key, fetch, last)]`` (``fetch()`` gives the packed results or
        raises as a dead actor's call does; ``last``: the batch's last answer, those of a channel
        coming in parts); empty at the timeout (``left`` seconds, None: none)."""
        channels = any(isinstance(key, _ChannelCall) for key in running)
        calls = any(isinstance(key, ray.ObjectRef) for key in running)
        if not (channels and calls):
            return self._channel_answers(running, left) if channels else self._ray_answers(running, left)
        # Both at once (an actor replaced during a round whose channel did not open): look at each in turn.
        deadline = None if left is None else time.monotonic() + left
        while True:
            done = self._ray_answers(running, 0.0) or self._channel_answers(running, 0.01)
            if done or (deadline is not None and time.monotonic() >= deadline):
                return done

    @staticmethod
    def _ray_answers(running: dict, left: float | None) -> list[tuple[object, Callable[[], bytes], bool]]:
        """The next Ray call to end, as ``[(ref, fetch, True)]``; empty at the timeout."""
        refs = [key for key in running if isinstance(key, ray.ObjectRef)]
        done, _ = ray.wait(refs, num_returns=1, timeout=left)
        return [(ref, lambda ref=ref: ray.get(ref), True) for ref in done]

    def _channel_answers(self, running: dict, left: float | None) -> list[tuple[object, Callable[[], bytes], bool]]:
        """The next channel answers for batches in ``running``, as ``[(call, fetch, last)]``: one
        frame of a batch's answer, or every pending batch of a channel that closed; empty at the
        timeout. Answers to batches no longer running (an earlier call's, after its timeout) are
        dropped."""
        deadline = None if left is None else time.monotonic() + left
        while True:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                channel, answer = self._arrivals.get(timeout=wait)
            except queue.Empty:
                return []
            if isinstance(answer, ChannelClosed):
                calls = list(channel.pending)
                channel.pending.clear()
                done = [(call, _raises(answer), True) for call in calls if call in running]
            elif channel.pending:
                call = channel.pending[0]
                call.frames_left -= 1
                if call.frames_left == 0:
                    channel.pending.popleft()
                done = [(call, lambda answer=answer: answer, call.frames_left == 0)] if call in running else []
            else:  # an answer with no batch of this engine waiting for it: cannot happen, dropped
                done = []
            if done:
                return done

    def _open_channels(self, actors: list) -> None:
        """Open a channel to each of ``actors`` that runs on this machine (waiting up to
        :data:`CHANNEL_OPEN_S` for them to start); the others keep Ray's calls."""
        self._channels_opened = True
        if not actors:
            return
        try:
            node = ray.get_runtime_context().get_node_id()
        except Exception as exc:  # noqa: BLE001 - a driver with no node of its own (Ray Client): Ray calls
            log.debug("engine: no channels (%s: %s)", type(exc).__name__, exc)
            return
        listeners: list[Listener] = []
        try:
            listeners += [Listener() for _ in actors]
        except OSError as exc:  # e.g. a temporary folder whose path is too long for a Unix socket
            for listener in listeners:
                listener.close()
            log.warning("engine: transport 'channel' cannot listen on a Unix socket (%s); the actors get Ray calls", exc)
            return
        refs = [actor.open_channel.remote(listener.path, node) for actor, listener in zip(actors, listeners)]
        self.run_deferred_work()  # while the actors start (seconds for new ones), not after
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=CHANNEL_OPEN_S)
        started = set(ready)
        for actor, listener, ref in zip(actors, listeners, refs):
            try:
                if ref in started and ray.get(ref):
                    self._channels[id(actor)] = DriverChannel(listener.accept(timeout_s=30.0), self._arrivals)
            except (ray.exceptions.RayError, OSError) as exc:  # died while starting, or never connected: Ray's calls
                log.debug("engine: no channel to an actor (%s: %s); it gets Ray calls", type(exc).__name__, exc)
            finally:
                listener.close()

    def _pause_channel(self, actor) -> None:  # noqa: ANN001 - an actor handle
        """Before a Ray call to ``actor``: stop its :meth:`ClientAppActor.answer_channel`, which
        holds the thread the call runs on (the channel stays open for later rounds)."""
        if self._answering.pop(id(actor), None) is not None:
            try:
                self._channels[id(actor)].send(PAUSE)
            except ChannelClosed:  # its process died: the call fails as a dead actor's
                pass

    def _expected_seconds(self, messages: Sequence[Message]) -> Callable[[Message], float]:
        """Each message's expected real seconds on an actor: its terminal's last measured time
        for that message type, else the median of those known among ``messages`` (all equal
        before the first round: batches then split by count)."""
        known = sorted(s for m in messages if (s := self.seconds.get((m.metadata.dst_node_id, m.metadata.message_type))) is not None)
        default = known[len(known) // 2] if known else 1.0
        return lambda m: self.seconds.get((m.metadata.dst_node_id, m.metadata.message_type), default)

    def _replace(self, dead, budget: Budget):  # noqa: ANN001, ANN202
        pool = self.pools[budget]
        try:
            ray.kill(dead, no_restart=True)
        except Exception:  # noqa: BLE001 - already gone
            pass
        channel = self._channels.pop(id(dead), None)
        self._answering.pop(id(dead), None)
        if channel is not None:
            channel.close()
        index = pool.actors.index(dead)
        pool.actors[index] = self._new_actor(pool)
        self._check_loaded()  # a warm actor taken in its place may have died while idle
        fresh = pool.actors[index]
        if self._channels_opened:  # the engine uses channels: the new actor gets one (it starts first)
            self._open_channels([fresh])
        self.actor_restarts += 1
        log.warning("engine: an actor process died; replaced it (%d replacement(s) so far)", self.actor_restarts)
        return fresh


class EngineGrid(Grid):
    """Flower's Grid interface over a :class:`RayEngine`.

    The engine's compute measurements wait in a store keyed by the id of the message each reply
    answers until :meth:`measured_compute` reads them; the store keeps at most
    ``max(1024, 2 x population)`` entries (the oldest go first), so measurements nobody reads,
    e.g. of replies that report their own FLOPs, do not pile up.
    """

    def __init__(self, engine: RayEngine) -> None:
        self.engine = engine
        self._run = Run.create_empty(engine.run_id)
        self._node_ids: list[int] | None = None
        self._pending: dict[str, Message] = {}
        self._replies: dict[str, Message] = {}
        self._measured: dict[str, Measured] = {}
        self._measured_cap = max(1024, 2 * engine.population.size)

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        """Every terminal's node id (built once; availability is emulated by MeteredGrid)."""
        if self._node_ids is None:
            self._node_ids = [RayEngine.node_id_of(p) for p in range(self.engine.population.size)]
        return self._node_ids

    def partition_of(self, node_id: int) -> int:
        """Terminal (partition) id of a node."""
        return RayEngine.partition_of(node_id)

    def _stamp(self, msg: Message) -> str:
        if not 1 <= msg.metadata.dst_node_id <= self.engine.population.size:
            raise ValueError(f"message for unknown node {msg.metadata.dst_node_id}")
        msg_id = str(uuid4())
        msg.metadata.__dict__["_message_id"] = msg_id
        msg.metadata.__dict__["_run_id"] = self._run.run_id
        return msg_id

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Queue messages; they run when their replies are pulled."""
        ids = []
        for msg in messages:
            msg_id = self._stamp(msg)
            self._pending[msg_id] = msg
            ids.append(msg_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Run the queued messages among ``message_ids`` and return the replies available."""
        wanted = list(message_ids)
        to_run = [self._pending.pop(i) for i in wanted if i in self._pending]
        for reply in self._execute(to_run):
            self._replies[reply.metadata.reply_to_message_id] = reply
        return [self._replies.pop(i) for i in wanted if i in self._replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None, on_replies: RepliesHook | None = None
    ) -> Iterable[Message]:
        """Run the messages on the actors and return the replies (all of them unless ``timeout``).

        ``on_replies`` (beyond Flower's ``Grid``) is called with each batch of replies as it
        arrives, while later batches still run.
        """
        messages = list(messages)
        for msg in messages:
            self._stamp(msg)
        return self._execute(messages, timeout=timeout, on_replies=on_replies)

    def _execute(self, messages: list[Message], timeout: float | None = None, on_replies: RepliesHook | None = None) -> list[Message]:
        replies = self.engine.execute(messages, timeout=timeout, measured=self._measured, on_replies=on_replies)
        excess = len(self._measured) - self._measured_cap
        if excess > 0:  # drop the oldest (dicts keep insertion order)
            for key in list(islice(self._measured, excess)):
                del self._measured[key]
        return replies

    def run_while_training(self, work: Callable[[], None]) -> None:
        """:meth:`RayEngine.run_while_training`: ``work`` runs in the driver during the next
        exchange, while its terminals train (or, at the first, while the actors start)."""
        self.engine.run_while_training(work)

    def run_deferred_work(self) -> None:
        """:meth:`RayEngine.run_deferred_work`."""
        self.engine.run_deferred_work()

    def measured_compute(self, reply: Message) -> Measured | None:
        """The engine's ``(flops, method)`` for ``reply``, once (the entry is dropped); None if not metered."""
        return self._measured.pop(reply.metadata.reply_to_message_id, None)


class SerialEngine(RayEngine):
    """fedsplit's engine without Ray: every message runs in this process, one after another, on
    the real ClientApp, with the same Contexts and node ids as :class:`RayEngine`.

    For tests, experiments that must not depend on machine load, and debugging a ClientApp (a
    breakpoint inside it is hit here). :meth:`start` is not needed; ``execute`` meters nothing
    beside the replies (a ClientApp's own ``flops`` metric still counts).
    """

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003 - RayEngine's
        super().__init__(*args, **kwargs)
        self.claim_task_identity()

    def describe(self) -> dict[str, object]:
        """Where the engine runs: in this process (no Ray)."""
        return {"actors": {"in-process": 1}}

    def execute(  # noqa: ARG002 - RayEngine's signature
        self, messages: Sequence[Message], timeout: float | None = None, measured: dict | None = None, on_replies: RepliesHook | None = None
    ) -> list[Message]:
        """Run each message on the ClientApp in turn; return the replies in message order
        (``on_replies`` is called with all of them at the end). Work given to
        :meth:`run_while_training` runs first: nothing trains beside this process."""
        self.run_deferred_work()
        replies = self._run_in_order(messages)
        if on_replies is not None and replies:
            on_replies(replies)
        return replies

    def _run_in_order(self, messages: Sequence[Message]) -> list[Message]:
        """Run each message on the ClientApp in turn; return the replies in message order.

        An injected ``kill`` (see :attr:`RayEngine.faults`) gets the ``CLIENT_APP_CRASHED`` reply a
        dead actor gives, without running the app (the terminal's context is unchanged).
        """
        replies = []
        for msg in messages:
            fault = self.faults(msg) if self.faults is not None else None
            if fault == "kill":
                replies.append(_error_reply(msg, ErrorCode.CLIENT_APP_CRASHED, KILLED_REASON))
                continue
            reply, ctx, *_ = run_client_app(self.client_app, msg, self.context_of(msg.metadata.dst_node_id), fault=fault)
            self.contexts[ctx.node_id] = ctx
            replies.append(reply)
        return replies
