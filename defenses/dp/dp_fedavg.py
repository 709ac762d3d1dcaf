"""Client-level DP-FedAvg (McMahan, Ramage, Talwar, Zhang, ICLR 2018): central and local.

**Central DP.** The server clips each client's update to ``C`` (an
:class:`~defenses.dp.clipping.L2Clip`, :class:`~defenses.dp.clipping.PerLayerClip`
or :class:`~defenses.dp.clipping.AdaptiveClip`), aggregates with the
*fixed-denominator* estimator ``f~_f = sum_{k in cohort} w_k u_k / (q W)``
(:class:`FixedDenominatorMean`; ``w_k <= 1`` so adding or removing one client
moves the sum by at most ``C`` and the estimate by ``S = C / (q W)``), and adds
``N(0, (z S)^2)`` to the estimate (:class:`CentralGaussianNoise`). Each round is one
sampled Gaussian release with noise multiplier ``z`` and sampling rate ``q``, which
the :class:`~defenses.dp.ledger.PrivacyLedger` composes. The noise is sized by the
sensitivity of the aggregate it receives, which the pipeline computes from the
clip's bound and the aggregator (:mod:`fl_core.pipeline`): after a robust rule
instead of the fixed-denominator mean it is larger (Krum ``2C``, a coordinate-wise
median ``2C sqrt(n)``), and a rule without a known sensitivity is refused. With ``z = 0``,
uniform weights and a cohort of exactly ``m = qW`` clients, this is FedAvg of the
clipped updates, bit for bit.

**Local DP.** Each client clips its own update and adds ``N(0, (z * 2C)^2)``
(:class:`LocalGaussianDP`): in local DP the neighbouring inputs are any two updates in
the ball of radius ``C``, so the L2 sensitivity is ``2C``. Every participating
client accounts its own releases in a :class:`~defenses.dp.ledger.PerClientLedger`
(no amplification by sampling: a client knows it took part).

Examples
--------
>>> import torch
>>> from fl_core.aggregation import WeightedMean
>>> from fl_core.pipeline import Round
>>> dp = CentralDPFedAvg(clip_norm=10.0, noise_multiplier=0.0, expected_clients=2, sample_rate=0.5, delta=1e-5)
>>> U = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
>>> out = dp.pipeline()(U, torch.ones(2), Round(index=0, client_ids=(0, 1), global_params=torch.zeros(2)))
>>> bool(torch.equal(out.delta, WeightedMean()(U)))
True
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from typing import Any

import torch

from defenses.dp.clipping import AdaptiveClip, L2Clip, PerLayerClip, clip_rows
from defenses.dp.errors import PrivacyConfigError, check_positive
from defenses.dp.events import GaussianEvent
from defenses.dp.ledger import PerClientLedger, PrivacyLedger
from fl_core.aggregation import AggregationResult, Aggregator, RoundContext, StageOutput
from fl_core.contracts import StageContract
from fl_core.pipeline import Pipeline
from fl_core.server_opt import ServerOptimizer
from fl_core.state import DelegatedState, StateError, check_state
from fl_core.updates import check_cohort

__all__ = ["CentralDPFedAvg", "CentralGaussianNoise", "FixedDenominatorMean", "LocalGaussianDP"]

log = logging.getLogger(__name__)

Clip = L2Clip | PerLayerClip | AdaptiveClip


class FixedDenominatorMean(Aggregator):
    """McMahan et al. (2018)'s fixed-denominator estimator ``sum_k w_k u_k / (q W)``.

    Parameters
    ----------
    denominator : float
        ``q W``: the expected total weight of a cohort (with unit weights, the
        expected number of clients ``m``). Fixed, so one client changes the
        estimate by at most ``max_k w_k * C / (q W)``.
    weight_cap : float, optional
        ``w^``: client weights become ``w_k = min(n_k / w^, 1)`` from the example
        counts ``n_k``; ``None`` (default) gives every client weight 1.

    Examples
    --------
    >>> import torch
    >>> FixedDenominatorMean(denominator=4.0)(torch.tensor([[4.0], [8.0]]))
    tensor([3.])
    """


    def contract(self) -> StageContract:
        """A fixed-denominator mean, with sensitivity ``C / (q W)`` (:meth:`sensitivity`)."""
        return StageContract(output="fixed_denominator_mean", bounded=True)

    def sensitivity(self, bound: float, n: int) -> float | None:
        """``C / (q W)``: one client with weight ``w_k <= 1`` moves the sum by at most ``C``."""
        return bound / self.denominator

    def __init__(self, *, denominator: float, weight_cap: float | None = None) -> None:
        self.denominator = check_positive(denominator, name="denominator")
        self.weight_cap = None if weight_cap is None else check_positive(weight_cap, name="weight_cap")

    def client_weights(self, counts: torch.Tensor) -> torch.Tensor:
        """``w_k``: 1, or ``min(n_k / w^, 1)`` with a weight cap."""
        if self.weight_cap is None:
            return torch.ones_like(counts)
        return torch.clamp(counts / self.weight_cap, max=1.0)

    def _aggregate(self, updates: torch.Tensor, weights: torch.Tensor, ctx: RoundContext | None) -> AggregationResult:
        w = self.client_weights(weights)
        agg = (w / self.denominator) @ updates
        kept = torch.ones(updates.shape[0], dtype=torch.bool, device=updates.device)
        return AggregationResult(aggregate=agg, kept=kept, metrics={"dp_cohort_weight": float(w.sum())})


class CentralGaussianNoise(DelegatedState):
    """Server-side Gaussian noise sized by the aggregate's sensitivity (an ``AggregateTransform``).

    Adds ``N(0, (z S)^2)`` per coordinate, where ``S`` is the L2 sensitivity of the
    aggregate it receives (``ctx.sensitivity``, computed by the pipeline from the
    clip's bound and the aggregator), and records one sampled Gaussian event with
    noise multiplier ``z``.

    Parameters
    ----------
    noise_multiplier : float
        ``z >= 0``; with an :class:`AdaptiveClip`, ``z`` covers update and count
        together and the update gets ``z_Delta`` (Andrew et al. 2021, Theorem 1).
    sample_rate : float
        ``q`` recorded with every event.
    ledger : PrivacyLedger
        Where the round's event goes; its metrics are reported each round.
    clip : AdaptiveClip, optional
        The adaptive clip of the same pipeline, whose count query shares the budget.
    """

    def contract(self) -> StageContract:
        """Sized by the aggregate's sensitivity: the rows must be clipped and the aggregator bounded."""
        return StageContract(needs_sensitivity=True)

    def __init__(
        self,
        *,
        noise_multiplier: float,
        sample_rate: float,
        ledger: PrivacyLedger,
        clip: Clip | None = None,
    ) -> None:
        self.clip = clip
        self.noise_multiplier = check_positive(noise_multiplier, name="noise_multiplier", allow_zero=True)
        if not isinstance(sample_rate, int | float) or not 0.0 < sample_rate <= 1.0:
            raise PrivacyConfigError(f"sample_rate must lie in (0, 1], got {sample_rate!r}")
        self.sample_rate = float(sample_rate)
        self.ledger = ledger
        if isinstance(clip, AdaptiveClip) and self.noise_multiplier > 0:
            clip.update_noise_multiplier(self.noise_multiplier)  # validate before training

    def update_noise_multiplier(self) -> float:
        """``z`` for the update sum (``z_Delta`` with adaptive clipping)."""
        if isinstance(self.clip, AdaptiveClip):
            return self.clip.update_noise_multiplier(self.noise_multiplier)
        return self.noise_multiplier

    def apply(self, aggregate: torch.Tensor, ctx: RoundContext) -> StageOutput:
        """The noised aggregate; metrics ``dp_noise_std`` (``z S``) and ``dp_sensitivity`` (``S``).

        Raises
        ------
        PrivacyConfigError
            ``ctx.sensitivity`` is unknown (called outside a pipeline, or after no clip).
        """
        if self.noise_multiplier == 0.0:
            self.ledger.note("noise multiplier 0: no privacy (FedAvg of clipped updates)")
            return StageOutput(aggregate, metrics={"dp_noise_std": 0.0})
        sens = ctx.sensitivity
        if sens is None or not sens >= 0.0:
            raise PrivacyConfigError(
                f"CentralGaussianNoise needs the aggregate's sensitivity, got {sens!r}: run it in a "
                "fl_core.pipeline.Pipeline after a clip and an aggregator with a known sensitivity"
            )
        sigma = self.update_noise_multiplier() * sens
        noise = torch.randn(aggregate.shape, dtype=torch.float64, generator=ctx.generator)
        self.ledger.record(GaussianEvent(noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate))
        out = aggregate + (sigma * noise).to(device=aggregate.device, dtype=aggregate.dtype)
        return StageOutput(out, metrics={"dp_noise_std": sigma, "dp_sensitivity": float(sens)})

    def __call__(self, aggregate: torch.Tensor, ctx: RoundContext) -> torch.Tensor:
        return self.apply(aggregate, ctx).value

    #: Its state is its ledger's (:class:`~fl_core.state.DelegatedState`): a privacy budget survives a restart.
    STATE_PARTS = ("ledger",)

    def _config(self) -> dict[str, Any]:
        return {"noise_multiplier": self.noise_multiplier, "sample_rate": self.sample_rate}

    def round_metrics(self) -> dict[str, float]:
        """The noise multiplier and the ledger's epsilon so far (``inf`` without noise)."""
        out = {"dp_noise_multiplier": self.noise_multiplier}
        if self.noise_multiplier == 0.0:
            return {**out, "dp_epsilon": float("inf"), "dp_delta": self.ledger.delta}
        return {**out, **self.ledger.round_metrics()}


class CentralDPFedAvg:
    """The central DP-FedAvg pipeline: clip -> fixed-denominator mean -> Gaussian noise -> ledger.

    Parameters
    ----------
    clip_norm : float
        ``C > 0`` (flat L2 clipping); or pass ``clip`` for per-layer or adaptive clipping.
    noise_multiplier : float
        ``z >= 0``.
    expected_clients : int
        ``m = q K``: the fixed denominator (unit weights).
    sample_rate : float
        ``q = m / K``, the client sampling rate.
    delta : float
        ``delta`` of the ledger.
    accountant : str
        ``"rdp"`` or ``"prv"``.
    target_epsilon, planned_rounds : optional
        If both are given, the plan is checked before training
        (:class:`~defenses.dp.errors.PrivacyBudgetError` if ``z`` cannot reach the target).
    clip : optional
        A ready clipping transform instead of ``clip_norm``.

    :meth:`pipeline` returns the chain clip -> fixed-denominator mean -> noise as a
    :class:`~fl_core.pipeline.Pipeline` (``Federation(pipeline=dp.pipeline(), ...)``
    or a call in any loop). The noise is sized for the aggregator the pipeline
    actually runs: with ``rule=`` a robust rule, its (larger) sensitivity.
    """

    def __init__(
        self,
        *,
        noise_multiplier: float,
        expected_clients: int,
        sample_rate: float,
        delta: float,
        clip_norm: float | None = None,
        clip: Clip | None = None,
        accountant: str = "rdp",
        target_epsilon: float | None = None,
        planned_rounds: int | None = None,
    ) -> None:
        if (clip is None) == (clip_norm is None):
            raise PrivacyConfigError("give exactly one of clip_norm and clip")
        if not isinstance(expected_clients, int) or expected_clients < 1:
            raise PrivacyConfigError(f"expected_clients must be an int >= 1, got {expected_clients!r}")
        self.clip: Clip = clip if clip is not None else L2Clip(clip_norm=clip_norm)  # type: ignore[arg-type]
        self.ledger = PrivacyLedger(delta=delta, accountant=accountant, target_epsilon=target_epsilon)
        self.aggregator = FixedDenominatorMean(denominator=float(expected_clients))
        self.noise = CentralGaussianNoise(
            clip=self.clip,
            noise_multiplier=noise_multiplier,
            sample_rate=sample_rate,
            ledger=self.ledger,
        )
        if target_epsilon is not None and planned_rounds is not None:
            if noise_multiplier == 0:
                raise PrivacyConfigError(f"noise multiplier 0 cannot reach target epsilon {target_epsilon}")
            self.ledger.check_plan(noise_multiplier=noise_multiplier, sample_rate=sample_rate, rounds=planned_rounds)

    def pipeline(
        self,
        *,
        attack: object = None,
        rule: Aggregator | None = None,
        optimizer: ServerOptimizer | None = None,
        seed: int = 0,
    ) -> Pipeline:
        """The central DP-FedAvg round as a pipeline: ``[attack] -> clip -> aggregator -> noise -> optimizer``.

        ``rule`` replaces the fixed-denominator mean: the noise then follows that rule's
        sensitivity (Krum ``2C`` instead of ``C / (qW)``), or the pipeline refuses a rule
        that declares none (:class:`~fl_core.contracts.CompositionError`).
        """
        return Pipeline(attack=attack, client=[self.clip], rule=rule or self.aggregator, server=[self.noise],
                        optimizer=optimizer, seed=seed)

    #: Layout version of :meth:`state_dict`.
    STATE_VERSION = 1

    def _config(self) -> dict[str, Any]:
        return {
            "noise_multiplier": self.noise.noise_multiplier,
            "expected_clients": int(self.aggregator.denominator),
            "sample_rate": self.noise.sample_rate,
            "clip": type(self.clip).__name__,
        }

    def state_dict(self) -> dict[str, Any]:
        """The ledger's state and, with adaptive clipping, the clip's; JSON-serialisable.

        Keys besides ``kind``, ``version`` and ``config``: ``ledger``
        (:meth:`PrivacyLedger.state_dict`) and ``clip``
        (:meth:`AdaptiveClip.state_dict`, or ``None`` for the stateless clips).

        Examples
        --------
        >>> import json
        >>> dp = CentralDPFedAvg(clip_norm=1.0, noise_multiplier=1.0, expected_clients=10, sample_rate=0.1,
        ...                      delta=1e-5)
        >>> dp.ledger.record(GaussianEvent(noise_multiplier=1.0, sample_rate=0.1, steps=50))
        >>> resumed = CentralDPFedAvg(clip_norm=1.0, noise_multiplier=1.0, expected_clients=10, sample_rate=0.1,
        ...                           delta=1e-5)
        >>> resumed.load_state_dict(json.loads(json.dumps(dp.state_dict())))
        >>> resumed.ledger.epsilon() == dp.ledger.epsilon()
        True
        """
        clip = self.clip.state_dict() if isinstance(self.clip, AdaptiveClip) else None
        return {
            "kind": type(self).__name__,
            "version": self.STATE_VERSION,
            "config": self._config(),
            "ledger": self.ledger.state_dict(),
            "clip": clip,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state of a pipeline with the same configuration (delegates to the ledger and the clip).

        The clip's state is checked on a copy first and the ledger loads all or
        nothing, so a bad state leaves this object unchanged.

        Raises
        ------
        fl_core.state.StateError
            Another kind, version or configuration, or a bad ledger or clip state.
        """
        kind = type(self).__name__
        state = check_state(state, kind=kind, version=self.STATE_VERSION, keys=("ledger", "clip"),
                            config=self._config())
        adaptive = isinstance(self.clip, AdaptiveClip)
        if adaptive == (state["clip"] is None):
            raise StateError(f"{kind} state: clip state must be given exactly with adaptive clipping")
        if isinstance(self.clip, AdaptiveClip):
            copy.deepcopy(self.clip).load_state_dict(state["clip"])  # validate before touching anything
        self.ledger.load_state_dict(state["ledger"])
        if isinstance(self.clip, AdaptiveClip):
            self.clip.load_state_dict(state["clip"])


class LocalGaussianDP(DelegatedState):
    """Local DP: each client clips to ``C`` and adds ``N(0, (z * 2C)^2)`` itself (an ``UpdateTransform``).

    Parameters
    ----------
    clip_norm : float
        ``C > 0``.
    noise_multiplier : float
        ``z >= 0`` relative to the local sensitivity ``2C``.
    delta : float
        ``delta`` of the per-client ledgers.
    accountant : str
        ``"rdp"`` or ``"prv"``.

    Examples
    --------
    >>> import torch
    >>> from fl_core.aggregation import RoundContext
    >>> ldp = LocalGaussianDP(clip_norm=1.0, noise_multiplier=1.0, delta=1e-5)
    >>> ctx = RoundContext(0, (4, 9), torch.ones(2), torch.zeros(3), torch.Generator().manual_seed(0))
    >>> ldp(torch.zeros(2, 3), ctx).shape, sorted(ldp.ledgers.ledgers)
    (torch.Size([2, 3]), [4, 9])
    """

    def __init__(self, *, clip_norm: float, noise_multiplier: float, delta: float, accountant: str = "rdp") -> None:
        self.clip_norm = check_positive(clip_norm, name="clip_norm")
        self.noise_multiplier = check_positive(noise_multiplier, name="noise_multiplier", allow_zero=True)
        self.ledgers = PerClientLedger(delta=delta, accountant=accountant)

    #: Its state is the per-client ledgers' (key ``ledgers``; JSON when the client ids are ints or strs).
    STATE_PARTS = ("ledgers",)

    def _config(self) -> dict[str, Any]:
        return {"clip_norm": self.clip_norm, "noise_multiplier": self.noise_multiplier}

    @property
    def sigma(self) -> float:
        """Noise standard deviation ``z * 2C`` per coordinate."""
        return self.noise_multiplier * 2.0 * self.clip_norm

    def __call__(self, updates: torch.Tensor, ctx: RoundContext) -> torch.Tensor:
        check_cohort(updates)
        out, _ = clip_rows(updates, self.clip_norm)
        if self.noise_multiplier == 0.0:
            return out
        noise = torch.randn(tuple(out.shape), dtype=torch.float64, generator=ctx.generator)
        for cid in ctx.client_ids:
            self.ledgers.record(cid, GaussianEvent(noise_multiplier=self.noise_multiplier, mechanism="local gaussian"))
        return out + (self.sigma * noise).to(device=out.device, dtype=out.dtype)

    def round_metrics(self) -> dict[str, float]:
        if self.noise_multiplier == 0.0:
            return {"dp_local_max_epsilon": float("inf"), "dp_delta": self.ledgers.delta}
        return self.ledgers.round_metrics()
