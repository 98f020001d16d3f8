"""Split learning as training protocols: vanilla, U-shaped, SplitFed v1 and v2.

The edge server holds the server part(s) of the model and exchanges ``train.split`` messages with
the terminals (:mod:`fedsplit.clients.split_client` is the terminal's side). One step of the server
loop is one round: every online terminal trains ``local_epochs`` epochs of its data, batch by batch.

Per batch (vanilla, SplitFed)::

    terminal -> server   activations at the cut + labels          (reply to "begin" / "step")
    server               forward + backward of the server part, SGD step
    server -> terminal   gradient at the cut                       ("step")
    terminal             backward + SGD step, then the next batch's forward (same reply)

Per batch (U-shape: the terminal holds the first layers *and* the head; labels never leave it)::

    terminal -> server   activations at cut 1                      (reply to "begin" / "step")
    server -> terminal   the middle part's activations at cut 2    ("head")
    terminal -> server   gradient at cut 2 (head forward, loss, backward, step on the terminal)
    server -> terminal   gradient at cut 1 (middle backward, step)  ("step")

The protocols differ in who runs when and what is averaged:

- ``sl-vanilla`` / ``sl-ushape``: terminals take turns (a barrier on the clock after each turn);
  the terminal part(s) pass from one terminal to the next through the server (``begin`` carries
  the previous terminal's trained weights); one server part, trained continuously.
- ``splitfed-v1``: all terminals in parallel, each with its own copy of the server part; at the
  end of the round the whole models (terminal part + its server copy) are averaged, weighted by
  samples (so terminals may even use different cuts).
- ``splitfed-v2``: one server part, trained on one terminal's epoch after another (terminal
  order), as in Thapa et al.'s SplitFedV2; every terminal starts from the round's terminal part
  and the terminal parts are averaged at the end of the round. On the clock the terminals run in
  parallel but the server serves them one at a time (its work is exclusive), so a terminal waits
  for the server. (Interleaving the terminals batch by batch on the shared server part instead
  collapsed to chance accuracy on digits with momentum 0.9: 0.214, 0.1, 0.056, 0.1, 0.1 over 5
  rounds of 10 terminals.)

Every exchange is a Flower message through the metered Grid, so the ledger has the activation
and gradient bytes of each batch and the terminal's FLOPs. A message's bytes are its tensors
(activations ``4 * numel``, labels ``8 * batch``, gradients ``4 * numel``, part weights) plus a
framing fixed per message kind (record and key names, array headers, the config or metrics
record): for the FedAvg CNN cut at ``features.2`` on digits, 460 bytes on an activations+labels
reply, 219 on a gradient, 594 on ``begin`` and 467 on the final weights reply
(``tests/test_split_protocols.py`` checks every exchange of a run against it); the server part's FLOPs go on the
clock through the ``edge-server`` profile. Activations or gradients of the wrong shape or dtype,
or with NaN/Inf, are rejected for that terminal (logged, its row marked ``rejected``): they never
reach the server part, the terminal leaves the round and the run goes on.

Local DP (``privacy.mode = "local"``, :mod:`fedsplit.clients.split_privacy`): terminals draw
Poisson batches, so a batch may hold more than ``batch_size`` samples (up to the ``num-examples``
the terminal reports); the final weights reply carries its cumulative ``dp-epsilon`` (the
round's mean goes into the round's metrics). The server part is trained without DP.

Gradients go back only to parts that train: a terminal part with nothing trainable (a frozen
backbone under ``transfer.trainable``, :mod:`fedsplit.models.freezing`, or a parameter-free cut
such as the MLP's ``net.0``) gets ``step`` without ``gradient`` and only runs forwards (its single
forward is the training one); in U-shape the gradient at cut 1 is sent only if the front trains,
and the one at cut 2 (``head`` carries ``return-grad``) only if the front or the middle trains.
Under ``transfer.trainable`` only the trainable tensors of a terminal part travel (``begin`` and
the final weights); a frozen terminal part is never sent and never updated.
"""

from __future__ import annotations

import logging
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from flwr.app import ConfigRecord, Message, RecordDict
from torch import nn

from fedsplit.clients.arrays import array_record_from_state, record_views
from fedsplit.devices import aggregation_flops
from fedsplit.split import (
    ForwardState,
    has_trainable,
    load_part_state_dict,
    make_sgd,
    parse_cut,
    part_state_dict,
    profile_split,
    server_backward_from_state,
    server_forward,
    server_step,
    split_model,
)
from fedsplit.strategies.protocol import ProtocolRun, TrainingProtocol

log = logging.getLogger("fedsplit")

SPLIT_MODES = ("sl-vanilla", "sl-ushape", "splitfed-v1", "splitfed-v2")
MESSAGE_TYPE = "train.split"


@dataclass(frozen=True)
class SplitSettings:
    """Hyper-parameters of split training (the same meaning as FedAvg's local training).

    Attributes
    ----------
    mode : str
        One of :data:`SPLIT_MODES`.
    lr, momentum, weight_decay : float
        SGD of every part (terminal and server).
    batch_size : int
        Samples per batch.
    local_epochs : int
        Epochs of its data each terminal trains per round.
    seed : int
        Seed of the batch order (as FedAvg's).
    noise_std : float
        Standard deviation of Gaussian noise the terminal adds to the activations it sends
        (smashed-data privacy; 0 = none).
    num_classes : int
        Label range, for validating received labels.
    travelling : tuple of str
        Under ``transfer.trainable``: the only keys of a terminal part that are sent (its
        trainable parameters; the frozen rest is the pretrained model on both sides). Empty:
        every key of the part travels.
    poisson : bool
        Terminals draw Poisson batches (local DP-SGD): a batch may exceed ``batch_size``, up to
        the terminal's reported ``num-examples``.
    """

    mode: str
    lr: float
    momentum: float
    weight_decay: float
    batch_size: int
    local_epochs: int
    seed: int
    noise_std: float = 0.0
    num_classes: int = 0
    travelling: tuple[str, ...] = ()
    poisson: bool = False


@dataclass
class _Chain:
    """The server's view of one terminal's chain of exchanges in a round."""

    node: int
    pid: int
    cut: str
    parts: object
    server_opt: torch.optim.Optimizer | None
    pending: ForwardState | None = None
    examples: int = 0
    weights: dict[str, np.ndarray] | None = None
    dropped: str = ""
    losses: list[float] = field(default_factory=list)
    dp_epsilon: float | None = None

    @property
    def active(self) -> bool:
        return self.weights is None and not self.dropped


def _copy(views: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: np.array(v) for k, v in views.items()}


class SplitProtocol(TrainingProtocol):
    """Split learning over Flower messages (see the module docstring).

    Parameters
    ----------
    settings : SplitSettings
        Mode and hyper-parameters.
    model : nn.Module
        The model to train (a template: parts are cut from deep copies).
    input_shape : tuple of int
        One sample's shape.
    cut_of : callable
        ``partition id -> cut`` (``"name"``; ``"a,b"`` for U-shape).
    """

    def __init__(self, settings: SplitSettings, model: nn.Module, input_shape: tuple[int, ...], cut_of: Callable[[int], str]) -> None:
        if settings.mode not in SPLIT_MODES:
            raise ValueError(f"training.mode = {settings.mode!r}: not a split mode ({', '.join(SPLIT_MODES)})")
        self.settings = settings
        self.name = settings.mode
        self.model = model
        self.input_shape = tuple(input_shape)
        self.cut_of = cut_of
        self.ushape = settings.mode == "sl-ushape"
        self.state: OrderedDict[str, torch.Tensor] | None = None
        self._num_values = 0

    # --- TrainingProtocol -------------------------------------------------------------------------
    def start(self, run: ProtocolRun) -> None:
        self.state = OrderedDict((k, v.clone()) for k, v in run.initial_state.items())
        self._num_values = sum(int(v.numel()) for v in self.state.values())

    def global_state(self) -> "OrderedDict[str, torch.Tensor]":
        assert self.state is not None, "start() first"
        return self.state

    def step(self, run: ProtocolRun, server_round: int) -> dict[str, float]:
        grid = run.grid
        nodes = sorted(grid.get_node_ids(), key=grid.partition_of)
        mode = self.settings.mode
        if mode in ("sl-vanilla", "sl-ushape"):
            chains = self._take_turns(run, server_round, nodes)
        elif mode == "splitfed-v1":
            chains = [self._chain(node, grid.partition_of(node), self._parts(grid.partition_of(node))) for node in nodes]
            self._drive(run, server_round, chains, exclusive=False)
            self._average_whole_models(run, chains)
        else:  # splitfed-v2: one server part for everyone
            shared = self._parts(grid.partition_of(nodes[0])) if nodes else None
            opt = self._server_opt(shared) if shared is not None else None
            chains = [self._chain(node, grid.partition_of(node), shared, opt) for node in nodes]
            for chain in chains:  # the server part trains on one terminal's epoch after another
                self._drive(run, server_round, [chain], exclusive=True)
            self._average_terminal_parts(run, chains, shared)
        losses = [loss for c in chains for loss in c.losses]
        out = {"train-loss": float(np.mean(losses))} if losses else {}
        epsilons = [c.dp_epsilon for c in chains if c.dp_epsilon is not None]
        if epsilons:  # as FedAvg's rounds.csv: the mean over the round's terminals
            out["dp-epsilon"] = float(np.mean(epsilons))
        return out

    # --- the protocols -----------------------------------------------------------------------------
    def _take_turns(self, run: ProtocolRun, server_round: int, nodes: list[int]) -> list[_Chain]:
        grid = run.grid
        chains = []
        if not nodes:
            return chains
        parts = self._parts(grid.partition_of(nodes[0]))
        opt = self._server_opt(parts)
        for node in nodes:
            chain = self._chain(node, grid.partition_of(node), parts, opt)
            self._drive(run, server_round, [chain], exclusive=True)
            grid.barrier()  # the next terminal's turn starts after this one ended
            chains.append(chain)
            if chain.weights is not None:  # its trained part(s) go to the next terminal
                for part in self._terminal_parts(parts).values():
                    load_part_state_dict(part, chain.weights, strict=not self.settings.travelling)
                self.state = OrderedDict((k, torch.as_tensor(v)) for k, v in parts.state_dict().items())  # type: ignore[attr-defined]
        return chains

    def _average_whole_models(self, run: ProtocolRun, chains: list[_Chain]) -> None:
        done = [c for c in chains if c.weights is not None and c.examples > 0]
        run.grid.server_work(aggregation_flops(self._num_values, len(done)))
        if not done:
            return
        states = []
        for c in done:
            for part in self._terminal_parts(c.parts).values():
                load_part_state_dict(part, c.weights, strict=not self.settings.travelling)
            states.append(c.parts.state_dict())  # type: ignore[attr-defined]
        self.state = _weighted_average(states, [c.examples for c in done], self.state)

    def _average_terminal_parts(self, run: ProtocolRun, chains: list[_Chain], shared: object) -> None:
        done = [c for c in chains if c.weights is not None and c.examples > 0]
        terminal_values = sum(int(np.asarray(v).size) for v in done[0].weights.values()) if done else 0
        run.grid.server_work(aggregation_flops(terminal_values, len(done)))
        if shared is None:
            return
        server_state = {}
        for name, part in shared.named_parts().items():  # type: ignore[attr-defined]
            if not name.startswith("client"):
                server_state.update(part_state_dict(part))
        merged = dict(self.state)
        merged.update(server_state)
        if done:
            averaged = _weighted_average([{k: torch.as_tensor(v) for k, v in c.weights.items()} for c in done], [c.examples for c in done], None)
            merged.update(averaged)
        self.state = OrderedDict((k, merged[k]) for k in self.state)

    # --- one chain of exchanges per terminal -----------------------------------------------------
    def _parts(self, pid: int) -> object:
        parts = split_model(self.model, parse_cut(self.cut_of(pid)))
        parts.load_state_dict(self.state)  # type: ignore[attr-defined]
        return parts

    def _server_opt(self, parts: object) -> torch.optim.Optimizer | None:
        s = self.settings
        return make_sgd(self._server_part(parts), lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay)

    def _chain(self, node: int, pid: int, parts: object, opt: torch.optim.Optimizer | None = None) -> _Chain:
        return _Chain(node=node, pid=pid, cut=self.cut_of(pid), parts=parts, server_opt=opt if opt is not None else self._server_opt(parts))

    def _server_part(self, parts: object) -> nn.Module:
        return parts.server_middle if self.ushape else parts.server  # type: ignore[attr-defined]

    @staticmethod
    def _terminal_parts(parts: object) -> dict[str, nn.Module]:
        return {n: p for n, p in parts.named_parts().items() if n.startswith("client")}  # type: ignore[attr-defined]

    def _message(self, chain: _Chain, server_round: int, content: RecordDict) -> Message:
        return Message(content, dst_node_id=chain.node, message_type=MESSAGE_TYPE, group_id=str(server_round))

    def _begin(self, chain: _Chain, server_round: int) -> Message:
        s = self.settings
        weights: dict[str, torch.Tensor] = {}
        for part in self._terminal_parts(chain.parts).values():
            weights.update(part_state_dict(part))
        if s.travelling:  # a frozen terminal part is never sent: the terminal has it from the checkpoint
            weights = {k: v for k, v in weights.items() if k in s.travelling}
        config = ConfigRecord(
            {
                "op": "begin",
                "server-round": server_round,
                "cut": chain.cut,
                "lr": s.lr,
                "momentum": s.momentum,
                "weight-decay": s.weight_decay,
                "batch-size": s.batch_size,
                "local-epochs": s.local_epochs,
                "seed": s.seed,
                "noise-std": s.noise_std,
            }
        )
        return self._message(chain, server_round, RecordDict({"weights": array_record_from_state(weights), "config": config}))

    def _drive(self, run: ProtocolRun, server_round: int, chains: list[_Chain], *, exclusive: bool) -> None:
        """Exchange messages with every chain's terminal until each has sent its trained weights
        (or left the round); the terminals' next messages go out together."""
        grid = run.grid
        outgoing = [self._begin(c, server_round) for c in chains]
        by_node = {c.node: c for c in chains}
        while outgoing:
            expected = {m.metadata.dst_node_id for m in outgoing}
            replies = {r.metadata.src_node_id: r for r in grid.send_and_receive(outgoing, timeout=run.timeout_s)}
            outgoing = []
            for chain in sorted(by_node.values(), key=lambda c: c.pid):
                if not chain.active or chain.node not in expected:
                    continue
                reply = replies.get(chain.node)
                if reply is None:
                    chain.dropped = "no reply (failed or missed the deadline)"
                    continue
                nxt = self._advance(run, server_round, chain, reply, exclusive)
                if nxt is not None:
                    outgoing.append(nxt)

    def _advance(self, run: ProtocolRun, server_round: int, chain: _Chain, reply: Message, exclusive: bool) -> Message | None:
        grid = run.grid
        records = reply.content.array_records
        if "weights" in records:
            chain.weights = _copy(record_views(records["weights"]))
            metrics = reply.content.metric_records["metrics"]
            chain.examples = int(metrics["num-examples"])
            if "dp-epsilon" in metrics:  # local DP: the terminal's cumulative epsilon
                chain.dp_epsilon = float(metrics["dp-epsilon"])
            return None
        if self.ushape and chain.pending is not None:  # U-shape: the head's reply (gradient at cut 2, if wanted)
            return self._middle_backward(run, server_round, chain, reply, exclusive)
        acts = record_views(records["activations"]).get("cut")
        labels = None if self.ushape else record_views(records["labels"]).get("y")
        reported = reply.content.metric_records.get("metrics", {}).get("num-examples", 0)
        problem = self._check_activations(chain, acts, labels, int(reported))
        if problem:
            chain.dropped = problem
            grid.reject(server_round, chain.node, problem)
            return None
        server = self._server_part(chain.parts)
        b = acts.shape[0]
        profile = profile_split(self.model, parse_cut(chain.cut), self.input_shape, b)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            if self.ushape:
                need_grad1, need_grad2 = chain.parts.cut_gradient_needed  # type: ignore[attr-defined]
                chain.pending = server_forward(server, acts, input_requires_grad=need_grad1)
                grid.server_work(profile.part("server_middle").forward_flops, partition_id=chain.pid, exclusive=exclusive)
                config = ConfigRecord({"op": "head", "return-grad": need_grad2})
                content = RecordDict({"activations": array_record_from_state({"cut": chain.pending.activations}), "config": config})
                return self._message(chain, server_round, content)
            front_trains = has_trainable(chain.parts.client)  # type: ignore[attr-defined]
            result = server_step(server, acts, labels, chain.server_opt, return_grad=front_trains)
        grid.server_work(profile.part("server").flops, partition_id=chain.pid, exclusive=exclusive)
        chain.losses.append(result.loss)
        content = RecordDict({"config": ConfigRecord({"op": "step"})})
        if front_trains:  # a frozen terminal part gets no gradient: it has nothing to update
            content["gradient"] = array_record_from_state({"cut": result.grad_at_cut})
        return self._message(chain, server_round, content)

    def _middle_backward(self, run: ProtocolRun, server_round: int, chain: _Chain, reply: Message, exclusive: bool) -> Message | None:
        """U-shape, the head's reply to ``head``: the middle part's backward with the gradient at
        cut 2 and the gradient at cut 1 in the ``step`` message, each only where a part before it
        trains (a frozen or parameter-free front gets no gradient; with the middle frozen too, the
        head sends none and the middle runs no backward)."""
        grid = run.grid
        pending = chain.pending
        assert pending is not None
        need_grad1, need_grad2 = chain.parts.cut_gradient_needed  # type: ignore[attr-defined]
        content = RecordDict({"config": ConfigRecord({"op": "step"})})
        if need_grad2:
            grad = record_views(reply.content.array_records["gradient"]).get("cut") if "gradient" in reply.content.array_records else None
            problem = _check_array("gradient at cut 2", grad, tuple(pending.activations.shape))
            if problem:
                chain.dropped = problem
                grid.reject(server_round, chain.node, problem)
                return None
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
                grad1 = server_backward_from_state(pending, grad, chain.server_opt)
            profile = profile_split(self.model, parse_cut(chain.cut), self.input_shape, int(grad.shape[0]))
            grid.server_work(profile.part("server_middle").backward_flops, partition_id=chain.pid, exclusive=exclusive)
            if need_grad1:
                content["gradient"] = array_record_from_state({"cut": grad1})
        chain.pending = None
        metrics = reply.content.metric_records.get("metrics", {})
        if "train-loss" in metrics:
            chain.losses.append(float(metrics["train-loss"]))
        return self._message(chain, server_round, content)

    def _check_activations(self, chain: _Chain, acts: np.ndarray | None, labels: np.ndarray | None, num_examples: int = 0) -> str:
        s = self.settings
        if acts is None:
            return "reply has no activations"
        b = int(acts.shape[0]) if acts.ndim else 0
        most = num_examples if s.poisson else s.batch_size  # a Poisson batch may exceed its expected size
        if not 1 <= b <= most:
            return f"activations for {b} samples (expected 1..{most})"
        expected = profile_split(self.model, parse_cut(chain.cut), self.input_shape, b).cuts[0].activation_shape
        problem = _check_array("activations", acts, tuple(expected))
        if problem or self.ushape:
            return problem
        if labels is None:
            return "reply has no labels"
        if labels.dtype != np.int64 or labels.shape != (b,):
            return f"labels of dtype {labels.dtype} and shape {labels.shape} (expected int64, ({b},))"
        if s.num_classes and (labels.min() < 0 or labels.max() >= s.num_classes):
            return f"labels outside [0, {s.num_classes})"
        return ""


def _check_array(what: str, array: np.ndarray | None, shape: tuple[int, ...] | None) -> str:
    """Why a received float tensor is unusable (empty string when it is fine)."""
    if array is None:
        return f"reply has no {what}"
    if array.dtype != np.float32:
        return f"{what} of dtype {array.dtype} (expected float32)"
    if shape is not None and tuple(array.shape) != tuple(shape):
        return f"{what} of shape {tuple(array.shape)} (expected {tuple(shape)})"
    if not np.isfinite(array).all():
        return f"{what} contain NaN/Inf"
    return ""


def _weighted_average(
    states: list[dict[str, torch.Tensor]], weights: list[int], order: "OrderedDict[str, torch.Tensor] | None"
) -> "OrderedDict[str, torch.Tensor]":
    """Sample-weighted average of state dicts (float64 accumulation, each tensor's own dtype kept)."""
    total = float(sum(weights))
    keys = list(order) if order is not None else list(states[0])
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key in keys:
        ref = torch.as_tensor(states[0][key])
        acc = sum(torch.as_tensor(s[key]).double() * (w / total) for s, w in zip(states, weights))
        out[key] = acc.round().to(ref.dtype) if not ref.dtype.is_floating_point else acc.to(ref.dtype)
    return out


__all__ = ["MESSAGE_TYPE", "SPLIT_MODES", "SplitProtocol", "SplitSettings"]
