"""What the server measures of real terminals: timed exchanges and the profiles they give.

Under Flower's deployment engine the ServerApp's Grid (:class:`flwr.superlink.grid.HttpGrid`) asks
the SuperLink for replies every 3 s; :func:`timed_send_and_receive` pushes the messages itself and
polls every :data:`POLL_S` seconds, so that each exchange's round trip is known (to within a
poll) and a chain of split-learning messages does not wait 3 s per step. Engines that run the
terminals in this machine (fedsplit's, Flower's simulation engine) keep their own
``send_and_receive``: their timings say nothing of a device.

:class:`MeasuredTerminals` keeps, for every terminal that measures itself (node config
``profile = "measure"``, :mod:`fedsplit.clients.measure_mod`), its probed FLOP/s and the
``(bytes, seconds)`` of its timed exchanges, and gives its measured device profile
(:func:`fedsplit.devices.probe.measured_profile`): the FLOP/s from its first reply (discovery's
query), the link fitted (:func:`fedsplit.devices.probe.fit_link`) again after each of its first
:data:`LINK_SAMPLES` timed exchanges, then kept for the rest of the run. Until the throughput
stands out of the jitter the declared bandwidths stay, with the measured mean overhead as latency.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from flwr.app import Message

from fedsplit.devices import DeviceProfile
from fedsplit.devices.probe import LinkFit, fit_link, measured_profile

#: Seconds between two pulls of replies from the SuperLink (Flower's own Grid waits 3 s).
POLL_S = 0.1
#: Timed exchanges of a terminal its link is fitted on (discovery's query included).
LINK_SAMPLES = 8


def is_polled_grid(grid: object) -> bool:
    """Whether ``grid`` reaches real nodes through a SuperLink (Flower's deployment Grid)."""
    try:
        from flwr.superlink.grid import HttpGrid
    except ImportError:  # pragma: no cover - flwr 1.41 has it
        return False
    return isinstance(grid, HttpGrid)


def timed_send_and_receive(grid: object, messages: list[Message], timeout: float | None = None, poll_s: float = POLL_S) -> tuple[list[Message], dict[str, float]]:
    """Push ``messages`` through ``grid`` and pull replies every ``poll_s`` seconds.

    Parameters
    ----------
    grid : Grid
        A Grid with ``push_messages``/``pull_messages``.
    messages : list of Message
        What to send.
    timeout : float, optional
        Real seconds to wait for the replies (None: until every reply is in, as Flower's Grid).
    poll_s : float
        Seconds between pulls.

    Returns
    -------
    tuple
        The replies, and ``{message id sent: round trip in seconds}`` of every reply (from the
        push to the pull that brought it; its resolution is ``poll_s``).
    """
    started = time.perf_counter()
    ids = [mid for mid in grid.push_messages(messages) if mid]
    pending = set(ids)
    end = None if timeout is None else started + timeout
    replies: list[Message] = []
    round_trip: dict[str, float] = {}
    while pending:
        for reply in grid.pull_messages(list(pending)):
            sent_id = reply.metadata.reply_to_message_id
            if sent_id in pending:
                pending.discard(sent_id)
                round_trip[sent_id] = time.perf_counter() - started
                replies.append(reply)
        if not pending or (end is not None and time.perf_counter() >= end):
            break
        time.sleep(poll_s)
    return replies, round_trip


@dataclass
class _Terminal:
    flops_per_s: float | None = None
    samples: list[tuple[float, float]] = field(default_factory=list)
    link: LinkFit | None = None


class MeasuredTerminals:
    """Measurements of the terminals that measure themselves, and their device profiles."""

    def __init__(self) -> None:
        self._terminals: dict[int, _Terminal] = {}

    def __contains__(self, partition_id: int) -> bool:
        return partition_id in self._terminals

    def observe(self, partition_id: int, flops_per_s: float, bytes_moved: int, seconds: float | None) -> None:
        """Record one reply of a measuring terminal.

        Parameters
        ----------
        partition_id : int
            The terminal.
        flops_per_s : float
            Its probed rate (the reply's ``fedsplit.measured`` record), FLOP/s.
        bytes_moved : int
            Bytes of the message and its reply together.
        seconds : float or None
            Real seconds of the exchange apart from the terminal's compute (None: not timed).
        """
        terminal = self._terminals.setdefault(partition_id, _Terminal())
        terminal.flops_per_s = float(flops_per_s)
        if seconds is None or len(terminal.samples) >= LINK_SAMPLES:
            return
        terminal.samples.append((float(bytes_moved), max(float(seconds), 0.0)))
        b, s = zip(*terminal.samples)
        terminal.link = fit_link(b, s)

    def profile(self, partition_id: int, declared: DeviceProfile) -> DeviceProfile:
        """The terminal's profile: ``declared`` with what was measured of it (``declared`` if nothing)."""
        terminal = self._terminals.get(partition_id)
        if terminal is None:
            return declared
        return measured_profile(declared, terminal.flops_per_s, terminal.link)

    def summary(self, declared_of) -> dict[str, dict[str, float | None]]:  # noqa: ANN001 - pid -> DeviceProfile
        """Per measured terminal (keys are partition ids as strings): declared and measured
        FLOP/s, link overhead and throughput (None where not resolved), for ``summary.json``."""
        out: dict[str, dict[str, float | None]] = {}
        for pid in sorted(self._terminals):
            terminal = self._terminals[pid]
            declared = declared_of(pid)
            out[str(pid)] = {
                "device": declared.name,
                "declared_flops_per_s": declared.flops_per_s,
                "measured_flops_per_s": terminal.flops_per_s,
                "link_overhead_s": None if terminal.link is None else terminal.link.overhead_s,
                "link_bps": None if terminal.link is None else terminal.link.bps,
                "link_samples": len(terminal.samples),
                "declared_uplink_bps": declared.uplink_bps,
            }
        return out


__all__ = ["LINK_SAMPLES", "POLL_S", "MeasuredTerminals", "is_polled_grid", "timed_send_and_receive"]
