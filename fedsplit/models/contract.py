"""The split contract: a model as an ordered chain of named blocks, and where it may be cut.

A model can be split if its ``forward`` is the sequential composition of named blocks:
``model(x) == blocks[-1](... blocks[1](blocks[0](x)))``. A *cut* names the last block kept on
the input side: cut ``"features.2"`` (or its index in :func:`cut_points`) puts every block up to
and including ``features.2`` in the first part and the rest in the second.

Three kinds of model honour the contract:

``nn.Sequential``
    Any ``nn.Sequential`` whose ``forward`` is not overridden; its children are the blocks.
``split_sequence``
    A module with a ``split_sequence`` attribute: a tuple of child names that ``forward`` applies
    in order (and nothing else). The zoo models declare it (``mlp``: ``("net",)``, ``fedavg-cnn``:
    ``("features", "classifier")``, ``cnn``: ``("stem", "stages", "head")``, ``mobilenet``:
    ``("features", "head")``).
``torchvision.models``
    Classification models of ``torchvision.models`` are traced with :func:`torch.fx.symbolic_trace`
    (in train mode); a cut is valid after a graph node whose output is the only value still needed
    by later nodes (inside a residual block the block input is still needed, so blocks are cut
    whole). Tested: ``resnet18``, ``mobilenet_v3_small``, ``mobilenet_v2``, ``vgg11``,
    ``squeezenet1_0``; models whose traced output is not one tensor (``googlenet`` and
    ``inception_v3`` in train mode) or that cannot be traced raise :class:`ValueError`. Python
    branches on ``self.training`` in a model's own ``forward`` are frozen at trace time (train mode).

Blocks are expanded recursively: a block that is itself an ``nn.Sequential`` or declares
``split_sequence`` is replaced by its children (``features`` -> ``features.0``, ``features.1``,
...), so cuts are as fine as the contract allows. Block names are the dotted module paths of the
model, so a block's state_dict keys, prefixed with its name, are the model's own keys.

Any other model raises :class:`ValueError` naming it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.fx
from torch import nn

#: Name of the attribute through which a module declares its split contract.
SPLIT_SEQUENCE_ATTR = "split_sequence"


def _is_plain_sequential(module: nn.Module) -> bool:
    return isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward


def _declared_sequence(module: nn.Module) -> tuple[str, ...] | None:
    names = getattr(module, SPLIT_SEQUENCE_ATTR, None)
    if names is None:
        return None
    names = tuple(names)
    children = dict(module.named_children())
    for name in names:
        if name not in children:
            raise ValueError(
                f"{type(module).__name__}.{SPLIT_SEQUENCE_ATTR} names {name!r}, which is not a child module "
                f"(children: {', '.join(children)})"
            )
    return names


def _uses_module_contract(model: nn.Module) -> bool:
    return _is_plain_sequential(model) or hasattr(model, SPLIT_SEQUENCE_ATTR)


def _is_torchvision(model: nn.Module) -> bool:
    return type(model).__module__.startswith("torchvision.models")


def _module_blocks(module: nn.Module, prefix: str) -> list[tuple[str, nn.Module]]:
    """Expand ``module`` into its leaf blocks (recursively through the contract)."""
    if _is_plain_sequential(module):
        names: Sequence[str] = [name for name, _ in module.named_children()]
    else:
        declared = _declared_sequence(module)
        if declared is None:
            return [(prefix, module)]
        names = declared
    out: list[tuple[str, nn.Module]] = []
    for name in names:
        child = module.get_submodule(name)
        out.extend(_module_blocks(child, f"{prefix}.{name}" if prefix else name))
    return out


# --------------------------------------------------------------------------------------------- fx


@dataclass(frozen=True)
class _FxChain:
    """A traced model cut into segments: ``segments[i]`` is a run of graph nodes ending at a valid cut."""

    traced: torch.fx.GraphModule
    input_node: torch.fx.Node
    output_value: torch.fx.Node
    segments: tuple[tuple[torch.fx.Node, ...], ...]
    names: tuple[str, ...]

    def graph_module(self, start: int, stop: int, class_name: str = "SplitPart") -> torch.fx.GraphModule:
        """One GraphModule running segments ``start .. stop-1`` (keys are the model's own)."""
        graph = torch.fx.Graph()
        env: dict[torch.fx.Node, torch.fx.Node] = {}
        first_input = self.input_node if start == 0 else self.segments[start - 1][-1]
        env[first_input] = graph.placeholder("x")

        def lookup(node: torch.fx.Node) -> torch.fx.Node:
            if node not in env:
                if node.op != "get_attr":  # liveness analysis guarantees this never happens
                    raise RuntimeError(f"node {node.name} is used across a cut")
                env[node] = graph.get_attr(node.target)
            return env[node]

        for segment in self.segments[start:stop]:
            for node in segment:
                if node.op == "get_attr":
                    continue  # materialised where used
                env[node] = graph.node_copy(node, lookup)
        last = self.output_value if stop == len(self.segments) else self.segments[stop - 1][-1]
        graph.output(lookup(last))
        graph.lint()
        return torch.fx.GraphModule(self.traced, graph, class_name=class_name)


def _common_prefix(paths: list[str]) -> str:
    if not paths:
        return ""
    parts = [p.split(".") for p in paths]
    prefix: list[str] = []
    for items in zip(*parts):
        if all(item == items[0] for item in items):
            prefix.append(items[0])
        else:
            break
    return ".".join(prefix)


def _fx_chain(model: nn.Module) -> _FxChain:
    label = f"{type(model).__name__} (torchvision)"
    was_training = model.training
    model.train()
    try:
        traced = torch.fx.symbolic_trace(model)
    except Exception as error:  # noqa: BLE001 - any tracing failure means "not splittable"
        raise ValueError(f"model {label}: torch.fx cannot trace it, so it cannot be split ({error})") from error
    finally:
        model.train(was_training)
    nodes = list(traced.graph.nodes)
    placeholders = [n for n in nodes if n.op == "placeholder"]
    outputs = [n for n in nodes if n.op == "output"]
    result = outputs[0].args[0] if len(outputs) == 1 else None
    returns_container = (
        isinstance(result, torch.fx.Node) and result.op == "call_function" and isinstance(result.target, type)
    )  # e.g. GoogLeNetOutputs(logits, aux2, aux1) in train mode
    if len(placeholders) != 1 or not isinstance(result, torch.fx.Node) or returns_container:
        raise ValueError(f"model {label}: its traced forward does not map one tensor to one tensor; cannot split it")
    body = [n for n in nodes if n.op not in ("placeholder", "output")]
    position = {n: i for i, n in enumerate(body)}
    position[placeholders[0]] = -1
    end = len(body)
    last_use = {}
    for node in [placeholders[0], *body]:
        uses = [end if user.op == "output" else position[user] for user in node.users]
        last_use[node] = max(uses, default=position[node])
    # Sweep: the values defined so far that are still needed after position i.
    live: set[torch.fx.Node] = {placeholders[0]}
    cut_after: list[int] = []
    for i, node in enumerate(body):
        if node.op != "get_attr":
            live.add(node)
        live = {n for n in live if last_use[n] > i}
        if live == {node} and i < end - 1:
            cut_after.append(i)
    bounds = [-1, *cut_after, end - 1]
    segments = tuple(tuple(body[a + 1 : b + 1]) for a, b in zip(bounds, bounds[1:]))
    names: list[str] = []
    for segment in segments:
        targets = [str(n.target) for n in segment if n.op in ("call_module", "get_attr")]
        name = _common_prefix(targets)
        if not name or name in names:
            name = segment[-1].name
        names.append(name)
    if len(segments) < 2:
        raise ValueError(f"model {label}: no point of its traced graph carries a single tensor; cannot split it")
    return _FxChain(traced, placeholders[0], result, segments, tuple(names))


# --------------------------------------------------------------------------------------- public


def _unsupported(model: nn.Module) -> ValueError:
    return ValueError(
        f"model {type(model).__name__} cannot be split: make it an nn.Sequential, give it a "
        f"'{SPLIT_SEQUENCE_ATTR}' attribute (child names its forward applies in order), or use a "
        "torchvision.models classification model"
    )


def _check_coverage(model: nn.Module, keys: list[str]) -> None:
    expected = list(model.state_dict().keys())
    if sorted(keys) != sorted(expected):
        missing = sorted(set(expected) - set(keys))
        extra = sorted(set(keys) - set(expected))
        raise ValueError(
            f"model {type(model).__name__}: its blocks do not hold exactly its tensors "
            f"(not in any block: {missing[:5]}; unknown: {extra[:5]}); forward must use only its blocks"
        )


def is_splittable(model: nn.Module) -> bool:
    """Whether ``model`` declares the split contract or is a torchvision model (not traced here)."""
    return _uses_module_contract(model) or _is_torchvision(model)


def blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model as an ordered list of named blocks whose composition is ``model.forward``.

    Parameters
    ----------
    model : nn.Module
        An ``nn.Sequential``, a module declaring ``split_sequence`` (every zoo model) or a
        ``torchvision.models`` model.

    Returns
    -------
    list of (str, nn.Module)
        ``(name, block)`` in execution order. For contract models a block *is* the model's
        submodule (shared parameters) and its keys, prefixed with ``name + "."``, are the model's.
        For torchvision models a block is a ``torch.fx.GraphModule`` sharing the model's
        submodules, whose own state_dict keys are already the model's full keys.

    Raises
    ------
    ValueError
        If the model does not honour the contract (the message names the model).
    """
    if _uses_module_contract(model):
        result = _module_blocks(model, "")
        keys = [f"{name}.{key}" for name, block in result for key in block.state_dict()]
        _check_coverage(model, keys)
        return result
    if _is_torchvision(model):
        chain = _fx_chain(model)
        result = [(name, chain.graph_module(i, i + 1, "SplitBlock")) for i, name in enumerate(chain.names)]
        _check_coverage(model, [key for _, block in result for key in block.state_dict()])
        return result
    raise _unsupported(model)


def block_names(model: nn.Module) -> list[str]:
    """Names of :func:`blocks`, in execution order."""
    if _is_torchvision(model) and not _uses_module_contract(model):
        return list(_fx_chain(model).names)
    return [name for name, _ in blocks(model)]


def cut_points(model: nn.Module) -> list[str]:
    """Valid cuts: every block name but the last.

    ``cut_points(model)[i]`` is cut index ``i``: the cut after block ``i``, leaving blocks
    ``0 .. i`` on the input side.
    """
    return block_names(model)[:-1]


def resolve_cut(model_or_cuts: nn.Module | Sequence[str], cut: int | str) -> int:
    """The index of ``cut`` (a block name or an index into :func:`cut_points`).

    Negative indices count from the end as in Python (``-1`` is the last valid cut). A string is
    matched as a block name first, then read as an index (config values may be strings).

    Raises
    ------
    ValueError
        If ``cut`` is not a valid cut; the message lists the allowed cuts.
    """
    cuts = cut_points(model_or_cuts) if isinstance(model_or_cuts, nn.Module) else list(model_or_cuts)
    allowed = ", ".join(f"{i}={name}" for i, name in enumerate(cuts))
    if isinstance(cut, bool) or not isinstance(cut, (int, str)):
        raise ValueError(f"cut = {cut!r}: expected a block name or an index (allowed cuts: {allowed})")
    if isinstance(cut, str):
        if cut in cuts:
            return cuts.index(cut)
        if cut.lstrip("-").isdigit():
            return resolve_cut(cuts, int(cut))
        raise ValueError(f"cut = {cut!r}: not a valid cut (allowed cuts: {allowed})")
    index = cut + len(cuts) if cut < 0 else cut
    if not 0 <= index < len(cuts):
        raise ValueError(f"cut = {cut}: index out of range (allowed cuts: {allowed})")
    return index


def trainable_names(module: nn.Module) -> list[str]:
    """State-dict names of the tensors an optimiser updates (parameters with ``requires_grad``).

    Every other state_dict entry (BatchNorm running statistics, ``num_batches_tracked``, frozen
    parameters) is state that travels with a part but is not trained by gradient.
    """
    return [name for name, p in module.named_parameters() if p.requires_grad]


__all__ = [
    "SPLIT_SEQUENCE_ATTR",
    "block_names",
    "blocks",
    "cut_points",
    "is_splittable",
    "resolve_cut",
    "trainable_names",
]
