"""Report of an FM suite: clean accuracy and attack success per attack x defense, and the verdict.

A defense *works* against an attack here when it brings the final attack success rate
(ASR) below 20% at a cost of at most 5 points of clean accuracy, the cost being the
larger of two drops: against the undefended run under the same attack, and against
the undefended run with the clean FM (what the defense costs when nothing is wrong).
Attacks whose undefended ASR is already below 20% (baselines such as a clean FM's
public data) are listed but not judged.

Examples
--------
>>> verdict(asr=0.1, cost=0.03)
'works'
>>> verdict(asr=0.1, cost=0.08)
'too costly'
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmarks.suite.report import _curves, _grid, _table
from benchmarks.suite.store import ResultStore

__all__ = ["ASR_GOAL", "MAX_COST", "render_fm_report", "verdict"]

ASR_GOAL = 0.20
MAX_COST = 0.05


def verdict(*, asr: float, cost: float) -> str:
    """``works`` (ASR < 20% at <= 5 points), ``too costly``, or ``fails``."""
    if asr >= ASR_GOAL:
        return "fails"
    return "works" if cost <= MAX_COST else "too costly"


def _verdicts(attacks, defenses, mean: dict, asr: dict) -> list[str]:
    """The verdict table; the clean-FM cost is n/a (and ignored) where the suite has no clean-FM run."""
    rows, works = [], []
    base = mean.get(("none", "none"))
    quiet = []
    for a in attacks:
        if a == "none" or (a, "none") not in mean:
            continue
        if float(np.mean(asr[(a, "none")])) < ASR_GOAL:  # the undefended attack already fails: nothing to judge
            quiet.append(a)
            continue
        for d in defenses:
            if d == "none" or (a, d) not in mean:
                continue
            r_asr = float(np.mean(asr[(a, d)]))
            c1 = mean[(a, "none")] - mean[(a, d)]
            c2 = base - mean[("none", d)] if base is not None and ("none", d) in mean else None
            v = verdict(asr=r_asr, cost=max(c1, c2 if c2 is not None else c1))
            works += [f"{d} vs {a}"] if v == "works" else []
            clean_cost = "n/a" if c2 is None else f"{c2:+.3f}"
            rows.append(f"| {a} | {d} | {r_asr:.3f} | {mean[(a, d)]:.3f} | {c1:+.3f} | {clean_cost} | {v} |")
    note = [f"Not judged (undefended ASR already below {ASR_GOAL:.0%}): {', '.join(quiet)}.", ""] if quiet else []
    if not rows:
        return note
    return [
        f"### Verdict: ASR < {ASR_GOAL:.0%} at <= {MAX_COST * 100:.0f} points of clean accuracy",
        "",
        "| attack | defense | ASR | accuracy | cost vs undefended | cost on the clean FM | verdict |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        "Defenses that work: " + (", ".join(works) if works else "none") + ".",
        "",
        *note,
    ]


def render_fm_report(out: str | Path) -> Path:
    """Write ``report.md`` for the FM suite results in ``out``; return its path."""
    out = Path(out)
    results = sorted(ResultStore(out).load_all(), key=lambda r: tuple(r["order"]))
    if not results:
        raise FileNotFoundError(f"{out}/cells holds no finished cell")
    attacks, defenses, acc = _grid(results, "final_accuracy")
    _, _, asr = _grid(results, "final_asr")
    s = results[0]["setting"]
    lines = [
        f"# FM suite `{results[0]['suite']}`",
        "",
        f"MiniLM (all-MiniLM-L6-v2) + linear head on BBC News, {s['clients']} clients Dirichlet({s['alpha']}), "
        f"{s['rounds']} rounds, fine-tuning `{s['mode']}` of the top {s['trainable_layers']} layers, "
        f"{s['max_length']} tokens; trigger `{s['trigger']}`, target class {s['target']}. "
        f"{len(results)} cells. Final figures (after post-training defenses).",
        "",
        _table("Clean test accuracy", attacks, defenses, acc),
        _table(
            "Attack success rate (triggered non-target test texts classified as the target)", attacks, defenses, asr
        ),
    ]
    mean = {k: float(np.mean(v)) for k, v in acc.items()}
    lines += _verdicts(attacks, defenses, mean, asr)
    lines += ["### Over the rounds", ""]
    for a in attacks:
        for key, what in (("test_accuracy", "clean accuracy"), ("attack_success_rate", "attack success rate")):
            png = f"curve_{a}_{key}.png"
            _curves(out / png, a, results, key=key, ylabel=what)
            lines.append(f"![{what} over rounds, attack {a}]({png})")
        lines.append("")
    lines += ["### Per-cell details", ""]
    for r in results:
        info = {k: v for k, v in r["info"].items() if k not in ("base_fm", "data_fm")}
        lines.append(f"- `{r['cell_id']}` ({r['seconds']:.0f} s): max ASR {r['summary']['max_asr']:.3f}; {info}")
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
