"""A suite's defense entry as a live :class:`~fl_core.pipeline.Pipeline`: secure protocol, robust rule, DP.

A defense entry of a suite file is a pipeline (:class:`~benchmarks.suite.schema.ComponentSpec`):

* ``name`` / ``params`` / ``pre``: a robust rule and its pre-aggregators (``"mean"``: none);
* ``secure``: a secure-aggregation protocol (:data:`secure_agg.registry.SECURE_PROTOCOLS`);
* ``dp``: a DP-FedAvg variant (:data:`defenses.dp.registry.DP_FEDAVG`) with a target
  ``epsilon`` after the suite's rounds (calibrated here) or a ``noise_multiplier``.

The suite fills what it knows: ``f`` (expected attackers per cohort), the cohort size
``m`` and sampling rate ``q = m / K``, the model size ``d`` (distributed DP calibrates
for it), seeds. Everything else comes from the TOML, checked against the components'
signatures by the registries; defaults live only in those signatures.

Examples
--------
>>> from benchmarks.suite.schema import ComponentSpec, DPSpec, Setting
>>> spec = ComponentSpec(name="mean", label="dp", dp=DPSpec(variant="central", epsilon=4.0,
...                                                          params={"clip_norm": 1.0}))
>>> pipe = build_pipeline(spec, setting=Setting(clients=10, rounds=5), d=100, seed=0)
>>> [type(s).__name__ for _, s in pipe.stages()]
['L2Clip', 'FixedDenominatorMean', 'CentralGaussianNoise', 'FedAvg']
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from torch import nn

from benchmarks.suite.schema import ComponentSpec, DPSpec, Setting, SuiteError
from defenses.dp import (
    CentralDPFedAvg,
    DistributedDiscreteGaussian,
    LocalGaussianDP,
    calibrate_ddg_noise_multiplier,
    calibrate_noise_multiplier,
)
from defenses.dp.registry import DP_FEDAVG
from defenses.robust.compose import Compose
from defenses.robust.registry import get as get_rule
from fl_core.aggregation import Aggregator
from fl_core.pipeline import Pipeline
from fl_core.rng import Stream, torch_generator
from fl_core.server_opt import ServerOptimizer
from secure_agg.registry import SECURE_PROTOCOLS

__all__ = ["AUTO_DP_PARAMS", "build_defense", "build_pipeline", "dp_user_parameters", "instantiate_rule"]

_NO_F_DEFAULT = {"mean"}  # the undefended FedAvg baseline declares f = 0

#: The parameters of each DP-FedAvg variant that the suite fills (the TOML sets the others).
AUTO_DP_PARAMS: dict[str, frozenset[str]] = {
    "central": frozenset({"noise_multiplier", "expected_clients", "sample_rate", "delta", "clip", "target_epsilon",
                          "planned_rounds"}),
    "local": frozenset({"noise_multiplier", "delta"}),
    "distributed": frozenset({"noise_multiplier", "expected_clients", "sample_rate", "delta", "seed", "ledger"}),
}


def dp_user_parameters(variant: str) -> list[str]:
    """The parameters a suite file may set for a DP-FedAvg variant (its signature less the suite's own)."""
    return [p.name for p in DP_FEDAVG.parameters(variant) if p.name not in AUTO_DP_PARAMS[variant]]


def instantiate_rule(spec: ComponentSpec, *, f: int, seed: int, server_update: Callable | None = None,
                     model: nn.Module | None = None, input_shape: tuple[int, ...] | None = None):
    """The registered rule or pre-aggregator of ``spec``; ``f``, ``server_update``, the cell's ``model`` and
    ``input_shape`` (DeepSight reads the model's layout) and a seeded generator fill the constructor
    arguments the entry leaves out."""
    entry = get_rule(spec.name)
    params = dict(spec.params)
    accepted = entry.cls.__init__.__code__.co_varnames
    if "f" in accepted and "f" not in params:
        params["f"] = f
    if "server_update" in accepted and "server_update" not in params:
        params["server_update"] = server_update
    if "model" in accepted and "model" not in params:
        params["model"] = model
    if "input_shape" in accepted and "input_shape" not in params:
        params["input_shape"] = input_shape
    if "generator" in accepted and "generator" not in params:
        params["generator"] = torch_generator(seed, Stream.USER, 11)
    return entry.cls(**params)


def _instantiate(spec: ComponentSpec, *, setting: Setting, server_update: Callable | None, seed: int,
                 model: nn.Module | None = None, input_shape: tuple[int, ...] | None = None):
    f = 0 if spec.name in _NO_F_DEFAULT else setting.expected_f
    return instantiate_rule(spec, f=f, seed=seed, server_update=server_update, model=model, input_shape=input_shape)


def build_defense(
    spec: ComponentSpec, *, setting: Setting, server_update: Callable | None = None, seed: int = 0,
    model: nn.Module | None = None, input_shape: tuple[int, ...] | None = None,
) -> Aggregator:
    """The robust rule of a suite entry: its pre-aggregators chained before its rule."""
    known = {"server_update": server_update, "seed": seed, "model": model, "input_shape": input_shape}
    rule = _instantiate(spec, setting=setting, **known)
    if not spec.pre:
        return rule
    pres = [_instantiate(p, setting=setting, **known) for p in spec.pre]
    return Compose(*pres, rule)


def _noise_multiplier(dp: DPSpec, setting: Setting, d: int) -> float:
    """``z`` of the DP stage: given, or calibrated so that epsilon after the suite's rounds is the target."""
    if dp.noise_multiplier is not None:
        return dp.noise_multiplier
    assert dp.epsilon is not None  # the parser requires exactly one of them
    if math.isinf(dp.epsilon):
        return 0.0
    q, rounds = setting.m / setting.clients, setting.rounds
    if dp.variant == "central":
        return calibrate_noise_multiplier(target_epsilon=dp.epsilon, delta=dp.delta, sample_rate=q, rounds=rounds)
    if dp.variant == "local":  # a client knows it took part: no amplification by sampling, every round counts
        return calibrate_noise_multiplier(target_epsilon=dp.epsilon, delta=dp.delta, sample_rate=1.0, rounds=rounds)
    return calibrate_ddg_noise_multiplier(target_epsilon=dp.epsilon, d=d, rounds=rounds, expected_clients=setting.m,
                                          sample_rate=q, delta=dp.delta, **dp.params)


def _secure(spec: ComponentSpec | None, *, seed: int, **fixed: Any) -> Aggregator | None:
    """The entry's secure protocol from its registry (``seed`` unless the TOML gives one; ``fixed`` wins)."""
    if spec is None:
        return None
    return SECURE_PROTOCOLS.make(spec.name, **{"seed": seed, **spec.params, **fixed})


def build_pipeline(
    spec: ComponentSpec,
    *,
    setting: Setting,
    d: int,
    seed: int,
    attack: Any = None,
    optimizer: ServerOptimizer | None = None,
    server_update: Callable | None = None,
    model: nn.Module | None = None,
    input_shape: tuple[int, ...] | None = None,
) -> Pipeline:
    """The defense entry as a pipeline, with ``attack`` in its attack slot.

    Raises
    ------
    CompositionError
        The entry's stages cannot work together (a robust rule after a secure protocol).
    FlsecError
        A parameter out of range, or a privacy target no noise multiplier reaches.
    """
    plain = spec.secure is None and spec.dp is None
    has_rule = plain or spec.name not in _NO_F_DEFAULT or bool(spec.pre or spec.params)
    rule = (build_defense(spec, setting=setting, server_update=server_update, seed=seed, model=model,
                          input_shape=input_shape) if has_rule else None)
    common = {"attack": attack, "optimizer": optimizer, "seed": seed}
    dp = spec.dp
    if dp is None:
        return Pipeline(secure=_secure(spec.secure, seed=seed), rule=rule, **common)
    if dp.variant == "distributed" and rule is not None:
        raise SuiteError("dp", f"distributed DP sums integers modulo 2^bits: no robust rule ({spec.label!r}) can run")
    z, q = _noise_multiplier(dp, setting, d), setting.m / setting.clients
    if dp.variant == "central":
        if spec.secure is not None:
            raise SuiteError("dp", "central DP adds the server's noise to rows it reads in the clear: drop secure, "
                                   "or use variant = 'distributed'")
        central = CentralDPFedAvg(noise_multiplier=z, expected_clients=setting.m, sample_rate=q, delta=dp.delta,
                                  **dp.params)
        return central.pipeline(rule=rule, **common)
    if dp.variant == "local":
        local = LocalGaussianDP(noise_multiplier=z, delta=dp.delta, **dp.params)
        return Pipeline(client=[local], secure=_secure(spec.secure, seed=seed), rule=rule, **common)
    ddg = DistributedDiscreteGaussian(noise_multiplier=z, expected_clients=setting.m, sample_rate=q, delta=dp.delta,
                                      seed=seed + 1, **dp.params)
    secure = _secure(spec.secure, seed=seed, integer_input=True, ring_bits=ddg.bits)
    return ddg.pipeline(secure=secure, **common)
