"""Errors of the data room that a user's setting or file causes (the command prints their one line)."""

from __future__ import annotations


class DataError(ValueError):
    """The data a configuration names cannot be built: a broken file, a partitioning the pool
    cannot give. The message is one line naming the file or the settings and what to change; the
    ``fedsplit`` command prints it after ``fedsplit <command>: error: data:`` and exits with status 2."""


class PartitionError(DataError):
    """The partitioner cannot give every terminal a partition of the requested kind."""
