"""Package re-exports imported on first use, so that ``medai --help`` loads no heavy modules.

A package's ``__init__`` names its public API in ``__all__`` (and for type checkers under
``TYPE_CHECKING``) and sets ``__getattr__ = lazy_exports(__name__, {name: module})``: the
module that defines a name is imported only when someone reads that name.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(package: str, modules: Mapping[str, str]) -> Callable[[str], Any]:
    """Return a module-level ``__getattr__`` for ``package``.

    Parameters
    ----------
    package
        The package's ``__name__``.
    modules
        Exported name -> the module that defines it, relative to ``package``
        (``"matching"``) or absolute (``"medai.dicom.read"``).
    """

    def __getattr__(name: str) -> Any:
        module = modules.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        path = module if module.startswith("medai.") else f"{package}.{module}"
        return getattr(importlib.import_module(path), name)

    return __getattr__
