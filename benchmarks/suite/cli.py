"""`flsec suite run FILE|NAME` and `flsec suite report DIR`."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from benchmarks.fm.report import render_fm_report
from benchmarks.fm.runner import run_fm_suite
from benchmarks.fm.spec import is_fm_suite, parse_fm_suite
from benchmarks.suite.report import render_report
from benchmarks.suite.runner import run_suite
from benchmarks.suite.spec import BUILTIN_DIR, load_suite


def register(subparsers: argparse._SubParsersAction) -> None:
    builtin = ", ".join(sorted(p.stem for p in BUILTIN_DIR.glob("*.toml")))
    p = subparsers.add_parser("suite", help="attack-vs-defense evaluation suites (run, report)")
    sub = p.add_subparsers(dest="suite_command", metavar="SUITE_COMMAND")
    run = sub.add_parser(
        "run",
        help="run every cell of a suite (resumes: finished cells are kept)",
        description=f"Run a suite file or a built-in suite ({builtin}). Each finished cell is written to "
        "OUT/cells/ at once; after a crash or Ctrl-C the same command resumes.",
    )
    run.add_argument("suite", help=f"a suite TOML file or a built-in name ({builtin})")
    run.add_argument("--out", type=Path, default=None, help="results directory (default: runs/<suite name>)")
    run.add_argument("--report", action="store_true", help="render the report when done")
    run.set_defaults(func=_run)
    rep = sub.add_parser("report", help="render report.md, heatmaps and accuracy curves of a results directory")
    rep.add_argument("out", type=Path, help="results directory of `flsec suite run`")
    rep.set_defaults(func=_report)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _suite_file(name: str | Path) -> Path:
    p = Path(name)
    return p if p.is_file() else BUILTIN_DIR / f"{name}.toml"


def _run(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    file = _suite_file(args.suite)
    if file.is_file() and is_fm_suite(file.read_text()):  # fully validated before any work
        spec = parse_fm_suite(file.read_text(), source=str(file))
        run, render, data = run_fm_suite, render_fm_report, "BBC News with MiniLM"
    else:
        spec = load_suite(args.suite)
        run, render, data = run_suite, render_report, spec.setting.dataset
    out = args.out or Path("runs") / spec.name
    n = len(spec.cells())
    console.print(
        f"[bold]suite {spec.name}[/]: {len(spec.attacks)} attacks x {len(spec.defenses)} defenses x "
        f"{len(spec.setting.seeds)} seed(s) = {n} cells on {data}; results in {out}"
    )
    try:
        results = run(spec, out=out, console=console)
    except KeyboardInterrupt:
        console.print(f"[yellow]interrupted[/]: finished cells are in {out}/cells; run the same command to resume")
        return 130
    console.print(f"{len(results)}/{n} cells finished in {out}")
    if args.report:
        console.print(f"report: {render(out)}")
    return 0


def _report(args: argparse.Namespace) -> int:
    marker = Path(args.out) / "suite.toml"
    fm = marker.is_file() and is_fm_suite(marker.read_text())
    path = render_fm_report(args.out) if fm else render_report(args.out)
    Console().print(f"report written to {path} (with its PNG figures beside it)")
    print(path.read_text())
    return 0
