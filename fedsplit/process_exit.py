"""End a command's process once its work is done, without the interpreter's teardown.

A normal Python exit joins the non-daemon threads, runs the ``atexit`` handlers, flushes
``sys.stdout`` and ``sys.stderr``, and then tears the interpreter down: a last garbage
collection, every module's objects destroyed, C++ static destructors. The last stage runs the
destructors of Ray's core worker and of gRPC's channels, and those can block for ever (Ray issue
29431 shows a driver stuck in a gRPC channel's ``__del__``). fedsplit's CI saw it once on
2026-12-07: ``fedsplit simulate`` attached to a Ray cluster printed its result line, which a pipe
only receives at the exit's flush, and then never exited.

:func:`exit_now` does the first three stages as Python does them, in the same order, then ends the
process with :func:`os._exit`: what the command wrote, the ``atexit`` work (``ray.shutdown``,
``logging.shutdown``) and the exit code are kept; only the teardown, which saves nothing, is skipped.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from typing import NoReturn

__all__ = ["exit_code", "exit_now"]


def exit_code(code: object) -> int:
    """The process exit status ``sys.exit(code)`` gives: ``None`` is 0, an ``int`` itself, and
    anything else 1, after printing it on stderr (as Python does)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def exit_now(code: object = 0) -> NoReturn:
    """End the process with ``code`` (as :func:`sys.exit` reads it) after the exit's useful work.

    Waits for the non-daemon threads (after threading's exit hooks, which tell idle thread pools
    to stop), runs the ``atexit`` handlers and flushes ``sys.stdout`` and
    ``sys.stderr`` (a closed pipe is ignored, as at a normal exit); then :func:`os._exit` skips the
    interpreter's teardown. Call it last, from the main thread.
    """
    status = exit_code(code)
    threading._shutdown()  # what Python's exit calls first: threading's exit hooks (idle thread pools), then the joins
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):  # a reader that went away, a stream already closed
            pass
    os._exit(status & 0xFF)  # what the OS keeps of any status
