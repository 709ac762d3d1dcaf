"""`flsec list`: every registered name with a one-line description."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from fl_core import DATASETS, MODELS, PARTITIONS, SERVER_OPTIMIZERS


def registries() -> dict[str, dict[str, str]]:
    """Family -> {name: description}, for every family installed."""
    out = {
        "datasets": dict(DATASETS),
        "models": dict(MODELS),
        "partitions": dict(PARTITIONS),
        "server optimizers": dict(SERVER_OPTIMIZERS),
    }
    import defenses.robust  # noqa: F401  (registers the rules)
    from attacks import attack_descriptions
    from defenses.robust.registry import entries

    out["defenses: robust rules"] = {e.name: e.description for e in entries() if e.kind == "rule"}
    out["defenses: pre-aggregators (compose with any rule)"] = {
        e.name: e.description for e in entries() if e.kind == "pre"
    }
    out["attacks"] = attack_descriptions()
    from attacks.reconstruction import reconstruction_attack_descriptions

    out["attacks: data reconstruction"] = reconstruction_attack_descriptions()
    from benchmarks.fm.spec import DESCRIPTIONS

    out['FM suite (kind = "fm"): attacks'] = DESCRIPTIONS["attacks"]
    out['FM suite (kind = "fm"): defenses'] = DESCRIPTIONS["defenses"]
    return out


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("list", help="show every registered dataset, model, rule, attack, ...")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    console = Console()
    for family, entries in registries().items():
        table = Table(title=family, title_justify="left", show_header=False)
        table.add_column("name", style="bold")
        table.add_column("description")
        for name, desc in entries.items():
            table.add_row(name, desc)
        console.print(table)
    return 0
