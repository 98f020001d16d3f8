"""Errors of the data room that a user's setting or file causes (the command prints their one line)."""

from __future__ import annotations

from fedsplit.config.errors import DataError

__all__ = ["DataError", "PartitionError"]


class PartitionError(DataError):
    """The partitioner cannot give every terminal a partition of the requested kind."""
