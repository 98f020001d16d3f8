"""``argparse`` types of the ``fedsplit`` sub-commands: a bad value is refused by argparse in one
line naming the option (``fedsplit deploy supernode: error: argument --port: '0': expected a port,
1 to 65535``, exit 2) before the command does anything."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

__all__ = ["non_negative_int", "port_number", "positive_int", "positive_seconds", "seed_type", "whole_number"]


def whole_number(low: int, high: int | None, allowed: str) -> Callable[[str], int]:
    """An ``argparse`` type: an integer in ``low..high`` (no upper bound for None); ``allowed``
    says so in the error message."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{text!r}: expected {allowed}")
        return value

    parse.__name__ = allowed
    return parse


#: ``argparse`` type of a TCP port.
port_number = whole_number(1, 65535, "a port, 1 to 65535")
#: ``argparse`` type of a count that must be at least 1.
positive_int = whole_number(1, None, "a whole number, at least 1")
#: ``argparse`` type of a count that may be 0.
non_negative_int = whole_number(0, None, "a whole number, at least 0")


def positive_seconds(text: str) -> float:
    """``argparse`` type of a duration: a finite number of seconds above 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r}: expected a finite number of seconds above 0")
    return value


def seed_type(text: str) -> int:
    """``argparse`` type of ``--seed``: an integer NumPy can seed with (0 .. 2**32 - 1)."""
    try:
        seed = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not 0 <= seed < 2**32:
        raise argparse.ArgumentTypeError(f"{seed} is outside 0 .. 2**32 - 1")
    return seed
