"""``flsec reproduce NAME|all``: run paper reproductions, compute their verdicts, write their reports.

A reproduction is the built-in file ``benchmarks/suites/repro-NAME.toml``; its top-level
``kind`` says which runner it takes (:data:`KINDS`):

* ``"image"`` (no ``kind`` key): a suite with a ``[paper]`` table (see
  :mod:`benchmarks.reproduce.paper`), optionally a ``[sweep]`` of setting values (the grid runs
  once per combination) and ``[scale.paper]`` overrides (the paper's setting, for a GPU or a
  cluster). Each variant runs as an ordinary suite in its own results directory (resumable, with
  its own report);
* ``"recon"``: a reconstruction-attack reproduction (DLG, iDLG, TAG), run by
  :mod:`benchmarks.reproduce.recon`;
* ``"fm"``: a foundation-model suite with a ``[paper]`` table, run by
  ``benchmarks.reproduce.fm`` (imported only when such a file is run).

Every kind evaluates its claims on its cells with the same engine
(:func:`benchmarks.reproduce.verdict.evaluate`) and writes ``OUT/reproduction.md`` and
``OUT/verdict.json`` (the same record fields), with the command, commit, seeds, wall time and
load average. :func:`write_docs` turns the ``verdict.json`` files of runs into ``docs/reproductions.md``.

Examples
--------
>>> "ndss21" in reproduction_names() and "byzfl-heatmap" in reproduction_names()
True
>>> reproduction_kind("ndss21"), reproduction_kind("dlg")
('image', 'recon')
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import re
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import tomllib
from rich.console import Console

from benchmarks.reproduce.record import _cell_seconds, _commit, _flat, _values, render_reproduction, write_record
from benchmarks.reproduce.verdict import METRIC_FORMAT, evaluate
from benchmarks.suite.build import preflight_model
from benchmarks.suite.report import render_report
from benchmarks.suite.runner import run_suite
from benchmarks.suite.schema import SuiteError, SuiteSpec
from benchmarks.suite.spec import BUILTIN_DIR, load_suite, variants
from benchmarks.suite.store import ResultStore

__all__ = [
    "KINDS",
    "check_reproduction",
    "load_reproduction",
    "register",
    "reproduction_kind",
    "reproduction_names",
    "run_reproduction",
    "write_docs",
]

log = logging.getLogger(__name__)
PREFIX = "repro-"
#: The kinds of reproduction, by the file's top-level ``kind`` (none: ``"image"``).
KINDS = ("image", "recon", "fm")


def reproduction_names() -> list[str]:
    """The built-in reproductions (``benchmarks/suites/repro-NAME.toml``) of every kind, by NAME."""
    return sorted(p.stem[len(PREFIX):] for p in BUILTIN_DIR.glob(f"{PREFIX}*.toml"))


def _path(name: str | Path) -> Path:
    path = Path(name)
    if not path.is_file():
        path = BUILTIN_DIR / f"{PREFIX}{name}.toml"
        if not path.is_file():
            raise SuiteError(str(name), f"no such reproduction; built-in: {', '.join(reproduction_names())}")
    return path


def reproduction_kind(name: str | Path) -> str:
    """The kind (one of :data:`KINDS`) of the reproduction ``name`` (a built-in NAME or a file).

    Raises
    ------
    SuiteError
        If there is no such reproduction, the file is not TOML, or its ``kind`` is unknown.
    """
    path = _path(name)
    try:
        kind = tomllib.loads(path.read_text()).get("kind", "image")
    except tomllib.TOMLDecodeError as exc:
        raise SuiteError(str(path), f"malformed TOML: {exc}") from None
    if kind not in KINDS:
        raise SuiteError("kind", f"unknown kind of reproduction {kind!r} in {path}; valid: {', '.join(KINDS)}")
    return kind


def _fm(path: Path) -> ModuleType:
    """``benchmarks.reproduce.fm``, imported when an FM reproduction is used (another module's runner)."""
    try:
        import benchmarks.reproduce.fm as fm
    except ModuleNotFoundError as exc:
        if exc.name != "benchmarks.reproduce.fm":
            raise
        raise SuiteError(str(path), "is an FM reproduction (kind = 'fm'), but this checkout has no "
                                    "benchmarks/reproduce/fm.py to run it") from None
    return fm


def load_reproduction(name: str | Path) -> Any:
    """The reproduction ``name`` (a built-in NAME or a file with a ``[paper]`` table), parsed by its kind.

    Returns a :class:`~benchmarks.suite.schema.SuiteSpec` (image), a
    :class:`~benchmarks.reproduce.recon.ReconSpec` (recon) or the FM suite spec (fm); each has
    ``name``, ``paper``, ``setting.seeds`` and ``scales``.

    Raises
    ------
    SuiteError
        If there is no such reproduction, or the file has no ``[paper]`` table.
    """
    path = _path(name)
    kind = reproduction_kind(path)
    if kind == "recon":
        from benchmarks.reproduce.recon import load_recon_reproduction

        return load_recon_reproduction(path)[0]
    if kind == "fm":
        return _fm(path).load_fm_reproduction(str(path))[0]
    spec = load_suite(path)
    if spec.paper is None:
        raise SuiteError(str(path), "is a suite without a [paper] table, not a reproduction")
    return spec


def _variant_dir(coords: dict[str, Any]) -> str:
    if not coords:
        return "grid"
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", "_".join(f"{k}={v}" for k, v in coords.items()))


def check_reproduction(name: str | Path, *, scale: str = "small", seeds: list[int] | None = None) -> None:
    """Check the file, its scale and its seeds before any work (any kind).

    Raises
    ------
    SuiteError
        Naming the offending key (or ``--scale`` / ``--seeds``).
    """
    path = _path(name)
    kind = reproduction_kind(path)
    spec = load_reproduction(path)
    if kind == "recon":
        from benchmarks.reproduce.recon import recon_variant

        recon_variant(spec, scale=scale, seeds=seeds)
    elif kind == "fm":
        from benchmarks.fm.spec import fm_variant

        fm_variant(spec, scale=scale, seeds=seeds)
    else:
        variants(spec, scale=scale, seeds=seeds)


def run_reproduction(
    name: str | Path,
    *,
    scale: str = "small",
    seeds: list[int] | None = None,
    out: str | Path | None = None,
    console: Console | None = None,
    progress: bool = True,
    command: str | None = None,
    threads: int | None = None,
    suite_runner: Callable[..., list[dict[str, Any]]] = run_suite,
) -> dict[str, Any]:
    """Run (or resume) one reproduction of any kind and write its verdict; returns the ``verdict.json`` record.

    ``suite_runner`` runs an image reproduction's suites (``run_suite``'s signature): e.g.
    :func:`benchmarks.suite.ray_runner.run_suite_ray` with its options bound, to run the cells on Ray.
    """
    path = _path(name)
    kind = reproduction_kind(path)
    if kind in ("recon", "fm") and suite_runner is not run_suite:
        raise SuiteError("--ray", f"runs image reproductions; {path.stem!r} is a {kind} reproduction: run it without")
    if kind in ("recon", "fm"):
        if kind == "recon":
            from benchmarks.reproduce.recon import run_recon_reproduction as runner
        else:
            runner = _fm(path).run_fm_reproduction
        if command is None:
            command = f"flsec reproduce {name} --scale {scale}"
        return runner(str(path), scale=scale, seeds=seeds, out=None if out is None else Path(out), console=console,
                      progress=progress, command=command, threads=threads)
    spec = load_reproduction(path)
    subs = variants(spec, scale=scale, seeds=seeds)  # checks scale and seeds before any work
    out = Path(out) if out is not None else Path("runs") / "reproduce" / f"{spec.name}-{scale}"
    console = console or Console(stderr=True)
    for _, sub in subs:  # the model must suit the data (lenet5 needs >= 12x12 images): before any work
        preflight_model(sub.setting)
    commit = _commit()  # the code the run starts with
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    cells: list[dict[str, Any]] = []
    ran = 0
    for coords, sub in subs:
        where = out / _variant_dir(coords) if spec.sweep else out
        store = ResultStore(where)
        ran += sum(not store.done(c.cell_id) for c in sub.cells())
        console.print(f"[bold]{spec.name}[/] {coords or ''}: {len(sub.cells())} cells in {where}")
        results = suite_runner(sub, out=where, progress=progress, console=console)
        render_report(where)
        cells += _flat(results, coords)
    seconds = time.perf_counter() - t0
    load1 = os.getloadavg()
    assert spec.paper is not None
    verdict = evaluate(spec.paper, cells, attacks=[a.label for a in spec.attacks])
    s = subs[0][1].setting
    training = (("FedSGD full batch" if s.full_batch else f"FedSGD batch {s.batch_size}") if s.fedsgd
                else f"{s.local_epochs} local epoch(s)")
    record = write_record(
        out, ran=ran, verdict=verdict, paper=spec.paper, name=spec.name, kind="image", scale=scale,
        setting=f"{s.dataset}, {s.model}, {s.clients} clients ({s.partition}), {s.rounds} rounds, {training}, "
                f"malicious fraction {s.malicious_fraction}"
                + (f"; sweep {', '.join(f'{k} in {list(v)}' for k, v in spec.sweep)}" if spec.sweep else ""),
        seeds=list(s.seeds), cells=len(cells), command=command or f"flsec reproduce {name} --scale {scale}",
        commit=commit, threads=threads, seconds=seconds, cell_seconds=_cell_seconds(out), loads=(load0, load1))
    figures = sweep_heatmaps(spec, cells, out)
    (out / "reproduction.md").write_text(render_reproduction(record, verdict)
                                         + "".join(f"![{p.stem}]({p.name})\n" for p in figures))
    console.print(f"[bold]{spec.name}[/]: {verdict.verdict} ({verdict.gap}); report {out / 'reproduction.md'}")
    return record


def sweep_heatmaps(spec: SuiteSpec, cells: list[dict[str, Any]], out: Path) -> list[Path]:
    """For a two-key sweep: one heatmap per defense of the worst-case accuracy over the attacks
    (rows: the first sweep key, columns: the second), each cell annotated with its 95% t-interval."""
    if len(spec.sweep) != 2:
        return []
    from benchmarks.reproduce.verdict import metric_values
    from benchmarks.suite.report import _heatmap

    (k1, v1), (k2, v2) = spec.sweep
    attacks = [a.label for a in spec.attacks]
    paths = []
    for d in spec.defenses:
        vals = {(str(a), str(b)): list(metric_values("worst_accuracy", {"defense": d.label, k1: a, k2: b}, cells,
                                                     attacks=attacks).values())
                for a in v1 for b in v2}
        path = out / f"worst_accuracy_{d.label}.png"
        _heatmap(path, f"{d.label}: worst-case accuracy over attacks\nrows {k1}, columns {k2}",
                 [str(a) for a in v1], [str(b) for b in v2], vals, "viridis")
        paths.append(path)
    return paths


def _iv(iv: dict[str, Any], metric: str) -> str:
    """A ``verdict.json`` interval as text, in the metric's format (PSNR in dB)."""
    spec, unit = METRIC_FORMAT.get(metric, (".3f", ""))
    half = "n/a" if iv["half"] is None else format(iv["half"], spec)
    return f"{iv['mean']:{spec}} ± {half}{unit}"


def _figure_cell(rec: dict[str, Any]) -> str:
    parts = []
    for c in rec["claims"]:
        m = c["metric"]
        if c["kind"] == "range":
            rows = "; ".join(f"{x['group']}: {_iv(x['interval'], m)}" for x in c["rows"])
            parts.append(f"{m}: {rows}")
        elif len(c["rows"]) <= 2:  # few pairs (reconstruction claims): both sides' figures
            rows = "; ".join(f"{x['higher']} {_iv(x['interval'], m)} vs {x['lower']} {_iv(x['other'], m)} "
                             f"({x['status']})" for x in c["rows"])
            parts.append(f"{m}: {rows}")
        else:
            parts.append(c["summary"])
    return "<br>".join(parts)


def write_docs(records: list[dict[str, Any]], path: str | Path) -> Path:
    """Write the reproductions table (one row per ``verdict.json`` record) to ``path``."""
    path = Path(path)
    lines = ["# Reproductions", "",
             "Generated by `flsec reproduce NAME --docs docs/reproductions.md` from measured runs only: every "
             "figure and verdict below is computed from the run's cells (mean ± half-width of the 95% Student-t "
             "interval over seeds). Verdicts: *reproduced* (every claimed ordering holds with separated intervals "
             "and every figure is within the paper's range), *ordering only* (the orderings hold by their means, "
             "the magnitudes or the separation differ), *not reproduced* (a claimed ordering fails).", "",
             "| reproduction | paper figure | flsec figure (mean ± 95% t-interval) | seeds | command | commit | time "
             "(load) | verdict | explanation |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(records, key=lambda r: (r["name"], r["scale"])):
        p = r["paper"]
        lines.append(
            f"| {r['name']} ({r['scale']}) | {p['source']}, {p['figure']}: {p['summary']}"
            + (f" Printed: {_values(p['values'])}." if p.get("values") else "") + f" | {r['setting']}.<br>"
            f"{_figure_cell(r)} | {r['seeds']} | `{r['command']}` | {r['commit']} | {r['seconds'] / 60:.1f} min "
            f"(load {r['loadavg_start'][0]:.2f}-{r['loadavg_end'][0]:.2f}, threads {r['threads']}) | "
            f"**{r['verdict']}** | {r['gap']}"
            + (f". Setting differences: {p['differences']}" if p.get("differences") else "") + " |")
    lines += ["", "## Running them", "",
              "- `flsec reproduce NAME --threads 1` runs one reproduction at its small scale (resumable); "
              "`flsec reproduce all` runs every one; `--seeds 0,1,2,3,4` overrides the seeds; "
              "`--ray [ADDRESS]` runs an image reproduction's cells as Ray tasks (on a new local Ray, or a "
              "cluster), with the same results.",
              "- `--scale paper` applies the file's `[scale.paper]` table: the paper's model and cohort sizes, "
              "on CUDA (a GPU machine); it is refused before any work where CUDA is missing. Not run yet.",
              "- Each run writes `runs/reproduce/NAME-SCALE/reproduction.md` (the *paper vs flsec* section, "
              "every ordering pair and range item with its interval) and `verdict.json`; each variant of a sweep "
              "also has its own suite report (tables with intervals, heatmaps, curves with bands).",
              "- `--docs docs/reproductions.md` rewrites this table from every `verdict.json` under "
              "`runs/reproduce`."]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def register(subparsers: argparse._SubParsersAction) -> None:
    names = ", ".join(reproduction_names())
    p = subparsers.add_parser(
        "reproduce", help="paper reproductions with error bars and computed verdicts (NAME or all)",
        description=f"Run paper reproductions ({names}, or all): each carries the paper's figure (image suites, "
        "reconstruction attacks, FM suites); the report compares paper and flsec with 95% t-intervals and a verdict "
        "computed from the run. Resumes.")
    p.add_argument("name", help=f"a reproduction ({names}), all, or a suite file with a [paper] table")
    p.add_argument("--scale", default="small", metavar="SCALE",
                   help="small (default: minutes on a laptop CPU) or paper (the paper's setting: a GPU or a cluster)")
    p.add_argument("--seeds", default=None, metavar="S,S,...", help="override the seeds (default: the file's, >= 3)")
    p.add_argument("--threads", type=int, default=None, metavar="N", help="torch threads (default: torch's)")
    p.add_argument("--out", type=Path, default=None, help="results directory (default runs/reproduce/NAME-SCALE)")
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run image reproductions' cells as Ray tasks (the ray extra): on a new local Ray without "
                   "ADDRESS, else on the cluster at ADDRESS (as flsec suite run --ray; one CPU per cell); same "
                   "results directory and results as without")
    p.add_argument("--docs", type=Path, default=None, metavar="PATH",
                   help="also (re)write this reproductions table (docs/reproductions.md) from every verdict.json "
                   "under runs/reproduce and the runs done now")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    from benchmarks.cli_args import comma_ints
    from benchmarks.threads import apply_threads

    seeds = comma_ints(args.seeds) if args.seeds else None
    names = reproduction_names() if args.name == "all" else [args.name]
    if args.name == "all" and args.out is not None:
        raise SuiteError("--out", "give no --out with all: each reproduction writes runs/reproduce/NAME-SCALE")
    for n in names:  # validate every file (of every kind), scale and seed list before any work
        check_reproduction(n, scale=args.scale, seeds=seeds)
    runner: Callable[..., list[dict[str, Any]]] = run_suite
    if args.ray is not None:
        kinds = {n: reproduction_kind(n) for n in names}
        if args.name != "all" and kinds[args.name] != "image":
            raise SuiteError("--ray", f"runs image reproductions; {args.name!r} is a {kinds[args.name]} reproduction: "
                             "run it without")
        from benchmarks.suite.ray_runner import run_suite_ray

        runner = functools.partial(run_suite_ray, address=args.ray or None, threads=args.threads)
    apply_threads(args.threads)  # this process's cells: all of them, or with --ray the recon and FM ones
    console = Console(stderr=True)
    records = []
    for n in names:
        cmd = "flsec reproduce " + " ".join(shlex.quote(a) for a in [n, *sys.argv[3:]]) if len(sys.argv) > 2 else None
        image = args.ray is None or reproduction_kind(n) == "image"  # with all --ray: the others in this process
        records.append(run_reproduction(n, scale=args.scale, seeds=seeds, out=args.out, console=console,
                                        command=cmd, threads=args.threads, suite_runner=runner if image else run_suite))
    if args.docs is not None:
        found = {(r["name"], r["scale"]): r for r in
                 (json.loads(p.read_text()) for p in sorted(Path("runs/reproduce").glob("*/verdict.json")))}
        found |= {(r["name"], r["scale"]): r for r in records}
        console.print(f"reproductions table: {write_docs(list(found.values()), args.docs)}")
    return 0
