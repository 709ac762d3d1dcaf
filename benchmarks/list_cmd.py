"""`flsec list`: every registered family, each name with its description and parameters.

Every family is a :class:`fl_core.registry.Registry`; importing the modules in
:data:`REGISTRY_MODULES` creates them all, and :func:`fl_core.registry.catalogue`
lists them. Parameters and their defaults are read from each component's
signature, so what ``flsec list`` shows is what ``make`` accepts.

Examples
--------
>>> families = load_all()
>>> "DP mechanism" in families and "secure aggregation protocol" in families
True
>>> parameter_text(families["robust aggregator"], "multi_krum")
'f=0, m=None'
"""

from __future__ import annotations

import argparse
import enum
import importlib
import inspect
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fl_core.errors import UnknownNameError
from fl_core.registry import Registry, catalogue

__all__ = ["REGISTRY_MODULES", "load_all", "main", "parameter_text", "register", "registries", "select"]

#: The modules whose import creates (and fills) every registry.
REGISTRY_MODULES = (
    "fl_core.data",
    "fl_core.models",
    "fl_core.server_opt",
    "defenses.robust",
    "defenses.dp.registry",
    "secure_agg.registry",
    "attacks.registry",
    "attacks.reconstruction.registry",
    "attacks.fm.registry",
    "defenses.fm.registry",
)


def load_all() -> dict[str, Registry]:
    """Import every registry module; return family -> registry."""
    for module in REGISTRY_MODULES:
        importlib.import_module(module)
    return catalogue()


def _default_text(value: Any) -> str:
    return value.name if isinstance(value, enum.Enum) else repr(value)


def parameter_text(registry: Registry, name: str) -> str:
    """``"p=default, q (required)"`` for the user parameters of ``name``; ``"any"`` for ``**kwargs``."""
    parts = [
        f"{p.name} (required)" if p.default is inspect.Parameter.empty else f"{p.name}={_default_text(p.default)}"
        for p in registry.parameters(name)
    ]
    if registry.takes_any(name):
        parts.append("**any")
    return ", ".join(parts)


def select(families: dict[str, Registry], wanted: str | None) -> dict[str, Registry]:
    """The families whose name or title contains ``wanted`` (case-insensitive); all for ``None``.

    Raises
    ------
    UnknownNameError
        If no family matches; the message lists the families.
    """
    if wanted is None:
        return families
    key = wanted.strip().lower().replace("_", " ").replace("-", " ")
    found = {
        fam: reg
        for fam, reg in families.items()
        if key in fam.lower().replace("-", " ") or key in reg.title.lower().replace("-", " ")
    }
    if not found:
        raise UnknownNameError("registry family", wanted, families)
    return found


def registries() -> dict[str, dict[str, str]]:
    """Title -> {name: description}, for every family installed."""
    return {reg.title: reg.descriptions() for reg in load_all().values()}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "list",
        help="show every registered family (datasets, models, partitions, server optimisers, robust rules, "
        "DP mechanisms and DP-FedAvg variants, secure-aggregation protocols, attacks, FM defenses) "
        "with descriptions and parameters",
        description="Show every registered name of every family, with its description and its parameters "
        "(defaults from the component's signature).",
    )
    p.add_argument(
        "--family",
        metavar="TEXT",
        help="only the families whose name contains TEXT (e.g. 'dp', 'robust', 'secure', 'attack')",
    )
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    console = Console()
    for registry in select(load_all(), getattr(args, "family", None)).values():
        table = Table(title=escape(f"{registry.title} [{registry.family}]"), title_justify="left")
        table.add_column("name", style="bold")
        table.add_column("description")
        table.add_column("parameters (defaults)")
        for entry in registry.entries():
            tags = f"[{', '.join(str(v) for v in entry.tags.values())}] " if entry.tags else ""
            table.add_row(
                escape(entry.name), escape(tags + entry.description), escape(parameter_text(registry, entry.name))
            )
        console.print(table)
    return 0
