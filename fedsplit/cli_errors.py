"""How every ``fedsplit`` sub-command reports a refused input or a failed run: one line on stderr.

The line is ``fedsplit <command>: error: <message>``, the form argparse itself gives a
sub-command's bad argument (``fedsplit simulate: error: argument --set: ...``), so a refused
configuration, a broken data file and a misspelt flag read alike and a script can match them all
with one pattern. ``<command>`` names the sub-command as typed (``simulate``, ``deploy run``,
``catalog build``).
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["command_of", "print_error"]


def print_error(command: str, message: str) -> None:
    """Print ``fedsplit <command>: error: <message>`` on stderr."""
    print(f"fedsplit {command}: error: {message}", file=sys.stderr)


def command_of(args: argparse.Namespace) -> str:
    """The sub-command ``args`` were parsed for, with its step where it has steps (``deploy run``)."""
    command = str(getattr(args, "command", "") or "")
    step = getattr(args, f"{command.replace('-', '_')}_command", None)
    return f"{command} {step}" if step else command
