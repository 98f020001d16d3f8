"""Local DP-SGD for the terminal's part(s) in split learning, with Opacus.

In split learning the terminal does not see the loss of its input-side part: the edge server
returns the gradient of the batch's mean loss with respect to the cut activations. That is
enough for per-sample gradients: Opacus's :class:`~opacus.GradSampleModule` on the part, a
forward on the batch and ``backward(activations, grad_at_cut)`` give every sample's gradient of
the part's parameters (its hooks undo the mean, ``loss_reduction = "mean"``). Then
:class:`~opacus.optimizers.DPOptimizer` clips each sample's gradient (jointly over every
parameter given, e.g. a U-shape's front *and* head) to ``max_grad_norm``, sums, adds Gaussian
noise of standard deviation ``noise_multiplier * max_grad_norm`` and divides by the expected batch
size, then the wrapped SGD steps: the same step :func:`fedsplit.privacy.dp_sgd.dp_train_local`
takes (through ``PrivacyEngine.make_private``) for a whole model.

Batches are Poisson samples, as the accountant assumes (:func:`poisson_batch`: each local sample
with probability ``q`` per step, Opacus's sampler arithmetic); an empty batch is still a step
(noise only, :func:`dp_step` with no term). Steps per epoch and ``q`` are those of
:class:`fedsplit.privacy.dp_sgd.PoissonSchedule`, so a terminal's epsilon after ``s`` steps is
Opacus's accountant for ``(noise_multiplier, q, s)``.

What this protects, and what not: see the README ("Split learning and DP"). In short, the
terminal part's weights that leave the terminal (to the next terminal or to be averaged) are the
output of DP-SGD steps, treating the gradients the server returns as given; the activations (and
labels, except in U-shape) the server sees, the gradients at a U-shape's second cut and the
server's own part are not made private.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from fedsplit.models.flops import architecture_key, trainable_key

#: Opacus's warning when no input of a hooked module requires grad (a part's raw input never does).
_HOOK_WARNING = "Full backward hook is firing when gradients are computed with respect to module outputs"


def derived_seed(*values: int) -> int:
    """A 63-bit seed from integers (a round's seed, a batch index, a purpose), via NumPy's SeedSequence."""
    return int(np.random.SeedSequence([int(v) for v in values]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def poisson_batch(n: int, sample_rate: float, seed: int) -> torch.Tensor:
    """Indices of one Poisson batch of ``n`` samples: each with probability ``sample_rate``.

    The arithmetic of Opacus's :class:`~opacus.utils.uniform_sampler.UniformWithReplacementSampler`
    (``torch.rand(n) < q``), seeded; the batch may be empty.
    """
    generator = torch.Generator().manual_seed(int(seed))
    return (torch.rand(n, generator=generator) < sample_rate).nonzero().reshape(-1)


@dataclass
class DPTerm:
    """One terminal part's share of a DP step.

    Attributes
    ----------
    part : nn.Module
        The part (its trainable parameters get per-sample gradients).
    inputs : torch.Tensor
        The part's input for the batch, ``[b, ...]`` (raw samples, or the activations it received).
    grad_output : torch.Tensor, optional
        Gradient of the batch's mean loss with respect to the part's output (the gradient at the cut
        the server returned); None for a part that ends with the logits (then ``labels``).
    labels : torch.Tensor, optional
        Class indices ``[b]`` for a part that ends with the logits (a U-shape's head): the loss is
        their mean cross-entropy.
    """

    part: nn.Module
    inputs: torch.Tensor
    grad_output: torch.Tensor | None = None
    labels: torch.Tensor | None = None


def _per_sample_gradients(term: DPTerm) -> None:
    """Fill ``p.grad_sample`` of the term's trainable parameters (per-sample gradients of each
    sample's own loss), with Opacus's hooks on the part for this pass only."""
    from opacus import GradSampleModule

    params = [p for p in term.part.parameters() if p.requires_grad]
    if not params:
        return
    b = int(term.inputs.shape[0])
    if b == 0:  # an empty Poisson batch: no sample, no gradient (the step is noise only)
        for p in params:
            p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)
        return
    term.part.train()
    module = GradSampleModule(term.part, loss_reduction="mean")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_HOOK_WARNING)
            out = module(term.inputs.clone())
            if term.labels is not None:
                nn.functional.cross_entropy(out, term.labels).backward()
            else:
                assert term.grad_output is not None, "a term without labels needs the gradient at its output"
                if term.grad_output.shape != out.shape:
                    raise ValueError(f"gradient of shape {tuple(term.grad_output.shape)} for an output of shape {tuple(out.shape)}")
                torch.autograd.backward(out, term.grad_output.to(out.device, out.dtype))
        saved = {id(p): p.grad_sample for p in params}
    finally:
        module._close()  # removes the hooks (and the grad_sample attributes) from the part
    for p in params:
        p.grad_sample = saved[id(p)]


def dp_step(
    terms: Sequence[DPTerm],
    optimizer: torch.optim.Optimizer,
    *,
    noise_multiplier: float,
    max_grad_norm: float,
    expected_batch_size: int,
    noise_seed: int,
) -> None:
    """One DP-SGD step of the terminal's part(s) on one (possibly empty) Poisson batch.

    Parameters
    ----------
    terms : sequence of DPTerm
        Each trainable terminal part with its input and the gradient at its output (or labels);
        every term's batch is the same samples. A part missing here gets zero per-sample
        gradients, so only noise (an empty batch: give each part with an empty ``inputs``).
    optimizer : torch.optim.Optimizer
        SGD over every trainable parameter of the terminal's parts (momentum and weight decay act
        on the noisy gradient, as in :func:`fedsplit.privacy.dp_sgd.dp_train_local`).
    noise_multiplier : float
        Noise standard deviation over ``max_grad_norm``.
    max_grad_norm : float
        L2 bound of each sample's gradient, over all the optimiser's parameters together.
    expected_batch_size : int
        Divisor of the noisy sum (Opacus: ``int(n * q)``).
    noise_seed : int
        Seed of the noise (a generator on the parameters' device).
    """
    from opacus.optimizers import DPOptimizer

    for term in terms:
        _per_sample_gradients(term)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if not params:
        return
    device = params[0].device
    for p in params:  # a parameter no term reached (a part with an empty batch given as no term)
        if getattr(p, "grad_sample", None) is None:
            p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)
    sizes = {int(p.grad_sample.shape[0]) for p in params}
    if len(sizes) > 1:
        raise ValueError(f"per-sample gradients of different batch sizes {sorted(sizes)}: the terms must share one batch")
    generator = torch.Generator(device=device).manual_seed(int(noise_seed))
    dp = DPOptimizer(
        optimizer, noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm,
        expected_batch_size=max(1, int(expected_batch_size)), generator=generator,
    )
    try:
        dp.step()
    finally:
        for p in params:
            for attr in ("grad_sample", "summed_grad", "_processed"):
                if hasattr(p, attr):
                    delattr(p, attr)
            p.grad = None


_FLOPS: dict[tuple, tuple[int, int]] = {}


def _count(term_kind: str, part: nn.Module, input_shape: tuple[int, ...], b: int) -> int:
    probe = copy.deepcopy(part)
    device = next((p.device for p in probe.parameters()), torch.device("cpu"))
    x = torch.zeros((b, *input_shape), device=device)
    with torch.no_grad():
        out_shape = probe(x).shape
    term = DPTerm(probe, x, labels=torch.zeros(b, dtype=torch.long, device=device)) if term_kind == "head" else DPTerm(probe, x, grad_output=torch.ones(out_shape, device=device))
    counter = FlopCounterMode(display=False)
    with counter:
        _per_sample_gradients(term)
    return int(counter.get_total_flops())


def dp_part_flops(part: nn.Module, input_shape: tuple[int, ...], batch_size: int, *, head: bool = False) -> int:
    """FLOPs of a part's per-sample-gradient pass on ``batch_size`` samples (forward, backward and
    Opacus's per-sample gradients), counted with FlopCounterMode at batch sizes 1 and 2 once per
    architecture and extrapolated linearly (as :func:`fedsplit.privacy.dp_sgd.dp_step_flops`).

    Parameters
    ----------
    part : nn.Module
        The terminal part.
    input_shape : tuple of int
        One sample's input shape to the part.
    batch_size : int
        Samples in the batch (0: no FLOPs).
    head : bool
        The part ends with the logits (its loss is computed here) rather than at a cut.
    """
    if batch_size <= 0 or not any(p.requires_grad for p in part.parameters()):
        return 0
    key = (architecture_key(part), trainable_key(part), tuple(input_shape), head)
    if key not in _FLOPS:
        kind = "head" if head else "cut"
        one, two = _count(kind, part, input_shape, 1), _count(kind, part, input_shape, 2)
        _FLOPS[key] = (2 * one - two, two - one)
    fixed, per_sample = _FLOPS[key]
    return fixed + batch_size * per_sample


__all__ = ["DPTerm", "derived_seed", "dp_part_flops", "dp_step", "poisson_batch"]
