"""The Byzantine-update plug-in: crafted rows replace the malicious clients' updates.

:class:`ByzantineTransform` is a :class:`fl_core.aggregation.UpdateTransform`.
In each round in which the attack is on and some sampled clients are
malicious, it builds an :class:`AttackView` from what the threat model lets the
attacker see and asks a :class:`ModelPoisoning` attack for the ``f`` crafted
rows:

* omniscient: ``benign`` holds the honest clients' updates of the round;
* non-omniscient: ``benign`` holds the malicious clients' own benign updates
  (each malicious client also trains honestly on its own data).

An adaptive attack gets the defense's aggregator (``aggregator``) and probes a
copy of it, never the live one.

Examples
--------
>>> import torch
>>> from attacks.model_poisoning import SignFlip
>>> from attacks.threat import ThreatModel
>>> from fl_core.aggregation import AggregationResult, RoundContext
>>> U = torch.ones(3, 2)
>>> ctx = RoundContext(round_idx=0, client_ids=(0, 1, 2), weights=torch.ones(3), global_params=torch.zeros(2),
...                    generator=torch.Generator())
>>> ByzantineTransform(attack=SignFlip(), threat=ThreatModel(malicious=frozenset({2})))(U, ctx).tolist()
[[1.0, 1.0], [1.0, 1.0], [-1.0, -1.0]]
"""

from __future__ import annotations

import abc
import copy
import logging
from dataclasses import dataclass

import torch

from attacks.threat import ThreatModel
from fl_core.aggregation import AggregationResult, Aggregator, RoundContext, StageOutput
from fl_core.errors import ConfigError, InvalidUpdateError
from fl_core.state import StateError

__all__ = ["AttackView", "ByzantineTransform", "ModelPoisoning"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AttackView:
    """What a model-poisoning attack sees in one round.

    Attributes
    ----------
    own : torch.Tensor
        ``(f, d)`` benign updates the malicious clients computed on their own data.
    benign : torch.Tensor
        ``(h, d)`` the rows the attacker uses as the benign reference: the honest
        updates (omniscient) or ``own`` (non-omniscient).
    n : int
        Cohort size (honest + malicious).
    f : int
        Number of malicious clients in the cohort.
    ctx : RoundContext
        The round (its generator serves the attack's randomness).
    aggregator : Aggregator or None
        The defense, for adaptive attacks.
    """

    own: torch.Tensor
    benign: torch.Tensor
    n: int
    f: int
    ctx: RoundContext
    aggregator: Aggregator | None

    def probe(self, cohort: torch.Tensor) -> AggregationResult:
        """What a copy of the defense returns on ``cohort`` in this round (the live defense is never touched).

        The copy sees the round's context (its global parameters, which FLTrust's root
        update and MoNNA's server pivot need) with equal weights and ids ``0..m-1`` for the
        ``m`` probe rows, and a generator of its own keyed by the round.
        """
        if self.aggregator is None:
            raise ConfigError("an adaptive attack needs the defense as aggregator=")
        m = cohort.shape[0]
        g = torch.Generator(device=cohort.device).manual_seed(1_000_003 * (self.ctx.round_idx + 1))
        ctx = RoundContext(self.ctx.round_idx, tuple(range(m)), torch.ones(m, device=cohort.device),
                           self.ctx.global_params, g)
        return copy.deepcopy(self.aggregator).aggregate(cohort, ctx=ctx)


class ModelPoisoning(abc.ABC):
    """An attack that crafts the malicious rows of the cohort."""

    #: Whether the attack needs an aggregator (adaptive attacks).
    needs_aggregator: bool = False

    @abc.abstractmethod
    def craft(self, view: AttackView) -> torch.Tensor:
        """Return the ``(f, d)`` malicious updates."""

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({params})"


class ByzantineTransform:
    """Replace the malicious rows of the cohort with crafted updates in the attack's rounds."""

    def __init__(self, *, attack: ModelPoisoning, threat: ThreatModel, aggregator: Aggregator | None = None) -> None:
        if attack.needs_aggregator and aggregator is None:
            raise ConfigError(f"{type(attack).__name__} is adaptive: pass the defense as aggregator=")
        self.attack, self.threat, self.aggregator = attack, threat, aggregator

    def __call__(self, updates: torch.Tensor, ctx: RoundContext) -> torch.Tensor:
        return self.apply(updates, ctx).value

    def apply(self, updates: torch.Tensor, ctx: RoundContext) -> StageOutput:
        """The cohort with the malicious rows crafted in an active round; metrics ``attack_active`` and
        ``malicious_in_cohort``."""
        mal = torch.as_tensor(self.threat.mask(ctx.client_ids), device=updates.device)
        f = int(mal.sum())
        metrics = {"attack_active": 0.0, "malicious_in_cohort": float(f)}
        if f == 0 or not self.threat.schedule.active(ctx.round_idx):
            return StageOutput(updates, metrics=metrics)
        if f == len(ctx.client_ids):
            raise ConfigError(f"all {f} sampled clients are malicious in round {ctx.round_idx}: no honest reference")
        own = updates[mal]
        view = AttackView(
            own=own,
            benign=updates[~mal] if self.threat.omniscient else own,
            n=updates.shape[0],
            f=f,
            ctx=ctx,
            aggregator=self.aggregator,
        )
        crafted = self.attack.craft(view)
        if crafted.shape != own.shape:
            raise InvalidUpdateError(
                f"{type(self.attack).__name__} crafted shape {tuple(crafted.shape)}, expected {tuple(own.shape)}"
            )
        out = updates.clone()
        out[mal] = crafted.to(out.dtype)
        log.debug("round %d: %s replaced %d rows", ctx.round_idx, self.attack, f)
        return StageOutput(out, metrics={**metrics, "attack_active": 1.0})

    def state_dict(self) -> dict:
        """The attack's state (Mimic's chosen client and direction), so a resumed run attacks the same way.

        Raises
        ------
        NotImplementedError
            For a stateless attack (the pipeline then saves nothing for this slot).
        """
        save = getattr(self.attack, "state_dict", None)
        if not callable(save):
            raise NotImplementedError(f"{type(self.attack).__name__} has no state")
        return save()

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` into the attack."""
        load = getattr(self.attack, "load_state_dict", None)
        if not callable(load):
            raise StateError(f"{type(self.attack).__name__} has no state to restore, got {sorted(state)[:5]}")
        load(state)
