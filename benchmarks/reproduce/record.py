"""The record of a reproduction run, shared by every kind (image, recon, FM): its ``verdict.json``,
its ``reproduction.md``, the commit it ran on.

:mod:`benchmarks.reproduce.run` dispatches to the runners; they all write through this module.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from benchmarks.reproduce.paper import Paper
from benchmarks.reproduce.verdict import Verdict, fmt_interval
from benchmarks.suite.report import INTERVAL_NOTE

__all__ = ["render_reproduction", "write_record"]


def _commit() -> str:
    root = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "fl_core", "attacks",
                                "defenses", "secure_agg", "benchmarks"], cwd=root, capture_output=True, text=True,
                               timeout=10).stdout.strip()
        return sha + ("+uncommitted" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _flat(results: list[dict[str, Any]], coords: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"attack": r["attack"]["label"], "defense": r["defense"]["label"], **coords, "seed": r["seed"],
             "accuracy": r["summary"]["final_accuracy"], "asr": r["summary"].get("final_asr")} for r in results]


def write_record(out: Path, *, ran: int, verdict: Verdict, paper: Paper, name: str, kind: str, scale: str,
                 setting: str, seeds: list[int], cells: int, command: str, commit: str, threads: int | None,
                 seconds: float, cell_seconds: float | None,
                 loads: tuple[tuple[float, ...], tuple[float, ...]]) -> dict[str, Any]:
    """The ``verdict.json`` record of a run of any kind, written to ``out``; returned.

    When no cell ran now (``ran == 0``) and an earlier record exists, the timing, load, commit and
    command of the run that computed the cells are kept.
    """
    record: dict[str, Any] = {
        "name": name, "kind": kind, "scale": scale,
        "paper": {"source": paper.source, "figure": paper.figure, "summary": paper.summary,
                  "values": paper.values, "differences": paper.differences},
        "setting": setting, "seeds": seeds, "cells": cells, "command": command, "commit": commit,
        "threads": threads, "seconds": seconds, "cell_seconds": cell_seconds,
        "loadavg_start": list(loads[0]), "loadavg_end": list(loads[1]),
        **verdict.to_json(),
    }
    previous = out / "verdict.json"
    if ran == 0 and previous.is_file():  # nothing ran now: keep the timing of the run that computed the cells
        old = json.loads(previous.read_text())
        for key in ("seconds", "loadavg_start", "loadavg_end", "commit", "command", "threads"):
            record[key] = old.get(key, record[key])
    record["cells_run_now"] = ran
    out.mkdir(parents=True, exist_ok=True)
    (out / "verdict.json").write_text(json.dumps(record, indent=2))
    return record


def _cell_seconds(out: Path) -> float:
    """Total seconds the finished cells took to run (their own timers: a resumed run counts every cell once)."""
    total = 0.0
    for p in out.rglob("cells/*.json"):
        try:
            total += float(json.loads(p.read_text()).get("seconds", 0.0))
        except (OSError, ValueError):
            continue
    return total


def render_reproduction(record: dict[str, Any], verdict: Verdict) -> str:
    """The report section "paper vs flsec" of one reproduction."""
    p = record["paper"]
    lines = [f"# Reproduction: {record['name']} ({record['scale']} scale)", "",
             "## paper vs flsec", "",
             f"**Paper**: {p['source']}, {p['figure']}. {p['summary']}", "",
             *([f"**The paper's printed values**: {_values(p['values'])}.", ""] if p.get("values") else []),
             f"**flsec**: {record['setting']}; seeds {record['seeds']}; {record['cells']} cells; "
             f"{record['seconds'] / 60:.1f} min wall ({record['cell_seconds'] / 60:.1f} min in cells), "
             f"load average {record['loadavg_start'][0]:.2f} at start, {record['loadavg_end'][0]:.2f} at end; "
             f"commit {record['commit']}; command `{record['command']}`.", "",
             f"**Verdict: {verdict.verdict}.** {verdict.gap}."
             + (f" Known differences from the paper's setting: {p['differences']}" if p.get("differences") else ""),
             "",
             f"Figures: {INTERVAL_NOTE}. An ordering holds when the higher side's mean is above the lower side's; "
             "it is separated when the two intervals are disjoint.", ""]
    for r in verdict.claims:
        c = r.claim
        lines += [f"### {c.text or c.kind} ({c.metric})", "", r.summary() + ".", ""]
        if c.kind == "ordering":
            lines += ["| higher | flsec | lower | flsec | status |", "|---|---|---|---|---|"]
            lines += [f"| {x['higher']} | {fmt_interval(x['interval'], c.metric)} | {x['lower']} | "
                      f"{fmt_interval(x['other'], c.metric)} | {x['status']} |" for x in r.rows]
        else:
            lines += ["| group | flsec | paper range | status |", "|---|---|---|---|"]
            lines += [f"| {x['group']} | {fmt_interval(x['interval'], c.metric)} | [{c.low:g}, {c.high:g}] | "
                      f"{x['status']} |" for x in r.rows]
        lines.append("")
    return "\n".join(lines)


def _values(values: dict[str, Any]) -> str:
    return ", ".join(f"{k} = {v}" for k, v in values.items())
