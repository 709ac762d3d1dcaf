"""Run the cells of an FM suite: federated fine-tuning of MiniLM under FM attacks and FM defenses.

One cell is a short sequence of stages; what an FM attack or FM defense does at each
is its stage hook (:mod:`benchmarks.fm.hooks`): choose the FMs (the compromised one for
``compromised-fm``, the public set's labeller for ``fm-public-data``); look at them
before any text is encoded (``trigger-scan`` strips flagged tokens from every text);
encode every dataset as prefix features (see :mod:`fl_core.foundation.split`) and build
the model (``reinit-top`` re-initialises its top layers); let the server work before
round 0 (``fm-public-data`` pre-trains on the FM-labelled public set); run the rounds
with the cell's pipeline and server optimiser (``clip-dp``, a robust rule;
``fm-public-data`` with ``server_training = "every-round"`` trains on the public set
after every aggregation), recording clean accuracy and attack success after every
round; apply post-training defenses (``fine-pruning``) and record the final figures.
Each finished cell is written at once, so an interrupted suite resumes where it stopped.
"""

from __future__ import annotations

import logging
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from rich.console import Console

from benchmarks.fm.hooks import CellContext, Scores, cell_hooks
from benchmarks.fm.prepare import FMPipeline
from benchmarks.fm.spec import FMSuiteSpec
from benchmarks.suite.spec import Cell
from benchmarks.suite.store import ResultStore
from fl_core import Federation, RoundRecord, __version__, load_dataset, make_clients
from fl_core.data.dataset import ArrayDataset
from fl_core.errors import ConfigError
from fl_core.foundation import TopClassifier
from fl_core.pipeline import Pipeline

__all__ = ["run_fm_cell", "run_fm_suite"]

log = logging.getLogger(__name__)

T = TypeVar("T")
#: called after every round with the round's record and its attack success rate
OnRound = Callable[[RoundRecord, float], None]


def _clients_as_one(data: list[ArrayDataset]) -> tuple[ArrayDataset, list[np.ndarray]]:
    """Concatenate the clients' datasets; return it with each client's index array into it."""
    x = torch.cat([d.x for d in data])
    y = torch.cat([d.y for d in data])
    bounds = np.cumsum([0, *[len(d) for d in data]])
    parts = [np.arange(bounds[i], bounds[i + 1]) for i in range(len(data))]
    return ArrayDataset(x=x, y=y, num_classes=data[0].num_classes, name="bbc-news-clients"), parts


def _only(values: Sequence[T | None], stage: str, cell: Cell) -> T | None:
    """The one non-None answer of the hooks at ``stage`` (None if none); two are a conflict."""
    given = [v for v in values if v is not None]
    if len(given) > 1:
        raise ConfigError(f"cell {cell.cell_id}: both the attack and the defense set the {stage}")
    return given[0] if given else None


def _round_record(rec: RoundRecord, asr: float) -> dict[str, Any]:
    """One round of the result: the federation's record plus the attack success rate."""
    return {
        "round_idx": rec.round_idx,
        "test_accuracy": rec.test_accuracy,
        "attack_success_rate": asr,
        "train_loss": rec.train_loss,
        "kept": list(rec.kept),
        "seconds": rec.seconds,
        "metrics": rec.metrics,
    }


def _federate(
    ctx: CellContext, model: TopClassifier, pipeline: Pipeline, on_round: OnRound | None
) -> tuple[Federation, list[dict[str, Any]]]:
    """Run the setting's rounds of federated fine-tuning; return the federation and the per-round records.

    Parameters
    ----------
    ctx : CellContext
        The cell, with its encoded data.
    model : TopClassifier
        The global model (trained in place by the federation).
    pipeline : Pipeline
        The round's aggregation.
    on_round : callable or None
        Called with each round's record and its attack success rate.

    Returns
    -------
    tuple of (Federation, list of dict)
        The federation after the last round and one record per round.
    """
    s, data = ctx.setting, ctx.encoded()
    train, parts = _clients_as_one(data.clients)
    fed = Federation(
        model=model,
        clients=make_clients(train, parts),
        test_data=data.test,
        clients_per_round=s.clients,
        local=ctx.training(epochs=s.local_epochs),
        pipeline=pipeline,
        seed=ctx.seed,
        device=s.device,
    )
    rounds: list[dict[str, Any]] = []

    def record(rec: RoundRecord) -> None:
        asr = ctx.asr(fed.model, device=s.device)
        rounds.append(_round_record(rec, asr))
        if on_round is not None:
            on_round(rec, asr)

    fed.run(rounds=s.rounds, on_round=record)
    return fed, rounds


def _result(
    ctx: CellContext, spec: FMSuiteSpec, rounds: list[dict[str, Any]], final: Scores, seconds: float
) -> dict[str, Any]:
    """The cell's JSON-ready result."""
    cell, s = ctx.cell, spec.setting
    a, d = cell.attack, cell.defense
    return {
        "suite": spec.name,
        "kind": "fm",
        "cell_id": cell.cell_id,
        "attack": {"name": a.name, "label": a.label, "params": a.params},
        "defense": {"name": d.name, "label": d.label, "params": d.params},
        "seed": cell.seed,
        "order": [spec.attacks.index(a), spec.defenses.index(d)],
        "setting": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(s).items()},
        "versions": {"flsec": __version__, "python": platform.python_version(), "torch": torch.__version__},
        "seconds": seconds,
        "info": ctx.info,
        "rounds": rounds,
        "summary": {
            "final_accuracy": final.accuracy,
            "final_asr": final.asr,
            "max_asr": max(r["attack_success_rate"] for r in rounds),
            "accuracy_before_posthoc": rounds[-1]["test_accuracy"],
            "asr_before_posthoc": rounds[-1]["attack_success_rate"],
        },
    }


def run_fm_cell(cell: Cell, spec: FMSuiteSpec, pipe: FMPipeline, *, on_round: OnRound | None = None) -> dict[str, Any]:
    """Run one cell through the stages of its attack's and defense's hooks (:mod:`benchmarks.fm.hooks`).

    Parameters
    ----------
    cell : Cell
        The attack, defense and seed.
    spec : FMSuiteSpec
        The validated suite (its setting, and the grid for the cell's ``order``).
    pipe : FMPipeline
        The FMs, data carve-out and feature cache of the cell's seed.
    on_round : callable or None
        Called after every round with the round's record and attack success rate.

    Returns
    -------
    dict
        The JSON-ready result: per-round records, what the hooks reported (``info``) and the summary.
    """
    t0 = time.perf_counter()
    hooks = cell_hooks(cell)
    ctx = CellContext.create(cell, spec.setting, pipe)
    for h in hooks:
        h.choose_models(ctx)
    ctx.info.update(base_fm=ctx.base[0], data_fm=ctx.data_fm[0] if ctx.data_fm else None)
    for h in hooks:
        h.before_encoding(ctx)
    ctx.encode_all()
    model = ctx.new_model()
    for h in hooks:
        h.init_model(ctx, model)
    for h in hooks:
        h.before_training(ctx, model)
    optimizer = _only([h.server_optimizer(ctx, model) for h in hooks], "server optimiser", cell)
    pipeline = _only([h.round_pipeline(ctx, optimizer) for h in hooks], "round pipeline", cell)
    if pipeline is None:
        pipeline = Pipeline(rule=None, optimizer=optimizer, seed=cell.seed)
    fed, rounds = _federate(ctx, model, pipeline, on_round)
    last = Scores(accuracy=rounds[-1]["test_accuracy"], asr=rounds[-1]["attack_success_rate"])
    final = _only([h.after_training(ctx, fed.model) for h in hooks], "final scores", cell)
    return _result(ctx, spec, rounds, last if final is None else final, time.perf_counter() - t0)


def run_fm_suite(
    spec: FMSuiteSpec, *, out: str | Path, progress: bool = True, console: Console | None = None
) -> list[dict[str, Any]]:
    """Run every cell not already in ``out``; return all results (old and new) in grid order."""
    store = ResultStore(out)
    store.check_owner(spec.source)
    cells = spec.cells()
    todo = [c for c in cells if not store.done(c.cell_id)]
    console = console or Console(stderr=True)
    pipes: dict[int, FMPipeline] = {}
    split = load_dataset("bbc-news") if todo else None
    store.claim(spec.source)  # created only once the data loaded
    for i, cell in enumerate(todo):
        if cell.seed not in pipes:
            pipes[cell.seed] = FMPipeline.create(split, spec.setting, seed=cell.seed, artifacts=Path(out) / "artifacts")

        def on_round(rec, asr, _id=cell.cell_id) -> None:
            if progress:
                console.print(
                    f"  {_id} round {rec.round_idx}: acc {rec.test_accuracy:.3f} asr {asr:.3f} ({rec.seconds:.1f}s)"
                )

        result = run_fm_cell(cell, spec, pipes[cell.seed], on_round=on_round)
        store.write(cell.cell_id, result)
        sm = result["summary"]
        if progress:
            console.print(
                f"[{i + 1}/{len(todo)}] {cell.cell_id}: acc {sm['final_accuracy']:.3f} "
                f"asr {sm['final_asr']:.3f} ({result['seconds']:.0f}s)"
            )
    by_id = {r["cell_id"]: r for r in store.load_all()}
    return [by_id[c.cell_id] for c in cells if c.cell_id in by_id]
