"""Cutting a model into parts that different sides of a split-learning protocol hold.

Parts are deep copies
---------------------
:func:`split_model` deep-copies the model before cutting it: the parts share no tensor with the
model passed in, nor with each other. A protocol keeps the parts on different sides (a terminal
holds the client part, the edge server the server part, in different processes or machines), so
shared storage would be a simulation artefact; the model passed in stays untouched and can be used
as the reference for the centralized step.

Keys are the model's own
------------------------
Every part's ``state_dict`` uses the original model's key names (``features.0.weight``, not
``0.weight``), so

- a part loads its share of a full model state_dict (:func:`load_part_state_dict`);
- the parts' state dicts merge back into the full state_dict with the model's key order
  (:func:`assemble_state_dict`, :meth:`SplitParts.state_dict`), which loads into the unsplit model
  for evaluation and makes a checkpoint that looks like a FedAvg one.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from fedsplit.models.contract import (
    _fx_chain,
    _is_torchvision,
    _module_blocks,
    _unsupported,
    _uses_module_contract,
    blocks,
    resolve_cut,
)

Cut = int | str


class ChainPart(nn.Module):
    """A run of consecutive blocks of a contract model, keeping the model's module paths.

    Block ``features.3`` is registered as ``self.features[...]["3"]`` (plain ``nn.Module``
    containers), so ``state_dict`` keys are the original model's. ``forward`` applies the blocks
    in order.

    Parameters
    ----------
    named_blocks : sequence of (str, nn.Module)
        Dotted block names and the block modules (used as is, not copied).
    """

    def __init__(self, named_blocks: Sequence[tuple[str, nn.Module]]) -> None:
        super().__init__()
        if not named_blocks:
            raise ValueError("a part needs at least one block")
        self.block_names: tuple[str, ...] = tuple(name for name, _ in named_blocks)
        for name, block in named_blocks:
            *path, leaf = name.split(".")
            parent: nn.Module = self
            for step in path:
                if not hasattr(parent, step) or not isinstance(getattr(parent, step), nn.Module):
                    parent.add_module(step, nn.Module())
                parent = getattr(parent, step)
            parent.add_module(leaf, block)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in self.block_names:
            x = self.get_submodule(name)(x)
        return x


def _make_parts(model: nn.Module, bounds: Sequence[int], roles: Sequence[str]) -> list[nn.Module]:
    """Deep-copy ``model`` and build parts covering blocks ``bounds[k] .. bounds[k+1]-1``."""
    clone = copy.deepcopy(model)
    if _uses_module_contract(clone):
        named = _module_blocks(clone, "")
        return [ChainPart(named[a:b]) for a, b in zip(bounds, bounds[1:])]
    if _is_torchvision(clone):
        chain = _fx_chain(clone)
        parts = []
        for (a, b), role in zip(zip(bounds, bounds[1:]), roles):
            part = chain.graph_module(a, b, class_name="".join(w.capitalize() for w in role.split("_")) + "Part")
            part.block_names = chain.names[a:b]
            parts.append(part)
        return parts
    raise _unsupported(model)


class _Parts:
    """State-dict and mode helpers shared by :class:`SplitParts` and :class:`UShapeParts`."""

    key_order: tuple[str, ...]

    def named_parts(self) -> dict[str, nn.Module]:  # pragma: no cover - overridden
        raise NotImplementedError

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The full model's state_dict (original key names and order) assembled from the parts."""
        return assemble_state_dict([p.state_dict() for p in self.named_parts().values()], self.key_order)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Load a full model state_dict (tensors or numpy arrays) into every part."""
        for part in self.named_parts().values():
            load_part_state_dict(part, state)

    def train(self, mode: bool = True) -> None:
        """Put every part in train (or eval) mode."""
        for part in self.named_parts().values():
            part.train(mode)


@dataclass
class SplitParts(_Parts):
    """The two parts of a vanilla split: ``client`` (input side, on the terminal) and ``server``.

    Attributes
    ----------
    client, server : nn.Module
        Deep copies; ``server(client(x)) == model(x)``.
    cut : str
        Name of the last block of the client part.
    cut_index : int
        Its index in :func:`~fedsplit.models.contract.cut_points`.
    key_order : tuple of str
        The full model's state_dict keys, in order.
    """

    client: nn.Module
    server: nn.Module
    cut: str
    cut_index: int
    key_order: tuple[str, ...]

    def named_parts(self) -> dict[str, nn.Module]:
        """``{"client": ..., "server": ...}``."""
        return {"client": self.client, "server": self.server}

    @property
    def cut_gradient_needed(self) -> bool:
        """Whether the server must send back the gradient at the cut (the client part has trainable tensors)."""
        return has_trainable(self.client)


@dataclass
class UShapeParts(_Parts):
    """The three parts of a U-shaped split: the terminal keeps both the input and the label side.

    ``client_head(server_middle(client_front(x))) == model(x)``; labels never leave the terminal.

    Attributes
    ----------
    client_front, server_middle, client_head : nn.Module
        Deep copies of blocks ``0..cut1``, ``cut1+1..cut2`` and ``cut2+1..end``.
    cuts : tuple of str
        Names of the last block of the front and of the middle part.
    cut_indices : tuple of int
        Their indices in :func:`~fedsplit.models.contract.cut_points`.
    key_order : tuple of str
        The full model's state_dict keys, in order.
    """

    client_front: nn.Module
    server_middle: nn.Module
    client_head: nn.Module
    cuts: tuple[str, str]
    cut_indices: tuple[int, int]
    key_order: tuple[str, ...]

    def named_parts(self) -> dict[str, nn.Module]:
        """``{"client_front": ..., "server_middle": ..., "client_head": ...}``."""
        return {"client_front": self.client_front, "server_middle": self.server_middle, "client_head": self.client_head}

    @property
    def cut_gradient_needed(self) -> tuple[bool, bool]:
        """Whether a gradient must travel back across cut 1 (front trainable) and cut 2 (front or middle)."""
        front = has_trainable(self.client_front)
        return front, front or has_trainable(self.server_middle)


def has_trainable(part: nn.Module) -> bool:
    """Whether ``part`` has a parameter with ``requires_grad``."""
    return any(p.requires_grad for p in part.parameters())


def parse_cut(text: str) -> str | tuple[str, str]:
    """A cut as written in a config or a message: ``"a"`` -> ``"a"``; ``"a,b"`` -> ``("a", "b")``
    (the two cuts of a U-shape). Names or indices, as :func:`split_model` takes them."""
    parts = [p.strip() for p in str(text).split(",")]
    return (parts[0], parts[1]) if len(parts) == 2 else parts[0]


def split_model(model: nn.Module, cut: Cut | tuple[Cut, Cut] | list[Cut]) -> SplitParts | UShapeParts:
    """Cut ``model`` into deep-copied parts.

    Parameters
    ----------
    model : nn.Module
        A model honouring the split contract (:mod:`fedsplit.models.contract`); not modified.
    cut : str or int, or a pair of them
        One cut (block name, or index into ``cut_points(model)``; negative counts from the end)
        for a vanilla split, or two increasing cuts for a U-shaped split.

    Returns
    -------
    SplitParts or UShapeParts
        ``SplitParts(client, server, ...)`` for one cut, ``UShapeParts(client_front,
        server_middle, client_head, ...)`` for two.

    Raises
    ------
    ValueError
        A bad cut (the message lists the allowed cuts), cuts not increasing, or a model outside
        the contract.
    """
    named = blocks(model)  # validates the contract and the key coverage
    cuts = [name for name, _ in named][:-1]
    key_order = tuple(model.state_dict().keys())
    if isinstance(cut, (tuple, list)):
        if len(cut) != 2:
            raise ValueError(f"cut = {cut!r}: a U-shaped split takes exactly two cuts")
        first, second = resolve_cut(cuts, cut[0]), resolve_cut(cuts, cut[1])
        if not first < second:
            raise ValueError(
                f"cut = {cut!r}: the second cut must come after the first ({cuts[first]!r} is index {first}, "
                f"{cuts[second]!r} is index {second})"
            )
        bounds = [0, first + 1, second + 1, len(named)]
        front, middle, head = _make_parts(model, bounds, ["client_front", "server_middle", "client_head"])
        return UShapeParts(front, middle, head, (cuts[first], cuts[second]), (first, second), key_order)
    index = resolve_cut(cuts, cut)
    client, server = _make_parts(model, [0, index + 1, len(named)], ["client", "server"])
    return SplitParts(client, server, cuts[index], index, key_order)


def _as_tensor(value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    array = np.asarray(value)
    if not array.flags.writeable:
        array = array.copy()  # torch.from_numpy warns on read-only buffers (e.g. zero-copy message views)
    return torch.from_numpy(array)


def part_state_dict(part: nn.Module, *, as_numpy: bool = False) -> dict[str, Any]:
    """A part's state_dict under the full model's key names (detached tensors or numpy arrays)."""
    state = {k: v.detach() for k, v in part.state_dict().items()}
    if as_numpy:
        return {k: v.cpu().numpy() for k, v in state.items()}
    return state


def load_part_state_dict(part: nn.Module, state: Mapping[str, Any], *, strict: bool = True) -> None:
    """Load a part's tensors from ``state``: the part's own state_dict or the full model's.

    Parameters
    ----------
    part : nn.Module
        A part made by :func:`split_model`.
    state : mapping of str to tensor or numpy array
        Keys are the full model's names; keys the part does not hold are ignored.
    strict : bool
        Raise ``KeyError`` if ``state`` lacks one of the part's keys.
    """
    own = part.state_dict()
    missing = [k for k in own if k not in state]
    if missing and strict:
        raise KeyError(f"state has no entry for {len(missing)} tensor(s) of the part, e.g. {missing[:3]}")
    part.load_state_dict({k: _as_tensor(state[k]) for k in own if k in state}, strict=strict)


def assemble_state_dict(part_states: Iterable[Mapping[str, Any]], key_order: Sequence[str] | None = None) -> dict[str, Any]:
    """Merge the parts' state dicts into the full model's state_dict.

    Parameters
    ----------
    part_states : iterable of mappings
        Each part's state_dict (original key names), in any order.
    key_order : sequence of str, optional
        The full model's keys in order (``tuple(model.state_dict())`` or ``parts.key_order``);
        when given, the result has exactly these keys in this order.

    Raises
    ------
    ValueError
        A key held by two parts, or (with ``key_order``) a missing or unexpected key.
    """
    merged: dict[str, Any] = {}
    for state in part_states:
        for key, value in state.items():
            if key in merged:
                raise ValueError(f"tensor {key!r} is held by more than one part")
            merged[key] = value
    if key_order is None:
        return merged
    missing = [k for k in key_order if k not in merged]
    extra = [k for k in merged if k not in set(key_order)]
    if missing or extra:
        raise ValueError(f"parts do not make up the model: missing {missing[:3]}, unexpected {extra[:3]}")
    return {k: merged[k] for k in key_order}


__all__ = [
    "ChainPart",
    "Cut",
    "SplitParts",
    "UShapeParts",
    "assemble_state_dict",
    "has_trainable",
    "load_part_state_dict",
    "part_state_dict",
    "split_model",
]
