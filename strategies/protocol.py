"""The training-protocol component: what the server does with a Grid during a run.

A :class:`TrainingProtocol` is the server side of a training method. The server loop
(:func:`fedsplit.simulation.loop.run_protocol`) owns the run: it begins each round on the metered
Grid, asks the protocol for one *step*, evaluates the global model when due, closes the round in
the ledger, checkpoints and reports progress. A protocol only exchanges Flower ``Message``\\s
through ``run.grid`` and says what computation the server did (``run.grid.server_work``); the
simulated clock, the ledger and the run folder follow from that.

::

    protocol.start(run)
    for r in 1..rounds:
        grid.begin_round(r)
        metrics = protocol.step(run, r)        # messages out and back, server work metered
        stop = protocol.stop_reason(run)       # e.g. a resource budget spent: r is the last round
        if evaluation is due (or stop): evaluate(protocol.global_state())
        grid.close_round(metrics) -> ledger row of the round, progress, checkpoint
        if stop: break
    protocol.finish(run)

How the training methods map onto it:

- **FedAvg family** (:class:`fedsplit.strategies.fedavg_protocol.StrategyProtocol`): a step is one
  Flower round: ``configure_train`` -> ``send_and_receive`` -> ``aggregate_train`` (metered as
  server work after a barrier) -> ``configure_evaluate`` -> ``send_and_receive`` ->
  ``aggregate_evaluate``, with any Flower strategy and fedsplit's validation/compression wrappers.
- **Split learning**: a step is one epoch of per-batch exchanges. Each terminal's chain is a
  sequence of ``train.<action>`` messages (activations up, gradients down); the server part's
  forward/backward is metered with ``grid.server_work(flops, partition_id=k)`` in terminal ``k``'s
  chain (``exclusive=True`` where one server part serves the terminals one at a time, SplitFed v2),
  turn-taking protocols call ``grid.barrier()`` after each terminal's turn, and the client and
  server parts are averaged (SplitFed) as server work after a barrier. Several terminals' next
  exchanges go out in one ``send_and_receive`` so the engine runs them in parallel.
- **Asynchronous aggregation** (FedBuff/FedAsync): a step is one aggregation. The protocol keeps
  an event queue keyed by simulated completion time (each in-flight terminal's ``end_s`` from the
  ledger); it dispatches work to idle terminals, takes the earliest ``K`` completions, aggregates
  them with staleness weights, and returns. Real compute stays parallel (the grid runs the
  in-flight messages together); the order of events is that of the simulated clock, so a seed
  gives one event order.

A protocol's own state (global weights, optimiser state, server model parts) lives in the
protocol object; a terminal's state lives in its ``Context.state`` on the client side.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from flwr.app import ConfigRecord
from flwr.serverapp import Grid


class MeteredGridLike(Protocol):
    """What a protocol may ask of the run's Grid beyond Flower's :class:`~flwr.serverapp.Grid`.

    :class:`fedsplit.simulation.metered_grid.MeteredGrid` implements it.
    """

    current_round: int

    def server_work(self, flops: float, *, partition_id: int | None = None, exclusive: bool = False) -> None:
        """Meter ``flops`` of server computation on the round's simulated clock."""

    def barrier(self) -> None:
        """Start a new phase: later exchanges begin after every earlier one has ended."""

    def partition_of(self, node_id: int) -> int:
        """Terminal (partition) id of a node."""

    def node_of(self, partition_id: int) -> int:
        """Node id of a terminal."""


@dataclass
class ProtocolRun:
    """What a protocol is given for a run.

    Attributes
    ----------
    grid : Grid
        The metered Grid (a Flower Grid that also has :class:`MeteredGridLike`'s methods).
    num_rounds : int
        Steps the loop will ask for.
    initial_state : OrderedDict of str to Tensor
        The seeded initial global model weights (a copy the protocol may keep).
    train_config : ConfigRecord
        Hyper-parameters to send with training messages (``lr``, ``local-epochs``,
        ``batch-size``).
    evaluate_config : ConfigRecord
        Configuration to send with client-side evaluation messages.
    timeout_s : float, optional
        Real seconds to wait for replies (None = no limit).
    options : dict
        Protocol-specific settings (e.g. a split learning cut).
    """

    grid: Grid
    num_rounds: int
    initial_state: "OrderedDict[str, torch.Tensor]"
    train_config: ConfigRecord = field(default_factory=ConfigRecord)
    evaluate_config: ConfigRecord = field(default_factory=ConfigRecord)
    timeout_s: float | None = None
    options: dict[str, Any] = field(default_factory=dict)


class TrainingProtocol(ABC):
    """The server side of a training method, driven step by step by the server loop.

    Subclasses implement :meth:`step` and :meth:`global_state`; :meth:`start` and :meth:`finish`
    are optional. The loop calls ``grid.begin_round(r)`` before ``step(run, r)`` and closes the
    round after it.
    """

    name: str = "protocol"

    def start(self, run: ProtocolRun) -> None:
        """Prepare the run (before round 1); may exchange messages."""

    @abstractmethod
    def step(self, run: ProtocolRun, server_round: int) -> dict[str, float]:
        """Do one step (a round) of training.

        Returns
        -------
        dict of str to float
            Metrics of the step (e.g. aggregated client training loss), stored with the round.
        """

    @abstractmethod
    def global_state(self) -> "OrderedDict[str, torch.Tensor]":
        """The current global model's weights, with the model's own ``state_dict`` keys."""

    def stop_reason(self, run: ProtocolRun) -> str | None:
        """Why the run should end after the step just taken (None: go on).

        The server loop asks after every step: a reason (e.g. a resource budget spent) makes that
        round the last, evaluated and closed as a last round is. The default never stops.
        """
        return None

    def finish(self, run: ProtocolRun) -> None:
        """Clean up after the last step."""


__all__ = ["MeteredGridLike", "ProtocolRun", "TrainingProtocol"]
