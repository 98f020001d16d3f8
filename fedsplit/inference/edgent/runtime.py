"""Real partitioned execution: the terminal part here, the edge part in another process.

:class:`EdgeServer` starts a worker process (``multiprocessing``, spawn) that holds the multi-exit
model; :meth:`EdgeServer.infer` runs the first ``partition`` blocks of the path to an exit in this
process (the terminal), sends the cut tensor through a pipe, and the worker runs the remaining
blocks and sends the logits back. The link is emulated: the transfer of ``cut_bytes`` at the
current bandwidth takes ``8 * cut_bytes / bandwidth + link_latency`` seconds, either slept for
(``emulate="sleep"``) or only added to a simulated clock (``emulate="clock"``). Both sides run their
part with one intra-op thread, so the partitioned output is bit-identical to the unpartitioned
model's output at that exit (same kernels, same order of operations).
"""

from __future__ import annotations

import multiprocessing as mp
import time
from dataclasses import dataclass

import torch

from fedsplit.models.contract import blocks
from fedsplit.models.multiexit import MultiExitCNN, build_multiexit, exit_path


def _run_blocks(model: MultiExitCNN, exit_index: int, start: int, stop: int | None, x: torch.Tensor) -> torch.Tensor:
    named = blocks(exit_path(model, exit_index))
    with torch.no_grad():
        for _, block in named[start:stop]:
            x = block(x)
    return x


def _edge_worker(conn, spec: dict, state: dict) -> None:  # pragma: no cover - runs in the child
    torch.set_num_threads(1)
    model = build_multiexit(spec["name"], spec["input_shape"], spec["num_classes"], width=spec["width"])
    model.load_state_dict(state)
    model.eval()
    while True:
        message = conn.recv()
        if message is None:
            break
        exit_index, partition, tensor = message
        start = time.perf_counter()
        out = _run_blocks(model, exit_index, partition, None, tensor)
        conn.send((out, time.perf_counter() - start))
    conn.close()


@dataclass(frozen=True)
class InferenceTiming:
    """Where one partitioned inference spent its time [s] (transfer: emulated)."""

    device_s: float
    transfer_s: float
    edge_s: float
    cut_bytes: int

    @property
    def total_s(self) -> float:
        """Sum of the three parts [s]."""
        return self.device_s + self.transfer_s + self.edge_s


class EdgeServer:
    """A worker process running edge parts of a multi-exit model (use as a context manager).

    Parameters
    ----------
    model : MultiExitCNN
        The model (its weights are sent to the worker; this process keeps the terminal's copy).
    name, width : str, float
        How the worker rebuilds the architecture (:func:`build_multiexit`).
    num_classes : int
        Classes of the model.
    link_latency_s : float
        One-way latency of a transfer [s].
    emulate : str
        ``sleep`` (real waiting) or ``clock`` (simulated time only).
    """

    def __init__(self, model: MultiExitCNN, *, name: str = "multiexit-cnn", width: float = 1.0,
                 num_classes: int = 10, link_latency_s: float = 0.0, emulate: str = "clock") -> None:
        if emulate not in ("sleep", "clock"):
            raise ValueError(f"emulate = {emulate!r}: expected 'sleep' or 'clock'")
        self.model = model.eval()
        self.link_latency_s = float(link_latency_s)
        self.emulate = emulate
        spec = {"name": name, "input_shape": model.input_shape, "num_classes": num_classes, "width": width}
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        context = mp.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_edge_worker, args=(child, spec, state), daemon=True)
        self._process.start()
        child.close()

    def __enter__(self) -> "EdgeServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop the worker."""
        if self._process.is_alive():
            self._conn.send(None)
            self._process.join(timeout=10)
        if self._process.is_alive():  # pragma: no cover
            self._process.terminate()

    def infer(self, x: torch.Tensor, exit_index: int, partition: int, bandwidth_bps: float) -> tuple[torch.Tensor, InferenceTiming]:
        """Run configuration ``(exit_index, partition)`` on ``x``; return the logits and the timing.

        ``partition`` blocks run here; the rest in the worker (none when ``partition`` is the path's
        block count: device-only, nothing sent).
        """
        n = len(blocks(exit_path(self.model, exit_index)))
        if not 0 <= partition <= n:
            raise ValueError(f"partition = {partition!r}: exit {exit_index} has {n} blocks; expected 0..{n}")
        if not bandwidth_bps > 0:
            raise ValueError(f"bandwidth = {bandwidth_bps!r}: expected a number of bit/s > 0")
        previous = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            start = time.perf_counter()
            cut = _run_blocks(self.model, exit_index, 0, partition, x)
            device_s = time.perf_counter() - start
        finally:
            torch.set_num_threads(previous)
        if partition == n:
            return cut, InferenceTiming(device_s, 0.0, 0.0, 0)
        size = cut.numel() * cut.element_size()
        transfer_s = 8.0 * size / bandwidth_bps + self.link_latency_s
        if self.emulate == "sleep":
            time.sleep(transfer_s)
        self._conn.send((exit_index, partition, cut))
        out, edge_s = self._conn.recv()
        return out, InferenceTiming(device_s, transfer_s, edge_s, size)


def reference_output(model: MultiExitCNN, x: torch.Tensor, exit_index: int) -> torch.Tensor:
    """The unpartitioned model's output at ``exit_index`` (one intra-op thread, as the runtime)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model.eval()
        with torch.no_grad():
            return model.forward_exit(x, exit_index)
    finally:
        torch.set_num_threads(previous)


__all__ = ["EdgeServer", "InferenceTiming", "reference_output"]
