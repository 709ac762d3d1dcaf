"""``flsec bench two-server``: cost of the two-server protocol against floors measured in the same run.

For each number of clients ``n`` and model size ``d`` the benchmark draws one cohort
(seeded): ``n - f`` honest rows ``N(0, 1/d)`` (norm about 1), and ``f = max(1, (n - 3) // 4)``
outliers -- row 0 at three times the norm bound (the servers' validation rejects it),
the others one common direction at half the bound (accepted; the rule must deal with
them). The norm bound is ten times the honest norm. For every rule it runs one
in-memory :class:`~secure_agg.twoserver.TwoServerRound` (real keys, sealed frames,
real bytes; ``--repeats`` rounds, the minimum of each time kept) and measures, in the
same process:

* times: mean client time, each server's online and offline time, the dealer's time;
* bytes: client upload, server-to-server in each direction, dealer-to-server;
* ratios: the larger online server time over the plaintext rule's time on the same
  cohort as a float32 torch tensor (``rule(updates)``, best of ``--plain-repeats``);
  client upload over ``4 d`` (a float32 update); server-to-server bytes (both
  directions) over ``8 n d`` (one cohort of ring words); the larger online server
  time over SecAgg+'s server time (:class:`~secure_agg.aggregator.SecAggPlusAggregator`,
  one round per ``(n, d)``, weighted mean, no dropout);
* with ``--floors``, the floor of the online server time (:mod:`benchmarks.bench_twoserver_floor`: one
  opening's local work plus S1's share of the rule's product, measured once per ``(n, d)``) and its ratio
  to the plaintext rule: a goal below ``floor/plain`` cannot be met by tuning this design;
* the peak resident memory of the process during the rule's rounds, and its growth over the
  resident size when the rounds started, in cohorts (``mem/cohort``; a lower bound when an
  earlier, larger configuration left freed memory in the allocator, so read it at large sizes).

A verdict column compares each row with the goals (:data:`GOALS`, stated for
``n = 100, d = 1e6``). A configuration whose projected peak memory
(:data:`MEM_COHORTS` ring cohorts, measured) exceeds the available memory is skipped
and listed as such, as is SecAgg+ above ``--secagg-max`` cells.

Run it with ``flsec bench two-server``; it prints rich tables and writes
``bench_twoserver.csv`` and ``bench_twoserver.json`` under ``--out``.

Examples
--------
>>> report = run_twoserver_bench(ns=[5], ds=[200], rules=["norm_bound"], secagg_max=0)
>>> row = report["rows"][0]
>>> row["rule"], row["status"], row["accepted"], row["client_upload_B"] - 8 * 200 < 300
('norm_bound', 'ok', 4, True)
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import gc
import json
import logging
import math
import os
import platform
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from benchmarks.bench_twoserver_floor import floor_seconds, measure_floors
from benchmarks.cli_args import comma_ints, comma_names
from benchmarks.threads import apply_threads
from defenses.robust import FLAME, NNM, CenteredClipping, Compose, FLTrust, Krum, MultiKrum, NormBound
from fl_core.aggregation import Aggregator
from fl_core.errors import ConfigError
from fl_core.geometry import Needs
from fl_core.rng import numpy_generator, torch_generator
from secure_agg.aggregator import SecAggPlusAggregator
from secure_agg.twoserver import TwoServerParams, TwoServerRound

__all__ = [
    "DEFAULT_RULES",
    "GOALS",
    "MEM_COHORTS",
    "RULES",
    "main",
    "make_cohort",
    "register",
    "run_twoserver_bench",
    "write_outputs",
]

logger = logging.getLogger(__name__)

#: Goals of the issue at ``n = 100, d = 1e6``: online server time over the plaintext rule
#: (per rule), client upload over a float32 update, server-to-server bytes (both
#: directions) over one cohort of ring words ``8 n d``.
GOALS: dict[str, Any] = {
    "online_over_plain": {
        "krum": 20.0,
        "multi_krum": 20.0,
        "flame": 20.0,
        "norm_bound": 5.0,
        "fltrust": 5.0,
        "centered_clipping": 5.0,
    },
    "upload_over_f32": 2.05,
    "peer_over_cohort": 4.0,
    "at": {"n": 100, "d": 1_000_000},
}

#: Peak resident memory of one in-memory round (both servers, the dealer, the clients' frames) in cohorts of
#: ``8 n d`` bytes: about 4.1 measured at n=100, d=1e6 with the openings streamed per column block (wire v2; the
#: process's whole RSS, interpreter and data included; it was 8-9 before); 6 leaves room. Used to skip what
#: cannot fit.
MEM_COHORTS = 6.0
#: Memory of the interpreter with torch and the data, added to the projection (bytes).
_BASE_BYTES = 1.0e9

#: Ratio of the norm bound to the honest norm, of the first outlier's norm to the bound,
#: and of the other outliers' norm to the bound.
BOUND_OVER_HONEST = 10.0
_FAR_OUTLIER = 3.0
_NEAR_OUTLIER = 0.5

RuleFactory = Callable[[int, torch.Tensor, torch.Generator], Aggregator]


def _fltrust(f: int, g0: torch.Tensor, g: torch.Generator) -> Aggregator:
    rule = FLTrust(f=f)
    rule.set_server_update(g0)
    return rule


#: name -> factory(f, g0, generator); the honest norm is 1, the bound 10.
RULES: dict[str, RuleFactory] = {
    "norm_bound": lambda f, g0, g: NormBound(f=f, M=2.0),
    "krum": lambda f, g0, g: Krum(f=f),
    "multi_krum": lambda f, g0, g: MultiKrum(f=f),
    "fltrust": _fltrust,
    "centered_clipping": lambda f, g0, g: CenteredClipping(f=f, tau=1.0),
    "flame": lambda f, g0, g: FLAME(f=f, lam=0.001, generator=g),
    "nnm_krum": lambda f, g0, g: Compose(NNM(f=f), Krum(f=f)),
}
#: The rules run unless ``--rules`` says otherwise (``nnm_krum`` has no goal and is opt-in).
DEFAULT_RULES = ("norm_bound", "krum", "multi_krum", "fltrust", "centered_clipping", "flame")

_DEFAULT_GRID = ((10, 50, 100), (10_000,))
_FULL_GRID = ((10, 50, 100), (10_000, 100_000, 1_000_000))


def make_cohort(n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray, float, int]:
    """The benchmark's cohort: honest rows, ``f`` outliers, the norm bound.

    Parameters
    ----------
    n, d : int
        Clients and model size.
    seed : int
        Seed of the data (the generator is keyed by ``(seed, n, d)``).

    Returns
    -------
    rows : np.ndarray
        ``(n, d)`` float64; rows ``f..n-1`` honest ``N(0, 1/d)`` (norm about 1), row 0 at
        three times the bound, rows ``1..f-1`` one common unit direction times half the bound.
    g0 : np.ndarray
        ``(d,)`` float64 root update for FLTrust: the honest mean plus small noise.
    bound : float
        The norm bound, ten times the honest norm (10).
    f : int
        ``max(1, (n - 3) // 4)``.

    Examples
    --------
    >>> rows, g0, bound, f = make_cohort(10, 400, 0)
    >>> rows.shape, bound, f, bool(np.linalg.norm(rows[0]) > bound), bool(np.linalg.norm(rows[5]) < 2)
    ((10, 400), 10.0, 1, True, True)
    """
    rng = numpy_generator(seed, n, d)
    f = max(1, (n - 3) // 4)
    rows = rng.standard_normal((n, d)) / math.sqrt(d)
    bound = BOUND_OVER_HONEST * 1.0
    direction = rng.standard_normal(d)
    direction /= np.linalg.norm(direction)
    rows[0] = rows[0] / np.linalg.norm(rows[0]) * (_FAR_OUTLIER * bound)
    rows[1:f] = direction * (_NEAR_OUTLIER * bound)
    g0 = rows[f:].mean(axis=0) + rng.standard_normal(d) * (0.1 / math.sqrt(d))
    return rows, g0, bound, f


class _PeakRSS:
    """Largest resident set size of this process while the block runs (sampled every 20 ms)."""

    def __init__(self, period: float = 0.02) -> None:
        self.period, self.peak = period, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def rss() -> int:
        try:
            with open("/proc/self/statm") as fh:
                return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            self._stop.wait(self.period)

    def __enter__(self) -> _PeakRSS:
        self.start = self.peak = self.rss()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())


def _mem_available() -> int | None:
    """``MemAvailable`` of ``/proc/meminfo`` in bytes (None where there is none)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _load() -> tuple[float, float, float] | None:
    try:
        return os.getloadavg()
    except OSError:
        return None


def _restart(rule: Aggregator) -> None:
    """Centered clipping's reference back to zero, so every call does the same work (other rules keep state)."""
    if isinstance(rule, CenteredClipping):
        rule.reset()


def _blas_info() -> list[int] | None:
    """Thread counts of the BLAS libraries NumPy loaded (None without threadpoolctl)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:  # pragma: no cover - a dependency of scikit-learn
        return None
    return [int(i["num_threads"]) for i in threadpool_info() if i.get("user_api") == "blas"]


def _best_plain(rule: Aggregator, updates: torch.Tensor, repeats: int) -> float:
    """Best time of ``rule(updates)`` over ``repeats`` calls after one warm-up (centered clipping restarts at 0)."""
    best = math.inf
    for rep in range(repeats + 1):
        _restart(rule)
        start = time.perf_counter()
        rule(updates)
        if rep:
            best = min(best, time.perf_counter() - start)
    return best


def _secagg(updates: torch.Tensor, clip: float, seed: int) -> dict[str, float]:
    """One SecAgg+ round (weighted mean, no dropout): its server time and the whole round's wall time."""
    agg = SecAggPlusAggregator(clip=clip, seed=seed)
    start = time.perf_counter()
    res = agg.aggregate(updates)
    wall = time.perf_counter() - start
    return {"secagg_server_s": float(res.metrics["server_seconds"]), "secagg_round_s": wall,
            "secagg_upload_B": float(res.metrics["bytes_client_to_server"]) / updates.shape[0]}


def _protocol(rule: Aggregator, rows: np.ndarray, bound: float, repeats: int, seed: int) -> dict[str, Any]:
    """``repeats`` two-server rounds; the minimum of each time, the bytes of the last round, the peak RSS."""
    n, d = rows.shape
    proto = TwoServerRound(bound=bound, d=d, rule=rule, seed=seed)
    best: dict[str, float] = {}
    with _PeakRSS() as mem:
        for rep in range(repeats):
            _restart(rule)
            out, cost = proto.run(rows, np.ones(n), round_id=rep + 1)
            sample = {
                "client_s": float(np.mean(cost.client_seconds)),
                "online_s0": cost.server_online[0],
                "online_s1": cost.server_online[1],
                "online_max_s": max(cost.server_online),
                "offline_s0": cost.server_offline[0],
                "offline_s1": cost.server_offline[1],
                "dealer_s": cost.dealer_seconds,
            }
            for key, v in sample.items():
                best[key] = min(best.get(key, math.inf), v)
            accepted, kept = int(out.accepted.sum()), int(out.decision.kept.sum())
            del out
            gc.collect()
    return {
        **best,
        "accepted": accepted,
        "kept": kept,
        "client_upload_B": float(np.mean(cost.client_bytes)),
        "peer_B_s0_to_s1": cost.peer_bytes[0],
        "peer_B_s1_to_s0": cost.peer_bytes[1],
        "peer_B_total": sum(cost.peer_bytes),
        "dealer_B_s0": cost.dealer_bytes[0],
        "dealer_B_s1": cost.dealer_bytes[1],
        "peak_rss_B": mem.peak,
        "peak_rss_extra_B": mem.peak - mem.start,
        "triples": len(proto.params.levels) + 1,
    }


def _verdicts(row: dict[str, Any]) -> dict[str, bool | None]:
    goal_time = GOALS["online_over_plain"].get(row["rule"])
    return {
        "online_over_plain": None if goal_time is None else row["online_over_plain"] <= goal_time,
        "upload_over_f32": row["upload_over_f32"] <= GOALS["upload_over_f32"],
        "peer_over_cohort": row["peer_over_cohort"] <= GOALS["peer_over_cohort"],
    }


def run_twoserver_bench(
    *,
    ns: Sequence[int] = _DEFAULT_GRID[0],
    ds: Sequence[int] = _DEFAULT_GRID[1],
    rules: Sequence[str] | None = None,
    repeats: int = 1,
    plain_repeats: int = 3,
    seed: int = 0,
    secagg_max: float = 1e8,
    mem_fraction: float = 0.8,
    mem_cohorts: float = MEM_COHORTS,
    floors: bool = False,
) -> dict[str, Any]:
    """Measure the two-server protocol for every ``(n, d)`` and rule.

    Parameters
    ----------
    ns, ds : sequence of int
        Numbers of clients (>= 5) and model sizes (>= 1).
    rules : sequence of str, optional
        Subset of :data:`RULES` (default :data:`DEFAULT_RULES`).
    repeats : int
        Protocol rounds per cell (the minimum of each time is kept).
    plain_repeats : int
        Timed plaintext calls per cell after one warm-up (best kept).
    seed : int
        Seed of the cohorts and of the randomised rules.
    secagg_max : float
        SecAgg+ runs only where ``n * d`` is at most this (0: never).
    mem_fraction : float
        A configuration runs only if ``mem_cohorts * 8 n d`` plus 1 GB is at most this
        fraction of the memory available when it starts.
    mem_cohorts : float
        Projected peak of one round in cohorts of ring words (default :data:`MEM_COHORTS`,
        measured on the protocol as of this module; lower it when the protocol holds less).
    floors : bool
        Also measure each ``(n, d)``'s floor (:func:`~benchmarks.bench_twoserver_floor.measure_floors`)
        and give every row ``floor_s`` and ``floor_over_plain``.

    Returns
    -------
    dict
        ``rows`` (one per ``(n, d, rule)``; ``status`` is ``ok`` or says why it was skipped),
        ``secagg`` (one per ``(n, d)``), ``goals``, ``environment`` (load, memory, wall time).

    Raises
    ------
    ConfigError
        On an unknown rule, ``n < 5``, ``d < 1`` or a repeat count below 1.
    """
    names = list(DEFAULT_RULES if rules is None else rules)
    unknown = [r for r in names if r not in RULES]
    if unknown:
        raise ConfigError(f"unknown two-server rule(s) {unknown}; choose from {sorted(RULES)}")
    if repeats < 1 or plain_repeats < 1:
        raise ConfigError(f"repeats must be >= 1, got repeats={repeats}, plain_repeats={plain_repeats}")
    if any(n < 5 for n in ns) or any(d < 1 for d in ds):
        raise ConfigError(f"need every n >= 5 and d >= 1, got ns={list(ns)}, ds={list(ds)}")
    if not 0 < mem_fraction <= 1 or not mem_cohorts >= 0:
        raise ConfigError(f"need mem_fraction in (0, 1] and mem_cohorts >= 0, got {mem_fraction}, {mem_cohorts}")
    started, load_start = time.perf_counter(), _load()
    rows: list[dict[str, Any]] = []
    secagg_rows: list[dict[str, Any]] = []
    for n in ns:
        for d in ds:
            cohort_B = 8 * n * d
            need, avail = mem_cohorts * cohort_B + _BASE_BYTES, _mem_available()
            base = {"n": n, "d": d, "f": max(1, (n - 3) // 4), "cohort_B": cohort_B, "projected_peak_B": need}
            if avail is not None and need > mem_fraction * avail:
                why = (f"skipped: projected peak {need / 2**30:.1f} GiB > {mem_fraction:.0%} of the "
                       f"{avail / 2**30:.1f} GiB available")
                logger.warning("two-server n=%d d=%d %s", n, d, why)
                rows += [{**base, "rule": name, "status": why} for name in names]
                secagg_rows.append({"n": n, "d": d, "status": why})
                continue
            rows_np, g0_np, bound, f = make_cohort(n, d, seed)
            updates = torch.from_numpy(rows_np.astype(np.float32))
            g0 = torch.from_numpy(g0_np.astype(np.float32))
            if n * d <= secagg_max:
                logger.info("two-server bench: SecAgg+ n=%d d=%d", n, d)
                sa = {"n": n, "d": d, "status": "ok", **_secagg(updates, bound, seed)}
            else:
                sa = {"n": n, "d": d, "status": f"skipped: n*d={n * d:.0e} > --secagg-max {secagg_max:.0e}"}
            secagg_rows.append(sa)
            floor = measure_floors(n, d, seed=seed) if floors else None
            for name in names:
                logger.info("two-server bench: n=%d d=%d %s", n, d, name)
                plain = _best_plain(RULES[name](f, g0, torch_generator(seed, n, d, 1)), updates, plain_repeats)
                prot = _protocol(RULES[name](f, g0, torch_generator(seed, n, d, 2)), rows_np, bound, repeats, seed)
                row: dict[str, Any] = {**base, "rule": name, "status": "ok", "bound": bound,
                                       "frac_bits": TwoServerParams.from_bound(d=d, bound=bound).frac_bits,
                                       "plain_s": plain, **prot}
                row["online_over_plain"] = row["online_max_s"] / plain
                if floor is not None:
                    gram = RULES[name](f, g0, torch_generator(seed, n, d, 1)).geometry_needs() >= Needs.GRAM
                    row.update({f"floor_{k}": v for k, v in floor.items()})
                    row["floor_s"] = floor_seconds(floor, gram=gram)
                    row["floor_over_plain"] = row["floor_s"] / plain
                row["upload_over_f32"] = row["client_upload_B"] / (4 * d)
                row["peer_over_cohort"] = row["peer_B_total"] / cohort_B
                row["peer_dir_over_cohort"] = max(row["peer_B_s0_to_s1"], row["peer_B_s1_to_s0"]) / cohort_B
                row["peak_extra_over_cohort"] = row["peak_rss_extra_B"] / cohort_B
                row["online_over_secagg"] = (row["online_max_s"] / sa["secagg_server_s"]
                                             if sa["status"] == "ok" else None)
                row["goals_met"] = _verdicts(row)
                rows.append(row)
                logger.info("n=%d d=%d %s: online %.3fs (x%.1f plaintext), peak RSS %.2f GiB", n, d, name,
                            row["online_max_s"], row["online_over_plain"], row["peak_rss_B"] / 2**30)
            del rows_np, updates, g0
            gc.collect()
    env = {
        "torch": torch.__version__,
        "numpy": np.__version__,
        "threads": torch.get_num_threads(),
        "blas_threads": _blas_info(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "load_start": load_start,
        "load_end": _load(),
        "mem_available_end_B": _mem_available(),
        "wall_s": time.perf_counter() - started,
    }
    return {"goals": GOALS, "rows": rows, "secagg": secagg_rows, "environment": env}


def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _verdict_text(row: dict[str, Any]) -> str:
    if row["status"] != "ok":
        return "[dim]" + row["status"] + "[/]"
    labels = {"online_over_plain": "time", "upload_over_f32": "up", "peer_over_cohort": "s2s"}
    parts = []
    for key, label in labels.items():
        met = row["goals_met"][key]
        if met is not None:
            parts.append(f"[{'green' if met else 'red'}]{label}: {'met' if met else 'not met'}[/]")
    return "; ".join(parts)


def _tables(report: dict[str, Any]) -> list[Table]:
    ratio = Table(title="two-server protocol: ratios (goals at n=100, d=1e6: time <= 20x plaintext for krum, "
                        "multi_krum, flame, <= 5x for the others; upload <= 2.05x float32; "
                        "server-to-server <= 4 cohorts)", title_justify="left")
    for label in ("n", "d", "rule", "acc", "online/plain", "goal", "floor/plain", "online/SecAgg+", "upload/f32",
                  "s2s/cohort", "1 dir/cohort", "mem/cohort", "verdict"):
        ratio.add_column(label, justify="left" if label in ("rule", "verdict") else "right")
    for r in report["rows"]:
        if r["status"] != "ok":
            ratio.add_row(str(r["n"]), f"{r['d']:.0e}", r["rule"], *[""] * 9, _verdict_text(r))
            continue
        goal = GOALS["online_over_plain"].get(r["rule"])
        ratio.add_row(str(r["n"]), f"{r['d']:.0e}", r["rule"], str(r["accepted"]), f"{r['online_over_plain']:.1f}",
                      _fmt(goal, ".0f"), _fmt(r.get("floor_over_plain"), ".1f"), _fmt(r["online_over_secagg"], ".1f"),
                      f"{r['upload_over_f32']:.4f}",
                      f"{r['peer_over_cohort']:.3f}", f"{r['peer_dir_over_cohort']:.3f}",
                      f"{r['peak_extra_over_cohort']:.1f}", _verdict_text(r))
    absolute = Table(title="two-server protocol: absolute figures (s: seconds, best of --repeats; B: bytes)",
                     title_justify="left")
    for label in ("n", "d", "rule", "plain ms", "online S0 s", "online S1 s", "offline S0/S1 s", "dealer s",
                  "client ms", "upload B", "S0->S1 MB", "S1->S0 MB", "dealer->S0/S1 B", "peak RSS GiB"):
        absolute.add_column(label, justify="left" if label == "rule" else "right")
    for r in report["rows"]:
        if r["status"] != "ok":
            continue
        absolute.add_row(str(r["n"]), f"{r['d']:.0e}", r["rule"], f"{r['plain_s'] * 1e3:.2f}",
                         f"{r['online_s0']:.3f}", f"{r['online_s1']:.3f}",
                         f"{r['offline_s0']:.3f} / {r['offline_s1']:.3f}", f"{r['dealer_s']:.3f}",
                         f"{r['client_s'] * 1e3:.2f}", f"{r['client_upload_B']:.0f}",
                         f"{r['peer_B_s0_to_s1'] / 1e6:.2f}", f"{r['peer_B_s1_to_s0'] / 1e6:.2f}",
                         f"{r['dealer_B_s0']} / {r['dealer_B_s1']}", f"{r['peak_rss_B'] / 2**30:.2f}")
    secagg = Table(title="SecAgg+ on the same cohorts (weighted mean, no dropout)", title_justify="left")
    for label in ("n", "d", "server s", "round s (all parties)", "upload B", "status"):
        secagg.add_column(label, justify="right")
    for s in report["secagg"]:
        ok = s["status"] == "ok"
        secagg.add_row(str(s["n"]), f"{s['d']:.0e}", f"{s['secagg_server_s']:.3f}" if ok else "",
                       f"{s['secagg_round_s']:.3f}" if ok else "", f"{s['secagg_upload_B']:.0f}" if ok else "",
                       s["status"])
    return [ratio, absolute, secagg]


def _flat(row: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in row.items() if k != "goals_met"}
    for key, met in row.get("goals_met", {}).items():
        out[f"goal_{key}"] = "" if met is None else ("met" if met else "not met")
    return out


def write_outputs(report: dict[str, Any], out: Path) -> list[Path]:
    """Write ``bench_twoserver.csv`` (one line per row) and ``bench_twoserver.json`` (the report) under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    flat = [_flat(r) for r in report["rows"]]
    fields = list(dict.fromkeys(k for r in flat for k in r))
    csv_path = out / "bench_twoserver.csv"
    with csv_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(flat)
    json_path = out / "bench_twoserver.json"
    json_path.write_text(json.dumps(report, indent=2))
    return [csv_path, json_path]


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``two-server`` subcommand (``flsec bench two-server``) to ``subparsers``."""
    p = subparsers.add_parser("two-server", help="two-server secret-shared rounds: time, bytes, ratios vs n and d")
    p.add_argument("--ns", "--n", type=comma_ints, default=None,
                   help=f"clients, e.g. 10,50 (default {','.join(map(str, _DEFAULT_GRID[0]))})")
    p.add_argument("--ds", "--d", type=comma_ints, default=None,
                   help=f"model sizes, e.g. 10000 (default {','.join(map(str, _DEFAULT_GRID[1]))})")
    p.add_argument("--full", action="store_true",
                   help="the whole grid n in 10,50,100 x d in 1e4,1e5,1e6 (--ns/--ds still restrict it)")
    p.add_argument("--rules", type=comma_names, default=None,
                   help=f"subset of {','.join(RULES)} (default {','.join(DEFAULT_RULES)})")
    p.add_argument("--repeats", type=int, default=1, help="protocol rounds per cell (min of each time)")
    p.add_argument("--plain-repeats", type=int, default=3, help="timed plaintext calls per cell (best of)")
    p.add_argument("--secagg-max", type=float, default=1e8,
                   help="run SecAgg+ only where n*d is at most this (0: never)")
    p.add_argument("--mem-fraction", type=float, default=0.8,
                   help="skip a configuration whose projected peak exceeds this fraction of the available memory")
    p.add_argument("--mem-cohorts", type=float, default=MEM_COHORTS,
                   help="projected peak of one round in cohorts of 8 n d bytes (measured: about 4 at n=100, d=1e6)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None,
                   help="torch and NumPy BLAS threads (default: their own choice; 1 is steadier on a shared box)")
    p.add_argument("--floors", action="store_true",
                   help="also measure the floor of the online server time (one opening plus S1's product) per n, d")
    p.add_argument("--out", type=Path, default=Path("runs/bench_twoserver"))
    p.set_defaults(func=main)
    return p


def _blas_threads(threads: int | None) -> contextlib.AbstractContextManager:
    """Limit NumPy's BLAS threads (the protocol's ring products) like torch's, if threadpoolctl is there."""
    if threads is None:
        return contextlib.nullcontext()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - a dependency of scikit-learn
        logger.warning("threadpoolctl is missing: NumPy's BLAS keeps its own thread count")
        return contextlib.nullcontext()
    return threadpool_limits(limits=threads, user_api="blas")


def main(args: argparse.Namespace) -> int:
    """Run the benchmark from parsed arguments; prints the tables and writes the outputs."""
    apply_threads(args.threads)
    grid = _FULL_GRID if args.full else _DEFAULT_GRID
    with _blas_threads(args.threads):
        report = run_twoserver_bench(
            ns=args.ns or grid[0],
            ds=args.ds or grid[1],
            rules=args.rules,
            repeats=args.repeats,
            plain_repeats=args.plain_repeats,
            seed=args.seed,
            secagg_max=args.secagg_max,
            mem_fraction=args.mem_fraction,
            mem_cohorts=args.mem_cohorts,
            floors=args.floors,
        )
    report["environment"]["threads_option"] = args.threads
    console = Console(width=max(215, Console().width))
    for table in _tables(report):
        console.print(table)
    env = report["environment"]
    loads = [" ".join(f"{v:.2f}" for v in x) if x else "?" for x in (env["load_start"], env["load_end"])]
    console.print(f"wall {env['wall_s']:.1f} s; load average (1, 5, 15 min) {loads[0]} at the start, {loads[1]} "
                  f"at the end; {env['cpus']} CPUs, {env['threads']} torch threads; mem/cohort: peak RSS growth "
                  "during the rounds over 8 n d bytes (a lower bound after a larger configuration)")
    for path in write_outputs(report, args.out):
        logger.info("wrote %s", path)
    return 0
