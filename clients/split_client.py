"""The terminal's side of split learning: one handler for ``train.split`` messages.

Every message carries ``config["op"]`` and the terminal answers with what the protocol's next
exchange needs (see :mod:`fedsplit.strategies.split_protocol` for the server side)::

    op = "begin"  arrays "weights" (the terminal's part(s)) + hyper-parameters and the cut
                  -> forward batch 0 of the round; reply "activations" (+ "labels" unless U-shape)
    op = "step"   arrays "gradient" (the gradient at the (first) cut for batch k; absent for a
                  frozen terminal part, which is then not updated)
                  -> recompute the forward of batch k, backward, SGD step; then forward batch
                     k + 1 and reply its "activations" (+ "labels"), or, after the last batch,
                     reply the trained part(s) as "weights"
    op = "head"   U-shape only: arrays "activations" (the server part's output for batch k)
                  -> head forward, loss on the labels (which never leave the terminal),
                     backward, SGD step; reply "gradient" at the second cut (unless config
                     "return-grad" is False: nothing before the head trains)

Nothing is kept in the process between messages: the terminal's part weights, SGD momentum and
position in the round live in ``Context.state`` (``fedsplit.split.*`` records), so consecutive
messages may run in different processes (any actor of fedsplit's engine, Flower's engine, or a
deployed SuperNode that starts a ClientApp process per message). The price is a second forward
pass of the terminal's input-side part before its backward; it is metered (``flops`` of each
reply = what that message really computed, so a batch costs ``2 * forward + backward``).
Batches follow the same seeded order as FedAvg's local training (:func:`fedsplit.learning.train_local`).

With ``privacy.mode = "local"`` (:mod:`fedsplit.clients.split_privacy`) batches are Poisson samples
instead, ``step`` is a DP-SGD step of the terminal's trainable part(s) (per-sample gradients from
the gradient at the cut, clipped, noised; a U-shape's head steps there too, not at ``head``, so
that one clipping covers both parts), an empty batch is a noise-only step without an exchange,
and the weights reply carries the terminal's cumulative epsilon.

Device: the terminal's parts are moved once per process to the device its actor was given
(:func:`terminal_device`, the same function FedAvg's handlers use), and each batch and label
tensor with them; what goes into a reply is copied back to the CPU.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict

from fedsplit.clients.arrays import array_record_from_state, record_views
from fedsplit.clients.split_privacy import SplitPrivacy
from fedsplit.learning import Task
from fedsplit.privacy.split_dp import DPTerm, dp_part_flops
from fedsplit.split import (
    client_backward_recompute,
    client_forward,
    client_head_step,
    has_trainable,
    load_part_state_dict,
    load_sgd_state,
    make_sgd,
    parse_cut,
    part_state_dict,
    profile_split,
    sgd_state,
    split_model,
)

SPLIT_ACTION = "split"
"""Message type ``train.split``."""

STATE_CONFIG = "fedsplit.split.config"
STATE_WEIGHTS = "fedsplit.split.weights"
STATE_MOMENTUM = "fedsplit.split.momentum"
STATE_DP_HEAD_INPUT = "fedsplit.split.dp-head-input"
"""Under local DP in U-shape: the head's input of the current batch, kept from ``head`` to ``step``."""


_PARTS: dict[tuple[int, str, str], object] = {}


def terminal_device() -> torch.device:
    """The device this process computes on: :func:`fedsplit.clients.app._device` (looked up at
    call time, so that one function decides for every handler and a test can point it elsewhere)."""
    from fedsplit.clients import app

    return app._device()


def parts_for(task: Task, cut: str, device: torch.device | None = None) -> object:
    """The task model cut at ``cut``, built once per process and device (weights are loaded per
    message); the terminal's parts are moved to ``device`` (default: :func:`terminal_device`) once."""
    device = torch.device(device) if device is not None else terminal_device()
    key = (id(task), cut, str(device))
    parts = _PARTS.get(key)
    if parts is None:
        parts = split_model(task.model, parse_cut(cut))
        for part in terminal_parts(parts).values():
            part.to(device)
        _PARTS[key] = parts
    return parts


def terminal_parts(parts: object) -> dict[str, torch.nn.Module]:
    """The parts a terminal holds: ``client`` (vanilla) or ``client_front`` + ``client_head``."""
    named = parts.named_parts()  # type: ignore[attr-defined]
    return {name: part for name, part in named.items() if name.startswith("client")}


@dataclass
class Cursor:
    """Where the terminal is in its round of split training."""

    server_round: int
    cut: str
    batch: int
    lr: float
    momentum: float
    weight_decay: float
    batch_size: int
    epochs: int
    seed: int
    noise_std: float

    @classmethod
    def from_record(cls, record: ConfigRecord) -> "Cursor":
        return cls(
            server_round=int(record["server-round"]),
            cut=str(record["cut"]),
            batch=int(record.get("batch", 0)),
            lr=float(record["lr"]),
            momentum=float(record.get("momentum", 0.0)),
            weight_decay=float(record.get("weight-decay", 0.0)),
            batch_size=int(record["batch-size"]),
            epochs=int(record.get("local-epochs", 1)),
            seed=int(record["seed"]),
            noise_std=float(record.get("noise-std", 0.0)),
        )

    def to_record(self) -> ConfigRecord:
        return ConfigRecord(
            {
                "server-round": self.server_round,
                "cut": self.cut,
                "batch": self.batch,
                "lr": self.lr,
                "momentum": self.momentum,
                "weight-decay": self.weight_decay,
                "batch-size": self.batch_size,
                "local-epochs": self.epochs,
                "seed": self.seed,
                "noise-std": self.noise_std,
            }
        )


def batch_indices(n: int, batch_size: int, epochs: int, seed: int, k: int) -> torch.Tensor:
    """Sample indices of batch ``k`` of a round: the order :func:`train_local` uses (one seeded
    permutation per epoch, consecutive slices)."""
    per_epoch = math.ceil(n / batch_size)
    epoch, slot = divmod(k, per_epoch)
    generator = torch.Generator().manual_seed(seed)
    order = None
    for _ in range(epoch + 1):
        order = torch.randperm(n, generator=generator)
    assert order is not None
    return order[slot * batch_size : (slot + 1) * batch_size]


def _load(parts: dict[str, torch.nn.Module], weights: dict[str, np.ndarray]) -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        for part in parts.values():
            load_part_state_dict(part, weights)


class SplitTerminal:
    """One terminal's split-learning state for the duration of a message."""

    def __init__(self, task: Task, context: Context, cursor: Cursor, seed_of_round: int) -> None:
        self.task = task
        self.context = context
        self.cursor = cursor
        self.device = terminal_device()
        self.parts_obj = parts_for(task, cursor.cut, self.device)
        self.parts = terminal_parts(self.parts_obj)
        self.ushape = "client_head" in self.parts
        pid = int(context.node_config["partition-id"])
        self.train_set = task.data.partition(pid)[0]
        self.n = len(self.train_set)
        self.order_seed = seed_of_round
        self.privacy: SplitPrivacy | None = None
        if task.cfg.privacy.mode == "local":
            self.privacy = SplitPrivacy(task.cfg, context, self.n, cursor.batch_size, cursor.epochs, seed_of_round)
            # one SGD over every trainable terminal parameter: DP-SGD clips each sample's gradient
            # over all of them together (a U-shape's front and head)
            trainable = [p for part in self.parts.values() for p in part.parameters() if p.requires_grad]
            shared = torch.optim.SGD(trainable, lr=cursor.lr, momentum=cursor.momentum, weight_decay=cursor.weight_decay) if trainable else None
            self.optimizers = {name: shared if has_trainable(part) else None for name, part in self.parts.items()}
            self.num_batches = self.privacy.num_batches
        else:
            self.optimizers = {
                name: make_sgd(part, lr=cursor.lr, momentum=cursor.momentum, weight_decay=cursor.weight_decay)
                for name, part in self.parts.items()
            }
            self.num_batches = cursor.epochs * math.ceil(self.n / cursor.batch_size) if self.n else 0

    def restore(self) -> None:
        state = self.context.state
        _load(self.parts, record_views(state.array_records[STATE_WEIGHTS]))
        momentum = record_views(state.array_records[STATE_MOMENTUM]) if STATE_MOMENTUM in state.array_records else {}
        for name, part in self.parts.items():
            own = {k: v for k, v in momentum.items() if k in dict(part.named_parameters())}
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
                load_sgd_state(self.optimizers[name], part, own)

    def save(self) -> None:
        state = self.context.state
        weights: dict[str, torch.Tensor] = {}
        momentum: dict[str, torch.Tensor] = {}
        for name, part in self.parts.items():
            weights.update(part_state_dict(part))
            momentum.update(sgd_state(self.optimizers[name], part))
        state.array_records[STATE_WEIGHTS] = array_record_from_state(weights)
        state.array_records[STATE_MOMENTUM] = array_record_from_state(momentum)
        state.config_records[STATE_CONFIG] = self.cursor.to_record()

    def batch(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples and labels of batch ``k``, on the terminal's device."""
        if self.privacy is not None:
            idx = self.privacy.indices(k)
        else:
            idx = batch_indices(self.n, self.cursor.batch_size, self.cursor.epochs, self.order_seed, k)
        return self.train_set.x[idx].to(self.device), self.train_set.y[idx].to(self.device)

    def profile(self, b: int):  # noqa: ANN201 - SplitProfile
        return profile_split(self.task.model, parse_cut(self.cursor.cut), tuple(self.train_set.x.shape[1:]), b)

    def dp_optimizer(self) -> torch.optim.Optimizer | None:
        """Under local DP: the one SGD over every trainable terminal parameter (None if none)."""
        return next((opt for opt in self.optimizers.values() if opt is not None), None)

    def skip_empty(self, k: int) -> int:
        """Under local DP, take the noise-only step of every empty Poisson batch from ``k`` on
        (no exchange); the first non-empty batch, or :attr:`num_batches`. Without DP: ``k``."""
        if self.privacy is None:
            return k
        while k < self.num_batches and len(self.privacy.indices(k)) == 0:
            self.privacy.step(k, [], self.dp_optimizer())
            k += 1
        return k

    def front(self) -> torch.nn.Module:
        return self.parts["client_front" if self.ushape else "client"]

    def forward_reply(self, k: int, flops: int) -> RecordDict:
        """Forward batch ``k`` (no graph kept) and build the reply carrying its activations."""
        x, y = self.batch(k)
        front = self.front()
        # A front that gets a gradient recomputes its forward then (this one leaves it unchanged);
        # one that gets none (nothing trainable) runs this forward only: the training one.
        sent = client_forward(front, x, keep_graph=not has_trainable(front)).activations
        if self.cursor.noise_std > 0:
            generator = torch.Generator().manual_seed(self.order_seed * 1_000_003 + k)
            # drawn on the CPU (the same noise on every device), then moved to the activations
            noise = torch.randn(sent.shape, generator=generator).to(sent.device)
            sent = sent + self.cursor.noise_std * noise
        flops += self.profile(len(y)).part("client_front" if self.ushape else "client").forward_flops
        content = RecordDict({"activations": array_record_from_state({"cut": sent})})
        if not self.ushape:
            content["labels"] = array_record_from_state({"y": y})
        content["metrics"] = self.metrics(flops)
        return content

    def weights_reply(self, flops: int) -> RecordDict:
        weights: dict[str, torch.Tensor] = {}
        for part in self.parts.values():
            weights.update(part_state_dict(part))
        if self.task.plan is not None:  # transfer.trainable: only the trainable tensors travel
            weights = {k: v for k, v in weights.items() if k in self.task.travelling}
        extra = self.privacy.metrics() if self.privacy is not None else {}
        return RecordDict({"weights": array_record_from_state(weights), "metrics": self.metrics(flops, **extra)})

    def metrics(self, flops: int, **extra: float) -> MetricRecord:
        return MetricRecord(
            {
                "flops": int(flops),
                "num-examples": self.n,
                "batches": self.num_batches,
                "partition-id": int(self.context.node_config["partition-id"]),
                **extra,
            }
        )


def _dp_step(terminal: SplitTerminal, msg: Message, context: Context, k: int, x: torch.Tensor, y: torch.Tensor) -> int:
    """Local DP: one DP-SGD step of every trainable terminal part on batch ``k``; its FLOPs.

    The front's per-sample gradients come from the gradient at the (first) cut the server sent
    (none for a front that does not train); a U-shape head's from its own loss on the input kept
    at ``head``. Both are clipped together, noised once, accounted once.
    """
    assert terminal.privacy is not None
    terms: list[DPTerm] = []
    front = terminal.front()
    if "gradient" in msg.content.array_records and has_trainable(front):
        grad = torch.from_numpy(np.array(record_views(msg.content.array_records["gradient"])["cut"])).to(terminal.device)
        terms.append(DPTerm(front, x, grad_output=grad))
    if terminal.ushape and has_trainable(terminal.parts["client_head"]):
        kept = torch.from_numpy(np.array(record_views(context.state.array_records[STATE_DP_HEAD_INPUT])["cut"])).to(terminal.device)
        terms.append(DPTerm(terminal.parts["client_head"], kept, labels=y))
    terminal.privacy.step(k, terms, terminal.dp_optimizer())
    return sum(
        dp_part_flops(term.part, tuple(term.inputs.shape[1:]), len(y), head=term.labels is not None) for term in terms
    )


def handle_split(msg: Message, context: Context, task: Task, seed_of_round) -> Message:  # noqa: ANN001
    """Handle one ``train.split`` message (see the module docstring)."""
    config = msg.content.config_records["config"]
    op = str(config["op"])
    if op == "begin":
        cursor = Cursor.from_record(config)
    else:
        cursor = Cursor.from_record(context.state.config_records[STATE_CONFIG])
    pid = int(context.node_config["partition-id"])
    terminal = SplitTerminal(task, context, cursor, seed_of_round(cursor.seed, pid, cursor.server_round))
    if op == "begin":
        received = record_views(msg.content.array_records["weights"])
        # under transfer.trainable the frozen rest of the part is the pretrained model's
        _load(terminal.parts, task.full_state(received) if task.plan is not None else received)
        refusal = terminal.privacy.refusal(msg) if terminal.privacy is not None else None
        if refusal is not None:
            return refusal
        cursor.batch = terminal.skip_empty(0)
        if cursor.batch >= terminal.num_batches:
            content = terminal.weights_reply(0)
        else:
            content = terminal.forward_reply(cursor.batch, 0)
        terminal.save()
        return Message(content, reply_to=msg)
    terminal.restore()
    k = cursor.batch
    x, y = terminal.batch(k)
    if op == "head":
        activations = record_views(msg.content.array_records["activations"])["cut"]
        head = terminal.parts["client_head"]
        return_grad = bool(config.get("return-grad", True))  # False: nothing before the head trains
        # under local DP the head steps with the front at 'step' (one clipping over both parts):
        # keep its input for that step's per-sample gradients
        opt = terminal.optimizers["client_head"] if terminal.privacy is None else None
        result = client_head_step(head, activations, y, opt, return_grad=return_grad)
        flops = terminal.profile(len(y)).part("client_head").flops
        if terminal.privacy is not None:
            context.state.array_records[STATE_DP_HEAD_INPUT] = array_record_from_state({"cut": np.array(activations)})
        terminal.save()
        content = RecordDict({"metrics": terminal.metrics(flops, **{"train-loss": result.loss, "correct": float(result.n_correct)})})
        if return_grad:
            content["gradient"] = array_record_from_state({"cut": result.grad_at_cut})
        return Message(content, reply_to=msg)
    if op != "step":
        raise ValueError(f"train.split: unknown op {op!r} (begin, step, head)")
    name = "client_front" if terminal.ushape else "client"
    flops = 0
    if terminal.privacy is not None:
        flops = _dp_step(terminal, msg, context, k, x, y)
    elif "gradient" in msg.content.array_records and terminal.optimizers[name] is not None:
        grad = record_views(msg.content.array_records["gradient"])["cut"]
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            client_backward_recompute(terminal.parts[name], x, grad, terminal.optimizers[name])
        part = terminal.profile(len(y)).part(name)
        flops = part.forward_flops + part.backward_flops  # the recomputed forward and the backward
    # else: a frozen part (transfer.trainable) is never updated: no backward, no step
    cursor.batch = terminal.skip_empty(k + 1)
    if cursor.batch >= terminal.num_batches:
        content = terminal.weights_reply(flops)
    else:
        content = terminal.forward_reply(cursor.batch, flops)
    terminal.save()
    return Message(content, reply_to=msg)


__all__ = ["SPLIT_ACTION", "Cursor", "batch_indices", "handle_split", "parts_for", "terminal_device", "terminal_parts"]
