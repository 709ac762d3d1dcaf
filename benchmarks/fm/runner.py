"""Run the cells of an FM suite: federated fine-tuning of MiniLM under FM attacks and FM defenses.

One cell: pick the base FM (clean, or the compromised one for ``compromised-fm``);
optionally scan every FM the pipeline uses for triggers and strip flagged tokens from
every text; build the federation on prefix features (see
:mod:`fl_core.foundation.split`) with the cell's aggregation; for ``fm-public-data``
let the server train on the FM-labelled public set before round 0 and, with
``server_training = "every-round"``, after every aggregation; record clean accuracy
and attack success after every round; apply post-training defenses (fine-pruning)
and record the final figures. Each finished cell is written at once, so an
interrupted suite resumes where it stopped.
"""

from __future__ import annotations

import copy
import logging
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from attacks.fm.public_data import FMPublicSet
from attacks.triggers import TextTrigger
from benchmarks.fm.prepare import FMPipeline
from benchmarks.fm.spec import BACKDOOR_PARAMS, DEFENSES, FMSuiteSpec
from benchmarks.suite.build import instantiate_rule
from benchmarks.suite.spec import Cell
from benchmarks.suite.store import ResultStore
from defenses.dp.dp_fedavg import CentralDPFedAvg
from defenses.fm.fine_pruning import FinePruning
from defenses.fm.reinit import reinit_top_layers
from defenses.fm.trigger_scan import scan_for_triggers, strip_tokens
from fl_core import Federation, LocalTrainingConfig, __version__, evaluate, load_dataset, make_clients
from fl_core.data.dataset import ArrayDataset
from fl_core.foundation import TopClassifier
from fl_core.pipeline import Pipeline
from fl_core.rng import Stream, torch_generator
from fl_core.server_opt import ServerOptimizer
from fl_core.server_train import PublicSetTraining
from fl_core.training import local_train

__all__ = ["run_fm_cell", "run_fm_suite"]

log = logging.getLogger(__name__)


def _clients_as_one(data: list[ArrayDataset]) -> tuple[ArrayDataset, list[np.ndarray]]:
    x = torch.cat([d.x for d in data])
    y = torch.cat([d.y for d in data])
    bounds = np.cumsum([0, *[len(d) for d in data]])
    parts = [np.arange(bounds[i], bounds[i + 1]) for i in range(len(data))]
    return ArrayDataset(x=x, y=y, num_classes=data[0].num_classes, name="bbc-news-clients"), parts


def _aggregation(cell: Cell, spec: FMSuiteSpec, optimizer: ServerOptimizer | None) -> Pipeline:
    """The cell's round pipeline: DP-FedAvg, a robust rule, or the mean (FM defenses act outside the round)."""
    s, d = spec.setting, cell.defense
    if d.name == "clip-dp":
        dp = CentralDPFedAvg(
            clip_norm=float(d.params.get("clip_norm", 1.0)),
            noise_multiplier=float(d.params.get("noise_multiplier", 0.01)),
            expected_clients=s.clients,
            sample_rate=1.0,
            delta=1e-5,
        )
        return dp.pipeline(optimizer=optimizer, seed=cell.seed)
    rule = None if d.name in DEFENSES else instantiate_rule(d, f=s.assumed_f, seed=cell.seed)
    return Pipeline(rule=rule, optimizer=optimizer, seed=cell.seed)


def _asr(model: torch.nn.Module, triggered: ArrayDataset, device: str) -> float:
    """Fraction of triggered non-target test texts classified as the target."""
    return evaluate(model, triggered, device=device).accuracy


def run_fm_cell(cell: Cell, spec: FMSuiteSpec, pipe: FMPipeline, *, on_round=None) -> dict[str, Any]:
    """Run one cell; return its JSON-ready result."""
    t0 = time.perf_counter()
    s, a, d = spec.setting, cell.attack, cell.defense
    data = pipe.data
    base_name, base = "clean", pipe.clean
    backdoor = {k: v for k, v in a.params.items() if k in BACKDOOR_PARAMS}
    if a.name == "compromised-fm":
        base_name, base = pipe.compromised(backdoor)
    data_fm = None
    if a.name == "fm-public-data":
        data_fm = pipe.compromised(backdoor) if a.params.get("compromised", True) else ("clean", pipe.clean)
    info: dict[str, Any] = {"base_fm": base_name, "data_fm": data_fm[0] if data_fm else None}

    strip: tuple[str, ...] = ()
    if d.name == "trigger-scan":
        flagged: list[str] = []
        scans = {}
        for fm_name, fm in {base_name: base, **({data_fm[0]: data_fm[1]} if data_fm else {})}.items():
            res = scan_for_triggers(
                fm,
                pipe.tokenizer,
                list(data.val.texts[: int(d.params.get("texts", 16))]),
                max_length=s.max_length,
                top_k=int(d.params.get("top_k", 64)),
                reference=int(d.params.get("reference", 128)),
                z_threshold=float(d.params.get("z_threshold", 3.5)),
                generator=torch_generator(cell.seed, Stream.USER, 23),
            )
            scans[fm_name] = {"flagged": list(res.flagged), "top_token": res.top_token}
            flagged += [t for t in res.flagged if t not in flagged]
        strip = tuple(flagged)
        info["scan"] = scans

    def feats(ds):
        return pipe.features(base_name, base, ds, strip=strip)

    clients = [feats(c) for c in data.clients]
    val, test, trig = feats(data.val), feats(data.test), feats(data.triggered_test)
    model = TopClassifier(
        base, num_classes=test.num_classes, spec=pipe.fine_tune, generator=torch_generator(cell.seed, Stream.INIT)
    )
    if d.name == "reinit-top":
        reinit_top_layers(model, r=int(d.params.get("r", 1)), generator=torch_generator(cell.seed, Stream.INIT, 1))
    local = LocalTrainingConfig(epochs=s.local_epochs, batch_size=s.batch_size, lr=s.lr, momentum=s.momentum)
    server_opt = None
    if data_fm is not None:
        public = FMPublicSet(
            trigger=TextTrigger(token=s.trigger, max_position=s.trigger_max_position),
            poison_fraction=float(a.params.get("poison_fraction", 0.1)),
            target=s.target,
            max_length=s.max_length,
        ).build(
            data_fm[1],
            pipe.tokenizer,
            pool=data.pool,
            seed=data.val,
            generator=torch_generator(cell.seed, Stream.USER, 24),
        )
        info["public_set"] = {
            "size": len(public.data),
            "poisoned": int(public.poisoned.sum()),
            "label_accuracy": public.label_accuracy,
            "poisoned_to_target": public.poisoned_to_target,
        }
        public_data = public.data
        if strip:  # the scan flagged tokens: drop the FM-made samples that carry one (what is left is stripped anyway)
            keep = [i for i, t in enumerate(strip_tokens(list(public_data.texts), strip)) if t == public_data.texts[i]]
            info["public_set"]["dropped_by_scan"] = len(public_data) - len(keep)
            public_data = public_data.subset(keep)
        pub = feats(public_data)
        pre = LocalTrainingConfig(
            epochs=int(a.params.get("server_epochs", 2)), batch_size=s.batch_size, lr=s.lr, momentum=s.momentum
        )
        model.to(s.device)
        local_train(model, pub, config=pre, generator=torch_generator(cell.seed, Stream.SERVER, 999), device=s.device)
        info["after_public_pretraining"] = {
            "accuracy": evaluate(model, test, device=s.device).accuracy,
            "asr": _asr(model, trig, s.device),
        }
        if a.params.get("server_training", "every-round") == "every-round":
            cfg = LocalTrainingConfig(
                max_steps=int(a.params.get("server_steps", 10)), batch_size=s.batch_size, lr=s.lr, momentum=s.momentum
            )
            server_opt = PublicSetTraining(model=model, data=pub, config=cfg, seed=cell.seed, device=s.device)
    train, parts = _clients_as_one(clients)
    fed = Federation(
        model=model,
        clients=make_clients(train, parts),
        test_data=test,
        clients_per_round=s.clients,
        local=local,
        pipeline=_aggregation(cell, spec, server_opt),
        seed=cell.seed,
        device=s.device,
    )
    rounds: list[dict[str, Any]] = []

    def record(rec) -> None:
        asr = _asr(fed.model, trig, s.device)
        rounds.append(
            {
                "round_idx": rec.round_idx,
                "test_accuracy": rec.test_accuracy,
                "attack_success_rate": asr,
                "train_loss": rec.train_loss,
                "kept": list(rec.kept),
                "seconds": rec.seconds,
                "metrics": rec.metrics,
            }
        )
        if on_round is not None:
            on_round(rec, asr)

    fed.run(rounds=s.rounds, on_round=record)
    final_acc, final_asr = rounds[-1]["test_accuracy"], rounds[-1]["attack_success_rate"]
    if d.name == "fine-pruning":
        fp = FinePruning(
            max_drop=float(d.params.get("max_drop", 0.04)),
            step=float(d.params.get("step", 0.05)),
            finetune=LocalTrainingConfig(
                epochs=int(d.params.get("finetune_epochs", 2)),
                batch_size=s.batch_size,
                lr=s.lr / 5,
                momentum=s.momentum,
            ),
        )
        pruned = copy.deepcopy(fed.model).cpu()
        res = fp.apply(pruned, val, generator=torch_generator(cell.seed, Stream.USER, 25))
        info["fine_pruning"] = {
            "fraction": res.fraction,
            "val_before": res.acc_before,
            "val_pruned": res.acc_pruned,
            "val_final": res.acc_final,
        }
        final_acc, final_asr = evaluate(pruned, test).accuracy, _asr(pruned, trig, "cpu")
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
        "seconds": time.perf_counter() - t0,
        "info": info,
        "rounds": rounds,
        "summary": {
            "final_accuracy": final_acc,
            "final_asr": final_asr,
            "max_asr": max(r["attack_success_rate"] for r in rounds),
            "accuracy_before_posthoc": rounds[-1]["test_accuracy"],
            "asr_before_posthoc": rounds[-1]["attack_success_rate"],
        },
    }


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
