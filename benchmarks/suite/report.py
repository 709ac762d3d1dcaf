"""Render a suite's results: Markdown tables, heatmaps and accuracy curves, each with its uncertainty.

Every figure over several seeds is the mean and a 95% Student-t confidence interval for it
(``mean ± t_{0.975, n-1} s / sqrt(n)``, ``s`` the sample standard deviation with ``n - 1``
degrees of freedom); one seed gives no interval ("± n/a"). Heatmaps print the half-width under
each mean, curves show the interval as a band, and the report calls one defense better than
another only where their intervals are disjoint ("separated"), "not separated" otherwise.

Examples
--------
>>> fmt_cell([0.9, 0.8, 0.85])
'0.850 ± 0.124'
>>> fmt_cell([0.9])  # one seed: no interval (the report's header says so)
'0.900'
>>> compare([0.9, 0.91, 0.92], [0.5, 0.52, 0.51]).verdict
'separated'
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from scipy import stats

from benchmarks.suite.runner import summarize
from benchmarks.suite.spec import Setting
from benchmarks.suite.store import ResultStore

__all__ = ["CONFIDENCE", "Comparison", "Interval", "compare", "fmt_cell", "render_report", "t_interval"]

#: The confidence level of every interval in reports and reproductions.
CONFIDENCE = 0.95
INTERVAL_NOTE = ("mean ± half-width of the 95% Student-t confidence interval over seeds (n - 1 degrees of "
                 "freedom); ± n/a: one seed, no interval")


@dataclass(frozen=True)
class Interval:
    """A mean over ``n`` seeds and its two-sided Student-t confidence interval ``[low, high]``.

    ``half`` is ``nan`` with one seed (no interval: ``low = high = mean``, shown as "n/a").
    """

    mean: float
    half: float
    n: int
    level: float = CONFIDENCE

    @property
    def low(self) -> float:
        return self.mean - self.half if math.isfinite(self.half) else self.mean

    @property
    def high(self) -> float:
        return self.mean + self.half if math.isfinite(self.half) else self.mean

    @property
    def has_interval(self) -> bool:
        return self.n >= 2 and math.isfinite(self.half)

    def fmt(self, spec: str = ".3f", scale: float = 1.0) -> str:
        """``mean ± half`` (times ``scale``), ``mean ± n/a`` with one seed."""
        if not math.isfinite(self.mean):
            return f"{self.mean}"
        half = f"{self.half * scale:{spec}}" if self.has_interval else "n/a"
        return f"{self.mean * scale:{spec}} ± {half}"


def t_interval(values: Sequence[float], level: float = CONFIDENCE) -> Interval:
    """Mean and Student-t confidence interval of ``values`` (one per seed).

    ``half = t_{(1 + level) / 2, n - 1} * s / sqrt(n)`` with ``s`` the sample standard deviation
    (``ddof = 1``); ``n = 1`` gives ``half = nan`` (no interval).

    Raises
    ------
    ValueError
        If ``values`` is empty or ``level`` is not in (0, 1).

    Examples
    --------
    >>> iv = t_interval([1.0, 2.0, 3.0])  # s = 1, t_{0.975, 2} = 4.303
    >>> round(iv.half, 4), iv.n
    (2.4841, 3)
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    x = np.asarray(list(values), dtype=float)
    if x.size == 0:
        raise ValueError("t_interval needs at least one value")
    mean = float(x.mean())
    if x.size == 1 or not np.isfinite(x).all():
        return Interval(mean=mean, half=math.nan, n=int(x.size), level=level)
    s = float(x.std(ddof=1))
    half = float(stats.t.ppf((1 + level) / 2, x.size - 1)) * s / math.sqrt(x.size)
    return Interval(mean=mean, half=half, n=int(x.size), level=level)


@dataclass(frozen=True)
class Comparison:
    """Two intervals compared: ``separated`` when they are disjoint (then ``higher`` is 'a' or 'b').

    With one seed on either side there is no interval and the answer is "not separated".
    """

    a: Interval
    b: Interval
    verdict: str
    higher: str | None

    @property
    def separated(self) -> bool:
        return self.verdict == "separated"


def compare(a: Sequence[float] | Interval, b: Sequence[float] | Interval) -> Comparison:
    """Whether the 95% t-intervals of ``a`` and ``b`` are disjoint ("separated") or overlap ("not separated").

    Examples
    --------
    >>> compare([1.0, 1.1, 0.9], [1.05, 1.0, 1.1]).verdict
    'not separated'
    """
    ia = a if isinstance(a, Interval) else t_interval(a)
    ib = b if isinstance(b, Interval) else t_interval(b)
    if not (ia.has_interval and ib.has_interval):
        return Comparison(ia, ib, "not separated", None)
    if ia.low > ib.high:
        return Comparison(ia, ib, "separated", "a")
    if ib.low > ia.high:
        return Comparison(ia, ib, "separated", "b")
    return Comparison(ia, ib, "not separated", None)


def fmt_cell(values: list[float], spec: str = ".3f") -> str:
    """``mean ± half-width`` of the 95% t-interval over seeds; the bare value for one seed (no interval: the
    report's header says "n/a" for it); ``n/a`` for none."""
    if not values:
        return "n/a"
    iv = t_interval(values)
    return iv.fmt(spec) if iv.has_interval else f"{iv.mean:{spec}}"


def _grid(results: list[dict[str, Any]], key: str) -> tuple[list[str], list[str], dict[tuple[str, str], list[float]]]:
    attacks: list[str] = []
    defenses: list[str] = []
    vals: dict[tuple[str, str], list[float]] = defaultdict(list)
    for r in results:
        a, d = r["attack"]["label"], r["defense"]["label"]
        if a not in attacks:
            attacks.append(a)
        if d not in defenses:
            defenses.append(d)
        v = r["summary"].get(key)
        if v is not None:
            vals[(a, d)].append(float(v))
    return attacks, defenses, vals


def _table(title: str, attacks, defenses, vals, spec: str = ".3f") -> str:
    lines = [
        f"### {title}",
        "",
        "| attack \\ defense | " + " | ".join(defenses) + " |",
        "|---|" + "---|" * len(defenses),
    ]
    for a in attacks:
        lines.append(f"| {a} | " + " | ".join(fmt_cell(vals.get((a, d), []), spec) for d in defenses) + " |")
    return "\n".join(lines) + "\n"


def _heatmap_on(ax, fig, title: str, attacks, defenses, vals, cmap: str, vmin: float = 0.0, vmax: float = 1.0,
                spec: str = ".2f") -> None:
    M = np.full((len(attacks), len(defenses)), np.nan)
    H = np.full((len(attacks), len(defenses)), np.nan)  # interval half-widths
    for i, a in enumerate(attacks):
        for j, d in enumerate(defenses):
            if vals.get((a, d)):
                iv = t_interval(vals[(a, d)])
                M[i, j], H[i, j] = iv.mean, iv.half
    im = ax.imshow(M, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(defenses)), defenses, rotation=35, ha="right")
    ax.set_yticks(range(len(attacks)), attacks)
    mid = (vmin + vmax) / 2
    for i in range(len(attacks)):
        for j in range(len(defenses)):
            if not np.isnan(M[i, j]):
                half = f"±{H[i, j]:{spec}}" if np.isfinite(H[i, j]) else "±n/a"
                ax.text(j, i, f"{M[i, j]:{spec}}\n{half}", ha="center", va="center", fontsize=7,
                        color="white" if M[i, j] < mid else "black")  # both maps are dark at the low end
    ax.set_title(f"{title}\n(mean, ± 95% t-interval over seeds)", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.04)


def _ranking(title: str, attacks, defenses, vals, higher_is_better: bool = True) -> str:
    """Per attack: the defenses by mean, and which of them the best one beats (disjoint intervals) or not."""
    lines = [f"### {title}", "",
             "One defense beats another only where their 95% t-intervals are disjoint (separated); "
             "otherwise the data cannot tell them apart (not separated).", ""]
    for a in attacks:
        have = [d for d in defenses if vals.get((a, d))]
        if len(have) < 2:
            continue
        order = sorted(have, key=lambda d: np.mean(vals[(a, d)]), reverse=higher_is_better)
        best = order[0]
        beaten = [d for d in order[1:] if compare(vals[(a, best)], vals[(a, d)]).separated]
        tied = [d for d in order[1:] if d not in beaten]
        lines.append(f"- **{a}**: {' > '.join(order)} (by mean); {best} beats "
                     f"{', '.join(beaten) or 'none'} (separated); not separated from {', '.join(tied) or 'none'}.")
    return "\n".join(lines) + "\n"


def _heatmap(path: Path, title: str, attacks, defenses, vals, cmap: str, **kw) -> None:
    fig, ax = plt.subplots(figsize=(1.3 * len(defenses) + 2.5, 0.55 * len(attacks) + 1.8))
    _heatmap_on(ax, fig, title, attacks, defenses, vals, cmap, **kw)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _psnr_range(vals) -> tuple[float, float]:
    """From 0 dB (nothing recovered) to at least 40 dB (a reconstruction indistinguishable by eye)."""
    finite = [v for vs in vals.values() for v in vs if np.isfinite(v)]
    return (0.0, max([40.0, *finite]))


def _outcomes(path: Path, attacks, defenses, acc, asr, psnr, whose: str = "most exposed client's") -> None:
    """Accuracy, attack success and privacy exposure side by side, one heatmap each."""
    panels = [("test accuracy (higher is better)", acc, "viridis", {}),
              ("attack success rate (lower is better)", asr, "magma", {}),
              (f"{whose} reconstruction PSNR, dB (lower is better)", psnr, "magma",
               dict(zip(("vmin", "vmax"), _psnr_range(psnr), strict=True)) | {"spec": ".1f"})]
    panels = [p for p in panels if p[1]]
    w, h = 1.1 * len(defenses) + 2.6, 0.5 * len(attacks) + 1.6
    fig, axes = plt.subplots(len(panels), 1, figsize=(w, h * len(panels)))
    for ax, (title, vals, cmap, kw) in zip(np.atleast_1d(axes), panels, strict=True):
        _heatmap_on(ax, fig, title, attacks, defenses, vals, cmap, **kw)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _curves(
    path: Path, attack: str, results: list[dict[str, Any]], key: str = "test_accuracy", ylabel: str = "test accuracy"
) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.6))
    by_def: dict[str, list[list[float]]] = defaultdict(list)
    for r in results:
        if r["attack"]["label"] == attack:
            by_def[r["defense"]["label"]].append([x[key] for x in r["rounds"]])
    for d, runs in by_def.items():
        L = min(len(x) for x in runs)
        acc = np.array([x[:L] for x in runs], dtype=float)
        x = np.arange(1, L + 1)
        (line,) = ax.plot(x, acc.mean(axis=0), label=d)
        if len(runs) >= 2:  # the 95% t-interval of each round's mean over seeds as a band
            ivs = [t_interval(acc[:, k]) for k in range(L)]
            ax.fill_between(x, [iv.low for iv in ivs], [iv.high for iv in ivs], color=line.get_color(), alpha=0.2,
                            linewidth=0)
    ax.set_xlabel("round")
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1)
    ax.set_title(f"attack: {attack} (bands: 95% t-interval over seeds)", fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _privacy_sections(out: Path, results, attacks, defenses, acc) -> list[str]:
    """Epsilon and the server's reconstruction PSNR, and the three outcomes side by side."""
    parts: list[str] = []
    _, _, eps = _grid(results, "epsilon")
    if eps:
        delta = sorted({x["metrics"].get("dp_delta") for r in results for x in r["rounds"] if x.get("metrics")}
                       - {None})
        parts.append(_table(f"Privacy: epsilon spent after the last round (delta {', '.join(map(str, delta))}; "
                            "n/a: no DP)", attacks, defenses, eps, ".2f"))
    _, _, psnr = _grid(results, "psnr")
    if psnr:
        how = sorted({f"{r['exposure']['attack']} on {r['exposure']['observed']}" for r in results
                      if r.get("exposure")})
        parts.append(_table("Privacy exposure: PSNR (dB) of the server's reconstruction of an honest client's image "
                            f"from what it observes ({'; '.join(how)}; one probe round on the initial model, before "
                            "any attack, so the same in every row); lower is better", attacks, defenses, psnr, ".1f"))
        _, _, worst = _grid(results, "psnr_max")
        if worst:
            parts.append(_table("Privacy exposure of the most exposed probe client: the highest PSNR (dB) over all "
                                "the probe round's clients (a rule whose output is one client's update, such as "
                                "Krum, exposes that client even where the first one looks safe)",
                                attacks, defenses, worst, ".1f"))
        _, _, asr = _grid(results, "final_asr")
        _outcomes(out / "outcomes.png", attacks, defenses, acc, asr, worst or psnr,
                  "most exposed client's" if worst else "server's")
        parts.append("![accuracy, attack success and privacy exposure](outcomes.png)\n")
    return parts


def render_report(out: str | Path) -> Path:
    """Write ``report.md`` and PNGs into ``out``; return the report's path."""
    out = Path(out)
    results = ResultStore(out).load_all()
    results.sort(key=lambda r: (*r.get("order", (0, 0)), r["seed"]))  # the suite file's order
    for r in results:  # recompute with the current definitions (cells written by older versions too)
        r["summary"] = summarize(
            r["rounds"], r["malicious"], Setting(**{**r["setting"], "seeds": tuple(r["setting"]["seeds"])})
        )
        r["summary"]["psnr"] = (r.get("exposure") or {}).get("psnr")
        r["summary"]["psnr_max"] = (r.get("exposure") or {}).get("psnr_max")
    if not results:
        from benchmarks.suite.spec import SuiteError

        raise SuiteError(str(out), "holds no finished cell yet")
    first = results[0]
    s = first["setting"]
    seeds = sorted({r["seed"] for r in results})
    parts = [
        f"# Suite report: {first['suite']}",
        "",
        f"Dataset {first['dataset']}, model {s['model']}, {s['clients']} clients ({s['partition']}"
        + (f", alpha={s['alpha']}" if s["partition"] == "dirichlet" else "")
        + (f", gamma={s.get('gamma_similarity')}" if s["partition"] == "gamma" else "")
        + f"), {s['clients_per_round'] or s['clients']} per round, {s['rounds']} rounds, "
        + (("FedSGD (one gradient step per round on " + ("the full batch" if s.get("full_batch") else
                                                         f"a batch of {s['batch_size']}") + ")")
           if s.get("fedsgd") else f"{s['local_epochs']} local epoch(s)")
        + f", malicious fraction {s['malicious_fraction']} "
        f"({'omniscient' if s['omniscient'] else 'non-omniscient'}), seeds {seeds}. "
        f"{len(results)} cells; values are after the last round, "
        + (f"{INTERVAL_NOTE}." if len(seeds) > 1 else "one seed, so no interval: every interval is n/a "
           "(run several seeds for the 95% t-interval), and no defense is called better than another."),
        "",
    ]
    a, d, acc = _grid(results, "final_accuracy")
    parts.append(_table("Main-task test accuracy", a, d, acc))
    _heatmap(out / "accuracy.png", "test accuracy", a, d, acc, "viridis")
    parts.append("![accuracy heatmap](accuracy.png)\n")
    parts.append(_ranking("Defense ranking by accuracy", a, d, acc))
    a2, d2, asr = _grid(results, "final_asr")
    if asr:
        rows = [x for x in a2 if any((x, y) in asr for y in d2)]
        parts.append(_table("Backdoor attack success rate (triggered test set, target class excluded)", rows, d2, asr))
        _, _, max_asr = _grid(results, "max_asr")
        parts.append(_table("Largest attack success rate over the rounds", rows, d2, max_asr))
        _heatmap(out / "attack_success.png", "attack success rate", rows, d2, asr, "magma")
        parts.append("![attack success heatmap](attack_success.png)\n")
    diverged = [f"{r['cell_id']} (round {x['round_idx']})" for r in results for x in r["rounds"] if x.get("diverged")]
    if diverged:
        parts.append("Diverged (NaN/Inf updates; the accuracy is the model's when it stopped): "
                     + ", ".join(diverged) + ".\n")
    parts += _privacy_sections(out, results, a, d, acc)
    a3, d3, tpr = _grid(results, "mean_tpr")
    _, _, fpr = _grid(results, "mean_fpr")
    flagging = [
        y for y in d3 if any(v and np.mean(v) > 0 for (x, yy), v in list(tpr.items()) + list(fpr.items()) if yy == y)
    ]
    if flagging:
        rows = [x for x in a3 if any((x, y) in tpr for y in flagging)]
        parts.append(
            _table(
                "Detection true-positive rate (malicious clients left out, mean over attacking rounds)",
                rows,
                flagging,
                tpr,
            )
        )
        parts.append(
            _table("Detection false-positive rate (honest clients left out, mean over rounds)", a3, flagging, fpr)
        )
    parts.append("### Accuracy over rounds\n")
    for i, attack in enumerate(a):
        name = f"rounds_{i:02d}_{attack}.png"
        _curves(out / name, attack, results)
        parts.append(f"![{attack}]({name})")
    backdoored = [x for x in a if any(r["attack"]["label"] == x and r["rounds"]
                                      and all(y.get("attack_success_rate") is not None for y in r["rounds"])
                                      for r in results)]
    if backdoored:
        parts.append("\n### Attack success rate over rounds\n")
        for i, attack in enumerate(backdoored):
            name = f"asr_{i:02d}_{attack}.png"
            _curves(out / name, attack, [r for r in results if all(y.get("attack_success_rate") is not None
                                                                    for y in r["rounds"])],
                    key="attack_success_rate", ylabel="attack success rate")
            parts.append(f"![{attack} attack success]({name})")
    versions = first["versions"]
    parts += ["", "Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()), ""]
    report = out / "report.md"
    report.write_text("\n".join(parts))
    return report
