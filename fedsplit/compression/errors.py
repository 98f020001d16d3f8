"""Errors raised by the compression core."""

from __future__ import annotations

__all__ = ["PayloadError"]


class PayloadError(ValueError):
    """A payload could not be decoded: truncated, corrupted, mis-shaped or oversized.

    The message is a short, human-readable reason suitable for a log line.
    Every decoder in :mod:`fedsplit.compression` raises only this exception for a
    bad input (never ``IndexError``, ``struct.error``, ``MemoryError``...).
    """
