"""Reading Flower records without importing Flower: the helpers both sides of a run share.

A Flower ``Message`` carries a ``RecordDict`` whose sections (``array_records``,
``config_records``, ``metric_records``) map names to records. The ClientApp's
:func:`~fedsplit.clients.compression_mod.compression_mod` and the server's
:class:`~fedsplit.strategies.compression.CompressedStrategy` read them by the same rules, so the
rules are written once, here.

Why here, in the core, rather than in ``clients/`` or ``strategies/``: the layout has no third
folder for Flower glue that both sides share, and either side owning the helpers makes the other
import it (the server importing the client package, or a ClientApp importing the server's strategy
registry and with it ``flwr.serverapp``). The helpers need nothing of Flower but the shape of its
records (a mapping of names; arrays with a ``numpy()`` method), so they live in the core as plain
Python over mappings, and the core still imports neither Flower nor Ray
(``tests/test_clean_edges.py`` checks it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, TypeVar

import numpy as np

__all__ = ["SupportsNumpy", "record_key", "record_of", "section", "to_numpy"]

_Record = TypeVar("_Record")


class SupportsNumpy(Protocol):
    """An array that can give its values as NumPy (Flower's ``Array``)."""

    def numpy(self) -> np.ndarray: ...


def record_key(records: Mapping[str, _Record], preferred: str) -> str | None:
    """The key of the record to read in one section of a ``RecordDict``.

    Parameters
    ----------
    records : Mapping[str, record]
        One section, e.g. ``section(content, ArrayRecord)``.
    preferred : str
        The conventional key (``"arrays"``, ``"config"``, ``"metrics"``).

    Returns
    -------
    str or None
        ``preferred`` if the section has it; else the section's only key; else ``None`` (empty,
        or several records none of which is the preferred one: ambiguous).
    """
    if preferred in records:
        return preferred
    return next(iter(records)) if len(records) == 1 else None


def section(content: Mapping[str, object], kind: type[_Record]) -> dict[str, _Record]:
    """The records of type ``kind`` in a ``RecordDict``, keys in order, as a plain dict.

    What ``content.config_records`` (``array_records``, ``metric_records``) holds, for a tenth of
    its cost: Flower builds and validates a new ``TypedDict`` on every access (~7 us), which the
    ClientApp and the server pay several times per message.
    """
    return {key: record for key, record in content.items() if isinstance(record, kind)}


def record_of(content: Mapping[str, object], key: str, kind: type[_Record]) -> _Record | None:
    """The record named ``key`` in a ``RecordDict`` if it is a ``kind``, else None
    (``content.<kind>_records.get(key)`` without building the section; keys are unique across kinds)."""
    record = content.get(key)
    return record if isinstance(record, kind) else None


def to_numpy(record: Mapping[str, SupportsNumpy]) -> dict[str, np.ndarray]:
    """An ``ArrayRecord``'s arrays as NumPy arrays, keys in the record's order."""
    return {key: array.numpy() for key, array in record.items()}
