"""Every (exit, partition) configuration of a multi-exit model, with its predicted costs.

A configuration runs the path to exit ``e`` (:func:`fedsplit.models.multiexit.exit_path`, whose
blocks are single layers) with its first ``p`` blocks on the terminal and the rest on the edge
server, ``0 <= p <= n_e``: ``p = 0`` is edge-only (the input is sent), ``p = n_e`` is device-only
(nothing is sent), otherwise the output of block ``p - 1`` (the *cut tensor*) is sent. Its latency
for an uplink of ``b`` bit/s is

    device_s + (8 * cut_bytes / b + link_latency_s if cut_bytes else 0) + edge_s

(Edgent's model; the logits sent back are a few bytes and are not counted). ``device_s`` and
``edge_s`` are sums of per-layer predictions (:class:`~fedsplit.inference.edgent.latency.LatencyModel`)
through the terminal's and the edge server's device profiles. The table is computed once per
(model, profiles); planning is then array arithmetic (:mod:`fedsplit.inference.edgent.optimizer`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from fedsplit.devices.profile import DeviceProfile
from fedsplit.inference.edgent.latency import LatencyModel, describe_call, leaf_layers
from fedsplit.models.contract import blocks
from fedsplit.models.multiexit import MultiExitCNN, exit_path

#: Bytes per element of the tensors sent (float32).
ELEMENT_BYTES = 4


@dataclass(frozen=True)
class ConfigTable:
    """Predicted costs of every (exit, partition) configuration, as parallel arrays.

    Attributes
    ----------
    exit, partition : numpy.ndarray of int
        Exit index and number of blocks run on the terminal.
    blocks_on_path : numpy.ndarray of int
        Blocks on the path to that exit (``partition == blocks_on_path`` is device-only).
    cut_name : tuple of str
        Last block run on the terminal (``"<input>"`` for edge-only).
    device_s, edge_s : numpy.ndarray of float
        Predicted compute latency on the terminal and on the edge server [s].
    cut_bytes : numpy.ndarray of int
        Bytes sent from the terminal to the edge (0 for device-only).
    accuracy : numpy.ndarray of float
        Held-out accuracy of the configuration's exit (or a depth proxy, see ``accuracy_measured``).
    accuracy_measured : bool
        Whether ``accuracy`` was measured; if not, it is ``(exit + 1) / num_exits`` (deeper is better).
    link_latency_s : float
        One-way latency added to any transfer [s].
    device, edge : str
        Names of the device profiles used.
    """

    exit: np.ndarray
    partition: np.ndarray
    blocks_on_path: np.ndarray
    cut_name: tuple[str, ...]
    device_s: np.ndarray
    edge_s: np.ndarray
    cut_bytes: np.ndarray
    accuracy: np.ndarray
    accuracy_measured: bool
    link_latency_s: float
    device: str
    edge: str

    def __len__(self) -> int:
        return int(self.exit.shape[0])

    @property
    def num_exits(self) -> int:
        """Number of exits of the model."""
        return int(self.exit.max()) + 1

    def latency_s(self, bandwidth_bps: float | np.ndarray) -> np.ndarray:
        """Predicted end-to-end latency [s] of every configuration for an uplink of ``bandwidth_bps`` bit/s."""
        transfer = np.where(self.cut_bytes > 0, 8.0 * self.cut_bytes / bandwidth_bps + self.link_latency_s, 0.0)
        return self.device_s + transfer + self.edge_s

    def transfer_s(self, index: int, bandwidth_bps: float) -> float:
        """Predicted transfer time [s] of configuration ``index``."""
        size = int(self.cut_bytes[index])
        return 8.0 * size / bandwidth_bps + self.link_latency_s if size else 0.0

    def index_of(self, exit_index: int, partition: int) -> int:
        """Row of configuration ``(exit_index, partition)``, or ValueError naming the allowed values."""
        rows = np.flatnonzero((self.exit == exit_index) & (self.partition == partition))
        if not len(rows):
            raise ValueError(
                f"configuration (exit={exit_index}, partition={partition}) does not exist: exits are "
                f"0..{self.num_exits - 1} and the partition of exit e is 0..blocks on its path"
            )
        return int(rows[0])


def block_host_latencies(path: nn.Module, input_shape: tuple[int, ...], latency: LatencyModel) -> tuple[
    list[str], list[float], list[int]
]:
    """Per block of ``path``: name, predicted host latency [s], output bytes (batch size 1).

    Each block's leaf layers are predicted from the shapes they see in a forward pass.
    """
    names, seconds, out_bytes = [], [], []
    x = torch.zeros((1, *input_shape))
    was_training = path.training
    path.eval()
    try:
        for name, block in blocks(path):
            calls: list[tuple[nn.Module, torch.Tensor]] = []
            hooks = [
                leaf.register_forward_hook(lambda m, args, out, calls=calls: calls.append((m, args[0])))
                for leaf in leaf_layers(block)
            ]
            with torch.no_grad():
                out = block(x)
            for hook in hooks:
                hook.remove()
            total = 0.0
            for module, inp in calls:
                kind, features, _, _ = describe_call(module, inp)
                total += latency.predict_host(kind, features)
            names.append(name)
            seconds.append(total)
            out_bytes.append(int(out.numel()) * ELEMENT_BYTES)
            x = out
    finally:
        path.train(was_training)
    return names, seconds, out_bytes


def build_config_table(
    model: MultiExitCNN,
    latency: LatencyModel,
    device: DeviceProfile,
    edge: DeviceProfile,
    accuracies: Sequence[float] | None = None,
    *,
    link_latency_s: float | None = None,
) -> ConfigTable:
    """Predict every configuration's costs.

    Parameters
    ----------
    model : MultiExitCNN
        The multi-exit model (its ``input_shape`` is used, batch size 1).
    latency : LatencyModel
        Per-layer latency regressions fitted on the host.
    device, edge : DeviceProfile
        Profiles of the terminal and of the edge server.
    accuracies : sequence of float, optional
        Held-out accuracy of each exit, in [0, 1]; without it the depth proxy is used.
    link_latency_s : float, optional
        One-way latency of a transfer [s]; default the terminal profile's ``link_latency_s``.
    """
    n = model.num_exits
    if accuracies is not None:
        accuracies = [float(a) for a in accuracies]
        if len(accuracies) != n or not all(0.0 <= a <= 1.0 for a in accuracies):
            raise ValueError(f"accuracies = {accuracies!r}: expected {n} values in [0, 1], one per exit")
    link = device.link_latency_s if link_latency_s is None else float(link_latency_s)
    if not link >= 0:
        raise ValueError(f"link_latency_s = {link_latency_s!r}: expected a number >= 0 (seconds)")
    to_device, to_edge = latency.scale_to(device), latency.scale_to(edge)
    input_bytes = int(np.prod(model.input_shape)) * ELEMENT_BYTES
    rows: dict[str, list] = {k: [] for k in ("exit", "partition", "n", "cut", "dev", "edge", "bytes", "acc")}
    for e in range(n):
        names, host_s, out_bytes = block_host_latencies(exit_path(model, e), model.input_shape, latency)
        cumulative = np.concatenate([[0.0], np.cumsum(host_s)])
        total = cumulative[-1]
        for p in range(len(names) + 1):
            rows["exit"].append(e)
            rows["partition"].append(p)
            rows["n"].append(len(names))
            rows["cut"].append("<input>" if p == 0 else names[p - 1])
            rows["dev"].append(cumulative[p] * to_device)
            rows["edge"].append((total - cumulative[p]) * to_edge)
            rows["bytes"].append(input_bytes if p == 0 else (0 if p == len(names) else out_bytes[p - 1]))
            rows["acc"].append(accuracies[e] if accuracies is not None else (e + 1) / n)
    return ConfigTable(
        exit=np.asarray(rows["exit"], dtype=int),
        partition=np.asarray(rows["partition"], dtype=int),
        blocks_on_path=np.asarray(rows["n"], dtype=int),
        cut_name=tuple(rows["cut"]),
        device_s=np.asarray(rows["dev"], dtype=float),
        edge_s=np.asarray(rows["edge"], dtype=float),
        cut_bytes=np.asarray(rows["bytes"], dtype=np.int64),
        accuracy=np.asarray(rows["acc"], dtype=float),
        accuracy_measured=accuracies is not None,
        link_latency_s=link,
        device=device.name,
        edge=edge.name,
    )


__all__ = ["ConfigTable", "ELEMENT_BYTES", "block_host_latencies", "build_config_table"]
