"""FLTrust (Cao, Fang, Liu, Gong, NDSS 2021).

Examples
--------
>>> import torch
>>> rule = FLTrust()
>>> rule.set_server_update(torch.tensor([1.0, 0.0]))
>>> rule(torch.tensor([[2.0, 0.0], [-5.0, 0.0], [0.0, 3.0]]))
tensor([1., 0.])
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

from defenses.robust.base import RobustAggregator
from defenses.robust.errors import MissingServerUpdateError
from defenses.robust.formats import to_vector
from defenses.robust.registry import register
from fl_core.aggregation import AggregationResult, RoundContext
from fl_core.errors import ConfigError, InvalidUpdateError
from fl_core.geometry import Decision, GeometricRule, Geometry, Needs
from fl_core.numerics import WIDE, combine, row_dots, row_norms
from fl_core.updates import check_update

__all__ = ["FLTrust"]

logger = logging.getLogger(__name__)

ServerUpdateFn = Callable[[RoundContext | None], Any]


@register(
    "fltrust",
    kind="rule",
    description="ReLU-cosine trust against the server's root-dataset update, magnitude-normalised (Cao et al. 2021)",
)
class FLTrust(GeometricRule, RobustAggregator):
    """FLTrust: trust scores from a server update computed on a small clean root dataset.

    Cao, Fang, Liu, Gong, "FLTrust: Byzantine-robust Federated Learning via
    Trust Bootstrapping", NDSS 2021. With ``g0`` the server's update on its
    root dataset::

        TS_i  = ReLU(cos(g_i, g0))
        gbar_i = g_i * ||g0|| / ||g_i||
        g     = sum_i TS_i gbar_i / sum_i TS_i

    A zero update has trust 0. If every trust score is 0 the aggregate is the
    zero update (nobody is trusted) and a warning is logged. Norms, cosines and
    trust scores are float64 and the sum is formed without overflow
    (:mod:`fl_core.numerics`), so every normalised update has norm
    ``||g0||`` and the aggregate norm at most ``||g0||`` for any finite input.

    How ``g0`` is supplied (pick one):

    * ``FLTrust(server_update=fn)`` with ``fn(ctx) -> g0``, called at every
      aggregation with the round's :class:`~fl_core.aggregation.RoundContext`
      (``None`` outside fl_core): the natural form inside a federation loop;
    * ``rule.set_server_update(g0)`` before each call: the natural form in a
      hand-written loop. ``g0`` is kept until replaced or :meth:`reset`.

    ``g0`` may be a ``(d,)`` tensor or array, or a list of per-layer arrays.

    Parameters
    ----------
    f : int
        Byzantine clients assumed; FLTrust needs only ``n > f`` (the paper
        shows robustness to a Byzantine majority, given a clean root dataset).
    server_update : callable, optional
        ``fn(ctx) -> g0``.

    Raises
    ------
    MissingServerUpdateError
        If no ``g0`` is available at call time.

    Notes
    -----
    ``scores`` are the trust scores ``TS_i``; ``kept`` is ``TS_i > 0``.

    Examples
    --------
    >>> import numpy as np
    >>> rule = FLTrust(server_update=lambda ctx: np.array([0.0, 1.0]))
    >>> rule(np.array([[0.0, 4.0], [0.0, -4.0]]))
    array([0., 1.])
    """

    def __init__(self, *, f: int = 0, server_update: ServerUpdateFn | None = None) -> None:
        super().__init__(f=f)
        if server_update is not None and not callable(server_update):
            raise ConfigError(
                f"server_update must be a callable ctx -> g0, got {type(server_update).__name__}; "
                "use set_server_update(g0) to give a fixed update"
            )
        self.server_update = server_update
        self._g0: torch.Tensor | None = None

    def set_server_update(self, g0: Any) -> None:
        """Set the server's root-dataset update ``g0`` used by the next calls."""
        if self.server_update is not None:
            raise ConfigError("FLTrust was built with server_update=fn; do not also call set_server_update()")
        vec = check_update(to_vector(g0, name="server update g0"), name="server update g0")
        self._g0 = vec

    def reset(self) -> None:
        """Forget an update given by :meth:`set_server_update`."""
        self._g0 = None

    def _server_update(self, ctx: RoundContext | None, like: torch.Tensor) -> torch.Tensor:
        d = like.shape[1]
        if self.server_update is not None:
            g0 = to_vector(self.server_update(ctx), d=d, name="server update g0")
        elif self._g0 is not None:
            g0 = self._g0
        else:
            raise MissingServerUpdateError(
                "FLTrust needs the server's root-dataset update g0: call set_server_update(g0) "
                "or build FLTrust(server_update=fn)"
            )
        check_update(g0, d=d, name="server update g0")
        g0 = g0.to(device=like.device, dtype=like.dtype)
        if not bool((g0 != 0).any()):
            raise InvalidUpdateError("server update g0 is the zero vector: no direction to trust")
        return g0

    def _aggregate(self, updates: torch.Tensor, weights: torch.Tensor, ctx: RoundContext | None) -> AggregationResult:
        g0 = self._server_update(ctx, updates)
        g0_norm = row_norms(g0[None])[0]
        norms = row_norms(updates)
        trust, coef = _trust(norms, row_dots(updates, g0, norms, g0_norm), g0_norm)
        agg = combine(coef, updates) if coef is not None else torch.zeros_like(g0)
        return AggregationResult(
            aggregate=agg, kept=trust > 0, scores=trust, metrics={"trusted": float((trust > 0).sum())}
        )

    def geometry_needs(self) -> Needs:
        """Norms and the inner products with the root update ``g0``."""
        return Needs.REFERENCES

    def references(self, d: int, ctx: RoundContext | None) -> torch.Tensor:
        """``g0``, the one reference vector, which both servers know."""
        return self._server_update(ctx, torch.empty(0, d, dtype=WIDE))[None]

    def decide(self, geometry: Geometry, weights: torch.Tensor, ctx: RoundContext | None) -> Decision:
        """The trust scores from ``||x_i||``, ``||g0||`` and ``<x_i, g0>``."""
        norms = geometry.norms2().clamp_min(0.0).sqrt()
        trust, coef = _trust(norms, geometry.ref_dots(0), geometry.ref_norm2(0).sqrt())
        full = torch.zeros(geometry.n + geometry.r, dtype=WIDE, device=norms.device)
        if coef is not None:
            full[: geometry.n] = coef
        return Decision(coef=full, kept=trust > 0, scores=trust, metrics={"trusted": float((trust > 0).sum())})


def _trust(norms: torch.Tensor, dots: torch.Tensor, g0_norm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Trust scores ``ReLU(cos)`` and the coefficients ``TS_i ||g0|| / (||x_i|| sum TS)`` (``None``: nobody trusted)."""
    safe = torch.where(norms > 0, norms, torch.ones_like(norms))
    cos = (dots / (safe * g0_norm)).clamp(-1.0, 1.0)
    trust = torch.relu(cos).masked_fill(norms == 0, 0.0)
    total = trust.sum()
    if not bool(total > 0):
        logger.warning("FLTrust: every trust score is 0; returning the zero update")
        return trust, None
    return trust, trust * g0_norm / (safe * total)
