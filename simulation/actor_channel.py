"""A direct byte channel between fedsplit's engine and an actor on the same machine.

A Ray actor call costs the driver about 0.3-0.6 ms of CPU and a round trip of ~0.8 ms on this
project's 2-core machine before any data moves, and a reply of 1 MB comes back inline through
Ray's RPC path in ~2 ms more. Measured side by side on that machine (two actors, each answering
with 50 updates of 20 KB, the 100-terminal MLP's round): 3.6-4.0 ms a round and 2.2 ms of the
driver's CPU through Ray calls, 0.55-0.73 ms and 0.38-0.50 ms through a Unix socket per actor.
The driver's CPU is what caps the engine on many cores (one driver feeds every actor), so with
``engine.transport = "channel"`` (the default) the engine sends an actor on its machine its batches
through such a socket; Ray still starts, places, restarts and kills the actors, and carries the batches of actors
on other machines and rounds whose global model goes through its object store.

The actor answers its channel on the thread Ray runs its calls on (the process's main thread), so
the ClientApp runs where it runs under Ray calls: thread-local state (torch's grad mode, CUDA's
current device and stream) is the same under both transports. Before a Ray call to such an actor
the engine sends :data:`PAUSE`, which frees that thread; the channel stays open for later rounds.

It is the default, as measured on that machine (``bench_engine.py --transport channel|ray``,
alternating, ``experiments/results/bench_engine/output.txt``): with one actor it is faster (1-actor
overhead 0.95-1.13 against 1.14-1.17 on the 10-terminal MLP, median 1.31 against 1.40 on the
100-terminal one), with two actors the two are even within the machine's noise (efficiency 0.68-0.73
against 0.60-0.76 on the 10-terminal MLP; 0.50-0.73, median 0.58, against 0.46-0.68, median 0.58,
in 8 alternations on the 100-terminal one), and the driver spends less CPU per ClientApp second
(``feeds`` 10.5-16.9 against 8.9-15.8), which is what many cores need. ``engine.transport = "ray"``
sends every batch by Ray call.

A frame is an 8-byte big-endian length and that many bytes. The actor answers each batch frame
in order (:class:`ActorEnd`: a thread of its own reads them) with the frames :func:`answer_chunks`
sizes: half the batch's items still unanswered each time, so the driver unpacks, checks and meters
the first replies while the actor trains the rest, and what it does after the batch's end is one
reply's work (the engine's streamed replies; a batch lists its heaviest items first, so its last is
short). The driver reads each channel in a thread of its own (:class:`DriverChannel`), so neither
side's send waits on the other's work. A process that dies closes its end, which the other side
reads as :class:`ChannelClosed`.
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import socket
import struct
import tempfile
import threading
import traceback
from collections import deque
from collections.abc import Callable, Iterable

log = logging.getLogger("fedsplit")

_LENGTH = struct.Struct("!Q")


def answer_chunks(items: int) -> list[int]:
    """How many of a batch's ``items`` each answer frame carries, in order: half of those still
    unanswered, rounded up (10 items: 5, 3, 1, 1; 50: 25, 13, 6, 3, 2, 1). Both ends compute it:
    the driver counts a batch's frames with it, the actor groups its replies with it.

    ``log2(items) + 1`` frames at most: the per-frame costs (a pickle, a send, the driver's wake-up)
    stay few per batch, and the last frame, the only one the driver handles after the actor has
    finished, carries one reply.
    """
    sizes = []
    while items > 0:
        size = (items + 1) // 2
        sizes.append(size)
        items -= size
    return sizes


class ChannelClosed(ConnectionError):
    """The other end of a channel went away (its process died, or it closed the channel)."""


def send_frame(sock: socket.socket, data: bytes | bytearray) -> None:
    """Send ``data`` as one frame (its length, then its bytes)."""
    try:
        sock.sendall(_LENGTH.pack(len(data)))
        sock.sendall(data)
    except OSError as exc:
        raise ChannelClosed(f"channel closed while sending: {exc}") from None


def recv_frame(sock: socket.socket) -> bytearray:
    """The next frame's bytes; :class:`ChannelClosed` when the other end is gone."""
    (length,) = _LENGTH.unpack(_recv_exact(sock, _LENGTH.size))
    return _recv_exact(sock, length)


def close_socket(sock: socket.socket) -> None:
    """Shut ``sock`` down both ways (a thread blocked reading it wakes) and close it; idempotent."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


def _recv_exact(sock: socket.socket, size: int) -> bytearray:
    buffer = bytearray(size)
    view, received = memoryview(buffer), 0
    while received < size:
        try:
            count = sock.recv_into(view[received:], size - received)
        except OSError as exc:
            raise ChannelClosed(f"channel closed while receiving: {exc}") from None
        if count == 0:
            raise ChannelClosed("the other end closed the channel")
        received += count
    return buffer


class Listener:
    """A listening Unix socket for one connection, in a private temporary folder (driver side).

    ``path`` is what the actor connects to (:class:`ActorEnd`); :meth:`accept` takes the connection
    and removes the socket file and its folder.
    """

    def __init__(self) -> None:
        self._folder = tempfile.mkdtemp(prefix="fedsplit-channel-")
        self.path = os.path.join(self._folder, "socket")
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.bind(self.path)
            self._sock.listen(1)
        except OSError:
            self.close()
            raise

    def accept(self, timeout_s: float) -> socket.socket:
        """The actor's connection (waiting at most ``timeout_s`` seconds); the listener closes."""
        try:
            self._sock.settimeout(timeout_s)
            conn, _ = self._sock.accept()
        finally:
            self.close()
        conn.settimeout(None)
        return conn

    def close(self) -> None:
        """Stop listening and remove the socket's folder (idempotent)."""
        self._sock.close()
        shutil.rmtree(self._folder, ignore_errors=True)


class DriverChannel:
    """The driver's end of one actor's channel.

    :meth:`send` sends a frame; a thread of the channel reads the actor's answers and puts each on
    ``arrivals`` as ``(channel, frame)``, and at the end ``(channel, ChannelClosed)``. ``pending``
    is the caller's: the keys of the batches sent and not yet wholly answered, oldest first
    (answers come in the order of the batches, each batch's in :func:`answer_chunks` frames).
    """

    def __init__(self, sock: socket.socket, arrivals: "queue.SimpleQueue[tuple[DriverChannel, bytearray | ChannelClosed]]") -> None:
        self.sock = sock
        self.pending: deque = deque()
        self.closed: ChannelClosed | None = None
        self._arrivals = arrivals
        threading.Thread(target=self._read, name="fedsplit-channel-driver", daemon=True).start()

    def send(self, data: bytes) -> None:
        """Send one frame; :class:`ChannelClosed` when the channel is closed."""
        if self.closed is not None:
            raise self.closed
        send_frame(self.sock, data)

    def close(self) -> None:
        """Close this end; the actor's reader and this channel's reader end (idempotent)."""
        close_socket(self.sock)

    def _read(self) -> None:
        try:
            while True:
                self._arrivals.put((self, recv_frame(self.sock)))
        except ChannelClosed as exc:
            self.closed = exc  # before the arrival: a sender that sees no close will get its answer or this arrival
            self._arrivals.put((self, exc))


PAUSE = b""
"""The frame that makes :meth:`ActorEnd.answer_all` return without closing the channel (a
batch's payload is never empty): the driver sends it before it calls the actor through Ray,
whose calls run on the thread that answers the channel."""


class ActorEnd:
    """The actor's end of a channel: connected to the driver's :class:`Listener` at ``path``.

    A daemon thread reads the frames as they come (so the driver's send of a next batch never
    waits for the batch before it to end); :meth:`answer_all` answers them in order in the
    thread that calls it, each with the frames its handler yields.
    """

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self._frames: queue.SimpleQueue[bytearray | None] = queue.SimpleQueue()
        threading.Thread(target=self._read, name="fedsplit-channel-read", daemon=True).start()

    def _read(self) -> None:
        try:
            while True:
                self._frames.put(recv_frame(self.sock))
        except ChannelClosed:
            self._frames.put(None)

    def answer_all(self, handle: Callable[[bytearray], Iterable[bytes]]) -> bool:
        """Answer every frame with the frames ``handle(frame)`` yields (each sent as it is
        yielded), in order, until a :data:`PAUSE` frame (True: the channel stays open, a later
        call answers the frames after it) or until the channel closes (False).

        ``handle`` should not raise; if it does, the traceback is logged and the channel closed,
        which the driver treats as it treats a dead actor (the frames sent before stay answered).
        """
        while (frame := self._frames.get()) is not None:
            if frame == PAUSE:
                return True
            try:
                for reply in handle(frame):
                    send_frame(self.sock, reply)
            except ChannelClosed:
                break
            except Exception:  # noqa: BLE001 - the driver sees the closed channel
                log.error("fedsplit channel: a batch failed outside the ClientApp; closing\n%s", traceback.format_exc())
                break
        self.close()
        return False

    def close(self) -> None:
        """Close this end (the driver reads it as a closed channel); idempotent."""
        close_socket(self.sock)


__all__ = ["PAUSE", "ActorEnd", "answer_chunks", "ChannelClosed", "DriverChannel", "Listener", "recv_frame", "send_frame"]
