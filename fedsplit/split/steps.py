"""The per-step maths of split learning, one function per message a side handles.

Vanilla split (terminal = ``client`` part, edge server = ``server`` part)::

    terminal  state = client_forward(client, x)            -> send state.activations (+ labels)
    server    grad, loss, correct = server_step(server, activations, labels, server_opt)
                                                           -> send grad
    terminal  client_backward_from_state(state, grad, client_opt)

U-shape (the terminal holds the front and the head, labels never leave it)::

    terminal  front = client_forward(client_front, x)                      -> send front.activations
    server    middle = server_forward(server_middle, activations)          -> send middle.activations
    terminal  grad2, loss, correct = client_head_step(client_head, activations, labels, head_opt)
                                                                           -> send grad2
    server    grad1 = server_backward_from_state(middle, grad2, middle_opt) -> send grad1
    terminal  client_backward_from_state(front, grad1, front_opt)

One call is one optimiser step of each part involved, and the parameters after it equal those of
the centralized step of the unsplit model on the same batch (``tests/test_split_core.py``).

Kept state or recomputation
---------------------------
``client_forward`` / ``server_forward`` return a :class:`ForwardState` that keeps the autograd
graph; the ``*_backward_from_state`` functions use it. A side whose next message may land in
another process (a Flower ClientApp) cannot keep it: it calls ``client_forward(...,
keep_graph=False)`` (no graph, and the part is left unchanged: BatchNorm running statistics are
restored), stores nothing, and later calls ``client_backward_recompute(part, x, grad, opt)``, which
re-runs the training forward (the one that updates the running statistics) and then the backward.
**The recompute variant runs the part's forward twice: meter its FLOPs as
``2 * forward_flops + backward_flops``** (:class:`fedsplit.split.profile.PartProfile`). Parts with
random layers (dropout) draw the same masks in both forwards only if both get the same ``seed``.

Micro-batches
-------------
Every input may be a list of micro-batches instead of one batch (the other side then receives and
returns lists of the same length). The call still takes one optimiser step, on the gradient of
the mean loss over all samples of all micro-batches; each micro-batch goes through the part
separately, so layers that depend on the batch (BatchNorm in train mode) see each micro-batch's
own statistics, exactly as centralized gradient accumulation over the same micro-batches. Without
such layers the step equals the step on the concatenated batch (up to float rounding).

Arrays
------
Inputs may be torch tensors or numpy arrays (read-only message views are copied); they are moved
to the part's device. Activations and gradients come back as detached tensors on the part's device
(:func:`to_numpy` turns them into numpy arrays for a message). Labels are class indices.

The loss is the mean cross-entropy, as in :func:`fedsplit.learning.train_local`; FedProx's
proximal term is not part of these steps.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterator, NamedTuple, Sequence

import numpy as np
import torch
from torch import nn

from fedsplit.split.parts import SplitParts, UShapeParts

ArrayLike = torch.Tensor | np.ndarray
#: One batch, or a list of micro-batches.
Batch = ArrayLike | Sequence[ArrayLike]


# ------------------------------------------------------------------------------------ helpers


def _device_of(part: nn.Module) -> torch.device:
    for tensor in part.parameters():
        return tensor.device
    for tensor in part.buffers():
        return tensor.device
    return torch.device("cpu")


def _to_tensor(value: ArrayLike, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        array = np.asarray(value)
        if not array.flags.writeable:
            array = array.copy()  # torch.from_numpy warns on read-only buffers
        value = torch.from_numpy(array)
    return value.to(device=device, dtype=dtype) if dtype is not None else value.to(device)


def _as_list(batch: Batch) -> tuple[list[ArrayLike], bool]:
    if isinstance(batch, (list, tuple)):
        if not batch:
            raise ValueError("an empty list of micro-batches")
        return list(batch), True
    return [batch], False


def _unlist(values: list[Any], is_list: bool) -> Any:
    return values if is_list else values[0]


@contextlib.contextmanager
def _seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    if seed is None:
        yield
        return
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def _buffers_untouched(part: nn.Module) -> Iterator[None]:
    saved = [(buffer, buffer.detach().clone()) for buffer in part.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


def to_numpy(value: torch.Tensor | Sequence[torch.Tensor] | None) -> np.ndarray | list[np.ndarray] | None:
    """Detached CPU numpy array(s) of a tensor or list of tensors (for a message)."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return [v.detach().cpu().numpy() for v in value]
    return value.detach().cpu().numpy()


def payload_bytes(value: ArrayLike | Sequence[ArrayLike] | None) -> int:
    """Bytes of the raw tensor data (``numel * element size``), summed over a list."""
    if value is None:
        return 0
    if isinstance(value, (list, tuple)):
        return sum(payload_bytes(v) for v in value)
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    return int(np.asarray(value).nbytes)


# ---------------------------------------------------------------------------------- forward


@dataclass
class ForwardState:
    """One training forward of a part, kept for its backward.

    Attributes
    ----------
    part : nn.Module
        The part that ran.
    activations : tensor or list of tensors
        Detached copies of the outputs: what is sent to the next part.
    inputs : list of tensor
        The part's input leaves (they require grad when the input gradient is wanted).
    outputs : list of tensor
        The graph-attached outputs (empty when the graph was not kept).
    is_list : bool
        Whether the call took a list of micro-batches.
    """

    part: nn.Module
    activations: torch.Tensor | list[torch.Tensor]
    inputs: list[torch.Tensor] = field(repr=False)
    outputs: list[torch.Tensor] = field(repr=False)
    is_list: bool = False

    @property
    def has_graph(self) -> bool:
        """Whether the autograd graph is kept (a backward is possible)."""
        return bool(self.outputs)


def part_forward(
    part: nn.Module,
    inputs: Batch,
    *,
    input_requires_grad: bool,
    keep_graph: bool = True,
    seed: int | None = None,
) -> ForwardState:
    """Run ``part`` in train mode on a batch (or micro-batches).

    Parameters
    ----------
    part : nn.Module
        The part (put in train mode).
    inputs : tensor, numpy array, or a list of them
        The part's input: raw samples or a previous part's activations.
    input_requires_grad : bool
        Whether the gradient with respect to the input will be wanted (the previous part has
        trainable tensors).
    keep_graph : bool
        Keep the autograd graph for :func:`part_backward` (True), or run without a graph and
        leave the part unchanged (False: buffers such as BatchNorm running statistics are
        restored after the pass).
    seed : int, optional
        Seed the global RNG for this forward only (reproducible dropout masks across a recompute).
    """
    part.train()
    device = _device_of(part)
    batches, is_list = _as_list(inputs)
    leaves = [_to_tensor(b, device).detach().requires_grad_(input_requires_grad and keep_graph) for b in batches]
    outputs: list[torch.Tensor] = []
    with _seeded(seed, device):
        if keep_graph:
            # The clone makes the part's input a non-leaf, so a first in-place op (ReLU(inplace=True))
            # neither fails on a leaf that requires grad nor writes into the caller's array.
            outputs = [part(leaf.clone()) for leaf in leaves]
            activations = [out.detach().clone() for out in outputs]
        else:
            with torch.no_grad(), _buffers_untouched(part):
                activations = [part(leaf.clone()) for leaf in leaves]
    return ForwardState(part, _unlist(activations, is_list), leaves, outputs, is_list)


def part_backward(
    state: ForwardState, grad_output: Batch, optimizer: torch.optim.Optimizer | None = None
) -> torch.Tensor | list[torch.Tensor] | None:
    """Backward through a kept forward, then one optimiser step.

    Parameters
    ----------
    state : ForwardState
        From :func:`part_forward` with ``keep_graph=True``; its graph is freed.
    grad_output : tensor, numpy array, or a list of them
        Gradient of the loss with respect to the part's output (one per micro-batch).
    optimizer : torch.optim.Optimizer, optional
        Stepped after the backward; without one the gradients are left in ``.grad``.
        The part's gradients are zeroed before the backward either way.

    Returns
    -------
    tensor, list of tensors, or None
        Gradient with respect to the part's input (detached), or None if the input did not
        require grad.
    """
    if not state.has_graph:
        raise ValueError("this forward kept no graph (keep_graph=False): use the recompute variant")
    grads, is_list = _as_list(grad_output)
    if is_list != state.is_list or len(grads) != len(state.outputs):
        raise ValueError(
            f"{len(grads)} gradient(s) for {len(state.outputs)} output(s) "
            f"({'a list' if is_list else 'one tensor'} for {'a list' if state.is_list else 'one tensor'})"
        )
    grads_t = [_to_tensor(g, out.device, out.dtype) for g, out in zip(grads, state.outputs)]
    for g, out in zip(grads_t, state.outputs):
        if g.shape != out.shape:
            raise ValueError(f"gradient of shape {tuple(g.shape)} for an output of shape {tuple(out.shape)}")
    state.part.zero_grad(set_to_none=True)
    torch.autograd.backward(state.outputs, grads_t)
    if optimizer is not None:
        optimizer.step()
    input_grads = None
    if state.inputs[0].requires_grad:
        input_grads = _unlist([leaf.grad.detach() for leaf in state.inputs], state.is_list)
    state.outputs = []  # the graph is freed; a second backward would fail
    return input_grads


# --------------------------------------------------------------------------------- loss side


class LossStepResult(NamedTuple):
    """What the loss side of a split step returns.

    Attributes
    ----------
    grad_at_cut : tensor, list of tensors, or None
        Gradient of the loss with respect to the received activations (None when not wanted).
    loss : float
        Mean cross-entropy over all samples (before the step).
    n_correct : int
        Samples whose arg-max prediction equals the label.
    """

    grad_at_cut: torch.Tensor | list[torch.Tensor] | None
    loss: float
    n_correct: int


def loss_step(
    part: nn.Module,
    activations: Batch,
    labels: Batch,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    return_grad: bool = True,
) -> LossStepResult:
    """Forward the label-side part, cross-entropy loss, backward, one optimiser step.

    This is the server's step in vanilla split learning and the terminal's head step in U-shape.

    Parameters
    ----------
    part : nn.Module
        The part that ends with the logits.
    activations : tensor, numpy array, or a list of them
        Activations received at the cut ``[N, ...]`` (one per micro-batch).
    labels : tensor, numpy array, or a list of them
        Class indices ``[N]`` (one per micro-batch).
    optimizer : torch.optim.Optimizer, optional
        Stepped after the backward (parameters and gradients of ``part`` only).
    return_grad : bool
        Compute the gradient at the cut (False when nothing upstream is trainable).
    """
    part.train()
    device = _device_of(part)
    acts, is_list = _as_list(activations)
    ys, labels_list = _as_list(labels)
    if labels_list != is_list or len(ys) != len(acts):
        raise ValueError(f"{len(acts)} activation batch(es) but {len(ys)} label batch(es)")
    leaves = [_to_tensor(a, device).detach().requires_grad_(return_grad) for a in acts]
    targets = [_to_tensor(y, device, torch.long) for y in ys]
    total = sum(int(t.shape[0]) for t in targets)
    if total == 0:
        raise ValueError("no samples in the batch")
    part.zero_grad(set_to_none=True)
    logits = [part(leaf.clone()) for leaf in leaves]  # clone: see part_forward
    if is_list:
        loss = sum(nn.functional.cross_entropy(z, t, reduction="sum") for z, t in zip(logits, targets)) / total
    else:
        loss = nn.functional.cross_entropy(logits[0], targets[0])  # the centralized step's exact op
    if loss.requires_grad:  # False only for a parameter-free part with return_grad=False
        loss.backward()
    if optimizer is not None:
        optimizer.step()
    n_correct = sum(int((z.detach().argmax(dim=1) == t).sum()) for z, t in zip(logits, targets))
    grad = _unlist([leaf.grad.detach() for leaf in leaves], is_list) if return_grad else None
    return LossStepResult(grad, float(loss.detach()), n_correct)


#: The edge server's step in vanilla split learning (see :func:`loss_step`).
server_step = loss_step
#: The terminal's head step in U-shaped split learning (see :func:`loss_step`).
client_head_step = loss_step


# ------------------------------------------------------------------------------- input side


def client_forward(part: nn.Module, x: Batch, *, keep_graph: bool = True, seed: int | None = None) -> ForwardState:
    """Terminal: forward the input-side part on raw samples; send ``.activations``.

    With ``keep_graph=True`` the returned state is what :func:`client_backward_from_state` needs;
    with ``keep_graph=False`` nothing needs keeping and the part is unchanged (use
    :func:`client_backward_recompute`). When no gradient will come back (the part has nothing
    trainable), keep ``keep_graph=True``: this forward is then the only one and must update the
    part's buffers.
    """
    return part_forward(part, x, input_requires_grad=False, keep_graph=keep_graph, seed=seed)


def client_backward_from_state(
    state: ForwardState, grad_at_cut: Batch, optimizer: torch.optim.Optimizer | None = None
) -> None:
    """Terminal: backward through the kept forward with the gradient received at the cut, then step."""
    part_backward(state, grad_at_cut, optimizer)


def client_backward_recompute(
    part: nn.Module,
    x: Batch,
    grad_at_cut: Batch,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    seed: int | None = None,
) -> None:
    """Terminal: re-run the training forward on ``x``, backward with ``grad_at_cut``, step.

    Costs a second forward pass: meter ``2 * forward_flops + backward_flops``.
    """
    part_backward(part_forward(part, x, input_requires_grad=False, seed=seed), grad_at_cut, optimizer)


def server_forward(
    part: nn.Module,
    activations: Batch,
    *,
    keep_graph: bool = True,
    input_requires_grad: bool = True,
    seed: int | None = None,
) -> ForwardState:
    """Edge server, U-shape: forward the middle part on the front's activations; send ``.activations``.

    ``input_requires_grad=False`` when the front part has nothing trainable (no gradient goes back
    across cut 1).
    """
    return part_forward(part, activations, input_requires_grad=input_requires_grad, keep_graph=keep_graph, seed=seed)


def server_backward_from_state(
    state: ForwardState, grad_at_cut: Batch, optimizer: torch.optim.Optimizer | None = None
) -> torch.Tensor | list[torch.Tensor] | None:
    """Edge server, U-shape: backward the middle part with the gradient at cut 2, step; returns the gradient at cut 1."""
    return part_backward(state, grad_at_cut, optimizer)


def server_backward_recompute(
    part: nn.Module,
    activations: Batch,
    grad_at_cut: Batch,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    input_requires_grad: bool = True,
    seed: int | None = None,
) -> torch.Tensor | list[torch.Tensor] | None:
    """Edge server, U-shape: re-run the middle forward, backward, step; returns the gradient at cut 1.

    Costs a second forward pass of the middle part.
    """
    state = part_forward(part, activations, input_requires_grad=input_requires_grad, seed=seed)
    return part_backward(state, grad_at_cut, optimizer)


# ----------------------------------------------------------------------- the whole exchange


class SplitStepResult(NamedTuple):
    """One split training step run in-process.

    Attributes
    ----------
    loss : float
        Mean cross-entropy of the batch (before the step).
    n_correct : int
        Correct arg-max predictions.
    uplink_bytes, downlink_bytes : int
        Tensor bytes the terminal sent and received (activations, gradients, and labels in
        vanilla split; ``numel * element size``, no message framing).
    """

    loss: float
    n_correct: int
    uplink_bytes: int
    downlink_bytes: int


def split_training_step(
    parts: SplitParts | UShapeParts,
    optimizers: dict[str, torch.optim.Optimizer | None],
    x: Batch,
    y: Batch,
    *,
    recompute: bool = False,
) -> SplitStepResult:
    """One step of the whole protocol in one process, in the order the messages would go.

    A reference for protocol implementations and for tests; it calls exactly the per-message
    functions above.

    Parameters
    ----------
    parts : SplitParts or UShapeParts
        From :func:`fedsplit.split.split_model`.
    optimizers : dict
        Optimiser per part name (``"client"``, ``"server"``; or ``"client_front"``,
        ``"server_middle"``, ``"client_head"``); a missing or None entry means no step.
    x, y : batch or list of micro-batches
        Samples and labels.
    recompute : bool
        Use the recompute variants (no forward state kept between messages).
    """
    if isinstance(parts, SplitParts):
        client_opt, server_opt = optimizers.get("client"), optimizers.get("server")
        need_grad = parts.cut_gradient_needed
        # Without a gradient coming back, the first forward is the only one: it must be the real one.
        front = client_forward(parts.client, x, keep_graph=not (recompute and need_grad))
        up = payload_bytes(front.activations) + payload_bytes(y)
        grad, loss, correct = server_step(parts.server, front.activations, y, server_opt, return_grad=need_grad)
        down = payload_bytes(grad)
        if need_grad:
            if recompute:
                client_backward_recompute(parts.client, x, grad, client_opt)
            else:
                client_backward_from_state(front, grad, client_opt)
        return SplitStepResult(loss, correct, up, down)

    front_opt, middle_opt, head_opt = (optimizers.get(k) for k in ("client_front", "server_middle", "client_head"))
    need_grad1, need_grad2 = parts.cut_gradient_needed
    front = client_forward(parts.client_front, x, keep_graph=not (recompute and need_grad1))
    middle = server_forward(
        parts.server_middle, front.activations, keep_graph=not (recompute and need_grad2), input_requires_grad=need_grad1
    )
    grad2, loss, correct = client_head_step(parts.client_head, middle.activations, y, head_opt, return_grad=need_grad2)
    up = payload_bytes(front.activations) + payload_bytes(grad2)
    down = payload_bytes(middle.activations)
    if need_grad2:
        if recompute:
            grad1 = server_backward_recompute(
                parts.server_middle, front.activations, grad2, middle_opt, input_requires_grad=need_grad1
            )
        else:
            grad1 = server_backward_from_state(middle, grad2, middle_opt)
        down += payload_bytes(grad1)
        if need_grad1:
            if recompute:
                client_backward_recompute(parts.client_front, x, grad1, front_opt)
            else:
                client_backward_from_state(front, grad1, front_opt)
    return SplitStepResult(loss, correct, up, down)


__all__ = [
    "Batch",
    "ForwardState",
    "LossStepResult",
    "SplitStepResult",
    "client_backward_from_state",
    "client_backward_recompute",
    "client_forward",
    "client_head_step",
    "loss_step",
    "part_backward",
    "part_forward",
    "payload_bytes",
    "server_backward_from_state",
    "server_backward_recompute",
    "server_forward",
    "server_step",
    "split_training_step",
    "to_numpy",
]
