"""The one error type of the inference room: a bad field in a scenario, catalog or option."""

from __future__ import annotations


class ScenarioError(ValueError):
    """A field of a scenario (or catalog, or option) has a value that is not allowed.

    Parameters
    ----------
    field : str
        Path of the field, e.g. ``"terminals[2].gain"``.
    value : object
        The offending value (``None`` when the field is missing).
    allowed : str
        What is allowed, e.g. ``"a number > 0"``.
    missing : bool
        Whether the field is absent rather than wrong.
    """

    def __init__(self, field: str, value: object, allowed: str, *, missing: bool = False) -> None:
        self.field = field
        self.value = value
        self.allowed = allowed
        self.missing = missing
        if missing:
            message = f"{field}: missing; expected {allowed}"
        else:
            message = f"{field}: got {value!r}; expected {allowed}"
        super().__init__(message)
