"""Package attributes that load on first use (PEP 562), so importing one small module stays cheap.

``import secure_agg.crypto`` runs ``secure_agg/__init__.py`` and, through
``secure_agg.errors``, ``fl_core/__init__.py``; if those imported every submodule, a
process that needs only the protocol's state machine (a Flower ``ClientApp`` answering
one SecAgg+ message, started afresh for every message) would load PyTorch, Opacus and
scikit-learn each time. With :func:`lazy_exports` a package lists its public names and
the module each lives in; a name is imported when it is first read (``fl_core.Federation``,
``from fl_core import Federation``), and is then an ordinary module attribute.

Examples
--------
>>> get, names = lazy_exports("json", {"dumps": "json"})
>>> get("dumps") is __import__("json").dumps, "dumps" in names()
(True, True)
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``, whose public name ``k`` lives in module ``exports[k]``.

    Raises
    ------
    AttributeError
        From ``__getattr__``, for a name that is not exported (as for any module).
    """
    table = dict(exports)

    def __getattr__(name: str) -> Any:
        module = table.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)  # later reads are plain attribute lookups
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(table))

    return __getattr__, __dir__
