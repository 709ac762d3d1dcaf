"""Rules that read only inner products: what a protocol can compute on hidden rows.

Many robust rules never need a client's update itself, only scalars of the cohort's
geometry (norms, pairwise inner products, inner products with a public reference
such as FLTrust's root update), and their output is a linear combination of the
rows with coefficients decided from those scalars, plus, for FLAME, Gaussian noise.
Such a rule can run where no party sees the rows: two non-colluding servers compute
exactly the scalars the rule declares on secret shares, decide, and open only the
combination (:mod:`secure_agg.twoserver`).

A rule opts in by implementing :class:`GeometricRule` (``defenses.robust``'s Krum,
Multi-Krum, norm bounding, FLTrust, centered clipping and FLAME do); a pre-aggregator
that mixes rows with coefficients from the geometry (NNM) implements
:class:`GeometricMixer`. The protocol needs only this module, never ``defenses``.

Examples
--------
>>> import torch
>>> X = torch.tensor([[3.0, 4.0], [0.0, 1.0]])
>>> g = Geometry.of(X, needs=Needs.GRAM)
>>> g.norms2().tolist(), g.sq_distances()[0, 1].item()
([25.0, 1.0], 18.0)
>>> Geometry.of(X, needs=Needs.NORMS).gram[0, 1].isnan().item()
True
"""

from __future__ import annotations

import abc
import copy
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import torch

from fl_core.aggregation import Aggregator, RoundContext
from fl_core.errors import ConfigError

__all__ = [
    "Decision",
    "GeometricMixer",
    "GeometricRule",
    "Geometry",
    "Needs",
    "apply_decision",
    "supports_geometry",
]

WIDE = torch.float64


class Needs(IntEnum):
    """Which inner products a rule reads; each level includes the ones below it.

    ``NORMS``: each client's squared norm. ``REFERENCES``: also each client's inner
    product with every public reference vector. ``GRAM``: every pairwise inner product.
    """

    NORMS = 1
    REFERENCES = 2
    GRAM = 3


@dataclass(frozen=True)
class Geometry:
    """Inner products of ``n`` client rows and ``r`` public reference vectors.

    Attributes
    ----------
    gram : torch.Tensor
        ``(n + r, n + r)`` float64; rows/columns ``0..n-1`` are the clients, ``n..`` the
        references. Entries the protocol did not compute are NaN.
    n : int
        Number of client rows.
    """

    gram: torch.Tensor
    n: int

    @property
    def r(self) -> int:
        """Number of reference vectors."""
        return self.gram.shape[0] - self.n

    def norms2(self) -> torch.Tensor:
        """``(n,)`` squared norms of the client rows."""
        return self.gram.diagonal()[: self.n]

    def client_gram(self) -> torch.Tensor:
        """``(n, n)`` client inner products; raises if they were not computed."""
        g = self.gram[: self.n, : self.n]
        if bool(g.isnan().any()):
            raise ConfigError("this geometry has no pairwise inner products: the rule must declare Needs.GRAM")
        return g

    def sq_distances(self) -> torch.Tensor:
        """``(n, n)`` squared distances ``||x_i||^2 + ||x_j||^2 - 2 <x_i, x_j>`` (clamped at 0)."""
        g, sq = self.client_gram(), self.norms2()
        dist = (sq[:, None] + sq[None, :] - 2.0 * g).clamp_min(0.0)
        return dist.fill_diagonal_(0.0)

    def ref_dots(self, j: int = 0) -> torch.Tensor:
        """``(n,)`` inner products of the clients with reference ``j``."""
        return self.gram[: self.n, self.n + j]

    def ref_norm2(self, j: int = 0) -> torch.Tensor:
        """Squared norm of reference ``j`` (0-d)."""
        return self.gram[self.n + j, self.n + j]

    def dots_with(self, coef: torch.Tensor) -> torch.Tensor:
        """``(n + r,)`` inner products of every row with ``v = coef @ rows`` (reads only columns with ``coef != 0``)."""
        idx = (coef != 0).nonzero().flatten()
        return self.gram[:, idx] @ coef[idx]

    def mixed(self, mix: torch.Tensor) -> Geometry:
        """Geometry of the client rows ``mix @ X`` (``mix`` ``(m, n)``), references unchanged."""
        m, r = mix.shape[0], self.r
        full = torch.zeros(m + r, self.n + r, dtype=WIDE, device=self.gram.device)
        full[:m, : self.n] = mix.to(WIDE)
        full[m:, self.n :] = torch.eye(r, dtype=WIDE, device=self.gram.device)
        return Geometry(gram=full @ self.client_safe() @ full.T, n=m)

    def client_safe(self) -> torch.Tensor:
        """The Gram matrix, required to be fully computed (mixing reads every entry)."""
        self.client_gram()
        if bool(self.gram.isnan().any()):
            raise ConfigError("mixing rows needs every inner product, references included")
        return self.gram

    @classmethod
    def of(cls, rows: torch.Tensor, refs: torch.Tensor | None = None, *, needs: Needs = Needs.GRAM) -> Geometry:
        """The plaintext geometry of ``rows`` ``(n, d)`` and ``refs`` ``(r, d)``, float64, NaN where not needed."""
        n = rows.shape[0]
        refs = rows.new_zeros((0, rows.shape[1])) if refs is None else refs
        allv = torch.cat([rows, refs.to(rows.dtype)]).to(WIDE)
        gram = torch.full((allv.shape[0],) * 2, float("nan"), dtype=WIDE, device=rows.device)
        if needs >= Needs.GRAM:
            gram = allv @ allv.T
        else:
            gram.diagonal()[:n] = (allv[:n] * allv[:n]).sum(1)
            gram[n:, n:] = allv[n:] @ allv[n:].T
            if needs >= Needs.REFERENCES:
                cross = allv[:n] @ allv[n:].T
                gram[:n, n:], gram[n:, :n] = cross, cross.T
        return cls(gram=gram, n=n)


@dataclass(frozen=True)
class Decision:
    """A geometric rule's output: ``aggregate = coef @ [rows; refs] + N(0, noise_std^2 I)``.

    Attributes
    ----------
    coef : torch.Tensor
        ``(n + r,)`` float64 coefficients of the client rows, then of the references.
    kept : torch.Tensor
        ``(n,)`` bool: the clients that entered the aggregate.
    scores : torch.Tensor or None
        ``(n,)`` per-client scores where the rule has them.
    metrics : dict of str to float
        Scalar facts for the round record.
    noise_std : float
        Standard deviation of the Gaussian noise to add to every coordinate.
    """

    coef: torch.Tensor
    kept: torch.Tensor
    scores: torch.Tensor | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    noise_std: float = 0.0


class GeometricRule(abc.ABC):
    """Mixin: an :class:`~fl_core.aggregation.Aggregator` that decides from the geometry alone."""

    def geometry_supported(self) -> bool:
        """Whether this instance can decide from the geometry (a composition may not)."""
        return True

    @abc.abstractmethod
    def geometry_needs(self) -> Needs:
        """The inner products :meth:`decide` reads."""

    def references(self, d: int, ctx: RoundContext | None) -> torch.Tensor:
        """``(r, d)`` float64 public reference vectors the servers know (none by default)."""
        return torch.zeros(0, d, dtype=WIDE)

    @abc.abstractmethod
    def decide(self, geometry: Geometry, weights: torch.Tensor, ctx: RoundContext | None) -> Decision:
        """The coefficients (and noise) of the aggregate, from ``geometry`` and the public ``weights``."""

    def observe(self, aggregate: torch.Tensor) -> None:
        """Called with the opened aggregate (stateful rules keep it, e.g. centered clipping's reference)."""

    def excluding(self, removed: int) -> GeometricRule:
        """This rule for a cohort from which ``removed`` provably Byzantine clients were already taken out.

        A protocol that rejects clients for a norm over a bound no honest client exceeds
        knows they were among the ``f`` attackers, so at most ``f - removed`` remain among
        the rows the rule sees. Returns a shallow copy with ``f`` lowered (``self`` when
        nothing changes); the copy shares the rule's state, and :meth:`decide` does not
        change state.
        """
        return _fewer_byzantine(self, removed)


class GeometricMixer(abc.ABC):
    """Mixin: a pre-aggregator whose output rows are ``mix @ X`` with ``mix`` decided from the geometry."""

    @abc.abstractmethod
    def geometry_needs(self) -> Needs:
        """The inner products :meth:`mixing` reads."""

    @abc.abstractmethod
    def mixing(self, geometry: Geometry, weights: torch.Tensor, ctx: RoundContext | None) -> torch.Tensor:
        """``(m, n)`` float64 mixing matrix."""

    def excluding(self, removed: int) -> GeometricMixer:
        """As :meth:`GeometricRule.excluding`."""
        return _fewer_byzantine(self, removed)


def _fewer_byzantine(stage: Any, removed: int) -> Any:  # a rule or a mixer
    f = getattr(stage, "f", 0)
    if removed < 0:
        raise ConfigError(f"removed must be >= 0, got removed={removed}")
    if removed == 0 or not f:
        return stage
    out = copy.copy(stage)
    out.f = max(0, f - removed)
    return out


def supports_geometry(rule: Aggregator) -> bool:
    """Whether ``rule`` can run on hidden rows through its geometry.

    Examples
    --------
    >>> from fl_core.aggregation import WeightedMean
    >>> supports_geometry(WeightedMean())
    False
    """
    return isinstance(rule, GeometricRule) and rule.geometry_supported()


def apply_decision(decision: Decision, rows: torch.Tensor, refs: torch.Tensor | None,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """The plaintext aggregate of a decision: ``coef @ [rows; refs]`` plus its noise (float64 sum, input dtype).

    Examples
    --------
    >>> import torch
    >>> d = Decision(coef=torch.tensor([0.5, 0.5], dtype=torch.float64), kept=torch.tensor([True, True]))
    >>> apply_decision(d, torch.tensor([[1.0], [3.0]]), None).tolist()
    [2.0]
    """
    refs = rows.new_zeros((0, rows.shape[1])) if refs is None else refs
    allv = torch.cat([rows.to(WIDE), refs.to(WIDE)])
    out = decision.coef.to(WIDE) @ allv
    if decision.noise_std > 0:
        if generator is None:
            raise ConfigError("this decision adds noise: pass a generator")
        out = out + decision.noise_std * torch.randn(out.shape[0], generator=generator, dtype=WIDE)
    return out.to(rows.dtype)
