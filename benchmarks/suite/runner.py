"""Run every cell of a suite, writing each finished cell at once; re-running resumes.

Examples
--------
>>> from benchmarks.suite.spec import parse_suite
>>> spec = parse_suite('[setting]\\ndataset = "digits"\\nclients = 4\\nrounds = 1\\n'
...                    '[[attacks]]\\nname = "none"\\n[[defenses]]\\nname = "mean"\\n')
>>> import tempfile; out = tempfile.mkdtemp()
>>> [r["summary"]["final_accuracy"] > 0.3 for r in run_suite(spec, out=out, progress=False)]
[True]
"""

from __future__ import annotations

import json
import logging
import platform
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from attacks import AttackSchedule, attack_success_rate, detection_rates
from benchmarks.suite.build import CellRun, build_cell, preflight_attacks, preflight_model
from benchmarks.suite.exposure import measure_exposure
from benchmarks.suite.spec import Cell, Setting, SuiteSpec
from benchmarks.suite.store import ResultStore
from fl_core import __version__ as flsec_version
from fl_core import evaluate, load_dataset
from fl_core.errors import InvalidUpdateError

__all__ = ["done_cells", "run_cell", "run_suite", "stored_exposures"]

log = logging.getLogger(__name__)


def _versions() -> dict[str, str]:
    return {
        "flsec": flsec_version,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
    }


def suite_progress(console: Console, progress: bool) -> Progress:
    """The suite's progress display: one bar of cells done, with a status column and the elapsed time."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[status]}"), TimeElapsedColumn(), console=console, disable=not progress)


def summarize(rounds: list[dict[str, Any]], malicious: list[int], setting: Setting) -> dict[str, Any]:
    """Final accuracy and attack success, and detection rates.

    The true-positive rate is averaged over the attack's rounds with an attacker in the cohort (outside them
    the malicious clients behave honestly); the false-positive rate over every round.
    """
    schedule = AttackSchedule(start=setting.attack_start, end=setting.attack_end, every=setting.attack_every)
    attack_rounds = [
        r for r in rounds if malicious and schedule.active(r["round_idx"]) and set(r["client_ids"]) & set(malicious)
    ]
    tprs = [r["detection_tpr"] for r in attack_rounds if r["detection_tpr"] is not None]
    last = next((r["metrics"] for r in reversed(rounds) if r.get("metrics")), {})
    fprs = [r["detection_fpr"] for r in rounds if r["detection_fpr"] is not None]
    asrs = [r["attack_success_rate"] for r in rounds if r["attack_success_rate"] is not None]
    return {
        "final_accuracy": rounds[-1]["test_accuracy"],
        "final_asr": asrs[-1] if asrs else None,
        "max_asr": max(asrs) if asrs else None,
        "mean_tpr": float(np.mean(tprs)) if tprs else None,
        "mean_fpr": float(np.mean(fprs)) if fprs else None,
        "attack_rounds": len(attack_rounds),
        "epsilon": epsilon_spent(last),
    }


def epsilon_spent(metrics: dict[str, Any]) -> float | None:
    """The epsilon the round's DP stage reports (central, distributed, or the worst client under local DP);
    ``inf`` for a DP stage without noise, ``None`` for a pipeline without DP."""
    for key in ("dp_epsilon", "dp_local_max_epsilon"):
        if key in metrics:
            v = metrics[key]
            return float("inf") if v in ("inf", None) else float(v)
    return None


def probe_exposure(run: CellRun, cell: Cell, setting: Setting) -> dict[str, Any]:
    """The server's reconstruction of an honest client's image from what the cell's pipeline shows it.

    A fresh pipeline of the cell's defense (no attack) runs one probe round on the initial
    model with the first round's cohort (:func:`benchmarks.suite.exposure.measure_exposure`).
    """
    fed = run.federation
    cohort = fed.sample_clients(0)
    honest = [i for i, c in enumerate(cohort) if c.id not in run.plan.threat.malicious]
    return measure_exposure(pipeline=run.probe(), model=fed.model, clients=[c.data for c in cohort],
                            client_ids=[c.id for c in cohort], lr=setting.lr, seed=cell.seed, target=honest[0])


def _diverged_round(fed, split, plan, exc: Exception) -> dict[str, Any]:
    """The record of a round the noise or an attack drove to NaN/Inf: the model as it stood, and why."""
    r = len(fed.history)
    ev = evaluate(fed.model, split.test, device=fed.device)
    asr = attack_success_rate(fed.model, split.test, plan.backdoor, device=fed.device) if plan.backdoor else None
    log.warning("round %d diverged: %s", r, exc)
    return {"round_idx": r, "client_ids": [], "kept": [], "test_accuracy": ev.accuracy, "test_loss": ev.loss,
            "train_loss": None, "metrics": {}, "attack_success_rate": asr, "detection_tpr": None,
            "detection_fpr": None, "diverged": str(exc)}


def run_cell(cell: Cell, spec: SuiteSpec, split, *, on_round=None, exposure: dict | None = None) -> dict[str, Any]:
    """Run one cell and return its JSON-ready result.

    ``exposure`` caches the privacy probe by (defense, seed): it runs before any attack,
    on the initial model, so it is the same in every row of a defense's column.
    A round that diverges (NaN/Inf updates) ends the cell early; the result records it.
    """
    t0 = time.perf_counter()
    run = build_cell(cell, spec.setting, split)
    fed, plan = run.federation, run.plan
    malicious = sorted(plan.threat.malicious)
    rounds: list[dict[str, Any]] = []
    probe = None
    if spec.setting.exposure:
        key = (cell.defense.label, cell.seed)
        cache = exposure if exposure is not None else {}
        probe = cache[key] = cache[key] if key in cache else probe_exposure(run, cell, spec.setting)

    def record(rec) -> None:
        asr = attack_success_rate(fed.model, split.test, plan.backdoor, device=fed.device) if plan.backdoor else None
        det = detection_rates(client_ids=rec.client_ids, kept=rec.kept, malicious=malicious)
        rounds.append(
            {
                **asdict(rec),
                "attack_success_rate": asr,
                "detection_tpr": det.tpr,
                "detection_fpr": det.fpr,
            }
        )
        if on_round is not None:
            on_round(rec, asr)

    try:
        fed.run(rounds=spec.setting.rounds, on_round=record)
    except InvalidUpdateError as exc:  # noise or an attack drove the model to NaN/Inf
        rounds.append(_diverged_round(fed, split, plan, exc))
    return {
        "suite": spec.name,
        "cell_id": cell.cell_id,
        "attack": asdict(cell.attack),
        "defense": asdict(cell.defense),
        "seed": cell.seed,
        "order": [spec.attacks.index(cell.attack), spec.defenses.index(cell.defense)],
        "setting": asdict(spec.setting),
        "dataset": split.train.name,
        "malicious": malicious,
        "versions": _versions(),
        "seconds": time.perf_counter() - t0,
        "rounds": rounds,
        "exposure": probe,
        "summary": summarize(rounds, malicious, spec.setting),
    }


def stored_exposures(store: ResultStore, done: list[Cell]) -> dict[tuple[str, int], dict[str, Any]]:
    """The privacy probes of the finished cells ``done``, by (defense label, seed): a resumed run reuses its column's.

    A column's probe is computed once, in its first cell to run; reusing the stored one
    keeps a resumed run's results those of an uninterrupted run.
    """
    probes: dict[tuple[str, int], dict[str, Any]] = {}
    for cell in done:
        probe = json.loads(store.path(cell.cell_id).read_text()).get("exposure")
        if probe is not None:
            probes.setdefault((cell.defense.label, cell.seed), probe)
    return probes


def done_cells(cells: list[Cell], todo: list[Cell]) -> list[Cell]:
    """The cells of ``cells`` not in ``todo``, in suite order."""
    ids = {c.cell_id for c in todo}
    return [c for c in cells if c.cell_id not in ids]


def run_suite(
    spec: SuiteSpec, *, out: str | Path, progress: bool = True, console: Console | None = None
) -> list[dict[str, Any]]:
    """Run every cell not already in ``out``; return all results of the suite (old and new)."""
    store = ResultStore(out)
    store.check_owner(spec.source)
    cells = spec.cells()
    todo = [c for c in cells if not store.done(c.cell_id)]
    if todo:  # everything that can fail on the data is checked before OUT is created
        split = load_dataset(spec.setting.dataset, path=spec.setting.data_path)
        preflight_attacks(spec.attacks, spec.setting, split.train)
        preflight_model(spec.setting)
    store.claim(spec.source)
    console = console or Console(stderr=True)
    log.info("suite %s: %d cells, %d to run", spec.name, len(cells), len(todo))
    with suite_progress(console, progress) as bar:
        overall = bar.add_task(f"suite {spec.name}", total=len(cells), completed=len(cells) - len(todo), status="")
        exposure: dict = stored_exposures(store, done_cells(cells, todo)) if spec.setting.exposure else {}
        for cell in todo:
            rounds_task = bar.add_task(f"  {cell.cell_id}", total=spec.setting.rounds, status="")

            def on_round(rec, asr, _task=rounds_task) -> None:
                status = f"acc {rec.test_accuracy:.3f}" + (f" asr {asr:.3f}" if asr is not None else "")
                bar.update(_task, advance=1, status=status)

            result = run_cell(cell, spec, split, on_round=on_round, exposure=exposure)
            store.write(cell.cell_id, result)
            bar.remove_task(rounds_task)
            s = result["summary"]
            bar.update(overall, advance=1, status=f"last: {cell.cell_id} acc {s['final_accuracy']:.3f}")
    by_id = {r["cell_id"]: r for r in store.load_all()}
    return [by_id[c.cell_id] for c in cells if c.cell_id in by_id]
