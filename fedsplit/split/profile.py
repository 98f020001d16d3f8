"""What each part of a split costs per batch: parameters, exact FLOPs, bytes across each cut.

FLOPs are counted with :class:`torch.utils.flop_counter.FlopCounterMode` (multiply and add counted
separately, as :func:`fedsplit.models.step_flops` does), block by block, once per (architecture,
input shape, batch size), on a copy of the model in train mode, and cached. A part's count is the
sum of its blocks' counts. Each block is measured as it runs inside the unsplit model: its input
requires grad exactly when some earlier block has trainable tensors, so the backward of the first
trainable layer computes no input gradient, as in the centralized step. Hence the parts' FLOPs add
up exactly to ``step_flops(model, input_shape, batch_size)`` (tolerance 0; the cross-entropy loss is
counted in the last block, and FlopCounterMode counts no FLOPs for it).

Across a cut travel the activations (forward) and the gradient at the cut (backward), both of
``activation_shape`` and ``numel * element size`` bytes (4 bytes per element for float32 models).
No gradient travels back across a cut with nothing trainable before it (``gradient_bytes = 0``),
matching :attr:`fedsplit.split.SplitParts.cut_gradient_needed`. In vanilla split the labels also go
to the server: ``label_bytes = 8 * batch_size`` (int64 class indices).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from fedsplit.models.contract import blocks, resolve_cut
from fedsplit.models.flops import architecture_key, trainable_key
from fedsplit.split.parts import Cut

#: Bytes of one label sent to the server in vanilla split (int64 class index).
LABEL_BYTES = 8


@dataclass(frozen=True)
class BlockProfile:
    """One block's share of a training step on one batch.

    Attributes
    ----------
    name : str
        Block name (see :func:`fedsplit.models.contract.blocks`).
    parameters : int
        Trainable parameters (elements).
    state_bytes : int
        Bytes of the block's state_dict (parameters and buffers).
    forward_flops, backward_flops : int
        FLOPs of the block's forward and backward on one batch (the last block's include the loss).
    output_shape : tuple of int
        Shape of the block's output for one batch, batch dimension first.
    output_bytes : int
        Bytes of that output (``numel * element size``).
    input_requires_grad : bool
        Whether an earlier block has trainable tensors (the gradient w.r.t. the input is computed).
    """

    name: str
    parameters: int
    state_bytes: int
    forward_flops: int
    backward_flops: int
    output_shape: tuple[int, ...]
    output_bytes: int
    input_requires_grad: bool


@dataclass(frozen=True)
class PartProfile:
    """One part of a split, per batch.

    Attributes
    ----------
    role : str
        ``client``/``server`` (vanilla) or ``client_front``/``server_middle``/``client_head`` (U-shape).
    blocks : tuple of str
        Its blocks, in order.
    parameters : int
        Trainable parameters (elements).
    state_bytes : int
        Bytes of its state_dict (what loading or sending the part costs).
    forward_flops, backward_flops : int
        FLOPs of its forward and backward on one batch.
    """

    role: str
    blocks: tuple[str, ...]
    parameters: int
    state_bytes: int
    forward_flops: int
    backward_flops: int

    @property
    def flops(self) -> int:
        """Forward + backward FLOPs per batch (forward state kept between messages)."""
        return self.forward_flops + self.backward_flops

    @property
    def recompute_flops(self) -> int:
        """FLOPs per batch when the forward is run again before the backward (``2 * forward + backward``)."""
        return 2 * self.forward_flops + self.backward_flops


@dataclass(frozen=True)
class CutProfile:
    """What crosses one cut per batch.

    Attributes
    ----------
    name : str
        Last block before the cut.
    index : int
        Index of the cut in :func:`fedsplit.models.contract.cut_points`.
    activation_shape : tuple of int
        Shape of the activations, batch dimension first.
    activation_bytes : int
        Bytes of the activations sent forward (``numel * element size``).
    gradient_bytes : int
        Bytes of the gradient sent back (same as the activations; 0 if nothing before the cut is trainable).
    """

    name: str
    index: int
    activation_shape: tuple[int, ...]
    activation_bytes: int
    gradient_bytes: int


@dataclass(frozen=True)
class SplitProfile:
    """Per-batch costs of a split (vanilla: two parts, one cut; U-shape: three parts, two cuts).

    Attributes
    ----------
    protocol : str
        ``"vanilla"`` or ``"u-shape"``.
    input_shape : tuple of int
        One sample's shape.
    batch_size : int
        Samples per batch the counts are for.
    parts : tuple of PartProfile
        In execution order.
    cuts : tuple of CutProfile
        In execution order.
    label_bytes : int
        Bytes of the labels the terminal sends per batch (vanilla: ``8 * batch_size``; U-shape: 0).
    """

    protocol: str
    input_shape: tuple[int, ...]
    batch_size: int
    parts: tuple[PartProfile, ...]
    cuts: tuple[CutProfile, ...]
    label_bytes: int

    def part(self, role: str) -> PartProfile:
        """The part with this role."""
        for part in self.parts:
            if part.role == role:
                return part
        raise KeyError(f"no part {role!r} (parts: {', '.join(p.role for p in self.parts)})")

    @property
    def total_flops(self) -> int:
        """FLOPs of all parts per batch (= the unsplit model's training step)."""
        return sum(p.flops for p in self.parts)

    @property
    def cut_names(self) -> str | tuple[str, str]:
        """The cut (vanilla) or the pair of cuts (U-shape), by name."""
        names = tuple(c.name for c in self.cuts)
        return names[0] if len(names) == 1 else names  # type: ignore[return-value]


_CACHE: dict[tuple, tuple[BlockProfile, ...]] = {}


def _state_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


def _measure_blocks(model: nn.Module, input_shape: tuple[int, ...], batch_size: int) -> tuple[BlockProfile, ...]:
    probe = copy.deepcopy(model)
    probe.train()
    named = blocks(probe)
    device = next((t.device for t in probe.state_dict().values()), torch.device("cpu"))
    x = torch.zeros((batch_size, *input_shape), device=device)
    upstream_trainable = False
    out_profiles: list[BlockProfile] = []
    for i, (name, block) in enumerate(named):
        last = i == len(named) - 1
        leaf = x.detach().requires_grad_(upstream_trainable)
        forward_counter = FlopCounterMode(display=False)
        with forward_counter:
            out = block(leaf.clone())
            loss = nn.functional.cross_entropy(out, torch.zeros(batch_size, dtype=torch.long, device=device)) if last else None
        backward_counter = FlopCounterMode(display=False)
        root = loss if last else out
        if root.requires_grad:
            with backward_counter:
                if last:
                    root.backward()
                else:
                    root.backward(torch.ones_like(root))
        trainable = [p for p in block.parameters() if p.requires_grad]
        if not isinstance(out, torch.Tensor):
            raise ValueError(f"block {name!r} does not return a tensor")
        out_profiles.append(
            BlockProfile(
                name=name,
                parameters=sum(p.numel() for p in trainable),
                state_bytes=_state_bytes(block),
                forward_flops=int(forward_counter.get_total_flops()),
                backward_flops=int(backward_counter.get_total_flops()),
                output_shape=tuple(out.shape),
                output_bytes=out.numel() * out.element_size(),
                input_requires_grad=upstream_trainable,
            )
        )
        upstream_trainable = upstream_trainable or bool(trainable)
        x = out.detach()
    return tuple(out_profiles)


def profile_blocks(model: nn.Module, input_shape: tuple[int, ...], batch_size: int) -> tuple[BlockProfile, ...]:
    """Per-block costs of one training step (cached per architecture, trainable parameters, input
    shape and batch size: a frozen block costs no weight-gradient FLOPs).

    Parameters
    ----------
    model : nn.Module
        A model honouring the split contract (not modified: a copy is measured).
    input_shape : tuple of int
        One sample's shape, e.g. ``(1, 28, 28)``.
    batch_size : int
        Samples per batch.
    """
    key = (architecture_key(model), trainable_key(model), repr(model), tuple(input_shape), int(batch_size))
    if key not in _CACHE:
        _CACHE[key] = _measure_blocks(model, tuple(input_shape), int(batch_size))
    return _CACHE[key]


def _part(role: str, profiles: tuple[BlockProfile, ...]) -> PartProfile:
    return PartProfile(
        role=role,
        blocks=tuple(b.name for b in profiles),
        parameters=sum(b.parameters for b in profiles),
        state_bytes=sum(b.state_bytes for b in profiles),
        forward_flops=sum(b.forward_flops for b in profiles),
        backward_flops=sum(b.backward_flops for b in profiles),
    )


def _cut(index: int, profiles: tuple[BlockProfile, ...]) -> CutProfile:
    block = profiles[index]
    gradient_needed = profiles[index + 1].input_requires_grad
    return CutProfile(
        name=block.name,
        index=index,
        activation_shape=block.output_shape,
        activation_bytes=block.output_bytes,
        gradient_bytes=block.output_bytes if gradient_needed else 0,
    )


def split_profile_from_blocks(
    profiles: tuple[BlockProfile, ...], cut: Cut | tuple[Cut, Cut], input_shape: tuple[int, ...], batch_size: int
) -> SplitProfile:
    """Assemble a :class:`SplitProfile` from :func:`profile_blocks` (no measurement)."""
    cuts = [b.name for b in profiles[:-1]]
    if isinstance(cut, (tuple, list)):
        if len(cut) != 2:
            raise ValueError(f"cut = {cut!r}: a U-shaped split takes exactly two cuts")
        first, second = resolve_cut(cuts, cut[0]), resolve_cut(cuts, cut[1])
        if not first < second:
            raise ValueError(f"cut = {cut!r}: the second cut must come after the first")
        parts = (
            _part("client_front", profiles[: first + 1]),
            _part("server_middle", profiles[first + 1 : second + 1]),
            _part("client_head", profiles[second + 1 :]),
        )
        return SplitProfile("u-shape", tuple(input_shape), batch_size, parts, (_cut(first, profiles), _cut(second, profiles)), 0)
    index = resolve_cut(cuts, cut)
    parts = (_part("client", profiles[: index + 1]), _part("server", profiles[index + 1 :]))
    return SplitProfile("vanilla", tuple(input_shape), batch_size, parts, (_cut(index, profiles),), LABEL_BYTES * batch_size)


def profile_split(
    model: nn.Module, cut: Cut | tuple[Cut, Cut], input_shape: tuple[int, ...], batch_size: int
) -> SplitProfile:
    """Per-batch parameters, FLOPs and cut sizes of splitting ``model`` at ``cut``.

    Parameters
    ----------
    model : nn.Module
        A model honouring the split contract (not modified).
    cut : str or int, or a pair of them
        As for :func:`fedsplit.split.split_model`.
    input_shape : tuple of int
        One sample's shape, e.g. ``(1, 28, 28)``.
    batch_size : int
        Samples per batch.

    Returns
    -------
    SplitProfile
        Parts (parameters, state bytes, forward/backward FLOPs per batch) and cuts (activation
        shape and bytes, gradient bytes per batch).
    """
    return split_profile_from_blocks(profile_blocks(model, input_shape, batch_size), cut, input_shape, batch_size)


__all__ = [
    "LABEL_BYTES",
    "BlockProfile",
    "CutProfile",
    "PartProfile",
    "SplitProfile",
    "profile_blocks",
    "profile_split",
    "split_profile_from_blocks",
]
