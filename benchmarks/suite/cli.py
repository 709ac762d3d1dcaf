"""`flsec suite run FILE|NAME` and `flsec suite report DIR`."""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

from rich.console import Console

from benchmarks.fm.report import render_fm_report
from benchmarks.fm.runner import run_fm_suite
from benchmarks.fm.spec import is_fm_suite, parse_fm_suite
from benchmarks.suite.report import render_report
from benchmarks.suite.runner import run_suite
from benchmarks.suite.spec import BUILTIN_DIR, SuiteError, load_suite
from benchmarks.threads import apply_threads


def register(subparsers: argparse._SubParsersAction) -> None:
    builtin = ", ".join(sorted(p.stem for p in BUILTIN_DIR.glob("*.toml")))
    p = subparsers.add_parser("suite", help="attack-vs-defense evaluation suites (run, report; run --ray: on Ray)")
    sub = p.add_subparsers(dest="suite_command", metavar="SUITE_COMMAND")
    run = sub.add_parser(
        "run",
        help="run every cell of a suite (resumes: finished cells are kept)",
        description=f"Run a suite file or a built-in suite ({builtin}). Each finished cell is written to "
        "OUT/cells/ at once; after a crash or Ctrl-C the same command resumes. With --ray the cells run as Ray "
        "tasks, on this machine or a cluster; same results directory, resume and results.",
    )
    run.add_argument("suite", help=f"a suite TOML file or a built-in name ({builtin})")
    run.add_argument("--out", type=Path, default=None, help="results directory (default: runs/<suite name>)")
    run.add_argument("--report", action="store_true", help="render the report when done")
    run.add_argument(
        "--threads", type=int, default=None, metavar="N",
        help="torch threads per cell (in this process; with --ray in each cell's task, default --cpus-per-cell); "
        "the same N gives the same results with and without --ray",
    )
    ray = run.add_argument_group("on Ray (the ray extra): image suites")
    ray.add_argument(
        "--ray", nargs="?", const="", default=None, metavar="ADDRESS",
        help="run the cells as Ray tasks: on a new local Ray without ADDRESS, else on the cluster at ADDRESS "
        "(HOST:PORT printed by `ray start --head`, ray://HOST:PORT, or auto); put it after the suite name",
    )
    ray.add_argument("--cpus-per-cell", type=int, default=1, metavar="N", help="CPUs a cell asks Ray for (default 1)")
    ray.add_argument("--gpus-per-cell", type=float, default=None, metavar="G",
                     help="GPU share of a cell when the suite's device is CUDA (default 0.25)")
    ray.add_argument("--max-retries", type=int, default=2, metavar="N",
                     help="re-runs of a cell whose worker died before the run stops (default 2)")
    ray.add_argument("--timeout", type=float, default=None, metavar="S",
                     help="stop the run (finished cells kept) if it has not ended after S seconds (default: no bound)")
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
        if spec.sweep:  # the suite runner would run only the base setting
            raise SuiteError("sweep", f"{spec.name!r} is a reproduction sweep; run it with flsec reproduce")
        run, render, data = run_suite, render_report, spec.setting.dataset
    where = ""
    if args.ray is not None:
        if run is run_fm_suite:
            raise SuiteError("--ray", f"runs image suites; the FM suite {spec.name!r} runs without it")
        from benchmarks.suite.ray_runner import run_suite_ray

        run = functools.partial(run_suite_ray, address=args.ray or None, cpus_per_cell=args.cpus_per_cell,
                                gpus_per_cell=args.gpus_per_cell, threads=args.threads, max_retries=args.max_retries,
                                timeout_s=args.timeout)
        where = f" on Ray ({args.ray or 'a new local Ray'}, {args.cpus_per_cell} CPU per cell)"
    else:
        defaults = {"cpus_per_cell": 1, "gpus_per_cell": None, "max_retries": 2, "timeout": None}
        changed = [k for k, v in defaults.items() if getattr(args, k) != v]
        if changed:
            raise SuiteError("--" + changed[0].replace("_", "-"), "applies to --ray runs only")
        apply_threads(args.threads)
    out = args.out or Path("runs") / spec.name
    n = len(spec.cells())
    console.print(
        f"[bold]suite {spec.name}[/]: {len(spec.attacks)} attacks x {len(spec.defenses)} defenses x "
        f"{len(spec.setting.seeds)} seed(s) = {n} cells on {data}{where}; results in {out}"
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
