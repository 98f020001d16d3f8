"""Freezing a pretrained backbone: which tensors train, which travel, and BatchNorm statistics.

``transfer.trainable`` names what trains:

``all``
    Everything (no transfer: the whole ``state_dict`` travels, as without this module).
``last:N``
    The last ``N`` blocks of the model's split contract (:func:`fedsplit.models.contract.blocks`)
    that have parameters: ``last:1`` is the classifier head.
``name[,name...]``
    Modules by dotted name (``head``, ``stages.2``): their parameters train. The word
    ``batchnorm`` (where the model has no module of that name) stands for every BatchNorm layer:
    ``batchnorm,stem,head`` trains the normalisation everywhere plus the stem and the head.

Under freezing (anything but ``all``) exactly the trainable parameters travel, both ways; the
frozen parameters and every buffer (BatchNorm running statistics, ``num_batches_tracked``) come
from the pretrained checkpoint on both sides and are never sent, unless ``transfer.batchnorm``
is ``global``:

``frozen``
    Every BatchNorm layer normalises with the pretrained running statistics (eval mode while
    training); its affine weights train only if its module is trainable.
``local``
    Every BatchNorm layer updates running statistics from the terminal's own data; each
    terminal keeps them (in its ``Context.state``) and never sends them; the server evaluates
    with the pretrained ones.
``global``
    Every BatchNorm layer updates running statistics from the terminal's data and they travel
    with the trainable tensors, averaged by the strategy like weights (the target domain's
    statistics for the whole federation: the frozen layers' features are re-normalised for it).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


#: In ``transfer.trainable``: every BatchNorm layer of the model.
BATCHNORM_WORD = "batchnorm"

#: ``transfer.batchnorm``: what happens to BatchNorm statistics under freezing.
BATCHNORM_MODES: tuple[str, ...] = ("frozen", "local", "global")


@dataclass(frozen=True)
class FreezePlan:
    """What trains and what travels, resolved for one model.

    Attributes
    ----------
    trainable : tuple of str
        Parameter names that train (``requires_grad``), in the model's order.
    travelling : tuple of str
        State-dict keys sent server -> terminal and back (the trainable parameters; with
        ``batchnorm = "global"`` also every BatchNorm statistic), in the model's order.
    local : tuple of str
        BatchNorm statistics each terminal keeps for itself (``batchnorm = "local"``), else empty.
    batchnorm : str
        ``frozen``, ``local`` or ``global``.
    """

    trainable: tuple[str, ...]
    travelling: tuple[str, ...]
    local: tuple[str, ...]
    batchnorm: str


def _param_blocks(model: nn.Module) -> list[tuple[str, list[str]]]:
    """(block name, its parameter names under the model's keys), blocks with parameters only."""
    from fedsplit.models.contract import blocks

    param_names = [n for n, _ in model.named_parameters()]
    out = []
    for name, block in blocks(model):
        own = [n for n, _ in block.named_parameters()]
        if not own:
            continue
        full = own if all(n in param_names for n in own) else [f"{name}.{n}" for n in own]
        out.append((name, full))
    return out


def resolve_trainable(model: nn.Module, spec: str) -> list[str]:
    """Parameter names made trainable by ``spec`` (see the module docstring), in model order.

    Raises
    ------
    ValueError
        For a malformed spec, ``N`` out of range, or a module name the model does not have
        (the message lists the allowed blocks or modules).
    """
    spec = spec.strip()
    names = [n for n, _ in model.named_parameters()]
    if spec == "all":
        return names
    if spec.startswith("last:"):
        count = spec[len("last:"):].strip()
        pblocks = _param_blocks(model)
        if not count.isdigit() or not 1 <= int(count) <= len(pblocks):
            raise ValueError(
                f"{spec!r}: N must be an integer in 1..{len(pblocks)} (blocks with parameters: "
                f"{', '.join(b for b, _ in pblocks)})"
            )
        chosen = {n for _, params in pblocks[-int(count):] for n in params}
        return [n for n in names if n in chosen]
    modules = dict(model.named_modules())
    wanted = [m.strip() for m in spec.split(",") if m.strip()]
    if not wanted:
        raise ValueError(f"{spec!r}: expected all, last:N or module names")
    if BATCHNORM_WORD in wanted and BATCHNORM_WORD not in modules:
        wanted.remove(BATCHNORM_WORD)
        wanted.extend(n for n, m in modules.items() if isinstance(m, _BatchNorm) and n)
    unknown = [m for m in wanted if m not in modules or m == ""]
    if unknown:
        tops = ", ".join(n for n, _ in model.named_children())
        raise ValueError(f"{spec!r}: the model has no module {unknown[0]!r} (top-level modules: {tops}; nested ones by dotted name)")
    chosen = [n for n in names if any(n.startswith(m + ".") for m in wanted)]
    if not chosen:
        raise ValueError(f"{spec!r}: these modules have no parameters")
    return chosen


def batchnorm_state_keys(model: nn.Module) -> list[str]:
    """State-dict keys of every BatchNorm buffer (running mean/var, ``num_batches_tracked``)."""
    keys = []
    for name, module in model.named_modules():
        if isinstance(module, _BatchNorm):
            keys.extend(f"{name}.{b}" if name else b for b, _ in module.named_buffers(recurse=False))
    return keys


def plan_freezing(model: nn.Module, trainable: str, batchnorm: str = "frozen") -> FreezePlan | None:
    """Resolve ``transfer.trainable`` / ``transfer.batchnorm`` for ``model``; None for ``all``."""
    if trainable.strip() == "all":
        return None
    if batchnorm not in BATCHNORM_MODES:
        raise ValueError(f"batchnorm = {batchnorm!r}: allowed {', '.join(BATCHNORM_MODES)}")
    chosen = tuple(resolve_trainable(model, trainable))
    statistics = batchnorm_state_keys(model)
    local = tuple(statistics) if batchnorm == "local" else ()
    travelling = chosen
    if batchnorm == "global":
        keep = set(chosen) | set(statistics)
        travelling = tuple(k for k in model.state_dict() if k in keep)
    return FreezePlan(trainable=chosen, travelling=travelling, local=local, batchnorm=batchnorm)


def apply_freezing(model: nn.Module, trainable: set[str] | tuple[str, ...] | list[str]) -> None:
    """Set ``requires_grad`` to exactly the parameters named in ``trainable``."""
    keep = set(trainable)
    for name, param in model.named_parameters():
        param.requires_grad_(name in keep)


def freeze_batchnorm(model: nn.Module) -> None:
    """Put every BatchNorm layer in eval mode (normalise with, and keep, its running statistics).

    Call after ``model.train()``: the rest of the model stays in train mode.
    """
    for module in model.modules():
        if isinstance(module, _BatchNorm):
            module.eval()


__all__ = ["BATCHNORM_MODES", "FreezePlan", "apply_freezing", "batchnorm_state_keys", "freeze_batchnorm", "plan_freezing", "resolve_trainable"]
