"""Predicting a split's simulated time per epoch, and choosing the cut that minimises it.

Per batch of the profiled size ``b`` (all times in seconds, FLOPs in FLOP, bytes in bytes,
bandwidths in bit/s, throughputs in FLOP/s; ``dev`` is the terminal's
:class:`~fedsplit.devices.DeviceProfile`, ``srv`` the edge server's)::

    vanilla / splitfed:
        t = F_client / dev.flops_per_s                      terminal compute
          + 8 * (A + Y) / dev.uplink_bps                     activations A and labels Y up
          + F_server / srv.flops_per_s                       server compute
          + 8 * G / dev.downlink_bps                         gradient at the cut G down
          + 2 * dev.link_latency_s                           one round trip

    u-shape:
        t = (F_front + F_head) / dev.flops_per_s + F_middle / srv.flops_per_s
          + 8 * (A1 + G2) / dev.uplink_bps                   cut-1 activations, cut-2 gradient up
          + 8 * (A2 + G1) / dev.downlink_bps                 cut-2 activations, cut-1 gradient down
          + 4 * dev.link_latency_s                           two round trips

``F_part`` is the part's forward + backward FLOPs per batch (``2 * forward + backward`` for the
parts that recompute their forward when ``recompute=True``: the terminal's input-side part, and in
U-shape the server's middle part). The link is the terminal's; the server's own link is not
modelled. Compute and transfer do not overlap (each side waits for the other).

Per epoch of ``n`` samples in batches of ``B``: FLOPs and bytes are proportional to the samples
(every layer of the zoo costs the same per sample), the latency is paid once per batch::

    T_epoch = ceil(n / B) * latency_per_batch + (n / b) * (t - latency_per_batch)

Not counted: the exchange of the client part's weights at round boundaries (SplitFed), queueing
at a server shared by several terminals, and message framing bytes.

Which cuts are candidates
-------------------------
By default only cuts that leave at least one layer with parameters (trainable or frozen) on the
terminal's input side (:func:`local_cuts`): a cut before the first such layer (the MLP's
``net.0``, a ``Flatten``) would send the raw samples themselves to the server, which split
learning exists to avoid, and leave the terminal nothing to train. It is often the fastest
prediction (no terminal compute), so without this rule ``auto`` picked it. Such a cut can still be
named explicitly; the protocols then send no gradient back across it.

Likewise by default only cuts that leave the edge server a part that does real work
(:func:`server_cuts`): at least one layer with parameters (trainable or frozen) and non-zero
FLOPs per batch in the server's part (vanilla, SplitFed: everything after the cut; U-shape: the
middle part between the two cuts). Without this rule U-shape ``auto`` picked, for the compact CNN
(``cnn``), the cuts ``head.0,head.1``: a middle part of one ``Flatten``, so the server computed
nothing and the split only shipped activations back and forth. A model with no such cut (the MLP
in U-shape: its two layers with parameters cannot be on the terminal's front and in the server's
middle at once) gets a ``ValueError`` from ``auto``; its cuts can still be named explicitly.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from torch import nn

from fedsplit.devices.profile import DeviceProfile
from fedsplit.models.contract import blocks as model_blocks
from fedsplit.split.profile import SplitProfile, profile_blocks, split_profile_from_blocks

#: Protocols whose time can be predicted; ``splitfed`` has vanilla's per-batch exchange.
PROTOCOLS = ("vanilla", "splitfed", "u-shape")
#: The cut-selection protocol of each split ``training.mode``.
MODE_PROTOCOL = {"sl-vanilla": "vanilla", "sl-ushape": "u-shape", "splitfed-v1": "splitfed", "splitfed-v2": "splitfed"}


@dataclass(frozen=True)
class BatchTime:
    """Predicted time of one split training step on a batch of the profiled size, in seconds."""

    terminal_compute_s: float
    server_compute_s: float
    uplink_s: float
    downlink_s: float
    latency_s: float

    @property
    def total_s(self) -> float:
        """Sum of all components (nothing overlaps), seconds."""
        return self.terminal_compute_s + self.server_compute_s + self.uplink_s + self.downlink_s + self.latency_s


def _profile_protocol(protocol: str | None, profile: SplitProfile) -> str:
    if protocol is None:
        return profile.protocol
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol = {protocol!r}: unknown (allowed: {', '.join(PROTOCOLS)})")
    expected = "u-shape" if protocol == "u-shape" else "vanilla"
    if profile.protocol != expected:
        raise ValueError(f"protocol = {protocol!r} needs a {expected} split profile, got a {profile.protocol} one")
    return protocol


def predict_batch_time(
    profile: SplitProfile, device: DeviceProfile, server: DeviceProfile, *, recompute: bool = False
) -> BatchTime:
    """Predicted time of one step on ``profile.batch_size`` samples (formula in the module docstring).

    Parameters
    ----------
    profile : SplitProfile
        From :func:`fedsplit.split.profile_split`.
    device : DeviceProfile
        The terminal's class (its compute and its link are used).
    server : DeviceProfile
        The edge server's class (only ``flops_per_s`` is used).
    recompute : bool
        The input-side (and U-shape middle) parts recompute their forward before the backward.
    """
    if profile.protocol == "u-shape":
        front, middle, head = (profile.part(r) for r in ("client_front", "server_middle", "client_head"))
        cut1, cut2 = profile.cuts
        # A part recomputes its forward only if a gradient comes back to it.
        f_front = front.recompute_flops if recompute and cut1.gradient_bytes else front.flops
        f_middle = middle.recompute_flops if recompute and cut2.gradient_bytes else middle.flops
        return BatchTime(
            terminal_compute_s=(f_front + head.flops) / device.flops_per_s,
            server_compute_s=f_middle / server.flops_per_s,
            uplink_s=8.0 * (cut1.activation_bytes + cut2.gradient_bytes) / device.uplink_bps,
            downlink_s=8.0 * (cut2.activation_bytes + cut1.gradient_bytes) / device.downlink_bps,
            latency_s=4.0 * device.link_latency_s,
        )
    client, srv_part = profile.part("client"), profile.part("server")
    (cut,) = profile.cuts
    f_client = client.recompute_flops if recompute and cut.gradient_bytes else client.flops
    return BatchTime(
        terminal_compute_s=f_client / device.flops_per_s,
        server_compute_s=srv_part.flops / server.flops_per_s,
        uplink_s=8.0 * (cut.activation_bytes + profile.label_bytes) / device.uplink_bps,
        downlink_s=8.0 * cut.gradient_bytes / device.downlink_bps,
        latency_s=2.0 * device.link_latency_s,
    )


def predict_epoch_time(
    profile: SplitProfile,
    device: DeviceProfile,
    server: DeviceProfile,
    num_samples: int,
    batch_size: int,
    protocol: str | None = None,
    *,
    recompute: bool = False,
) -> float:
    """Predicted simulated time of one local epoch of split training, in seconds.

    Parameters
    ----------
    profile : SplitProfile
        Per-batch costs at ``profile.batch_size`` samples.
    device, server : DeviceProfile
        The terminal's and the edge server's classes.
    num_samples : int
        Samples in the terminal's training set.
    batch_size : int
        Samples per batch in training (may differ from ``profile.batch_size``: costs scale per sample).
    protocol : str, optional
        ``vanilla``, ``splitfed`` or ``u-shape``; must match the profile (default: the profile's).
    recompute : bool
        See :func:`predict_batch_time`.
    """
    _profile_protocol(protocol, profile)
    if num_samples < 0 or batch_size < 1:
        raise ValueError(f"num_samples = {num_samples}, batch_size = {batch_size}: need >= 0 and >= 1")
    if num_samples == 0:
        return 0.0
    batch = predict_batch_time(profile, device, server, recompute=recompute)
    per_sample_s = (batch.total_s - batch.latency_s) / profile.batch_size
    return math.ceil(num_samples / batch_size) * batch.latency_s + num_samples * per_sample_s


def candidate_cuts(num_cuts: int, protocol: str) -> list[int] | list[tuple[int, int]]:
    """All cut indices (vanilla, splitfed) or increasing pairs of them (u-shape)."""
    if protocol == "u-shape":
        return list(itertools.combinations(range(num_cuts), 2))
    return list(range(num_cuts))


def local_cuts(model: nn.Module) -> list[int]:
    """Indices (into :func:`~fedsplit.models.contract.cut_points`) of the cuts whose input-side
    part holds at least one parameter, trainable or frozen (raw samples do not leave the terminal).

    Parameters
    ----------
    model : nn.Module
        A model honouring the split contract.
    """
    named = model_blocks(model)
    first = next((i for i, (_, block) in enumerate(named) if any(True for _ in block.parameters())), len(named))
    return list(range(first, len(named) - 1))


def _part_works(holds_parameters: list[bool], profiles: tuple, first: int, stop: int) -> bool:
    """Blocks ``first .. stop - 1`` hold a parameter and cost FLOPs."""
    return any(holds_parameters[first:stop]) and sum(b.forward_flops + b.backward_flops for b in profiles[first:stop]) > 0


def server_cuts(
    model: nn.Module, input_shape: tuple[int, ...], batch_size: int, protocol: str = "vanilla"
) -> list[int] | list[tuple[int, int]]:
    """Cuts (indices into :func:`~fedsplit.models.contract.cut_points`; increasing pairs of them
    for U-shape) whose server part does real work: it holds at least one parameter (trainable or
    frozen) and costs non-zero FLOPs per batch (:func:`~fedsplit.split.profile_blocks`).

    The server's part is everything after the cut (vanilla, SplitFed) or the middle part between
    the two cuts (U-shape).

    Parameters
    ----------
    model : nn.Module
        A model honouring the split contract.
    input_shape : tuple of int
        One sample's shape.
    batch_size : int
        Samples per batch (for the FLOP count; whether a part costs FLOPs does not depend on it).
    protocol : str
        ``vanilla``, ``splitfed`` or ``u-shape``.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol = {protocol!r}: unknown (allowed: {', '.join(PROTOCOLS)})")
    profiles = profile_blocks(model, input_shape, batch_size)
    holds = [any(True for _ in block.parameters()) for _, block in model_blocks(model)]
    if protocol == "u-shape":
        return [(a, b) for a, b in candidate_cuts(len(profiles) - 1, protocol) if _part_works(holds, profiles, a + 1, b + 1)]
    return [c for c in range(len(profiles) - 1) if _part_works(holds, profiles, c + 1, len(profiles))]


def choose_cut(
    model: nn.Module,
    input_shape: tuple[int, ...],
    batch_size: int,
    num_samples: int,
    device: DeviceProfile,
    server: DeviceProfile,
    protocol: str = "vanilla",
    *,
    candidates: list | None = None,
    recompute: bool = False,
) -> tuple[str | tuple[str, str], dict[str | tuple[str, str], float]]:
    """The cut that minimises the predicted time per epoch on ``device``.

    Parameters
    ----------
    model : nn.Module
        A model honouring the split contract (profiled once per batch size, cached).
    input_shape : tuple of int
        One sample's shape.
    batch_size, num_samples : int
        Training batch size and the terminal's number of samples.
    device, server : DeviceProfile
        The terminal's class and the edge server's.
    protocol : str
        ``vanilla``, ``splitfed`` or ``u-shape`` (then cuts are pairs).
    candidates : list, optional
        Cuts to compare (names/indices, or pairs for u-shape); default: every cut whose
        input-side part holds a parameter (:func:`local_cuts`; the first cut of a pair) and whose
        server part holds a parameter and costs FLOPs (:func:`server_cuts`; U-shape: the middle).
    recompute : bool
        See :func:`predict_batch_time`.

    Returns
    -------
    (best, times)
        The best cut by name (a pair of names for u-shape) and the predicted seconds per epoch of
        every candidate, in cut order. Ties go to the earliest cut.

    Raises
    ------
    ValueError
        An unknown protocol, or (default candidates) a model whose every cut leaves no parameter
        on the terminal, or none of whose cuts that do leaves the server a part with parameters and
        FLOPs.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol = {protocol!r}: unknown (allowed: {', '.join(PROTOCOLS)})")
    blocks = profile_blocks(model, input_shape, batch_size)
    if candidates is None:
        local = set(local_cuts(model))
        candidates = [c for c in candidate_cuts(len(blocks) - 1, protocol) if (c[0] if isinstance(c, tuple) else c) in local]
        if not candidates:
            raise ValueError(
                "split.cut = auto: every cut of this model leaves no layer with parameters on the terminal "
                "(the raw samples would be sent); name a cut explicitly"
            )
        working = set(server_cuts(model, input_shape, batch_size, protocol))
        candidates = [c for c in candidates if c in working]
        if not candidates:
            server_part = "the middle part between the two cuts" if protocol == "u-shape" else "the part after the cut"
            allowed = ", ".join(f"{i}={b.name}" for i, b in enumerate(blocks[:-1]))
            raise ValueError(
                f"split.cut = auto ({protocol}): no cut of this model leaves both a layer with parameters on the "
                f"terminal's input side and the server a part that computes ({server_part} holds no parameter or "
                f"costs no FLOPs for every such cut); name the cut{'s' if protocol == 'u-shape' else ''} explicitly "
                f"(cuts: {allowed})"
            )
    times: dict[str | tuple[str, str], float] = {}
    for cut in candidates:
        if protocol == "u-shape" and not isinstance(cut, (tuple, list)):
            raise ValueError(f"cut {cut!r}: a u-shape candidate is a pair of cuts")
        profile = split_profile_from_blocks(blocks, cut, input_shape, batch_size)
        times[profile.cut_names] = predict_epoch_time(
            profile, device, server, num_samples, batch_size, protocol, recompute=recompute
        )
    if not times:
        raise ValueError("no candidate cut")
    best = min(times, key=times.__getitem__)  # first minimum: the earliest cut
    return best, times


def describe_cut_choice(device_name: str, best: str | tuple[str, str], times: dict) -> str:
    """One log line: the chosen cut and every alternative's predicted seconds per epoch."""
    def label(cut: str | tuple[str, str]) -> str:
        return "+".join(cut) if isinstance(cut, tuple) else cut

    alternatives = ", ".join(f"{label(c)}={t:.3g}s" for c, t in times.items())
    return f"split.cut = auto for {device_name}: {label(best)} ({times[best]:.3g} s/epoch predicted); all: {alternatives}"


__all__ = [
    "MODE_PROTOCOL",
    "PROTOCOLS",
    "BatchTime",
    "candidate_cuts",
    "choose_cut",
    "describe_cut_choice",
    "local_cuts",
    "predict_batch_time",
    "predict_epoch_time",
    "server_cuts",
]
