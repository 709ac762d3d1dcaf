"""The ``flsec`` command line.

Sub-commands: ``run`` (train a federation), ``list`` (what is registered),
``suite`` (attack-vs-defense suites), ``reproduce`` (paper reproductions with error bars
and computed verdicts), ``bench ...`` (cost benchmarks, added by the packages that own them).
"""

from __future__ import annotations

import argparse
import logging
import sys

from rich.console import Console
from rich.logging import RichHandler

from benchmarks import dp_study, list_cmd, recon, run_job, twoserver_serve
from benchmarks.reproduce import run as reproduce_cli
from benchmarks.suite import cli as suite_cli
from fl_core.errors import FlsecError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flsec",
        description="flsec: secure and robust aggregation for federated learning.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log every round")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    run_job.register(sub)
    list_cmd.register(sub)
    suite_cli.register(sub)
    reproduce_cli.register(sub)
    recon.register(sub)
    dp_study.register(sub)
    twoserver_serve.register(sub)
    bench = sub.add_parser("bench", help="cost benchmarks (time, bytes, ratios against a floor)")
    bench_sub = bench.add_subparsers(dest="bench", metavar="BENCH")
    for module in _bench_modules():
        module.register(bench_sub)
    bench.set_defaults(func=lambda args: (bench.print_help(), 2)[1])
    return parser


def _bench_modules() -> list:
    """Benchmark modules that exist in this installation."""
    import importlib

    found = []
    for name in (
        "benchmarks.bench_robust",
        "benchmarks.bench_secagg",
        "benchmarks.bench_crypto",
        "benchmarks.bench_fm",
        "benchmarks.bench_round",
        "benchmarks.bench_twoserver",
        "benchmarks.bench_flower",
        "benchmarks.bench_ray",
    ):
        try:
            found.append(importlib.import_module(name))
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
    return found


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=Console(stderr=True), show_path=False)],
        force=True,  # an imported library may have put a handler on the root logger already
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except FlsecError as exc:
        Console(stderr=True).print(f"[bold red]error:[/] {exc}")
        return 2
    except KeyboardInterrupt:
        Console(stderr=True).print("[yellow]interrupted[/]")
        return 130


if __name__ == "__main__":
    sys.exit(main())
