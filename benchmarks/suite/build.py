"""Turn a validated suite cell into live objects: the defense, the attack plan, the federation."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from attacks import AttackEnv, AttackPlan, AttackSchedule, ThreatModel, build_attack
from benchmarks.suite.schema import Cell, ComponentSpec, Setting, SuiteError
from defenses.robust.compose import Compose
from defenses.robust.registry import get as get_rule
from fl_core import (
    DataSplit,
    Federation,
    LocalTrainingConfig,
    build_model,
    build_server_optimizer,
    make_clients,
    partition,
)
from fl_core.aggregation import Aggregator
from fl_core.data.dataset import ArrayDataset, TextDataset
from fl_core.errors import FlsecError
from fl_core.rng import Stream, numpy_generator, torch_generator
from fl_core.root_update import RootDatasetUpdate

__all__ = ["CellRun", "attack_env", "build_cell", "build_defense", "instantiate_rule", "preflight_attacks"]

_NO_F_DEFAULT = {"mean"}  # the undefended FedAvg baseline declares f = 0


def instantiate_rule(spec: ComponentSpec, *, f: int, seed: int, server_update: Callable | None = None):
    """The registered rule or pre-aggregator of ``spec``; ``f``, ``server_update`` and a seeded generator fill
    the constructor arguments the entry leaves out."""
    entry = get_rule(spec.name)
    params = dict(spec.params)
    accepted = entry.cls.__init__.__code__.co_varnames
    if "f" in accepted and "f" not in params:
        params["f"] = f
    if "server_update" in accepted and "server_update" not in params:
        params["server_update"] = server_update
    if "generator" in accepted and "generator" not in params:
        params["generator"] = torch_generator(seed, Stream.USER, 11)
    return entry.cls(**params)


def _instantiate(spec: ComponentSpec, *, setting: Setting, server_update: Callable | None, seed: int):
    f = 0 if spec.name in _NO_F_DEFAULT else setting.expected_f
    return instantiate_rule(spec, f=f, seed=seed, server_update=server_update)


def build_defense(
    spec: ComponentSpec, *, setting: Setting, server_update: Callable | None = None, seed: int = 0
) -> Aggregator:
    """The defense of a suite entry: its pre-aggregators chained before its rule."""
    rule = _instantiate(spec, setting=setting, server_update=server_update, seed=seed)
    if not spec.pre:
        return rule
    pres = [_instantiate(p, setting=setting, server_update=server_update, seed=seed) for p in spec.pre]
    return Compose(*pres, rule)


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
        try:
            build_attack(a.name, threat=threat, env=env, **a.params)
        except (FlsecError, TypeError) as exc:
            raise SuiteError(f"attacks[{i}]", f"attack {a.label!r} cannot be built: {exc}") from None


@dataclass
class CellRun:
    federation: Federation
    plan: AttackPlan
    defense: Aggregator
    test: object


def build_cell(cell: Cell, setting: Setting, split: DataSplit) -> CellRun:
    """Partition, sample the attackers, build the defense and the attack, and the federation."""
    seed = cell.seed
    train = split.train
    parts = partition(
        train.labels,
        scheme=setting.partition,
        n_clients=setting.clients,
        alpha=setting.alpha,
        shards_per_client=setting.shards_per_client,
        generator=numpy_generator(seed, Stream.PARTITION),
    )
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
    local = LocalTrainingConfig(
        epochs=setting.local_epochs, batch_size=setting.batch_size, lr=setting.lr, momentum=setting.momentum
    )
    # FLTrust's root dataset: root_size samples drawn from the training data (Cao et al. 2021)
    root_idx = numpy_generator(seed, Stream.USER, 2).choice(
        len(train), size=min(setting.root_size, len(train)), replace=False
    )
    server_update = RootDatasetUpdate(
        model=model, data=train.subset(np.sort(root_idx)), config=local, seed=seed, device=setting.device
    )
    defense = build_defense(cell.defense, setting=setting, server_update=server_update, seed=seed)
    env = attack_env(train)
    plan = build_attack(cell.attack.name, threat=threat, env=env, aggregator=defense, **cell.attack.params)
    fed = Federation(
        model=model,
        clients=make_clients(train, parts, hooks=plan.hooks),
        test_data=split.test,
        clients_per_round=setting.m,
        local=local,
        aggregator=defense,
        update_transforms=[plan.update_transform] if plan.update_transform is not None else [],
        server_optimizer=build_server_optimizer(setting.server_opt, lr=setting.server_lr),
        seed=seed,
        device=setting.device,
    )
    return CellRun(federation=fed, plan=plan, defense=defense, test=split.test)
