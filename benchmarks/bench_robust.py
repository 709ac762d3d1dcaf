"""``flsec bench robust``: time every robust rule against floors measured in the same run.

For each ``n`` (clients) and ``d`` (model size) the benchmark draws one
``(n, d)`` float32 cohort on the chosen device and measures two floors:

* ``mean``: the plain mean ``updates.mean(0)``, the floor for coordinate-wise
  and ``O(n d)`` rules (median, trimmed mean, geometric median, clipping, ...);
* ``dist``: one ``(n, n)`` pairwise squared-distance matrix
  (:func:`defenses.robust.distances.pairwise_sq_distances`), the floor for the
  distance-based rules (Krum, Multi-Krum, Bulyan, NNM, FLAME, FoolsGold).

Each rule is timed on ``rule.aggregate(updates)`` (input validation included)
and reported as a ratio to its floor, so the numbers compare across machines.
Floors and rules are timed in interleaved rounds and the best round is kept,
which keeps the ratios meaningful on a shared, noisy machine.
``f = max(1, (n - 3) // 4)``, the largest ``f`` Bulyan tolerates, for every rule.
The goal for Krum, Multi-Krum and Bulyan is a ratio of at most 3.

``--byzantine-scale A`` replaces the first ``f`` rows of the cohort the rules
see by ``+A`` and ``-A`` (alternately) in every coordinate, e.g. ``3e38``: the
cost of the overflow-safe paths the rules take for extreme finite rows. The
floors are still measured on the ordinary cohort, so the ratios show that cost.

Run it with ``flsec bench robust`` or ``python -m benchmarks.bench_robust robust``;
it prints a rich table and writes ``bench_robust.csv`` and ``bench_robust.json``
under ``--out``.

Examples
--------
>>> rows = run_robust_bench(ns=[5], ds=[100], device="cpu", repeats=1, rules=["krum"])
>>> rows[0]["rule"], rows[0]["floor"], rows[0]["ratio"] > 0
('krum', 'dist', True)
>>> run_robust_bench(ns=[5], ds=[10], repeats=1, rules=["median"], byzantine_scale=3e38)[0]["byzantine_scale"]
3e+38
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from benchmarks.cli_args import comma_ints, comma_names
from benchmarks.threads import apply_threads
from defenses.robust import (
    ARC,
    FLAME,
    NNM,
    Bucketing,
    Bulyan,
    CenteredClipping,
    DnC,
    FLTrust,
    FoolsGold,
    GeometricMedian,
    Krum,
    Mean,
    Median,
    MultiKrum,
    NormBound,
    TrimmedMean,
    pairwise_sq_distances,
)
from fl_core.device import resolve_device
from fl_core.errors import ConfigError
from fl_core.rng import torch_generator

__all__ = ["CASES", "GOAL", "main", "register", "run_robust_bench", "write_outputs"]

logger = logging.getLogger(__name__)

#: Rules with a performance goal: ratio to the distance floor at most this.
GOAL = {"krum": 3.0, "multi_krum": 3.0, "bulyan": 3.0}

Factory = Callable[[int, int, torch.Tensor, torch.Generator], Callable[[torch.Tensor], Any]]


def _rule(make: Callable[[int, torch.Tensor, torch.Generator], Any]) -> Factory:
    def build(n: int, f: int, x: torch.Tensor, g: torch.Generator) -> Callable[[torch.Tensor], Any]:
        rule = make(f, x, g)
        return rule.aggregate

    return build


def _pre(make: Callable[[int, torch.Generator], Any]) -> Factory:
    def build(n: int, f: int, x: torch.Tensor, g: torch.Generator) -> Callable[[torch.Tensor], Any]:
        return make(f, g).transform

    return build


def _fltrust(f: int, x: torch.Tensor, g: torch.Generator) -> FLTrust:
    g0 = x[0].clone()
    return FLTrust(f=f, server_update=lambda ctx: g0)


#: name -> (floor, factory(n, f, updates, generator) -> callable(updates))
CASES: dict[str, tuple[str, Factory]] = {
    "mean": ("mean", _rule(lambda f, x, g: Mean())),
    "median": ("mean", _rule(lambda f, x, g: Median(f=f))),
    "trimmed_mean": ("mean", _rule(lambda f, x, g: TrimmedMean(f=f))),
    "geomed": ("mean", _rule(lambda f, x, g: GeometricMedian(f=f))),
    "centered_clipping": ("mean", _rule(lambda f, x, g: CenteredClipping(f=f, tau=1.0))),
    "norm_bound": ("mean", _rule(lambda f, x, g: NormBound(f=f, M=1.0))),
    "fltrust": ("mean", _rule(_fltrust)),
    "dnc": ("mean", _rule(lambda f, x, g: DnC(f=f, generator=g))),
    "krum": ("dist", _rule(lambda f, x, g: Krum(f=f))),
    "multi_krum": ("dist", _rule(lambda f, x, g: MultiKrum(f=f))),
    "bulyan": ("dist", _rule(lambda f, x, g: Bulyan(f=f))),
    "flame": ("dist", _rule(lambda f, x, g: FLAME(f=f, generator=g))),
    "foolsgold": ("dist", _rule(lambda f, x, g: FoolsGold(f=f))),
    "nnm": ("dist", _pre(lambda f, g: NNM(f=f))),
    "bucketing": ("mean", _pre(lambda f, g: Bucketing(s=2, generator=g))),
    "arc": ("mean", _pre(lambda f, g: ARC(f=f))),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_interleaved(calls: dict[str, Callable[[], Any]], device: torch.device, repeats: int) -> dict[str, float]:
    """Best wall time of each call over ``repeats`` rounds, in seconds.

    Every call runs once to warm up; then each round times every call once, in
    turn, so the floors and the rules see the same machine load (this matters
    on a shared machine). The minimum over rounds is reported, as ``timeit``
    recommends: noise only ever adds time.
    """
    for fn in calls.values():
        fn()
    _sync(device)
    best = {name: float("inf") for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            start = time.perf_counter()
            fn()
            _sync(device)
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def run_robust_bench(
    *,
    ns: Sequence[int] = (10, 50, 100),
    ds: Sequence[int] = (10_000, 100_000, 1_000_000),
    device: str | torch.device = "cpu",
    repeats: int = 5,
    rules: Sequence[str] | None = None,
    seed: int = 0,
    byzantine_scale: float | None = None,
) -> list[dict[str, Any]]:
    """Time each rule for each ``(n, d)``; return one row per (n, d, rule).

    Parameters
    ----------
    ns, ds : sequence of int
        Numbers of clients (>= 4) and model sizes (>= 1).
    device : str or torch.device
        ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``.
    repeats : int
        Timed rounds; each round times every call once, interleaved; the best
        time is reported (after one warm-up call each).
    rules : sequence of str, optional
        Subset of :data:`CASES` (default: all).
    seed : int
        Seed of the cohorts and of the randomised rules.
    byzantine_scale : float, optional
        If given, the rules see the cohort with its first ``f`` rows set to
        ``+byzantine_scale`` and ``-byzantine_scale`` alternately (finite, at
        most the dtype's maximum); the floors keep the ordinary cohort.

    Returns
    -------
    list of dict
        Keys: ``n, d, f, device, rule, floor, seconds, floor_seconds, ratio,
        mean_seconds, dist_seconds, goal, byzantine_scale``.

    Raises
    ------
    ConfigError
        On an unknown rule, ``n < 4``, ``d < 1``, ``repeats < 1`` or a
        ``byzantine_scale`` that is not a finite float32 number.
    """
    dev = resolve_device(device)
    names = list(CASES) if rules is None else list(rules)
    unknown = [r for r in names if r not in CASES]
    if unknown:
        raise ConfigError(f"unknown benchmark rule(s) {unknown}; choose from {sorted(CASES)}")
    if repeats < 1:
        raise ConfigError(f"repeats must be >= 1, got repeats={repeats}")
    if any(n < 4 for n in ns) or any(d < 1 for d in ds):
        raise ConfigError(f"need every n >= 4 and d >= 1, got ns={list(ns)}, ds={list(ds)}")
    if byzantine_scale is not None and not 0 <= abs(byzantine_scale) <= torch.finfo(torch.float32).max:
        raise ConfigError(f"byzantine_scale must be a finite float32 number, got {byzantine_scale!r}")
    rows: list[dict[str, Any]] = []
    # one untimed pass on a small cohort: first-call costs (thread pools, caches, lazy
    # imports) must not land in the first timed cell
    small = torch.randn(min(ns), 1_000, generator=torch_generator(seed, 0)).to(dev)
    for name in names:
        CASES[name][1](min(ns), max(1, (min(ns) - 3) // 4), small, torch_generator(seed, 0, 1))(small)
    pairwise_sq_distances(small)
    for n in ns:
        for d in ds:
            data_gen = torch_generator(seed, n, d)
            x = torch.randn(n, d, generator=data_gen).to(dev)
            f = max(1, (n - 3) // 4)
            attacked = x if byzantine_scale is None else _with_byzantine_rows(x, f, byzantine_scale)
            calls: dict[str, Callable[[], Any]] = {
                "floor:mean": lambda x=x: x.mean(dim=0),
                "floor:dist": lambda x=x: pairwise_sq_distances(x),
            }
            for name in names:
                call = CASES[name][1](n, f, x, torch_generator(seed, n, d, 1))
                calls[name] = lambda call=call, x=attacked: call(x)
            best = _time_interleaved(calls, dev, repeats)
            floors = {"mean": best["floor:mean"], "dist": best["floor:dist"]}
            logger.info("n=%d d=%d floors: %s", n, d, floors)
            for name in names:
                floor = CASES[name][0]
                seconds = best[name]
                rows.append(
                    {
                        "n": n,
                        "d": d,
                        "f": f,
                        "device": str(dev),
                        "rule": name,
                        "floor": floor,
                        "seconds": seconds,
                        "floor_seconds": floors[floor],
                        "ratio": seconds / floors[floor],
                        "mean_seconds": floors["mean"],
                        "dist_seconds": floors["dist"],
                        "goal": GOAL.get(name),
                        "byzantine_scale": byzantine_scale,
                    }
                )
                logger.info("n=%d d=%d %s: %.4fs (x%.2f %s)", n, d, name, seconds, rows[-1]["ratio"], floor)
            del x, attacked, calls
    return rows


def _with_byzantine_rows(x: torch.Tensor, f: int, scale: float) -> torch.Tensor:
    """``x`` with rows ``0..f-1`` set to ``+scale`` (even rows) and ``-scale`` (odd rows)."""
    out = x.clone()
    out[:f:2] = scale
    out[1:f:2] = -scale
    return out


def _ratio_table(rows: list[dict[str, Any]]) -> Table:
    configs = sorted({(r["n"], r["d"]) for r in rows})
    names = list(dict.fromkeys(r["rule"] for r in rows))
    by = {(r["rule"], r["n"], r["d"]): r for r in rows}
    title = f"robust rules: time / floor ({rows[0]['device']})"
    if rows[0].get("byzantine_scale") is not None:
        title += f", f rows at +/-{rows[0]['byzantine_scale']:g}"
    table = Table(title=title, title_justify="left")
    table.add_column("rule", style="bold")
    table.add_column("floor")
    for n, d in configs:
        table.add_column(f"n={n}\nd={d:.0e}", justify="right")
    for name in names:
        cells = []
        for n, d in configs:
            r = by.get((name, n, d))
            if r is None:
                cells.append("")
                continue
            text = f"{r['ratio']:.2f}"
            if r["goal"] is not None:
                text = f"[{'green' if r['ratio'] <= r['goal'] else 'red'}]{text}[/]"
            cells.append(text)
        table.add_row(name, by[(name, *configs[0])]["floor"] if (name, *configs[0]) in by else "", *cells)
    floor_row = {}
    for n, d in configs:
        any_row = next(r for r in rows if r["n"] == n and r["d"] == d)
        floor_row[(n, d)] = f"{any_row['mean_seconds'] * 1e3:.2f} / {any_row['dist_seconds'] * 1e3:.2f}"
    table.add_row("[dim]floors ms (mean / dist)[/]", "", *[floor_row[c] for c in configs])
    return table


def write_outputs(rows: list[dict[str, Any]], out: Path) -> list[Path]:
    """Write ``bench_robust.csv`` and ``bench_robust.json`` (rows plus environment) under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / "bench_robust.csv"
    with csv_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    json_path = out / "bench_robust.json"
    meta = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    json_path.write_text(json.dumps({"environment": meta, "rows": rows}, indent=2))
    return [csv_path, json_path]


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``robust`` subcommand (``flsec bench robust``) to ``subparsers``."""
    p = subparsers.add_parser("robust", help="robust rules: time / floor vs n and d")
    p.add_argument("--ns", type=comma_ints, default=[10, 50, 100], help="clients, e.g. 10,50,100")
    p.add_argument("--ds", type=comma_ints, default=[10_000, 100_000, 1_000_000], help="model sizes")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds per cell (best of)")
    p.add_argument("--rules", type=comma_names, default=None, help=f"subset of {','.join(CASES)}")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--byzantine-scale",
        type=float,
        default=None,
        help="set the first f rows to +/- this value (e.g. 3e38) to time the overflow-safe paths",
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--out", type=Path, default=Path("runs/bench_robust"))
    p.set_defaults(func=main)
    return p


def main(args: argparse.Namespace) -> int:
    """Run the benchmark from parsed arguments; prints the ratio table and writes the outputs."""
    apply_threads(args.threads)
    rows = run_robust_bench(
        ns=args.ns,
        ds=args.ds,
        device=args.device,
        repeats=args.repeats,
        rules=args.rules,
        seed=args.seed,
        byzantine_scale=args.byzantine_scale,
    )
    Console(width=max(100, 30 + 12 * len({(r["n"], r["d"]) for r in rows}))).print(_ratio_table(rows))
    for path in write_outputs(rows, args.out):
        logger.info("wrote %s", path)
    missed = [r for r in rows if r["goal"] is not None and r["ratio"] > r["goal"]]
    for r in missed:
        logger.warning("%s at n=%d d=%d: x%.2f > goal x%.1f", r["rule"], r["n"], r["d"], r["ratio"], r["goal"])
    return 0
