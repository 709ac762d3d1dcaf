"""``flsec bench ray``: a small suite and a 50-client cohort round, sequentially and on a local Ray.

* **suite**: the same suite (default: 4 cells on Fashion-MNIST, 20 clients, all sampled,
  4 rounds, with the privacy probe: a fifth of a ``standard`` cell; or ``--suite FILE|NAME``) run by
  :func:`benchmarks.suite.runner.run_suite` in this process with 1 and with ``--cpus``
  torch threads, and by :func:`benchmarks.suite.ray_runner.run_suite_ray` on a local
  Ray of ``--cpus`` CPUs, one CPU and one thread per cell (``--cpus`` cells at once).
  The Ray time is the run's wall time after ``ray.init`` (worker start-up included);
  the start of Ray itself is reported beside it.
* **cohort**: one federation of ``--clients`` clients, all sampled every round, trained
  sequentially at 1 thread and with :class:`fl_core.cohort_ray.RayCohortExecutor`
  (one CPU and one thread per client): seconds of each round (local training, the
  pipeline and the evaluation); round 0 on Ray includes putting the model and the
  data into the object store and starting the workers.

Both check that the Ray results equal the 1-thread sequential ones (timings aside).

Examples
--------
>>> canonical([{"seconds": 1.0, "rounds": [{"seconds": 2.0, "acc": 0.5}]}])
['{"rounds": [{"acc": 0.5}]}']
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from benchmarks.suite.spec import SuiteSpec, load_suite, parse_suite
from fl_core.errors import ConfigError

__all__ = ["bench_cohort", "bench_suite", "canonical", "main", "register"]

log = logging.getLogger(__name__)

BENCH_SUITE = """
name = "bench-ray"
description = "4 cells for flsec bench ray"
[setting]
dataset = "fashion-mnist"
clients = 20
clients_per_round = 20
rounds = 4
seeds = [0]
malicious_fraction = 0.2
[[attacks]]
name = "none"
[[attacks]]
name = "ipm"
[[defenses]]
name = "mean"
[[defenses]]
name = "median"
"""


def canonical(results: list[dict[str, Any]]) -> list[str]:
    """Results as sorted JSON without their wall-clock times (``seconds`` at any depth)."""
    def strip(v):
        if isinstance(v, dict):
            return {k: strip(x) for k, x in v.items() if k != "seconds"}
        return [strip(x) for x in v] if isinstance(v, list) else v

    return [json.dumps(strip(r), sort_keys=True) for r in results]


class _threads:
    def __init__(self, n: int) -> None:
        self.n = n

    def __enter__(self) -> None:
        self.old = torch.get_num_threads()
        torch.set_num_threads(self.n)

    def __exit__(self, *exc) -> None:
        torch.set_num_threads(self.old)


def bench_suite(spec: SuiteSpec, *, cpus: int, workdir: Path) -> dict[str, Any]:
    """Wall seconds of ``spec`` sequentially (1 and ``cpus`` threads) and on a local Ray of ``cpus`` CPUs."""
    from benchmarks.suite.ray_runner import run_suite_ray
    from benchmarks.suite.runner import run_suite
    from fl_core.cohort_ray import ray_session

    out: dict[str, Any] = {"suite": spec.name, "cells": len(spec.cells()), "cpus": cpus}
    with _threads(1):
        t = time.perf_counter()
        seq = run_suite(spec, out=workdir / "seq1", progress=False)
        out["sequential_1_thread_s"] = time.perf_counter() - t
    with _threads(cpus):
        t = time.perf_counter()
        run_suite(spec, out=workdir / f"seq{cpus}", progress=False)
        out[f"sequential_{cpus}_threads_s"] = time.perf_counter() - t
    out["cell_s"] = [r["seconds"] for r in seq]
    t = time.perf_counter()
    with _threads(1), ray_session(None, num_cpus=cpus):
        out["ray_init_s"] = time.perf_counter() - t
        t = time.perf_counter()
        par = run_suite_ray(spec, out=workdir / "ray", cpus_per_cell=1, progress=False)
        out["ray_s"] = time.perf_counter() - t
    out["identical"] = canonical(seq) == canonical(par)
    return out


def bench_cohort(*, clients: int, rounds: int, cpus: int, dataset: str = "fashion-mnist") -> dict[str, Any]:
    """Seconds per round of a ``clients``-client federation (all sampled), sequentially and on Ray."""
    from fl_core import Federation, LocalTrainingConfig, load_dataset, make_clients, partition
    from fl_core.cohort_ray import RayCohortExecutor, ray_session
    from fl_core.rng import numpy_generator

    split = load_dataset(dataset)
    parts = partition(split.train.labels, scheme="iid", n_clients=clients, generator=numpy_generator(0))

    def federation(executor=None) -> Federation:
        return Federation(model_name="mlp", clients=make_clients(split.train, parts), test_data=split.test,
                          clients_per_round=clients, seed=0, executor=executor,
                          local=LocalTrainingConfig(epochs=1, batch_size=32, lr=0.05, momentum=0.9))

    out: dict[str, Any] = {"dataset": split.train.name, "clients": clients, "examples_per_client": len(parts[0]),
                           "rounds": rounds, "cpus": cpus}
    with _threads(1):
        seq = federation()
        seq.run(rounds=rounds)
        out["sequential_round_s"] = [r.seconds for r in seq.history.records]
        with ray_session(None, num_cpus=cpus):
            par = federation(RayCohortExecutor(num_cpus=1, threads=1))
            par.run(rounds=rounds)
        out["ray_round_s"] = [r.seconds for r in par.history.records]
    out["identical"] = torch.equal(seq.global_params, par.global_params) and [
        r.deterministic_view() for r in seq.history.records] == [r.deterministic_view() for r in par.history.records]
    return out


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``flsec bench ray``."""
    p = subparsers.add_parser("ray", help="a small suite and a 50-client cohort round: sequential vs a local Ray")
    p.add_argument("--suite", default=None, help="a suite file or built-in name (default: 4 Fashion-MNIST cells)")
    p.add_argument("--clients", type=int, default=50, help="clients of the cohort benchmark, all sampled (default 50)")
    p.add_argument("--rounds", type=int, default=2, help="rounds of the cohort benchmark (default 2)")
    p.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray, and threads of the fast sequential run")
    p.add_argument("--skip", choices=("suite", "cohort"), default=None, help="leave one of the two out")
    p.add_argument("--out", type=Path, default=Path("runs/bench_ray"))
    p.set_defaults(func=main)
    return p


def main(args: argparse.Namespace) -> int:
    """Run both, print one table, write ``bench_ray.json``."""
    for name in ("clients", "rounds", "cpus"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name} must be >= 1, got {getattr(args, name)}")
    spec = load_suite(args.suite) if args.suite else parse_suite(BENCH_SUITE)
    report: dict[str, Any] = {}
    table = Table(title=f"sequential vs a local Ray of {args.cpus} CPUs (1 CPU and 1 thread per task)",
                  title_justify="left")
    for col in ("", "sequential 1 thread", f"sequential {args.cpus} threads", "Ray", "speed-up (1 thread)",
                "identical"):
        table.add_column(col, justify="left" if not col else "right")
    if args.skip != "suite":
        with tempfile.TemporaryDirectory(prefix="flsec-bench-ray-") as tmp:
            s = report["suite"] = bench_suite(spec, cpus=args.cpus, workdir=Path(tmp))
        table.add_row(f"suite {s['suite']}: {s['cells']} cells (s)", f"{s['sequential_1_thread_s']:.1f}",
                      f"{s[f'sequential_{args.cpus}_threads_s']:.1f}",
                      f"{s['ray_s']:.1f} (+{s['ray_init_s']:.1f} init)",
                      f"{s['sequential_1_thread_s'] / s['ray_s']:.2f}x", str(s["identical"]))
    if args.skip != "cohort":
        c = report["cohort"] = bench_cohort(clients=args.clients, rounds=args.rounds, cpus=args.cpus)
        seq, par = c["sequential_round_s"], c["ray_round_s"]
        table.add_row(f"cohort of {args.clients} clients, round 0 (s)", f"{seq[0]:.1f}", "", f"{par[0]:.1f}",
                      f"{seq[0] / par[0]:.2f}x", str(c["identical"]))
        if len(seq) > 1:
            s_rest, p_rest = sum(seq[1:]) / len(seq[1:]), sum(par[1:]) / len(par[1:])
            table.add_row("  later rounds, mean (s)", f"{s_rest:.1f}", "", f"{p_rest:.1f}",
                          f"{s_rest / p_rest:.2f}x", "")
    Console().print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_ray.json").write_text(json.dumps(report, indent=2))
    return 0
