"""Reproductions of foundation-model backdoor results: ``flsec reproduce NAME`` for ``kind = "fm"`` files.

An FM reproduction is an FM suite (:mod:`benchmarks.fm.spec`: MiniLM + a linear head,
federated fine-tuning on BBC News) with a ``[paper]`` table and a ``[scale.paper]`` table,
e.g. ``benchmarks/suites/repro-fm-backdoor.toml``. :func:`run_fm_reproduction` runs its
cells with the FM suite runner (:func:`benchmarks.fm.runner.run_fm_suite`: resumable, each
finished cell written at once), flattens each cell to ``attack, defense, seed, accuracy,
asr`` (final clean accuracy and final attack success rate), evaluates the claims with the
same engine as image reproductions (:func:`benchmarks.reproduce.verdict.evaluate`: per-seed
metrics, 95% t-intervals, the verdict) and writes ``OUT/verdict.json`` (the same record as
:func:`benchmarks.reproduce.run.run_reproduction`), ``OUT/reproduction.md`` and the FM
suite's own ``OUT/report.md``.

The results directory belongs to the suite's grid and setting, not to its ``[paper]``
table: editing the paper's text or claims re-evaluates the finished cells instead of
running them again (the store's owner text is the file without ``[paper]`` and ``[scale]``).

Examples
--------
>>> spec, paper = load_fm_reproduction("fm-backdoor")
>>> spec.paper is paper and len(spec.setting.seeds) >= 3 and "paper" in spec.scales
True
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console

from benchmarks.fm.report import render_fm_report
from benchmarks.fm.runner import run_fm_suite
from benchmarks.fm.spec import FMSetting, FMSuiteSpec, fm_variant, is_fm_suite, parse_fm_suite
from benchmarks.reproduce.paper import Paper
from benchmarks.reproduce.verdict import evaluate
from benchmarks.suite.schema import SuiteError
from benchmarks.suite.spec import BUILTIN_DIR
from benchmarks.suite.store import ResultStore

__all__ = ["load_fm_reproduction", "run_fm_reproduction"]

log = logging.getLogger(__name__)
PREFIX = "repro-"
_HEADER = re.compile(r"^\s*\[\[?\s*([A-Za-z0-9_-]+)[^\]]*\]\]?\s*(#.*)?$")


def load_fm_reproduction(name: str) -> tuple[FMSuiteSpec, Paper]:
    """The FM reproduction ``name``: a built-in NAME (``benchmarks/suites/repro-NAME.toml``) or a file path.

    Parameters
    ----------
    name : str
        A built-in reproduction's NAME, or the path of an FM suite file with a ``[paper]`` table.

    Returns
    -------
    tuple of (FMSuiteSpec, Paper)
        The validated suite (its ``paper`` set) and the paper's claims.

    Raises
    ------
    SuiteError
        If there is no such file, it is not an FM suite (``kind = "fm"``), it has no ``[paper]``
        table, or any key is invalid (the error names it).

    Examples
    --------
    >>> load_fm_reproduction("fm-backdoor")[0].name
    'repro-fm-backdoor'
    """
    path = Path(name)
    if not path.is_file():
        path = BUILTIN_DIR / f"{PREFIX}{name}.toml"
        if not path.is_file():
            builtin = sorted(p.stem[len(PREFIX):] for p in BUILTIN_DIR.glob(f"{PREFIX}*.toml"))
            raise SuiteError(name, f"no such reproduction; built-in: {', '.join(builtin)}")
    text = path.read_text()
    if not is_fm_suite(text):
        raise SuiteError("kind", f"{path} is not an FM suite (kind = 'fm'): run it with benchmarks.reproduce.run")
    spec = parse_fm_suite(text, source=str(path))
    if spec.paper is None:
        raise SuiteError(str(path), "is an FM suite without a [paper] table, not a reproduction")
    return spec, spec.paper


def _run_source(spec: FMSuiteSpec) -> str:
    """The suite file without its ``[paper]`` and ``[scale.*]`` tables: what the cells depend on.

    Falls back to the whole file if the stripped text does not parse to the same setting and grid
    (e.g. a multi-line string that looks like a table header).
    """
    keep, drop = [], False
    for line in spec.source.splitlines(keepends=True):
        m = _HEADER.match(line)
        if m:
            drop = m.group(1) in ("paper", "scale")
        if not drop:
            keep.append(line)
    text = "".join(keep)
    try:
        plain = parse_fm_suite(text)
    except SuiteError:
        return spec.source
    same = (plain.setting, plain.attacks, plain.defenses, plain.name) == (
        spec.setting, spec.attacks, spec.defenses, spec.name)
    return text if same and plain.paper is None and not plain.scales else spec.source


def _describe(s: FMSetting) -> str:
    """The setting in one line (the record's ``setting``)."""
    tuning = f"LoRA rank {s.lora_rank} on" if s.mode == "lora" else "full fine-tuning of"
    return (f"BBC News, all-MiniLM-L6-v2 + linear head ({tuning} the top {s.trainable_layers} layers, "
            f"{s.max_length} tokens), {s.clients} clients (Dirichlet {s.alpha}), {s.rounds} rounds, "
            f"{s.local_epochs} local epoch(s), trigger {s.trigger!r} -> class {s.target}")


def _values_section(values: dict[str, Any]) -> str:
    """The paper's own printed numbers, as a table (empty when the file gives none)."""
    if not values:
        return ""
    rows = [f"| {k} | {v} |" for k, v in values.items()]
    return "\n".join(["## The paper's own numbers (as printed)", "", "| figure | value |", "|---|---|", *rows, ""])


def run_fm_reproduction(
    name: str,
    *,
    scale: str = "small",
    seeds: list[int] | None = None,
    out: Path | None = None,
    console: Console | None = None,
    progress: bool = True,
    command: str | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """Run (or resume) one FM reproduction, evaluate its claims and write its verdict.

    Parameters
    ----------
    name : str
        A built-in FM reproduction's NAME or the path of its file (see :func:`load_fm_reproduction`).
    scale : str
        ``small`` (the ``[setting]``) or a ``[scale.NAME]`` table of the file (``paper``).
    seeds : list of int or None
        Override the file's seeds (distinct, non-negative).
    out : Path or None
        Results directory; default ``runs/reproduce/<suite name>-<scale>``
        (``runs/reproduce/repro-NAME-SCALE`` for a built-in).
    console : rich Console or None
        Where progress goes (stderr by default).
    progress : bool
        Print each round and cell as it finishes.
    command : str or None
        The command line to record; default ``flsec reproduce NAME --scale SCALE``.
    threads : int or None
        Torch and BLAS threads: applied (:func:`benchmarks.threads.apply_threads`) and recorded.

    Returns
    -------
    dict
        The ``verdict.json`` record: paper, setting, seeds, cells, command, commit, threads, wall
        and cell seconds, load averages, the verdict, the claims' rows and ``cells_run_now``.

    Raises
    ------
    SuiteError
        Before any work, if the file, the scale, its device or the seeds are invalid.
    """
    from benchmarks.reproduce.record import _cell_seconds, _commit, _flat, render_reproduction, write_record
    from benchmarks.threads import apply_threads

    spec, paper = load_fm_reproduction(name)
    sub = fm_variant(replace(spec, source=_run_source(spec)), scale=scale, seeds=seeds)  # checked before any work
    out = Path(out) if out is not None else Path("runs") / "reproduce" / f"{spec.name}-{scale}"
    console = console or Console(stderr=True)
    ResultStore(out).check_owner(sub.source)  # another suite's directory: refused before any work
    apply_threads(threads)
    commit = _commit()  # the code the run starts with
    store = ResultStore(out)
    ran = sum(not store.done(c.cell_id) for c in sub.cells())
    console.print(f"[bold]{spec.name}[/] ({scale}): {len(sub.cells())} cells, {ran} to run, in {out}")
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    results = run_fm_suite(sub, out=out, progress=progress, console=console)
    seconds = time.perf_counter() - t0
    load1 = os.getloadavg()
    render_fm_report(out)
    cells = _flat(results, {})
    verdict = evaluate(paper, cells, attacks=[a.label for a in spec.attacks])
    record = write_record(
        out, ran=ran, verdict=verdict, paper=paper, name=spec.name, kind="fm", scale=scale,
        setting=_describe(sub.setting), seeds=list(sub.setting.seeds), cells=len(cells),
        command=command or f"flsec reproduce {name} --scale {scale}", commit=commit, threads=threads,
        seconds=seconds, cell_seconds=_cell_seconds(out), loads=(load0, load1))
    (out / "reproduction.md").write_text(render_reproduction(record, verdict) + "\n" + _values_section(paper.values)
                                         + "\nPer-cell tables, curves and details: [report.md](report.md).\n")
    log.info("%s: %s (%s)", spec.name, verdict.verdict, verdict.gap)
    console.print(f"[bold]{spec.name}[/]: {verdict.verdict} ({verdict.gap}); report {out / 'reproduction.md'}")
    return record
