"""The one error type of the configuration room."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration that cannot be run; the message is one line naming the field.

    The line reads ``config: FIELD = VALUE: what is wrong (allowed: ...)``; the ``fedsplit``
    command prints it after ``fedsplit: error:`` and exits with status 2.
    """
