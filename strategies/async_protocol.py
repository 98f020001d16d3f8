"""Asynchronous aggregation on the simulated clock: FedBuff and FedAsync as one protocol.

:class:`AsyncProtocol` keeps ``concurrency`` terminals training at once. A step of the server
loop is one *aggregation*:

1. the in-flight updates wait in a heap keyed by their simulated completion time (absolute
   seconds since the run began; ties broken by dispatch sequence number, so a seed gives one event
   order);
2. the step pops the ``K`` earliest (FedBuff: ``K = buffer_size``; FedAsync: ``K = 1``); the
   server's clock jumps to the last of them;
3. it aggregates them, each weighted by its staleness ``s`` (global versions since its model was
   sent) as ``(1 + s) ** -a`` (``a`` = ``staleness_exponent``):

   - FedBuff (Nguyen et al. 2022): ``w += server_lr * sum_i wt_i (w_i - w_sent_i) / K``;
   - FedAsync (Xie et al. 2019): ``w = (1 - alpha_s) w + alpha_s w_i`` with
     ``alpha_s = mixing_alpha * (1 + s) ** -a``;

   the aggregation is metered as server work (``grid.server_work``, edge-server profile);
4. the terminals freed since the previous aggregation are replaced, *at the aggregation time and
   with the new model*, by as many idle online terminals (a seeded draw), all in **one**
   ``grid.send_and_receive``: the engine runs their real training in parallel, and each reply
   waits in the heap until the simulated clock reaches it. The first step also dispatches the
   initial ``concurrency`` terminals at time 0.

Dispatching at aggregation events (not at each completion) keeps every batch of real compute
parallel and the event order a function of the seed only; the price is that a freed slot idles
from its terminal's completion until the next aggregation (at most one step's duration).

Representation on the round clock (:class:`EventClock`, installed as the grid's clock at the start
of each step): the round's time origin is the previous aggregation's end. The round lasts
``t_K - origin`` (the clock is advanced to the K-th completion), then the aggregation (server work
after a barrier); its ``sim_s`` is thus the time between two aggregations and the rounds' sum is
the run's simulated time. A ``train`` ledger row belongs to the round that *dispatched* it: its
``start_s`` is the dispatch time within that round (the round's end, after aggregation; 0 for the
initial dispatch) and its ``end_s`` is ``start_s`` plus the exchange's simulated duration, usually
beyond the round's ``sim_s``: the update arrives, and is aggregated, in a later round. No exchange
holds a round up and no deadline applies.
"""

from __future__ import annotations

import heapq
import logging
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import torch
from flwr.app import ConfigRecord, Message, RecordDict

from fedsplit.clients.arrays import array_record_from_state, record_views
from fedsplit.devices import RoundClock, Slot, aggregation_flops
from fedsplit.strategies.protocol import ProtocolRun, TrainingProtocol

log = logging.getLogger("fedsplit")

__all__ = ["AsyncProtocol", "AsyncSettings", "EventClock", "InFlight"]

ASYNC_MODES = ("fedbuff", "fedasync")


class EventClock(RoundClock):
    """A round clock for event-driven protocols: exchanges start where the server's time is now.

    An exchange is placed at the current end of the round (:attr:`elapsed_s`) and does not extend
    the round (its reply is an event for later); :meth:`advance_to` moves the round's end to an
    event's time. Server work without a lane behaves as on :class:`RoundClock` (after a barrier).
    """

    def __init__(self) -> None:
        super().__init__(0.0)
        self.slots: dict[int, Slot] = {}

    def exchange(self, lane: int, duration_s: float, *, counts: bool = True) -> Slot:
        start = self.elapsed_s
        slot = Slot(start, start + duration_s)
        if counts:
            self.slots[lane] = slot
        return slot

    def advance_to(self, time_s: float) -> None:
        """Let the round last at least until ``time_s`` (seconds since the round began)."""
        self._phase_len_s = max(self._phase_len_s, time_s - self.phase_start_s)


@dataclass
class AsyncSettings:
    """Settings of :class:`AsyncProtocol` (``orchestration.*`` of the run configuration).

    Attributes
    ----------
    mode : str
        ``fedbuff`` or ``fedasync``.
    concurrency : int
        Terminals in flight.
    buffer_size : int
        Updates per aggregation (FedBuff's K; FedAsync always 1).
    staleness_exponent : float
        ``a`` of the staleness weight ``(1 + s) ** -a``.
    server_lr : float
        FedBuff's server learning rate.
    mixing_alpha : float
        FedAsync's mixing weight of a fresh update.
    seed : int
        Seed of the dispatch draws.
    """

    mode: str = "fedbuff"
    concurrency: int = 10
    buffer_size: int = 5
    staleness_exponent: float = 0.5
    server_lr: float = 1.0
    mixing_alpha: float = 0.6
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in ASYNC_MODES:
            raise ValueError(f"training.mode = {self.mode!r}: not asynchronous (allowed: {', '.join(ASYNC_MODES)})")
        if self.concurrency < 1 or self.buffer_size < 1:
            raise ValueError(f"orchestration.concurrency = {self.concurrency}, buffer_size = {self.buffer_size}: both must be >= 1")
        if self.mode == "fedbuff" and self.buffer_size > self.concurrency:
            raise ValueError(
                f"orchestration.buffer_size = {self.buffer_size} > concurrency = {self.concurrency}: "
                "a buffer larger than the terminals in flight never fills"
            )

    @property
    def k(self) -> int:
        """Updates aggregated per step."""
        return 1 if self.mode == "fedasync" else self.buffer_size


@dataclass(order=True)
class InFlight:
    """One dispatched update, ordered by simulated completion time then dispatch sequence."""

    complete_s: float
    seq: int
    partition_id: int = field(compare=False)
    version: int = field(compare=False)
    arrays: dict[str, np.ndarray] = field(compare=False, repr=False)
    num_examples: int = field(compare=False)
    loss: float = field(compare=False)


class AsyncProtocol(TrainingProtocol):
    """FedBuff / FedAsync driven by simulated completion times (see the module docstring).

    Attributes
    ----------
    events : list of tuple
        ``(aggregation, partition_id, version_sent, complete_s)`` of every aggregated update, in
        aggregation order: the run's event order.
    """

    name = "async"

    def __init__(self, settings: AsyncSettings) -> None:
        self.settings = settings
        self.events: list[tuple[int, int, int, float]] = []
        self._heap: list[InFlight] = []
        self._busy: set[int] = set()
        self._state: dict[str, np.ndarray] = {}
        self._versions: dict[int, dict[str, np.ndarray]] = {}
        self._version = 0
        self._now_s = 0.0
        self._seq = 0
        self._freed = 0

    # --- state ----------------------------------------------------------------------------------
    def start(self, run: ProtocolRun) -> None:
        self._state = {k: v.detach().cpu().numpy().copy() for k, v in run.initial_state.items()}
        self._versions = {0: self._state}
        self._freed = self.settings.concurrency

    def global_state(self) -> "OrderedDict[str, torch.Tensor]":
        return OrderedDict((k, torch.from_numpy(v.copy())) for k, v in self._state.items())

    @property
    def now_s(self) -> float:
        """Simulated seconds since the run began (the last aggregation's end)."""
        return self._now_s

    # --- one aggregation ------------------------------------------------------------------------
    def step(self, run: ProtocolRun, server_round: int) -> dict[str, float]:
        grid = run.grid
        clock = EventClock()
        grid.clock = clock  # this round's time is the event clock (origin: the previous aggregation)
        if server_round == 1:
            self._dispatch(run, server_round, clock)
        if not self._heap:
            log.warning("round %d: no update in flight (every dispatch failed or no terminal online)", server_round)
            self._dispatch(run, server_round, clock)
            return {"in-flight": 0.0}
        taken = [heapq.heappop(self._heap) for _ in range(min(self.settings.k, len(self._heap)))]
        clock.advance_to(taken[-1].complete_s - self._now_s)
        metrics = self._aggregate(taken)
        grid.server_work(aggregation_flops(sum(v.size for v in self._state.values()), len(taken)))
        for update in taken:
            self._busy.discard(update.partition_id)
            self.events.append((server_round, update.partition_id, update.version, update.complete_s))
        self._version += 1
        self._versions[self._version] = self._state
        self._freed += len(taken)
        self._now_s += clock.elapsed_s
        self._dispatch(run, server_round, clock)
        live = {u.version for u in self._heap}
        self._versions = {v: s for v, s in self._versions.items() if v in live or v == self._version}
        metrics.update({"in-flight": float(len(self._heap)), "sim-time-s": self._now_s, "version": float(self._version)})
        return metrics

    def _aggregate(self, taken: list[InFlight]) -> dict[str, float]:
        s = self.settings
        stale = [self._version - u.version for u in taken]
        weights = [(1.0 + st) ** -s.staleness_exponent for st in stale]
        if s.mode == "fedbuff":
            new = {}
            for key, w in self._state.items():
                if not np.issubdtype(w.dtype, np.floating):
                    new[key] = taken[-1].arrays[key].copy()
                    continue
                delta = sum(wt * (u.arrays[key].astype(np.float64) - self._versions[u.version][key]) for wt, u in zip(weights, taken))
                new[key] = (w + s.server_lr * delta / len(taken)).astype(w.dtype)
        else:
            (u,), (wt,) = taken, weights
            alpha = s.mixing_alpha * wt
            new = {
                key: ((1 - alpha) * w + alpha * u.arrays[key]).astype(w.dtype) if np.issubdtype(w.dtype, np.floating) else u.arrays[key].copy()
                for key, w in self._state.items()
            }
        self._state = new
        total = sum(u.num_examples for u in taken) or 1
        return {
            "train-loss": sum(u.loss * u.num_examples for u in taken) / total,
            "staleness-mean": float(np.mean(stale)),
            "staleness-max": float(max(stale)),
        }

    def _dispatch(self, run: ProtocolRun, server_round: int, clock: EventClock) -> None:
        """Send the current model to ``self._freed`` idle online terminals, in one batch."""
        grid = run.grid
        want = self._freed
        if want <= 0:
            return
        online = [int(p) for p in grid.online_partitions(server_round)] if hasattr(grid, "online_partitions") else [grid.partition_of(n) for n in grid.get_node_ids()]
        idle = np.array([p for p in online if p not in self._busy], dtype=np.int64)
        if len(idle) == 0:
            return
        rng = np.random.default_rng([self.settings.seed, server_round, 0xA51C])
        chosen = sorted(int(p) for p in rng.choice(idle, size=min(want, len(idle)), replace=False))
        arrays = array_record_from_state(self._state)
        messages = []
        for pid in chosen:
            self._seq += 1
            config = ConfigRecord(dict(run.train_config))
            config["server-round"] = self._seq  # the terminal's batch-order seed: one per dispatch
            messages.append(
                Message(RecordDict({"arrays": arrays, "config": config}), dst_node_id=grid.node_of(pid), message_type="train", group_id=str(server_round))
            )
        seq_of = {pid: self._seq - len(chosen) + 1 + i for i, pid in enumerate(chosen)}
        dispatched_at = self._now_s  # absolute time of this round's end so far (the clock's elapsed_s)
        for reply in grid.send_and_receive(messages, timeout=run.timeout_s):
            pid = grid.partition_of(reply.metadata.src_node_id)
            slot = clock.slots[pid]
            metrics = reply.content.metric_records["metrics"]
            local = {k: np.array(v) for k, v in record_views(reply.content.array_records["arrays"]).items()}
            heapq.heappush(
                self._heap,
                InFlight(
                    complete_s=dispatched_at + (slot.end_s - slot.start_s),
                    seq=seq_of[pid],
                    partition_id=pid,
                    version=self._version,
                    arrays=local,
                    num_examples=int(metrics.get("num-examples", 0)),
                    loss=float(metrics.get("train-loss", 0.0)),
                ),
            )
            self._busy.add(pid)
        self._freed = self.settings.concurrency - len(self._heap)
