"""The one registry of attacks, by name, and the :class:`AttackPlan` each builds.

An attack plan says what the malicious clients do: the training hooks of each
malicious client (data poisoning, constrained training), the update transform
that crafts their rows (model poisoning), and the backdoor to score (trigger and
target) when there is one. Builders take keyword-only parameters.

Examples
--------
>>> import numpy as np
>>> from attacks.threat import ThreatModel
>>> env = AttackEnv(num_classes=10, image_shape=(1, 8, 8), trigger_value=2.0)
>>> plan = build_attack("alie", threat=ThreatModel(malicious=frozenset({1})), env=env)
>>> plan.update_transform is not None, plan.backdoor is None, plan.hooks(1)
(True, True, ())
>>> build_attack("aile", threat=ThreatModel(malicious=frozenset()), env=env)  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
fl_core.errors.UnknownNameError: unknown attack 'aile'. Did you mean 'alie', 'a3fl'? ...
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from attacks.a3fl import with_a3fl_parameters
from attacks.byzantine import ByzantineTransform, ModelPoisoning
from attacks.data_poisoning import LabelFlip, PixelBackdoor, TextBackdoor
from attacks.hooks import AnomalyEvasion, NeurotoxinMask
from attacks.metrics import Backdoor
from attacks.model_poisoning import ALIE, IPM, ConstrainedScaling, FangGaussian, GaussianNoise, Scaling, SignFlip
from attacks.optimized import FangKrum, FangTrimmedMean, MinMax, MinSum
from attacks.threat import ThreatModel
from attacks.triggers import PixelTrigger, TextTrigger
from fl_core.aggregation import Aggregator
from fl_core.errors import ConfigError
from fl_core.registry import Registry
from fl_core.training import TrainingHook

__all__ = [
    "ATTACKS",
    "AttackEnv",
    "AttackPlan",
    "attack_builder",
    "attack_descriptions",
    "attack_names",
    "attack_parameters",
    "build_attack",
]


@dataclass(frozen=True)
class AttackEnv:
    """Facts about the task an attack needs.

    Attributes
    ----------
    num_classes : int
        Number of classes.
    image_shape : tuple of int or None
        ``(C, H, W)`` for image data, ``None`` for text.
    trigger_value : float
        Pixel value a trigger sets (the data's maximum, after normalisation).
    """

    num_classes: int
    image_shape: tuple[int, ...] | None = None
    trigger_value: float = 1.0


@dataclass(frozen=True)
class AttackPlan:
    """What the malicious clients do; see the module docstring."""

    name: str
    threat: ThreatModel
    client_hooks: dict[int, tuple[TrainingHook, ...]]
    update_transform: ByzantineTransform | None = None
    backdoor: Backdoor | None = None
    #: Indices of the training split no client should hold, given that split (the edge-case
    #: backdoor's p-edge-case region: :meth:`attacks.edge_case.EdgeCaseSet.holdout`); ``None``: keep all.
    exclude_train: Callable[[Any], Any] | None = None

    def hooks(self, client_id: int) -> tuple[TrainingHook, ...]:
        """Training hooks of ``client_id`` (empty for honest clients)."""
        return self.client_hooks.get(client_id, ())


Builder = Callable[..., AttackPlan]

#: The attacks, by name; every builder takes ``threat``, ``env`` and ``aggregator``
#: from the caller and its own keyword parameters (with their defaults) from the suite.
#: Names are matched exactly: suite results and plans carry them verbatim.
ATTACKS = Registry("attack", title="attacks (kind)", context=("threat", "env", "aggregator"), normalise=False)
_register = ATTACKS.register


def attack_names() -> list[str]:
    """Sorted attack names."""
    return ATTACKS.names()


def attack_descriptions() -> dict[str, str]:
    """Name -> ``"[kind] description"``."""
    return {e.name: f"[{e.kind}] {e.description}" for e in ATTACKS.entries()}


def attack_parameters(name: str) -> list[str]:
    """Keyword parameters the attack ``name`` accepts (for suite validation)."""
    return [p.name for p in ATTACKS.parameters(name)]


def attack_builder(name: str) -> Builder:
    """The builder function of the attack ``name`` (its annotations type the suite parameters)."""
    return ATTACKS.get(name).obj


def build_attack(
    name: str, *, threat: ThreatModel, env: AttackEnv, aggregator: Aggregator | None = None, **params: Any
) -> AttackPlan:
    """Build the registered attack ``name`` with its keyword parameters.

    Raises
    ------
    UnknownNameError
        For an unknown name (lists the closest valid ones).
    ConfigError
        For a parameter the attack does not take or a value out of range.
    """
    return ATTACKS.make(name, threat=threat, env=env, aggregator=aggregator, **params)


def _model_plan(
    name: str,
    attack: ModelPoisoning,
    threat: ThreatModel,
    aggregator: Aggregator | None,
    hooks: dict[int, tuple[TrainingHook, ...]] | None = None,
    backdoor: Backdoor | None = None,
) -> AttackPlan:
    return AttackPlan(
        name=name,
        threat=threat,
        client_hooks=hooks or {},
        update_transform=ByzantineTransform(attack=attack, threat=threat, aggregator=aggregator),
        backdoor=backdoor,
    )


#: The global pixel-trigger shapes a centralised backdoor can use: the corner checkerboard, or DBA's
#: ``parts`` bars (Xie et al. 2020's centralised baseline carries DBA's whole global trigger).
TRIGGER_SHAPES = ("corner", "dba")


def _pixel_backdoor_hooks(
    threat: ThreatModel, env: AttackEnv, *, target: int, poison_fraction: float, trigger_size: int,
    trigger: str = "corner", parts: int = 4,
) -> tuple[dict[int, tuple[TrainingHook, ...]], Backdoor]:
    if env.image_shape is None:
        raise ConfigError("pixel backdoors need image data; use 'text-backdoor' for text")
    _check_target(target, env)
    if trigger not in TRIGGER_SHAPES:
        raise ConfigError(f"trigger must be one of {TRIGGER_SHAPES}, got {trigger!r}")
    _, h, w = env.image_shape
    if trigger == "dba":
        pattern = PixelTrigger.dba_global(height=h, width=w, value=env.trigger_value, parts=parts)
    else:
        pattern = PixelTrigger.corner(height=h, width=w, size=trigger_size, value=env.trigger_value)
    hooks = {
        c: (PixelBackdoor(trigger=pattern, target=target, poison_fraction=poison_fraction, schedule=threat.schedule),)
        for c in threat.malicious
    }
    return hooks, Backdoor(trigger=pattern, target=target)


def _check_target(target: int, env: AttackEnv) -> None:
    if not 0 <= target < env.num_classes:
        raise ConfigError(f"target class must be in [0, {env.num_classes}), got {target}")


@_register("none", kind="data", description="no attack: every client honest (the clean baseline)")
def _none(*, threat: ThreatModel, env: AttackEnv, aggregator: Aggregator | None) -> AttackPlan:
    return AttackPlan(name="none", threat=ThreatModel(malicious=frozenset()), client_hooks={})


@_register(
    "label-flip",
    kind="data",
    description="label flipping: all-to-one, pairs, reverse l->K-1-l, random (Tolpegin et al. 2020)",
)
def _label_flip(
    *,
    threat: ThreatModel,
    env: AttackEnv,
    aggregator: Aggregator | None,
    mode: str = "reverse",
    target: int | None = None,
    pairs: list[list[int]] | None = None,
) -> AttackPlan:
    hooks = {
        c: (LabelFlip(mode=mode, num_classes=env.num_classes, target=target, pairs=pairs, schedule=threat.schedule),)
        for c in threat.malicious
    }
    return AttackPlan(name="label-flip", threat=threat, client_hooks=hooks)


@_register(
    "backdoor",
    kind="backdoor",
    description="pixel-pattern backdoor with a target class, no boosting (Gu et al. 2017); trigger='dba': DBA's "
    "whole global trigger (Xie et al. 2020's centralised baseline)",
)
def _backdoor(
    *,
    threat: ThreatModel,
    env: AttackEnv,
    aggregator: Aggregator | None,
    target: int = 0,
    poison_fraction: float = 0.2,
    trigger_size: int = 3,
    trigger: str = "corner",
    parts: int = 4,
) -> AttackPlan:
    hooks, bd = _pixel_backdoor_hooks(
        threat, env, target=target, poison_fraction=poison_fraction, trigger_size=trigger_size,
        trigger=trigger, parts=parts,
    )
    return AttackPlan(name="backdoor", threat=threat, client_hooks=hooks, backdoor=bd)


@_register(
    "model-replacement",
    kind="backdoor",
    description="backdoor boosted by gamma = n/eta to replace the global model (Bagdasaryan et al. 2020)",
)
def _model_replacement(
    *,
    threat: ThreatModel,
    env: AttackEnv,
    aggregator: Aggregator | None,
    target: int = 0,
    poison_fraction: float = 0.2,
    trigger_size: int = 3,
    gamma: float | None = None,
    eta: float = 1.0,
) -> AttackPlan:
    hooks, bd = _pixel_backdoor_hooks(
        threat, env, target=target, poison_fraction=poison_fraction, trigger_size=trigger_size
    )
    return _model_plan("model-replacement", Scaling(gamma=gamma, eta=eta), threat, aggregator, hooks, bd)


@_register(
    "constrain-scale",
    kind="backdoor",
    description="backdoor trained with an anomaly-evasion loss, scaled within a norm bound (Bagdasaryan 2020)",
)
def _constrain_scale(
    *,
    threat: ThreatModel,
    env: AttackEnv,
    aggregator: Aggregator | None,
    target: int = 0,
    poison_fraction: float = 0.2,
    trigger_size: int = 3,
    alpha: float = 0.7,
    norm_bound: float = 2.0,
    gamma: float | None = None,
    eta: float = 1.0,
) -> AttackPlan:
    hooks, bd = _pixel_backdoor_hooks(
        threat, env, target=target, poison_fraction=poison_fraction, trigger_size=trigger_size
    )
    hooks = {c: (*h, AnomalyEvasion(alpha=alpha, schedule=threat.schedule)) for c, h in hooks.items()}
    attack = ConstrainedScaling(norm_bound=norm_bound, gamma=gamma, eta=eta)
    return _model_plan("constrain-scale", attack, threat, aggregator, hooks, bd)


@_register(
    "dba",
    kind="backdoor",
    description="distributed backdoor: a global trigger split among colluding attackers (Xie et al. 2020)",
)
def _dba(
    *,
    threat: ThreatModel,
    env: AttackEnv,
    aggregator: Aggregator | None,
    target: int = 0,
    poison_fraction: float = 0.2,
    parts: int = 4,
) -> AttackPlan:
    if env.image_shape is None:
        raise ConfigError("DBA needs image data")
    _check_target(target, env)
    _, h, w = env.image_shape
    global_trigger = PixelTrigger.dba_global(height=h, width=w, value=env.trigger_value, parts=parts)
    local = global_trigger.split(parts)
    hooks = {
        c: (
            PixelBackdoor(
                trigger=local[i % parts], target=target, poison_fraction=poison_fraction, schedule=threat.schedule
            ),
        )
        for i, c in enumerate(sorted(threat.malicious))
    }
    return AttackPlan(name="dba", threat=threat, client_hooks=hooks, backdoor=Backdoor(global_trigger, target))


@_register(
    "text-backdoor",
    kind="backdoor",
    description="rare trigger token inserted into texts, labelled with the target (Kurita et al. 2020)",
)
def _text_backdoor(
    *,
    threat: ThreatModel,
    env: AttackEnv,
    aggregator: Aggregator | None,
    target: int = 0,
    poison_fraction: float = 0.2,
    token: str = "cf",
) -> AttackPlan:
    _check_target(target, env)
    trigger = TextTrigger(token=token)
    hooks = {
        c: (TextBackdoor(trigger=trigger, target=target, poison_fraction=poison_fraction, schedule=threat.schedule),)
        for c in threat.malicious
    }
    return AttackPlan(name="text-backdoor", threat=threat, client_hooks=hooks, backdoor=Backdoor(trigger, target))


@_register(
    "neurotoxin",
    kind="backdoor",
    description="backdoor on the coordinates benign clients update least, PGD-bounded (Zhang et al. 2022)",
)
def _neurotoxin(
    *,
    threat: ThreatModel,
    env: AttackEnv,
    aggregator: Aggregator | None,
    target: int = 0,
    poison_fraction: float = 0.2,
    trigger_size: int = 3,
    mask_ratio: float = 0.99,
    norm_bound: float | None = None,
) -> AttackPlan:
    hooks, bd = _pixel_backdoor_hooks(
        threat, env, target=target, poison_fraction=poison_fraction, trigger_size=trigger_size
    )
    hooks = {
        c: (*h, NeurotoxinMask(mask_ratio=mask_ratio, norm_bound=norm_bound, schedule=threat.schedule))
        for c, h in hooks.items()
    }
    return AttackPlan(name="neurotoxin", threat=threat, client_hooks=hooks, backdoor=bd)


@_register("sign-flip", kind="model", description="send -scale x own update")
def _sign_flip(*, threat: ThreatModel, env: AttackEnv, aggregator: Aggregator | None, scale: float = 1.0) -> AttackPlan:
    return _model_plan("sign-flip", SignFlip(scale=scale), threat, aggregator)


@_register("gaussian", kind="model", description="send N(0, sigma^2 I) noise (Blanchard et al. 2017)")
def _gaussian(*, threat: ThreatModel, env: AttackEnv, aggregator: Aggregator | None, sigma: float = 1.0) -> AttackPlan:
    return _model_plan("gaussian", GaussianNoise(sigma=sigma), threat, aggregator)


@_register(
    "fang-gaussian",
    kind="model",
    description="each coordinate from the benign rows' Gaussian (mean, variance); Fang et al. 2020's baseline",
)
def _fang_gaussian(*, threat: ThreatModel, env: AttackEnv, aggregator: Aggregator | None) -> AttackPlan:
    return _model_plan("fang-gaussian", FangGaussian(), threat, aggregator)


@_register("alie", kind="model", description="A Little Is Enough: mu - z sigma, z from n and f (Baruch et al. 2019)")
def _alie(*, threat: ThreatModel, env: AttackEnv, aggregator: Aggregator | None, z: float | None = None) -> AttackPlan:
    return _model_plan("alie", ALIE(z=z), threat, aggregator)


@_register("ipm", kind="model", description="inner-product manipulation: -epsilon mu (Xie et al. 2019)")
def _ipm(*, threat: ThreatModel, env: AttackEnv, aggregator: Aggregator | None, epsilon: float = 0.1) -> AttackPlan:
    return _model_plan("ipm", IPM(epsilon=epsilon), threat, aggregator)


@_register("min-max", kind="model", description="AGR-agnostic min-max (Shejwalkar & Houmansadr 2021)")
def _min_max(
    *, threat: ThreatModel, env: AttackEnv, aggregator: Aggregator | None, perturbation: str = "unit_vec"
) -> AttackPlan:
    return _model_plan("min-max", MinMax(perturbation=perturbation), threat, aggregator)


@_register("min-sum", kind="model", description="AGR-agnostic min-sum (Shejwalkar & Houmansadr 2021)")
def _min_sum(
    *, threat: ThreatModel, env: AttackEnv, aggregator: Aggregator | None, perturbation: str = "unit_vec"
) -> AttackPlan:
    return _model_plan("min-sum", MinSum(perturbation=perturbation), threat, aggregator)


@_register(
    "fang-krum", kind="model", description="Fang et al. 2020 attack tailored to Krum (adaptive: probes the rule)"
)
def _fang_krum(*, threat: ThreatModel, env: AttackEnv, aggregator: Aggregator | None) -> AttackPlan:
    return _model_plan("fang-krum", FangKrum(), threat, aggregator)


@_register("fang-trmean", kind="model", description="Fang et al. 2020 attack tailored to trimmed mean / median")
def _fang_trmean(*, threat: ThreatModel, env: AttackEnv, aggregator: Aggregator | None, b: float = 2.0) -> AttackPlan:
    return _model_plan("fang-trmean", FangTrimmedMean(b=b), threat, aggregator)


@_register(
    "mimic",
    kind="model",
    description="copy the honest client furthest along the top principal direction (Karimireddy et al. 2022)",
)
def _mimic(
    *, threat: ThreatModel, env: AttackEnv, aggregator: Aggregator | None, warmup: int = 1, seed: int = 0
) -> AttackPlan:
    from attacks.mimic import Mimic

    return _model_plan("mimic", Mimic(warmup=warmup, seed=seed, threat=threat), threat, aggregator)


@_register(
    "inf",
    kind="model",
    description="rows of float32's largest finite value; finite=false: byzfl's +inf, refused as invalid input",
)
def _inf(
    *, threat: ThreatModel, env: AttackEnv, aggregator: Aggregator | None, finite: bool = True, negative: bool = False
) -> AttackPlan:
    from attacks.inf import Inf

    return _model_plan("inf", Inf(finite=finite, negative=negative), threat, aggregator)


@_register(
    "optimal-alie",
    kind="model",
    description="ALIE with z searched in [low, high] to push the defense's output furthest (byzfl)",
)
def _optimal_alie(
    *,
    threat: ThreatModel,
    env: AttackEnv,
    aggregator: Aggregator | None,
    low: float = 0.0,
    high: float = 10.0,
    points: int = 11,
    refine: int = 12,
) -> AttackPlan:
    from attacks.optimal import OptimalALIE

    attack = OptimalALIE(low=low, high=high, points=points, refine=refine)
    return _model_plan("optimal-alie", attack, threat, aggregator)


@_register(
    "optimal-ipm",
    kind="model",
    description="IPM with epsilon searched in [low, high] to push the defense's output furthest (byzfl)",
)
def _optimal_ipm(
    *,
    threat: ThreatModel,
    env: AttackEnv,
    aggregator: Aggregator | None,
    low: float = 0.0,
    high: float = 10.0,
    points: int = 11,
    refine: int = 12,
) -> AttackPlan:
    from attacks.optimal import OptimalIPM

    attack = OptimalIPM(low=low, high=high, points=points, refine=refine)
    return _model_plan("optimal-ipm", attack, threat, aggregator)


@_register(
    "edge-case",
    kind="backdoor",
    description="edge-case backdoor: tail inputs of a source class (or, edge_source='digits', another "
    "collection's handwritten digits) labelled the target, optional PGD (Wang et al. 2020)",
)
def _edge_case(
    *,
    threat: ThreatModel,
    env: AttackEnv,
    aggregator: Aggregator | None,
    source: int = 7,
    target: int = 1,
    edge_fraction: float = 0.4,
    tail_fraction: float = 0.1,
    test_share: float = 0.3,
    pgd_eps: float | None = None,
    gamma: float | None = None,
    dataset: str | None = None,
    data_path: str | None = None,
    edge_source: str = "tail",
    seed: int = 0,
) -> AttackPlan:
    from attacks.edge_case import EdgeCaseMix, dataset_for_shape, load_edge_case_set

    if env.image_shape is None:
        raise ConfigError("the edge-case backdoor needs image data")
    _check_target(target, env)
    if not 0 <= source < env.num_classes:
        raise ConfigError(f"edge-case source class must be in [0, {env.num_classes}), got {source}")
    if pgd_eps is not None and not (math.isfinite(pgd_eps) and pgd_eps > 0):
        raise ConfigError(f"pgd_eps (the PGD ball's radius) must be a positive finite number, got {pgd_eps}")
    if gamma is not None and not (math.isfinite(gamma) and gamma > 0):
        raise ConfigError(f"gamma (the model-replacement boost) must be a positive finite number, got {gamma}")
    edge = load_edge_case_set(
        dataset if dataset is not None else dataset_for_shape(env.image_shape), data_path=data_path, source=source,
        target=target, tail_fraction=tail_fraction, test_share=test_share, seed=seed, edge_source=edge_source,
    )
    if tuple(edge.train_x.shape[1:]) != tuple(env.image_shape):
        raise ConfigError(f"edge-case inputs of shape {tuple(edge.train_x.shape[1:])} do not fit the federation's "
                          f"images {tuple(env.image_shape)}; pass the federation's dataset=")
    # PGD: project the local model into the ball of radius eps around x after every step; with
    # model replacement into eps / gamma, so that the boosted update gamma * delta is still within eps.
    radius = None if pgd_eps is None else pgd_eps / (gamma or 1.0)
    hooks: dict[int, tuple[TrainingHook, ...]] = {}
    for c in threat.malicious:
        mix: tuple[TrainingHook, ...] = (
            EdgeCaseMix(edge_x=edge.train_x, target=target, edge_fraction=edge_fraction, schedule=threat.schedule),
        )
        if radius is not None:  # NeurotoxinMask keeping every coordinate is plain PGD onto the ball
            mix = (*mix, NeurotoxinMask(mask_ratio=1.0, norm_bound=radius, schedule=threat.schedule))
        hooks[c] = mix
    backdoor = Backdoor(trigger=None, target=target, inputs=edge.test_x)
    plan = AttackPlan(name="edge-case", threat=threat, client_hooks=hooks, backdoor=backdoor,
                      exclude_train=edge.holdout if edge_source == "tail" else None)
    if gamma is not None:
        transform = ByzantineTransform(attack=Scaling(gamma=gamma), threat=threat, aggregator=aggregator)
        plan = dataclasses.replace(plan, update_transform=transform)
    return plan


@_register(
    "a3fl",
    kind="backdoor",
    description="adversarially adaptive backdoor: trigger optimised each round against an unlearned model "
    "(Zhang et al. 2023)",
)
@with_a3fl_parameters  # the hyper-parameters (names, defaults, types) are A3FLParams' fields
def _a3fl(
    *,
    threat: ThreatModel,
    env: AttackEnv,
    aggregator: Aggregator | None,
    target: int = 0,
    trigger_size: int | None = None,
    low: float | None = None,
    high: float | None = None,
    seed: int = 0,
    **params: Any,
) -> AttackPlan:
    from attacks.a3fl import A3FLBackdoor, A3FLParams, a3fl_trigger

    if env.image_shape is None:
        raise ConfigError("A3FL needs image data")
    _check_target(target, env)
    hp = A3FLParams(**params)
    hi = env.trigger_value if high is None else high
    lo = -hi if low is None else low
    trigger = a3fl_trigger(image_shape=env.image_shape, low=lo, high=hi, size=trigger_size)
    hooks = {
        c: (A3FLBackdoor(trigger=trigger, target=target, params=hp, seed=seed + i, schedule=threat.schedule),)
        for i, c in enumerate(sorted(threat.malicious))
    }
    return AttackPlan(name="a3fl", threat=threat, client_hooks=hooks, backdoor=Backdoor(trigger=trigger, target=target))
