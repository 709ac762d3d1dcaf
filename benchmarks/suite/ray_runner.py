"""Run a suite's cells as Ray tasks, on this machine or a cluster; the same store, resume and results.

``flsec suite run NAME --ray [ADDRESS]`` calls :func:`run_suite_ray`. Each cell not
yet in ``OUT/cells/`` becomes one Ray task that asks for ``cpus_per_cell`` CPUs (and
``gpus_per_cell`` of a GPU when the suite's device is CUDA) and runs
:func:`benchmarks.suite.runner.run_cell` with ``threads`` torch threads. The driver
(this process) writes each result through :class:`~benchmarks.suite.store.ResultStore`
as it arrives, so a crash, a Ctrl-C or a lost worker loses at most the cells that were
running, and the same command resumes. A cell's seed is in the cell, so its result is
the sequential run's (to the bit when both use the same number of torch threads:
``flsec suite run NAME --threads 1`` and ``--ray`` with its default of one CPU per cell).
The privacy probe of each defense's column runs once, as a task of its own, from the
column's first cell (the cell the sequential run computes and caches it in), unless a
finished cell of the column holds it already; the column's cells wait for it.

The dataset goes to the object store once and is deserialised once per worker. Before
anything is submitted, the address must answer (bounded) and some node must have a
cell's resources; a worker that dies is retried ``max_retries`` times, then the run
stops with an error naming the cell (nothing half-written: only the driver writes,
atomically).

Examples
--------
>>> from benchmarks.suite.spec import parse_suite
>>> spec = parse_suite('[setting]\\ndataset = "digits"\\nclients = 4\\nrounds = 1\\n'
...                    '[[attacks]]\\nname = "none"\\n[[defenses]]\\nname = "mean"\\n')
>>> run_suite_ray(spec, out="unused", cpus_per_cell=0)
Traceback (most recent call last):
...
fl_core.errors.ConfigError: cpus_per_cell must be an integer >= 1, got 0
>>> import tempfile; out = tempfile.mkdtemp()  # on a new local Ray (starts Ray: not run here)
>>> [r["summary"]["final_accuracy"] > 0.3 for r in run_suite_ray(spec, out=out)]  # doctest: +SKIP
[True]
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from benchmarks.suite.build import build_cell, preflight_attacks, preflight_model
from benchmarks.suite.runner import done_cells, probe_exposure, run_cell, stored_exposures, suite_progress
from benchmarks.suite.spec import Cell, SuiteSpec
from benchmarks.suite.store import ResultStore
from fl_core import load_dataset
from fl_core.cohort_ray import as_completed, check_resources, get_once_per_worker, ray_session
from fl_core.errors import ConfigError

__all__ = ["run_suite_ray"]

log = logging.getLogger(__name__)

#: GPU share of a cell when the suite runs on CUDA and ``gpus_per_cell`` is not given.
DEFAULT_GPUS_PER_CELL = 0.25


def _exposure_key(cell: Cell) -> tuple[str, int]:
    return (cell.defense.label, cell.seed)  # run_cell's cache key: the probe of a defense's column


def _probe_task(cell: Cell, spec: SuiteSpec, split_box: list, threads: int) -> dict[str, Any]:
    """The privacy probe of ``cell``'s column on a Ray worker (what the sequential run caches)."""
    import ray
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(threads)
    split = get_once_per_worker(ray, split_box[0])
    with threadpool_limits(limits=threads):
        return probe_exposure(build_cell(cell, spec.setting, split), cell, spec.setting)


def _cell_task(cell: Cell, spec: SuiteSpec, split_box: list, threads: int, cell_fn: Callable,
               probe: dict[str, Any] | None) -> dict[str, Any]:
    """One cell on a Ray worker: the dataset from the object store (once per worker), ``threads`` threads."""
    import ray
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(threads)
    split = get_once_per_worker(ray, split_box[0])
    exposure = None if probe is None else {_exposure_key(cell): probe}
    with threadpool_limits(limits=threads):
        return cell_fn(cell, spec, split, exposure=exposure)


def _gpus(spec: SuiteSpec, gpus_per_cell: float | None, cluster_gpus: float) -> float:
    device = spec.setting.device
    cuda = device.startswith("cuda") or (device == "auto" and cluster_gpus > 0)
    if not cuda:
        if gpus_per_cell:
            raise ConfigError(f"gpus_per_cell={gpus_per_cell:g} needs a CUDA suite, but setting.device is {device!r}")
        return 0.0
    return DEFAULT_GPUS_PER_CELL if gpus_per_cell is None else gpus_per_cell


def run_suite_ray(
    spec: SuiteSpec,
    *,
    out: str | Path,
    address: str | None = None,
    cpus_per_cell: int = 1,
    gpus_per_cell: float | None = None,
    threads: int | None = None,
    max_retries: int = 2,
    timeout_s: float | None = None,
    connect_timeout_s: float = 10.0,
    progress: bool = True,
    console: Console | None = None,
    cell_fn: Callable[..., dict[str, Any]] = run_cell,
) -> list[dict[str, Any]]:
    """Run every cell not already in ``out`` as a Ray task; return all results of the suite (old and new).

    Parameters
    ----------
    spec : SuiteSpec
        A validated image suite.
    out : str or Path
        The results directory (the same as :func:`benchmarks.suite.runner.run_suite`'s).
    address : str, optional
        The cluster (see :func:`fl_core.cohort_ray.ray_session`): ``None`` starts a local
        Ray (or uses the one this process is connected to), ``"HOST:PORT"`` the head
        ``ray start --head`` started, ``"ray://HOST:PORT"``, ``"auto"``.
    cpus_per_cell : int
        CPUs a cell asks Ray for (>= 1).
    gpus_per_cell : float, optional
        GPU share of a cell on a CUDA suite (``0 < g``; default 0.25); refused on CPU.
    threads : int, optional
        torch and BLAS threads in a cell (default ``cpus_per_cell``).
    max_retries : int
        Times Ray re-runs a cell whose worker died (>= 0) before the run stops.
    timeout_s : float, optional
        Bound on the whole run (> 0); ``None``: no bound but the cells' own (every wait polls).
    connect_timeout_s : float
        Bound on the check that ``address`` answers.
    progress : bool
        Show a progress bar of the cells done across the cluster.
    console : rich Console, optional
        Where the bar goes (default: stderr).
    cell_fn : callable
        What runs a cell, ``cell_fn(cell, spec, split, exposure=...)`` (default
        :func:`~benchmarks.suite.runner.run_cell`; tests inject faults here).

    Raises
    ------
    fl_core.cohort_ray.RayClusterError
        The address does not answer, no node has a cell's resources (before anything is
        submitted or created), a cell's worker died more than ``max_retries`` times, or
        ``timeout_s`` ran out. Cells finished before stay in ``out``.
    """
    if not (isinstance(cpus_per_cell, int) and not isinstance(cpus_per_cell, bool) and cpus_per_cell >= 1):
        raise ConfigError(f"cpus_per_cell must be an integer >= 1, got {cpus_per_cell!r}")
    if gpus_per_cell is not None and not (isinstance(gpus_per_cell, int | float) and math.isfinite(gpus_per_cell)
                                          and gpus_per_cell > 0):
        raise ConfigError(f"gpus_per_cell must be > 0, got {gpus_per_cell!r}")
    threads = cpus_per_cell if threads is None else threads
    if not (isinstance(threads, int) and not isinstance(threads, bool) and threads >= 1):
        raise ConfigError(f"threads per cell must be an integer >= 1, got {threads!r}")
    if not (isinstance(max_retries, int) and max_retries >= 0):
        raise ConfigError(f"max_retries must be an integer >= 0, got {max_retries!r}")
    if timeout_s is not None and not (isinstance(timeout_s, int | float) and timeout_s > 0):
        raise ConfigError(f"timeout_s must be > 0, got {timeout_s!r}")
    store = ResultStore(out)
    store.check_owner(spec.source)
    cells = spec.cells()
    todo = [c for c in cells if not store.done(c.cell_id)]
    if todo:
        split = load_dataset(spec.setting.dataset, path=spec.setting.data_path)
        preflight_attacks(spec.attacks, spec.setting, split.train)
        preflight_model(spec.setting)
        with ray_session(address, connect_timeout_s=connect_timeout_s) as ray:
            gpus = _gpus(spec, gpus_per_cell, float(ray.cluster_resources().get("GPU", 0.0)))
            check_resources({"CPU": cpus_per_cell, "GPU": gpus}, what=f"a cell of suite {spec.name!r}")
            store.claim(spec.source)
            _run_on_ray(ray, spec, store, cells, todo, split, cpus=cpus_per_cell, gpus=gpus, threads=threads,
                        max_retries=max_retries, timeout_s=timeout_s, progress=progress,
                        console=console or Console(stderr=True), cell_fn=cell_fn)
    else:
        store.claim(spec.source)
    by_id = {r["cell_id"]: r for r in store.load_all()}
    return [by_id[c.cell_id] for c in cells if c.cell_id in by_id]


def _run_on_ray(ray, spec: SuiteSpec, store: ResultStore, cells: list[Cell], todo: list[Cell], split, *, cpus: int,
                gpus: float, threads: int, max_retries: int, timeout_s: float | None, progress: bool,
                console: Console, cell_fn: Callable) -> None:
    log.info("suite %s: %d cells, %d to run on Ray (%d CPU%s per cell, %d threads)", spec.name, len(cells), len(todo),
             cpus, f", {gpus:g} GPU" if gpus else "", threads)
    t0 = time.perf_counter()
    split_box = [ray.put(split)]  # the dataset goes to the object store once
    task = ray.remote(_cell_task).options(num_cpus=cpus, num_gpus=gpus, max_retries=max_retries,
                                          retry_exceptions=False)
    probes: dict[tuple[str, int], Any] = {}
    if spec.setting.exposure:  # one probe per column: a finished cell's, or one task from the column's first cell
        probes.update(stored_exposures(store, done_cells(cells, todo)))
        probe_task = ray.remote(_probe_task).options(num_cpus=cpus, num_gpus=gpus, max_retries=max_retries,
                                                     retry_exceptions=False)
        needed = {_exposure_key(c) for c in todo}
        for cell in cells:
            if _exposure_key(cell) in needed and _exposure_key(cell) not in probes:
                probes[_exposure_key(cell)] = probe_task.remote(cell, spec, split_box, threads)
    refs = [task.remote(cell, spec, split_box, threads, cell_fn, probes.get(_exposure_key(cell))) for cell in todo]
    with suite_progress(console, progress) as bar:
        overall = bar.add_task(f"suite {spec.name} on Ray", total=len(cells), completed=len(cells) - len(todo),
                               status=f"{len(todo)} queued")
        last = [""]

        def on_poll(pending: int) -> None:
            bar.update(overall, status=f"{pending} to go{last[0]}")

        for i, result in as_completed(refs, timeout_s=timeout_s, retries=max_retries, on_poll=on_poll,
                                      describe=lambda i: f"cell {todo[i].cell_id}"):
            store.write(todo[i].cell_id, result)  # as it arrives: a killed run loses only the running cells
            s = result["summary"]
            last[0] = f"; last: {todo[i].cell_id} acc {s['final_accuracy']:.3f}"
            bar.update(overall, advance=1)
    log.info("suite %s: %d cells in %.1f s on Ray", spec.name, len(todo), time.perf_counter() - t0)
