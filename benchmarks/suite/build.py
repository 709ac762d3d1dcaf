"""Turn a validated suite cell into live objects: the defense, the attack plan, the federation."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from attacks import AttackEnv, AttackPlan, AttackSchedule, ThreatModel, attack_parameters, build_attack
from benchmarks.suite.defense import build_defense, build_pipeline, instantiate_rule
from benchmarks.suite.schema import Cell, ComponentSpec, Setting, SuiteError
from fl_core import (
    DataSplit,
    Federation,
    LocalTrainingConfig,
    build_model,
    build_server_optimizer,
    make_clients,
    partition,
)
from fl_core.aggregation import Aggregator, WeightedMean
from fl_core.data.dataset import ArrayDataset, TextDataset
from fl_core.errors import FlsecError
from fl_core.params import num_params
from fl_core.pipeline import Pipeline
from fl_core.rng import Stream, numpy_generator, torch_generator
from fl_core.root_update import RootDatasetUpdate

__all__ = [
    "CellRun",
    "attack_env",
    "attack_params",
    "build_cell",
    "build_defense",
    "instantiate_rule",
    "local_config",
    "preflight_attacks",
    "preflight_model",
]

def attack_env(train: ArrayDataset | TextDataset) -> AttackEnv:
    """What an attack knows of the task: classes, image shape, the trigger's pixel value."""
    image = isinstance(train, ArrayDataset)
    return AttackEnv(
        num_classes=train.num_classes,
        image_shape=tuple(train.x.shape[1:]) if image else None,
        trigger_value=float(train.x.max()) if image else 1.0,
    )


def preflight_attacks(attacks: Sequence[ComponentSpec], setting: Setting, train: ArrayDataset | TextDataset) -> None:
    """Build every attack of the grid on the real data once, before any cell runs.

    A value its constructor refuses (a target class out of range, a negative scale)
    raises :class:`~benchmarks.suite.schema.SuiteError` naming ``attacks[i]``.
    """
    env = attack_env(train)
    threat = ThreatModel(malicious=frozenset({0}), omniscient=setting.omniscient)
    for i, a in enumerate(attacks):
        try:  # adaptive attacks (Fang, optimal ALIE/IPM) need a defense to probe: the mean stands in for the cell's
            build_attack(a.name, threat=threat, env=env, aggregator=WeightedMean(), **a.params)
        except (FlsecError, TypeError) as exc:
            raise SuiteError(f"attacks[{i}]", f"attack {a.label!r} cannot be built: {exc}") from None


def attack_params(cell: Cell) -> dict[str, Any]:
    """The cell's attack parameters; an attack with its own ``seed`` (A3FL's trigger search, the edge-case
    split, Mimic's direction) takes the cell's seed unless the suite fixes one, so seeds resample it too.

    Examples
    --------
    >>> from benchmarks.suite.schema import Cell, ComponentSpec
    >>> mean = ComponentSpec("mean", "mean")
    >>> attack_params(Cell(ComponentSpec("mimic", "mimic", {"warmup": 2}), mean, 3))
    {'warmup': 2, 'seed': 3}
    >>> (attack_params(Cell(ComponentSpec("mimic", "mimic", {"seed": 7}), mean, 3)),
    ...  attack_params(Cell(ComponentSpec("ipm", "ipm"), mean, 3)))
    ({'seed': 7}, {})
    """
    params = dict(cell.attack.params)
    if "seed" in attack_parameters(cell.attack.name):
        params.setdefault("seed", cell.seed)
    return params


def local_config(setting: Setting) -> LocalTrainingConfig:
    """The clients' local training: FedSGD (one gradient step, McMahan et al. 2017) or local SGD epochs.

    ``full_batch`` makes the batch the client's whole dataset.

    Examples
    --------
    >>> local_config(Setting(fedsgd=True, full_batch=True, lr=0.1)).max_steps
    1
    """
    batch = None if setting.full_batch else setting.batch_size
    if setting.fedsgd:
        return LocalTrainingConfig.fedsgd(lr=setting.lr, batch_size=batch)
    return LocalTrainingConfig(epochs=setting.local_epochs, batch_size=batch, lr=setting.lr, momentum=setting.momentum)


def preflight_model(setting: Setting) -> None:
    """Build the setting's model for its dataset's input shape once, before any work.

    Raises
    ------
    SuiteError
        Naming ``setting.model`` if the model does not suit the data (``lenet5`` on 8x8 digits).
    """
    from fl_core import load_dataset

    train = load_dataset(setting.dataset, path=setting.data_path).train
    if not isinstance(train, ArrayDataset):  # text data: its models take strings, built with the suite
        return
    try:
        build_model(setting.model, input_shape=tuple(train.x.shape[1:]), num_classes=train.num_classes,
                    generator=torch_generator(0, Stream.INIT))
    except FlsecError as exc:
        raise SuiteError("setting.model", f"{setting.model!r} cannot run on {setting.dataset!r}: {exc}") from None


@dataclass
class CellRun:
    federation: Federation
    plan: AttackPlan
    defense: Aggregator
    test: object
    probe: Callable[[], Pipeline]


def build_cell(cell: Cell, setting: Setting, split: DataSplit) -> CellRun:
    """Partition, sample the attackers, build the defense and the attack, and the federation."""
    seed = cell.seed
    train = split.train
    malicious_fraction = 0.0 if cell.attack.name == "none" else setting.malicious_fraction
    threat = ThreatModel.sample(
        n_clients=setting.clients,
        fraction=malicious_fraction,
        generator=numpy_generator(seed, Stream.USER, 1),
        omniscient=setting.omniscient,
        schedule=AttackSchedule(start=setting.attack_start, end=setting.attack_end, every=setting.attack_every),
    )
    model = build_model(
        setting.model,
        input_shape=tuple(train.x.shape[1:]),
        num_classes=train.num_classes,
        generator=torch_generator(seed, Stream.INIT),
    )
    local = local_config(setting)
    # FLTrust's root dataset: root_size samples drawn from the training data (Cao et al. 2021)
    root_idx = numpy_generator(seed, Stream.USER, 2).choice(
        len(train), size=min(setting.root_size, len(train)), replace=False
    )
    server_update = RootDatasetUpdate(
        model=model, data=train.subset(np.sort(root_idx)), config=local, seed=seed, device=setting.device
    )
    d = num_params(model)

    def pipeline() -> Pipeline:  # a fresh one each call: the cell's, and the privacy probe's
        return build_pipeline(cell.defense, setting=setting, d=d, seed=seed,
                              optimizer=build_server_optimizer(setting.server_opt, lr=setting.server_lr),
                              server_update=server_update, model=model, input_shape=tuple(train.x.shape[1:]))

    base = pipeline()
    env = attack_env(train)
    plan = build_attack(cell.attack.name, threat=threat, env=env, aggregator=base.aggregator, **attack_params(cell))
    # the clients' data: an edge-case attack's low-density region is held out of every client (Wang et al. 2020)
    clients_train = train
    if plan.exclude_train is not None:
        clients_train = train.subset(np.setdiff1d(np.arange(len(train)), plan.exclude_train(train)))
    parts = partition(
        clients_train.labels,
        scheme=setting.partition,
        n_clients=setting.clients,
        alpha=setting.alpha,
        shards_per_client=setting.shards_per_client,
        gamma=setting.gamma_similarity,
        generator=numpy_generator(seed, Stream.PARTITION),
    )
    fed = Federation(
        model=model,
        clients=make_clients(clients_train, parts, hooks=plan.hooks),
        test_data=split.test,
        clients_per_round=setting.m,
        local=local,
        pipeline=base.with_attack(plan.update_transform) if plan.update_transform is not None else base,
        seed=seed,
        device=setting.device,
    )
    return CellRun(federation=fed, plan=plan, defense=fed.pipeline.aggregator, test=split.test, probe=pipeline)
