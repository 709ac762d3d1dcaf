"""The ``[paper]`` table of a reproduction suite: the published figure and its claims, checked before any work.

A reproduction suite (``benchmarks/suites/repro-*.toml``) is an ordinary suite file with a
``[paper]`` table::

    [paper]
    source = "Shejwalkar & Houmansadr, NDSS 2021"
    figure = "Table VII"
    summary = "min-max and min-sum cut accuracy by 5-60 points ..."
    differences = "CIFAR-10 AlexNet there, Fashion-MNIST MLP here"   # optional: known setting gaps
    values = { "min-max/multi_krum" = 0.30 }   # optional: the paper's own numbers, as printed

    [[paper.claims]]
    kind = "ordering"                  # metric(higher) > metric(lower), for every combination
    metric = "accuracy_drop"
    higher = { attack = ["min-max", "min-sum"] }
    lower = { attack = ["alie", "fang-trmean"] }
    for_each = { defense = ["multi_krum", "trimmed_mean", "median"] }

    [[paper.claims]]
    kind = "range"                     # the paper's stated range: low <= metric <= high
    metric = "accuracy_drop"
    where = { attack = ["min-max", "min-sum"], defense = ["multi_krum", "trimmed_mean", "median"] }
    low = 0.05
    high = 0.60

A selector maps a coordinate (``attack``, ``defense`` labels, or a ``[sweep]`` key of the
setting) to a value or a list of values; lists expand to every combination. Metrics (see
:data:`METRICS`) are computed per seed from the run, so every figure has a 95% t-interval.

Examples
--------
>>> p = parse_paper({"source": "s", "figure": "f", "claims": [{"kind": "range", "metric": "accuracy",
...                  "where": {"defense": "median"}, "low": 0.5, "high": 1.0}]},
...                 coordinates={"attack": ["none"], "defense": ["median"]})
>>> p.claims[0].kind, p.claims[0].items()
('range', [{'defense': 'median'}])
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from benchmarks.suite.schema import SuiteError

__all__ = ["IMAGE_METRICS", "METRICS", "RECON_METRICS", "Claim", "Paper", "expand_selector", "parse_paper"]

#: The metrics a claim can be about, each computed per seed from a cell group:
#: ``accuracy`` final test accuracy of one (attack, defense) cell; ``accuracy_drop`` the clean
#: accuracy (attack ``none``, same defense and seed) minus the attacked one; ``worst_accuracy`` the
#: lowest final accuracy over the grid's attacks other than ``none`` (ByzFL's heatmaps: worst case
#: across attacks), so its selectors give no ``attack``; ``final_asr`` the last round's backdoor
#: success rate. Reconstruction reproductions (``kind = "recon"``, :mod:`benchmarks.reproduce.recon`) have
#: one cell per (attack, seed), whose metrics are means over that seed's victims: ``psnr`` the
#: best-match PSNR in dB (capped at 100 dB), ``ssim`` (Wang et al. 2004), ``label_accuracy`` the
#: share of labels recovered, ``rouge1`` / ``rouge2`` the ROUGE-1 / ROUGE-2 F-measures of the
#: recovered text (Lin 2004).
METRICS = {
    "accuracy": "final test accuracy",
    "accuracy_drop": "clean accuracy (attack none) minus attacked accuracy, same defense and seed",
    "worst_accuracy": "lowest final accuracy over the attacks (none excluded), per seed",
    "final_asr": "backdoor attack success rate after the last round",
    "psnr": "reconstruction PSNR in dB against the best-matching true input (capped at 100), mean over victims",
    "ssim": "reconstruction SSIM against the best-matching true image, mean over victims",
    "label_accuracy": "share of the victims' labels the attack recovered",
    "rouge1": "ROUGE-1 F-measure of the recovered text against the true text, mean over victims",
    "rouge2": "ROUGE-2 F-measure of the recovered text against the true text, mean over victims",
}
#: The metrics of suites that train a federation (image and FM reproductions).
IMAGE_METRICS = ("accuracy", "accuracy_drop", "worst_accuracy", "final_asr")
#: The metrics of reconstruction reproductions.
RECON_METRICS = ("psnr", "ssim", "label_accuracy", "rouge1", "rouge2")


def expand_selector(sel: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every combination of a selector's list values.

    Examples
    --------
    >>> expand_selector({"attack": ["a", "b"], "defense": "m"})
    [{'attack': 'a', 'defense': 'm'}, {'attack': 'b', 'defense': 'm'}]
    """
    keys = list(sel)
    lists = [v if isinstance(v, list) else [v] for v in sel.values()]
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*lists)]


@dataclass(frozen=True)
class Claim:
    """One claim of the paper: an ordering of two metric values, or a range a metric lies in."""

    kind: str
    metric: str
    higher: dict[str, Any] = field(default_factory=dict)
    lower: dict[str, Any] = field(default_factory=dict)
    for_each: dict[str, Any] = field(default_factory=dict)
    where: dict[str, Any] = field(default_factory=dict)
    low: float = -math.inf
    high: float = math.inf
    text: str = ""

    def items(self) -> list[dict[str, Any]]:
        """A range claim's groups (every combination of ``where``)."""
        return expand_selector(self.where)

    def pairs(self) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """An ordering claim's (higher, lower) groups: every combination of ``for_each`` x higher x lower."""
        out = []
        for base in expand_selector(self.for_each):
            for h in expand_selector(self.higher):
                for lo in expand_selector(self.lower):
                    out.append(({**base, **h}, {**base, **lo}))
        return out


@dataclass(frozen=True)
class Paper:
    """The published result a reproduction suite checks: where it is, what it says, its claims."""

    source: str
    figure: str
    summary: str
    claims: tuple[Claim, ...]
    values: dict[str, Any] = field(default_factory=dict)
    differences: str = ""


def _str(raw: Mapping[str, Any], key: str, where: str, *, required: bool = True) -> str:
    v = raw.get(key, None if required else "")
    if not isinstance(v, str) or (required and not v.strip()):
        raise SuiteError(f"{where}.{key}", f"{'missing or ' if required else ''}not a non-empty string, got {v!r}")
    return v


def _selector(raw: Any, where: str, coordinates: Mapping[str, Sequence[Any]]) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise SuiteError(where, f"must be a table of coordinate = value(s), got {raw!r}")
    for k, v in raw.items():
        if k not in coordinates:
            raise SuiteError(f"{where}.{k}", f"unknown coordinate; valid: {', '.join(coordinates)}")
        vals = v if isinstance(v, list) else [v]
        if not vals:
            raise SuiteError(f"{where}.{k}", "must not be an empty list")
        for x in vals:
            if x not in coordinates[k]:
                raise SuiteError(f"{where}.{k}", f"{x!r} is not in the suite; valid: {list(coordinates[k])}")
    return dict(raw)


def _parse_claim(raw: Any, where: str, coordinates: Mapping[str, Sequence[Any]], metrics: Sequence[str]) -> Claim:
    if not isinstance(raw, dict):
        raise SuiteError(where, f"must be a table, got {raw!r}")
    kind = raw.get("kind")
    allowed = {"kind", "metric", "text"} | (
        {"higher", "lower", "for_each"} if kind == "ordering" else {"where", "low", "high"}
    )
    if kind not in ("ordering", "range"):
        raise SuiteError(f"{where}.kind", f"must be 'ordering' or 'range', got {kind!r}")
    for k in raw:
        if k not in allowed:
            raise SuiteError(f"{where}.{k}", f"unknown key for a {kind} claim; valid: {', '.join(sorted(allowed))}")
    metric = raw.get("metric")
    if metric not in metrics:
        known = f" ({METRICS[metric]}: not a metric of this kind of reproduction)" if metric in METRICS else ""
        raise SuiteError(f"{where}.metric", f"unknown metric {metric!r}{known}; valid: {', '.join(metrics)}")
    if metric == "accuracy_drop" and "none" not in coordinates.get("attack", ()):
        raise SuiteError(f"{where}.metric", "accuracy_drop needs the clean baseline: add the attack 'none' to the grid")
    text = raw.get("text", "")
    if not isinstance(text, str):
        raise SuiteError(f"{where}.text", f"must be a string, got {text!r}")
    if kind == "ordering":
        for key in ("higher", "lower"):
            if key not in raw:
                raise SuiteError(f"{where}.{key}", "missing: an ordering claim names both sides")
        claim = Claim(kind=kind, metric=metric, text=text,
                      higher=_selector(raw["higher"], f"{where}.higher", coordinates),
                      lower=_selector(raw["lower"], f"{where}.lower", coordinates),
                      for_each=_selector(raw.get("for_each", {}), f"{where}.for_each", coordinates))
        groups = [g for pair in claim.pairs() for g in pair]
    else:
        low, high = raw.get("low", -math.inf), raw.get("high", math.inf)
        for key, v in (("low", low), ("high", high)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v):
                raise SuiteError(f"{where}.{key}", f"must be a number, got {v!r}")
        if "low" not in raw and "high" not in raw:
            raise SuiteError(where, "a range claim needs low, high or both")
        if not low <= high:
            raise SuiteError(f"{where}.low", f"must be <= high={high}, got {low}")
        claim = Claim(kind=kind, metric=metric, text=text, where=_selector(raw.get("where", {}), f"{where}.where",
                                                                          coordinates),
                      low=float(low), high=float(high))
        groups = claim.items()
    free = [k for k in coordinates if k != "attack" or metric != "worst_accuracy"]
    for g in groups:
        if metric == "worst_accuracy" and "attack" in g:
            raise SuiteError(where, "worst_accuracy is the minimum over the attacks: select no attack")
        missing = [k for k in free if k not in g and len(coordinates[k]) > 1]
        if missing:
            raise SuiteError(where, f"each compared group must fix {', '.join(missing)} (several values in the suite)")
    return claim


def parse_paper(raw: Any, *, coordinates: Mapping[str, Sequence[Any]], metrics: Sequence[str] = IMAGE_METRICS) -> Paper:
    """Validate a ``[paper]`` table against the suite's coordinates (attack and defense labels, sweep values).

    ``metrics`` are the metrics its claims may name: :data:`IMAGE_METRICS` (suites that train a
    federation, the default) or :data:`RECON_METRICS` (reconstruction reproductions).
    """
    if not isinstance(raw, dict):
        raise SuiteError("paper", f"must be a table, got {raw!r}")
    allowed = {"source", "figure", "summary", "values", "claims", "differences"}
    for k in raw:
        if k not in allowed:
            raise SuiteError(f"paper.{k}", f"unknown key; valid: {', '.join(sorted(allowed))}")
    claims_raw = raw.get("claims")
    if not isinstance(claims_raw, list) or not claims_raw:
        raise SuiteError("paper.claims", "must be a non-empty array of tables ([[paper.claims]])")
    values = raw.get("values", {})
    if not isinstance(values, dict):
        raise SuiteError("paper.values", f"must be a table, got {values!r}")
    claims = tuple(_parse_claim(c, f"paper.claims[{i}]", coordinates, metrics) for i, c in enumerate(claims_raw))
    return Paper(source=_str(raw, "source", "paper"), figure=_str(raw, "figure", "paper"),
                 summary=_str(raw, "summary", "paper", required=False), claims=claims, values=dict(values),
                 differences=_str(raw, "differences", "paper", required=False))
