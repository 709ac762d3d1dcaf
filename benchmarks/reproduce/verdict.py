"""A reproduction's figures and verdict, computed from its cells (never typed in).

Each claim of the ``[paper]`` table is evaluated on the finished cells: a metric
(:data:`benchmarks.reproduce.paper.METRICS`) per seed for every compared group, its mean
and 95% Student-t interval (:func:`benchmarks.suite.report.t_interval`), then

* an ordering pair *holds* when the higher side's mean is above the lower side's, and is
  *separated* when the two intervals are disjoint (:func:`benchmarks.suite.report.compare`);
* a range item is *within* when its mean lies in ``[low, high]``.

The verdict: **reproduced** when every ordering pair holds with separated intervals and
every range item is within the paper's range; **ordering only** when every ordering pair
holds by its means but a range item is outside or a pair is not separated; **not
reproduced** otherwise (some ordering fails, or a range claim alone misses).

Examples
--------
>>> from benchmarks.reproduce.paper import RECON_METRICS, Claim, Paper
>>> c = Claim(kind="ordering", metric="accuracy", higher={"attack": "none"}, lower={"attack": "x"},
...           for_each={"defense": "m"})
>>> cells = [{"attack": a, "defense": "m", "seed": s, "accuracy": acc, "asr": None}
...          for a, accs in (("none", [0.90, 0.91, 0.92]), ("x", [0.5, 0.52, 0.51])) for s, acc in enumerate(accs)]
>>> v = evaluate(Paper("s", "f", "", (c,)), cells, attacks=["none", "x"])
>>> v.verdict, v.claims[0].rows[0]["status"]
('reproduced', 'holds, separated')
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from benchmarks.reproduce.paper import RECON_METRICS, Claim, Paper
from benchmarks.suite.report import Interval, compare, t_interval
from benchmarks.suite.schema import SuiteError

__all__ = ["ClaimResult", "Verdict", "evaluate", "metric_values"]

REPRODUCED, ORDERING_ONLY, NOT_REPRODUCED = "reproduced", "ordering only", "not reproduced"


def _match(cell: Mapping[str, Any], sel: Mapping[str, Any]) -> bool:
    return all(cell.get(k) == v for k, v in sel.items())


def metric_values(metric: str, group: Mapping[str, Any], cells: Sequence[Mapping[str, Any]],
                  *, attacks: Sequence[str]) -> dict[int, float]:
    """The metric for one group, by seed.

    ``cells`` are flat records (``attack``, ``defense``, sweep coordinates, ``seed``,
    ``accuracy``, ``asr``; a reconstruction cell has ``attack``, ``seed`` and its metrics, e.g.
    ``psnr``, with ``None`` where the attack does not give it); ``group`` fixes the coordinates.

    Raises
    ------
    SuiteError
        If the group matches no finished cell (the run is incomplete) or a seed lacks its baseline.
    """
    mine = [c for c in cells if _match(c, group)]
    if metric == "worst_accuracy":
        by_seed: dict[int, list[float]] = defaultdict(list)
        for c in mine:
            if c["attack"] != "none":
                by_seed[c["seed"]].append(c["accuracy"])
        missing = [s for s, v in by_seed.items() if len(v) < len([a for a in attacks if a != "none"])]
        if missing:
            raise SuiteError("paper", f"group {dict(group)} lacks some attacks for seeds {missing}: run it to the end")
        out = {s: min(v) for s, v in by_seed.items()}
    elif metric == "accuracy_drop":
        base = {c["seed"]: c["accuracy"] for c in cells
                if _match(c, {**group, "attack": "none"})}
        out = {}
        for c in mine:
            if c["seed"] not in base:
                raise SuiteError("paper", f"no clean baseline (attack none) for {dict(group)}, seed {c['seed']}")
            out[c["seed"]] = base[c["seed"]] - c["accuracy"]
    elif metric == "final_asr":
        out = {c["seed"]: c["asr"] for c in mine if c["asr"] is not None}
    elif metric in RECON_METRICS:
        out = {c["seed"]: float(c[metric]) for c in mine if c.get(metric) is not None}
    else:
        out = {c["seed"]: c["accuracy"] for c in mine}
    if not out:
        raise SuiteError("paper", f"no finished cell for {dict(group)} ({metric}): run the reproduction first")
    return dict(sorted(out.items()))


def _label(group: Mapping[str, Any]) -> str:
    return ", ".join(f"{v}" if k in ("attack", "defense") else f"{k}={v}" for k, v in group.items())


@dataclass
class ClaimResult:
    """One claim's rows (one per ordering pair or range item) and its summary."""

    claim: Claim
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def holds(self) -> int:
        return sum(r["status"].startswith("holds") for r in self.rows)

    @property
    def separated(self) -> int:
        return sum(r["status"] == "holds, separated" for r in self.rows)

    @property
    def within(self) -> int:
        return sum(r["status"] == "within" for r in self.rows)

    def summary(self) -> str:
        n = len(self.rows)
        c = self.claim
        if c.kind == "ordering":
            return f"{self.holds}/{n} orderings hold ({self.separated} with separated intervals)"
        means = [r["interval"].mean for r in self.rows]
        rng = f"[{c.low:g}, {c.high:g}]"
        return (f"{self.within}/{n} within the paper's range {rng}; flsec's means span "
                f"{min(means):.3f} to {max(means):.3f}")


@dataclass
class Verdict:
    """The verdict of a reproduction and the evidence for it."""

    verdict: str
    claims: list[ClaimResult]
    gap: str

    def to_json(self) -> dict[str, Any]:
        def iv(i: Interval) -> dict[str, Any]:
            return {"mean": i.mean, "half": None if not i.has_interval else i.half, "n": i.n}

        return {
            "verdict": self.verdict,
            "gap": self.gap,
            "claims": [
                {"kind": r.claim.kind, "metric": r.claim.metric, "text": r.claim.text, "summary": r.summary(),
                 "rows": [{k: (iv(v) if isinstance(v, Interval) else v) for k, v in row.items()} for row in r.rows]}
                for r in self.claims
            ],
        }


def evaluate(paper: Paper, cells: Iterable[Mapping[str, Any]], *, attacks: Sequence[str]) -> Verdict:
    """Evaluate every claim of ``paper`` on ``cells`` and compute the verdict (see the module docstring)."""
    cells = list(cells)
    results = []
    for claim in paper.claims:
        res = ClaimResult(claim)
        if claim.kind == "ordering":
            for hi, lo in claim.pairs():
                a = t_interval(list(metric_values(claim.metric, hi, cells, attacks=attacks).values()))
                b = t_interval(list(metric_values(claim.metric, lo, cells, attacks=attacks).values()))
                cmp = compare(a, b)
                if a.mean > b.mean:
                    status = "holds, separated" if cmp.separated else "holds, not separated"
                else:
                    status = "fails, separated" if cmp.separated else "fails, not separated"
                res.rows.append({"higher": _label(hi), "lower": _label(lo), "interval": a, "other": b,
                                 "status": status})
        else:
            for g in claim.items():
                iv = t_interval(list(metric_values(claim.metric, g, cells, attacks=attacks).values()))
                status = "within" if claim.low <= iv.mean <= claim.high else (
                    "below" if iv.mean < claim.low else "above")
                res.rows.append({"group": _label(g), "interval": iv, "status": status})
        results.append(res)
    orderings = [r for r in results if r.claim.kind == "ordering"]
    ranges = [r for r in results if r.claim.kind == "range"]
    all_hold = all(r.holds == len(r.rows) for r in orderings)
    all_sep = all(r.separated == len(r.rows) for r in orderings)
    all_within = all(r.within == len(r.rows) for r in ranges)
    if all_hold and all_sep and all_within:
        verdict = REPRODUCED
    elif orderings and all_hold:
        verdict = ORDERING_ONLY
    else:
        verdict = NOT_REPRODUCED
    gap = "; ".join(f"{r.claim.text or r.claim.metric}: {r.summary()}" for r in results)
    return Verdict(verdict=verdict, claims=results, gap=gap)


#: How a metric's figures are printed (format spec, unit).
METRIC_FORMAT = {"psnr": (".1f", " dB")}


def fmt_interval(iv: Interval, metric: str) -> str:
    """A metric's interval as the report prints it (PSNR in dB to 0.1, the others to 0.001).

    Examples
    --------
    >>> from benchmarks.suite.report import t_interval
    >>> fmt_interval(t_interval([30.0, 32.0, 34.0]), "psnr")
    '32.0 ± 5.0 dB'
    """
    if not math.isfinite(iv.mean):
        return str(iv.mean)
    spec, unit = METRIC_FORMAT.get(metric, (".3f", ""))
    return iv.fmt(spec) + unit
