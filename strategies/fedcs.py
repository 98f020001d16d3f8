"""Deadline-aware client selection (FedCS, Nishio & Yonetani 2019) around any Flower strategy.

:class:`FedCSStrategy` lets the wrapped strategy sample its terminals as usual (its
``fraction_train`` plays FedCS's *resource request* fraction), predicts for each sampled terminal
the simulated time of its training exchange (download + local training + upload) from its device
profile, the model's exact FLOPs and the message's wire size, and keeps the terminals predicted to
finish within the round deadline, fastest first (FedCS's greedy rule). Terminals train in parallel
on fedsplit's clock (one lane each, no shared uplink), so greedy by predicted completion time is
the same as FedCS's greedy by incremental round time: every terminal whose own prediction fits.

Prediction (:class:`CompletionPredictor`): ``exchange_cost(profile, flops, bytes_up, bytes_down)``
with

- ``flops`` = what :func:`fedsplit.learning.train_local` executes: per epoch, ``n // b`` batches of
  ``b`` samples and one of ``n % b``, each :func:`fedsplit.models.step_flops`;
- ``bytes_down`` = the wire size of the train message actually sent
  (:func:`fedsplit.simulation.wire_size.recorddict_wire_bytes`);
- ``bytes_up`` = the wire size of a reply of the ClientApp's form (the same arrays, the metrics
  record with the terminal's own numbers).

After aggregation the wrapper compares each prediction with the ledger's simulated exchange
(``end_s - start_s`` of the terminal's train row) and reports, per round, ``fedcs-selected``,
``fedcs-pred-s`` / ``fedcs-actual-s`` (slowest selected terminal) and ``fedcs-max-rel-err``;
:attr:`FedCSStrategy.reports` keeps every (round, terminal, predicted, actual).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import ClassVar

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from torch import nn

from fedsplit.devices import DeviceProfile, exchange_cost
from fedsplit.models import step_flops
from fedsplit.simulation.wire_size import recorddict_wire_bytes
from fedsplit.strategies.compression import _DelegatingStrategy

log = logging.getLogger("fedsplit")

__all__ = ["CompletionPredictor", "FedCSStrategy", "SelectionReport", "local_train_flops"]


def local_train_flops(model: nn.Module, input_shape: tuple[int, ...], num_samples: int, batch_size: int, epochs: int) -> int:
    """FLOPs of ``epochs`` local epochs of :func:`fedsplit.learning.train_local` on ``num_samples``.

    Parameters
    ----------
    model : nn.Module
        The model (its architecture; weights are irrelevant).
    input_shape : tuple of int
        Shape of one input.
    num_samples, batch_size, epochs : int
        Local training set size (samples), mini-batch size (samples), epochs.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size = {batch_size}: must be >= 1")
    if num_samples <= 0 or epochs <= 0:
        return 0
    full, rest = divmod(int(num_samples), int(batch_size))
    per_epoch = full * step_flops(model, input_shape, batch_size) if full else 0
    if rest:
        per_epoch += step_flops(model, input_shape, rest)
    return int(epochs) * per_epoch


def reply_wire_bytes(arrays: ArrayRecord, num_examples: int, flops: int, partition_id: int) -> int:
    """Wire size of a ``train`` reply of fedsplit's ClientApp (arrays + its metrics record)."""
    metrics = MetricRecord({"num-examples": int(num_examples), "flops": int(flops), "train-loss": 0.0, "partition-id": int(partition_id)})
    return recorddict_wire_bytes(RecordDict({"arrays": arrays, "metrics": metrics}))


@dataclass
class CompletionPredictor:
    """Predicts a terminal's simulated training-exchange time (seconds).

    Parameters
    ----------
    model : nn.Module
        The trained model.
    input_shape : tuple of int
        Shape of one input.
    samples_of : callable
        ``partition_id -> number of local training samples``.
    profile_of : callable
        ``partition_id -> DeviceProfile``.
    """

    model: nn.Module
    input_shape: tuple[int, ...]
    samples_of: Callable[[int], int]
    profile_of: Callable[[int], DeviceProfile]

    rebuilt_by_run: ClassVar[bool] = True
    """Not part of a resume point: a resumed run builds its own from the configuration
    (:mod:`fedsplit.simulation.checkpoint`); its closures cannot be pickled."""

    def flops(self, partition_id: int, batch_size: int, epochs: int) -> int:
        """FLOPs terminal ``partition_id`` executes for ``epochs`` local epochs."""
        return local_train_flops(self.model, self.input_shape, self.samples_of(partition_id), batch_size, epochs)

    def seconds(self, partition_id: int, message: Message) -> float:
        """Simulated seconds from sending ``message`` (a train message) to its reply's arrival."""
        config = message.content.config_records.get("config", ConfigRecord())
        batch_size = int(config.get("batch-size", 32))
        epochs = int(config.get("local-epochs", 1))
        flops = self.flops(partition_id, batch_size, epochs)
        arrays = message.content.array_records["arrays"]
        bytes_up = reply_wire_bytes(arrays, self.samples_of(partition_id), flops, partition_id)
        bytes_down = recorddict_wire_bytes(message.content)
        return exchange_cost(self.profile_of(partition_id), flops, bytes_up, bytes_down).total_s


@dataclass(frozen=True)
class SelectionReport:
    """One selected terminal's predicted and simulated exchange time (seconds)."""

    server_round: int
    partition_id: int
    predicted_s: float
    actual_s: float | None

    @property
    def rel_err(self) -> float | None:
        """``|actual - predicted| / actual`` (None before the exchange was metered)."""
        if self.actual_s is None or self.actual_s <= 0:
            return None
        return abs(self.actual_s - self.predicted_s) / self.actual_s


class FedCSStrategy(_DelegatingStrategy):
    """FedCS client selection around ``inner``: only terminals predicted to meet the deadline train.

    Parameters
    ----------
    inner : Strategy
        Any Flower strategy; its ``configure_train`` sample is the candidate set.
    predictor : CompletionPredictor
        Predicts each candidate's exchange time.
    deadline_s : float
        Round deadline in simulated seconds (> 0); the aggregation time of the edge server is
        not part of it (fedsplit's deadline bounds the training phase, see
        :class:`fedsplit.devices.RoundClock`).
    max_selected : int
        Most terminals selected per round (0 = no limit).
    """

    def __init__(self, inner: Strategy, predictor: CompletionPredictor, deadline_s: float, *, max_selected: int = 0) -> None:
        super().__init__(inner)
        if not deadline_s > 0:
            raise ValueError(f"clock.round_deadline_s = {deadline_s}: FedCS selection needs a deadline > 0 s")
        self.predictor = predictor
        self.deadline_s = float(deadline_s)
        self.max_selected = int(max_selected)
        self.reports: list[SelectionReport] = []
        self._pending: dict[int, float] = {}
        self._grid: Grid | None = None

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        messages = list(self.inner.configure_train(server_round, arrays, config, grid))
        self._grid = grid
        partition_of = getattr(grid, "partition_of")
        timed = sorted(((self.predictor.seconds(partition_of(m.metadata.dst_node_id), m), partition_of(m.metadata.dst_node_id), m) for m in messages), key=lambda t: (t[0], t[1]))
        chosen = [t for t in timed if t[0] <= self.deadline_s]
        if self.max_selected > 0:
            chosen = chosen[: self.max_selected]
        if not chosen and timed:
            chosen = timed[:1]
            log.warning(
                "round %d: FedCS: no sampled terminal is predicted within the %.3f s deadline; the fastest "
                "(terminal %d, %.3f s) trains alone", server_round, self.deadline_s, timed[0][1], timed[0][0]
            )
        self._pending = {pid: seconds for seconds, pid, _ in chosen}
        log.info("round %d: FedCS selected %d of %d sampled terminals", server_round, len(chosen), len(timed))
        return [m for _, _, m in chosen]

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        arrays, metrics = self.inner.aggregate_train(server_round, replies)
        actual = self._actual_seconds(server_round)
        round_reports = [SelectionReport(server_round, pid, pred, actual.get(pid)) for pid, pred in sorted(self._pending.items())]
        self.reports.extend(round_reports)
        self._pending = {}
        out = MetricRecord(dict(metrics or {}))
        if round_reports:
            errs = [r.rel_err for r in round_reports if r.rel_err is not None]
            out["fedcs-selected"] = len(round_reports)
            out["fedcs-pred-s"] = max(r.predicted_s for r in round_reports)
            measured = [r.actual_s for r in round_reports if r.actual_s is not None]
            if measured:
                out["fedcs-actual-s"] = max(measured)
            if errs:
                out["fedcs-max-rel-err"] = max(errs)
        return arrays, out

    def _actual_seconds(self, server_round: int) -> dict[int, float]:
        """Each selected terminal's simulated train-exchange time, read from the grid's ledger."""
        ledger = getattr(self._grid, "ledger", None)
        if ledger is None:
            return {}
        return {
            r.client_id: r.end_s - r.start_s
            for r in ledger.rows_of(server_round)
            if r.phase == "train" and r.client_id in self._pending and r.status in ("ok", "rejected", "straggler")
        }


def completion_predictor(config_json: str, profile_of: Callable[[int], DeviceProfile]) -> CompletionPredictor:
    """The :class:`CompletionPredictor` of a run (its task's model, input shape and partitions).

    Parameters
    ----------
    config_json : str
        The run's resolved configuration (:func:`fedsplit.learning.config_to_json`).
    profile_of : callable
        ``partition_id -> DeviceProfile`` (``Population.profile_of``).
    """
    from functools import lru_cache

    from fedsplit.learning import task_for

    task = task_for(config_json)

    @lru_cache(maxsize=None)
    def samples_of(partition_id: int) -> int:
        return len(task.data.partition(partition_id)[0])

    return CompletionPredictor(task.model, tuple(task.data.input_shape), samples_of, profile_of)
