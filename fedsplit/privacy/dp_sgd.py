"""One round of local DP-SGD with Opacus that continues a terminal's accountant.

Flower's Opacus example builds a fresh ``PrivacyEngine`` every round, so the epsilon it reports is
that of one round. Here the engine's accountant starts from the terminal's stored history
(:mod:`fedsplit.privacy.accountant`) and the updated history is returned with the result: the
caller stores it, and the next round continues it.

Sampling is Opacus's Poisson sampling (:class:`opacus.data_loader.DPDataLoader`): each step takes
every local sample with probability ``q = 1 / ceil(n / batch_size)``, which is what the accountant
assumes. The sampler and the noise are seeded, so a round is reproducible.
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.flop_counter import FlopCounterMode

from fedsplit.learning.local import TrainResult
from fedsplit.models.flops import architecture_key
from fedsplit.privacy.accountant import AccountantState, make_accountant, noise_for_budget, state_of

#: Warnings Opacus gives on every engine it builds, about choices fedsplit makes on purpose.
_OPACUS_NOISE = (
    "Secure RNG turned off",  # seeded pseudo-random noise: reproducible emulation, not production DP
    "Full backward hook is firing when gradients are computed with respect to module outputs",  # inputs need no grad
    "PrivacyEngine detected new dataset object",
)


@dataclass(frozen=True)
class PoissonSchedule:
    """How Opacus samples and accounts one local epoch of ``n`` samples.

    Attributes
    ----------
    steps_per_epoch : int
        Optimiser steps per epoch (Opacus: ``int(1 / (1 / ceil(n / batch_size)))``).
    sample_rate : float
        The sampling rate the accountant is told, ``1 / steps_per_epoch``.
    """

    steps_per_epoch: int
    sample_rate: float

    @classmethod
    def of(cls, n: int, batch_size: int) -> "PoissonSchedule":
        """The schedule :meth:`opacus.PrivacyEngine.make_private` gives ``n`` samples in batches of
        ``batch_size`` (``n = 0``: one step at rate 1, never taken, since nothing trains)."""
        batches = max(1, math.ceil(n / batch_size))
        steps = int(1 / (1 / batches))  # the sampler's own arithmetic (it is batches - 1 for a few values)
        return cls(steps_per_epoch=steps, sample_rate=1 / steps)


def planned_noise(epsilon: float, delta: float, n: int, batch_size: int, epochs: int, rounds: int, mechanism: str = "rdp") -> float:
    """The noise multiplier that spends ``(epsilon, delta)`` if the terminal trains every round.

    Parameters
    ----------
    epsilon, delta : float
        The terminal's budget for the whole run.
    n, batch_size, epochs, rounds : int
        Its local samples, the batch size (samples), local epochs per round and the run's rounds:
        at most ``rounds * epochs * steps_per_epoch`` steps.
    mechanism : str
        Opacus accountant (``rdp`` or ``prv``).
    """
    schedule = PoissonSchedule.of(n, batch_size)
    return noise_for_budget(epsilon, delta, schedule.sample_rate, rounds * epochs * schedule.steps_per_epoch, mechanism)


_FLOPS: dict[tuple, tuple[int, int]] = {}


def _count_dp_step(model: nn.Module, input_shape: tuple[int, ...], batch_size: int) -> int:
    from opacus import GradSampleModule

    probe = GradSampleModule(copy.deepcopy(model).train())
    device = next((p.device for p in probe.parameters()), torch.device("cpu"))
    x = torch.zeros((batch_size, *input_shape), device=device)
    target = torch.zeros(batch_size, dtype=torch.long, device=device)
    counter = FlopCounterMode(display=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_OPACUS_NOISE[1])
        with counter:
            nn.functional.cross_entropy(probe(x), target).backward()
    probe._close()
    return int(counter.get_total_flops())


def dp_step_flops(model: nn.Module, input_shape: tuple[int, ...], batch_size: int) -> int:
    """FLOPs of one DP-SGD step on ``batch_size`` samples: forward, backward and per-sample gradients.

    Counted with :class:`~torch.utils.flop_counter.FlopCounterMode` on Opacus's
    ``GradSampleModule`` (its per-sample gradients are einsum/matmul work the counter sees) at
    batch sizes 1 and 2, once per architecture: every counted operation is linear in the batch
    size, so a batch of ``b`` costs ``fixed + b * per_sample`` with both numbers measured.
    Poisson batches vary in size; counting each size anew would cost a FlopCounterMode pass per size.
    """
    if batch_size <= 0:
        return 0
    key = (architecture_key(model), tuple(input_shape))
    if key not in _FLOPS:
        one, two = _count_dp_step(model, input_shape, 1), _count_dp_step(model, input_shape, 2)
        _FLOPS[key] = (2 * one - two, two - one)
    fixed, per_sample = _FLOPS[key]
    return fixed + batch_size * per_sample


def dp_train_local(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    noise_multiplier: float,
    max_grad_norm: float,
    accountant: AccountantState,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    proximal_mu: float = 0.0,
    seed: int = 0,
) -> tuple[TrainResult, AccountantState]:
    """Train ``model`` in place with DP-SGD on ``(x, y)``, continuing ``accountant``.

    Parameters
    ----------
    model : nn.Module
        An Opacus-compatible model (:func:`fedsplit.models.opacus_compat.opacus_compatible`) holding the
        received global weights; its trained weights are loaded back into it.
    x, y : torch.Tensor
        Inputs ``[N, ...]`` and labels ``[N]``.
    epochs, batch_size : int
        Local epochs and the expected batch size (samples; Poisson batches vary around it).
    lr, momentum, weight_decay : float
        SGD hyper-parameters.
    noise_multiplier : float
        Standard deviation of the Gaussian noise over ``max_grad_norm``.
    max_grad_norm : float
        L2 bound each per-sample gradient is clipped to.
    accountant : dict
        The terminal's accountant state so far (:mod:`fedsplit.privacy.accountant`).
    proximal_mu : float
        Must be 0: FedProx's proximal term has no per-sample gradient, Opacus would drop it.
    seed : int
        Seed of the Poisson sampling and of the noise.

    Returns
    -------
    (TrainResult, dict)
        What ran (``flops``: :func:`dp_step_flops` of every batch), and the accountant state after it.
    """
    if proximal_mu:
        raise ValueError("DP-SGD: FedProx's proximal term (proximal-mu > 0) has no per-sample gradient; Opacus would drop it")
    n = int(x.shape[0])
    if n == 0:
        return TrainResult(0, 0, 0, float("nan")), accountant
    from opacus import PrivacyEngine
    from opacus.data_loader import DPDataLoader

    work = copy.deepcopy(model).train()  # Opacus's hooks go on a copy; the weights come back at the end
    optimizer = torch.optim.SGD(work.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    sampler_rng = torch.Generator().manual_seed(seed)
    noise_rng = torch.Generator(device=x.device).manual_seed(seed + 1)
    loader = DPDataLoader.from_data_loader(DataLoader(TensorDataset(x, y), batch_size=batch_size), generator=sampler_rng)
    input_shape = tuple(x.shape[1:])
    with warnings.catch_warnings():
        for text in _OPACUS_NOISE:
            warnings.filterwarnings("ignore", message=text)
        engine = PrivacyEngine(accountant=accountant["mechanism"])
        engine.accountant = make_accountant(accountant)
        private, dp_optimizer, loader = engine.make_private(
            module=work,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm,
            poisson_sampling=False,  # the loader above already samples (seeded)
            noise_generator=noise_rng,
        )
        steps = flops = 0
        epoch_loss = 0.0
        for _ in range(epochs):
            epoch_loss, seen = 0.0, 0
            for xb, yb in loader:
                dp_optimizer.zero_grad(set_to_none=True)
                loss = nn.functional.cross_entropy(private(xb), yb)  # NaN on an empty batch: no sample, no gradient
                loss.backward()
                dp_optimizer.step()  # an empty Poisson batch is still a step: noise only
                steps += 1
                flops += dp_step_flops(model, input_shape, len(yb))
                if len(yb):
                    epoch_loss += float(loss.detach()) * len(yb)
                    seen += len(yb)
            epoch_loss /= max(seen, 1)
    private._close()
    model.load_state_dict(work.state_dict())
    return TrainResult(num_examples=n, steps=steps, flops=flops, loss=epoch_loss), state_of(engine.accountant)
