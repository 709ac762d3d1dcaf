"""``flsec suite run fm``: the FM suite behind the common suite command."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from benchmarks.fm.report import render_fm_report
from benchmarks.fm.runner import run_fm_suite
from benchmarks.fm.spec import parse_fm_suite

__all__ = ["run_fm_command"]


def run_fm_command(file: Path, *, out: Path | None, report: bool) -> int:
    """Validate, run (resuming) and optionally report an FM suite file."""
    console = Console(stderr=True)
    spec = parse_fm_suite(file.read_text(), source=str(file))
    out = out or Path("runs") / spec.name
    n = len(spec.cells())
    console.print(
        f"[bold]FM suite {spec.name}[/]: {len(spec.attacks)} attacks x {len(spec.defenses)} defenses x "
        f"{len(spec.setting.seeds)} seed(s) = {n} cells on BBC News with MiniLM; results in {out}"
    )
    try:
        results = run_fm_suite(spec, out=out, console=console)
    except KeyboardInterrupt:
        console.print(f"[yellow]interrupted[/]: finished cells are in {out}/cells; run the same command to resume")
        return 130
    console.print(f"{len(results)}/{n} cells finished in {out}")
    if report:
        console.print(f"report: {render_fm_report(out)}")
    return 0
