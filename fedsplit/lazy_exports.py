"""Package names imported on first use (PEP 562), so that a light submodule stays light.

Python runs a package's ``__init__`` before any of its submodules. A package that re-exports its
API eagerly (``from .heavy import name``) makes every submodule cost what the whole package costs:
``fedsplit --help`` imported torch, matplotlib and SciPy (about 3.9 s on this project's 2-core
machine) only to build the argument parsers of ``fedsplit.transfer.cli`` and
``fedsplit.report.catalog_cli``. A package whose ``__init__`` uses :func:`lazy_exports` imports a
name's module when the name is first read (``from fedsplit.transfer import distill`` works as
before), and never otherwise.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping

__all__ = ["lazy_exports"]


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """The module-level ``__getattr__`` and ``__dir__`` of ``package``.

    Parameters
    ----------
    package : str
        The package's ``__name__``.
    exports : Mapping[str, str]
        Each public name, and the absolute name of the module that defines it.

    Returns
    -------
    tuple
        ``(__getattr__, __dir__)``: the first imports a name's module on first access and keeps
        the value as a plain attribute of the package (later reads do not come back here); an
        unknown name raises :class:`AttributeError` as for any module.
    """

    def __getattr__(name: str) -> object:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(exports))

    return __getattr__, __dir__
