"""Smaller members derived from a trained model: magnitude pruning and int8 post-training quantization.

Pruning uses :mod:`torch.nn.utils.prune`: global L1 (magnitude) unstructured pruning of every
``Conv2d`` and ``Linear`` weight, so the smallest weights of the whole network go first. While
the masks are attached the pruned entries stay zero through fine-tuning (the forward uses
``weight_orig * weight_mask``, and the masked entries get no gradient); :func:`make_permanent`
then folds the masks into plain ``weight`` tensors, leaving an ordinary model of the same
architecture (its ``state_dict`` loads into a fresh model) with zeros where weights were pruned.
Dense kernels still multiply by those zeros: FLOPs per inference do not change, only the
number of non-zero parameters (what a sparse format would store or send).

Quantization uses :mod:`torch.ao.quantization`'s FX graph mode (static post-training int8:
weights per channel, activations per tensor, observers calibrated on training inputs), with the
``x86`` kernel backend where the host has it (else ``qnnpack``, the ARM one). The result runs on
the CPU only. Its operations are integer ones that ``torch.utils.flop_counter`` does not count;
the catalog reports the float model's count for it (the same multiply-adds, in int8).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.utils import prune

#: Module types whose ``weight`` is pruned.
PRUNABLE: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear)


def prunable_weights(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """``(module, "weight")`` of every ``Conv2d`` / ``Linear`` of ``model``, in module order."""
    return [(m, "weight") for m in model.modules() if isinstance(m, PRUNABLE)]


def prune_magnitude(model: nn.Module, amount: float) -> nn.Module:
    """Attach global L1-magnitude pruning masks removing ``amount`` of all prunable weights.

    Parameters
    ----------
    model : nn.Module
        Modified in place (each pruned module gets ``weight_orig`` and a ``weight_mask`` buffer).
    amount : float
        Fraction of the prunable weights (all ``Conv2d``/``Linear`` weights together) set to zero,
        in ``[0, 1)``.

    Returns
    -------
    nn.Module
        ``model``.
    """
    if not 0.0 <= amount < 1.0:
        raise ValueError(f"pruning amount = {amount!r}: must be in [0, 1)")
    targets = prunable_weights(model)
    if not targets:
        raise ValueError(f"{type(model).__name__} has no Conv2d or Linear weight to prune")
    prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=amount)
    # The masked ``weight`` is computed from ``weight_orig``; detached, the model can be deep-copied
    # (FLOP counting copies it) until its next forward recomputes it.
    for module, name in targets:
        setattr(module, name, getattr(module, name).detach())
    return model


def make_permanent(model: nn.Module) -> nn.Module:
    """Fold every pruning mask into its weight (:func:`torch.nn.utils.prune.remove`); in place."""
    for module, name in prunable_weights(model):
        if hasattr(module, f"{name}_mask"):
            prune.remove(module, name)
    return model


def weight_sparsity(model: nn.Module) -> float:
    """Fraction of zero entries among the prunable weights (after :func:`make_permanent`)."""
    weights = [getattr(m, name) for m, name in prunable_weights(model)]
    total = sum(w.numel() for w in weights)
    zeros = sum(int((w == 0).sum()) for w in weights)
    return zeros / total if total else 0.0


def count_nonzero_parameters(model: nn.Module) -> int:
    """Number of non-zero entries over all parameters (frozen ones included)."""
    return sum(int(torch.count_nonzero(p)) for p in model.parameters())


def quantization_backend() -> str:
    """The int8 kernel backend of this host: ``x86`` where available, else ``qnnpack``."""
    engines = torch.backends.quantized.supported_engines
    for name in ("x86", "fbgemm", "qnnpack"):
        if name in engines:
            return name
    raise RuntimeError(f"no int8 backend in this torch build (supported: {engines})")


@contextmanager
def quiet_quantization() -> Iterator[None]:
    """Silence torch's deprecation notices about the int8 path (nothing about the model at hand).

    torch 2.x marks ``torch.ao.quantization`` and quantized tensors as deprecated in favour of
    torchao (not a dependency), its observers warn about an argument their own default configs
    pass, and loading a quantized ``state_dict`` goes through ``TypedStorage``.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.ao\.quantization is deprecated", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r"Please use quant_min and quant_max", category=UserWarning)
        warnings.filterwarnings("ignore", message=r"must run observer before calling calculate_qparams", category=UserWarning)
        warnings.filterwarnings("ignore", message=r"TypedStorage is deprecated", category=UserWarning)
        warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor, torch\.quantize_per_channel", category=UserWarning)
        yield


def _prepare(model: nn.Module, example: torch.Tensor, backend: str) -> nn.Module:
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import prepare_fx

    torch.backends.quantized.engine = backend
    return prepare_fx(model.cpu().eval(), get_default_qconfig_mapping(backend), example_inputs=(example,))


def quantize_int8(model: nn.Module, calibration: torch.Tensor, *, backend: str | None = None, batch_size: int = 256) -> nn.Module:
    """Static int8 post-training quantization (FX graph mode), calibrated on ``calibration``.

    Parameters
    ----------
    model : nn.Module
        A trained float model (not modified: FX traces a copy).
    calibration : torch.Tensor
        Inputs ``[N, C, H, W]`` the activation observers see (training inputs, never the test set).
    backend : str, optional
        Kernel backend (default :func:`quantization_backend`).
    batch_size : int
        Calibration batch size (samples).

    Returns
    -------
    nn.Module
        The quantized ``GraphModule`` (CPU, eval mode).
    """
    import copy

    from torch.ao.quantization.quantize_fx import convert_fx

    backend = backend or quantization_backend()
    with quiet_quantization():
        prepared = _prepare(copy.deepcopy(model), calibration[:1].cpu(), backend)
        with torch.no_grad():
            for start in range(0, int(calibration.shape[0]), batch_size):
                prepared(calibration[start : start + batch_size].cpu())
        return convert_fx(prepared).eval()


def int8_skeleton(model: nn.Module, input_shape: tuple[int, ...], *, backend: str) -> nn.Module:
    """An uncalibrated quantized graph of ``model``'s architecture, to load a saved int8 ``state_dict`` into."""
    import copy

    from torch.ao.quantization.quantize_fx import convert_fx

    with quiet_quantization():
        prepared = _prepare(copy.deepcopy(model), torch.zeros((1, *input_shape)), backend)
        return convert_fx(prepared).eval()


__all__ = [
    "PRUNABLE",
    "count_nonzero_parameters",
    "int8_skeleton",
    "make_permanent",
    "prunable_weights",
    "prune_magnitude",
    "quantization_backend",
    "quantize_int8",
    "quiet_quantization",
    "weight_sparsity",
]
