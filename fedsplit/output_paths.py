"""Checks that a command can write where it was told to, made before it does any work.

A run, a catalog build or a pretraining job that ends in ``NotADirectoryError`` after minutes of
work loses that work. The ``fedsplit`` sub-commands check their output locations first
(:func:`unwritable_reason`, or :func:`output_file` / :func:`output_folder` as ``argparse`` types);
what only shows up when writing (a read-only file system, an immutable folder) is reported in one
line by :func:`fedsplit.cli.main`.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def unwritable_reason(path: str | os.PathLike, *, folder: bool) -> str | None:
    """Why ``path`` (a folder when ``folder``, else a file) cannot be created or written, or None.

    The path itself may not exist yet: its nearest existing ancestor must be a folder this
    process may write in, and no part of the path may be an existing file.
    """
    target = Path(path)
    if target.exists():
        if folder and not target.is_dir():
            return f"{str(target)!r} is a file, not a folder"
        if not folder and target.is_dir():
            return f"{str(target)!r} is a folder, not a file"
        writable = target if folder else target.parent
        if not os.access(writable, os.W_OK | os.X_OK):
            return f"no permission to write in {str(writable)!r}"
        return None
    ancestor = target.parent
    while not ancestor.exists():
        if ancestor == ancestor.parent:
            break
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return f"{str(ancestor)!r} is a file, not a folder"
    if not os.access(ancestor, os.W_OK | os.X_OK):
        return f"no permission to write in {str(ancestor)!r}"
    return None


def _argparse_type(folder: bool):  # noqa: ANN202 - an argparse type
    def check(text: str) -> str:
        reason = unwritable_reason(text, folder=folder)
        if reason is not None:
            raise argparse.ArgumentTypeError(f"cannot write {text!r}: {reason}")
        return text

    check.__name__ = "output folder" if folder else "output file"
    return check


#: ``argparse`` type of an output file option: the path, checked by :func:`unwritable_reason`.
output_file = _argparse_type(folder=False)
#: ``argparse`` type of an output folder option.
output_folder = _argparse_type(folder=True)
