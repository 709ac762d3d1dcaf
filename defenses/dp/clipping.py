"""Clipping of client updates: flat L2, per-layer, and adaptive (private quantile) clipping.

All three are :class:`fl_core.aggregation.UpdateTransform` s mapping the cohort
``(n, d) -> (n, d)`` and bound every row's L2 norm. ``apply(updates, ctx)`` returns
a :class:`~fl_core.aggregation.StageOutput` whose ``bound`` is the clip norm used in
that call: the pipeline turns it into the aggregate's sensitivity, to which the DP
noise is calibrated (:mod:`fl_core.pipeline`).

* :class:`L2Clip`: ``u <- u * min(1, C / ||u||_2)`` (McMahan, Ramage, Talwar, Zhang,
  ICLR 2018, "flat clipping").
* :class:`PerLayerClip`: each layer ``l`` clipped to ``C_l``; the whole update is
  then bounded by ``C = sqrt(sum_l C_l^2)`` (McMahan et al. 2018, per-layer clipping).
* :class:`AdaptiveClip`: the clip norm tracks the ``gamma``-quantile of the update
  norms by private quantile estimation (Andrew, Thakkar, McMahan, Ramaswamy,
  NeurIPS 2021): each round ``b~ = (sum_i 1[||u_i|| <= C] + N(0, sigma_b^2)) / m`` and
  ``C <- C exp(-eta (b~ - gamma))``.

Examples
--------
>>> import torch
>>> clip = L2Clip(clip_norm=1.0)
>>> out = clip(torch.tensor([[3.0, 4.0], [0.3, 0.4]]))
>>> [round(v, 5) for v in torch.linalg.vector_norm(out, dim=1).tolist()]
[1.0, 0.5]
>>> bool(torch.linalg.vector_norm(out, dim=1).max() <= 1.0)
True
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from defenses.dp.errors import PrivacyConfigError, check_positive
from fl_core.aggregation import RoundContext, StageOutput
from fl_core.contracts import StageContract
from fl_core.numerics import clip_rows as direction_rows
from fl_core.numerics import row_norms
from fl_core.state import check_state, state_float, state_int
from fl_core.updates import check_cohort

__all__ = ["AdaptiveClip", "L2Clip", "PerLayerClip", "clip_rows", "layer_sizes"]

log = logging.getLogger(__name__)


def clip_rows(updates: torch.Tensor, clip_norm: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale each row to L2 norm at most ``clip_norm``; returns ``(clipped, norms before clipping)``.

    Rows already within the bound are multiplied by exactly 1. Norms are computed
    without overflow for any finite row (:func:`fl_core.numerics.row_norms`);
    a NaN/Inf row raises :class:`~fl_core.errors.InvalidUpdateError`.

    Examples
    --------
    >>> import torch
    >>> U, norms = clip_rows(torch.tensor([[6.0, 8.0]]), 5.0)
    >>> U.tolist(), norms.tolist()
    ([[3.0, 4.0]], [10.0])
    """
    c = check_positive(clip_norm, name="clip_norm")
    check_cohort(updates)
    norms = row_norms(updates)  # float64, no overflow (inf only for float64 rows beyond 1e308)
    over = (norms > c).nonzero().squeeze(1)
    out = updates.clone()
    if over.numel():
        # each row's direction is formed on a power-of-two rescaled copy: no subnormal factor
        out[over] = direction_rows(updates, over, torch.tensor(c, dtype=torch.float64))
    # float rounding of the product may overshoot by an ulp: shrink those rows once more
    over = torch.linalg.vector_norm(out.to(torch.float64), dim=1) > c
    if bool(over.any()):
        out[over] = out[over] * (1 - 4 * torch.finfo(updates.dtype).eps)
    return out, norms


def layer_sizes(model: nn.Module) -> tuple[int, ...]:
    """Sizes of the trainable parameter tensors of ``model`` in flattening order (``fl_core.params``)."""
    return tuple(p.numel() for p in model.parameters() if p.requires_grad)


class L2Clip:
    """Flat L2 clipping of every client update to ``clip_norm`` (``C``).

    Parameters
    ----------
    clip_norm : float
        ``C > 0``.
    """

    def __init__(self, *, clip_norm: float) -> None:
        self.clip_norm = check_positive(clip_norm, name="clip_norm")

    def contract(self) -> StageContract:
        """Every output row has L2 norm at most ``clip_norm``."""
        return StageContract(bounds_rows=True)

    def apply(self, updates: torch.Tensor, ctx: RoundContext | None = None) -> StageOutput:
        """The clipped cohort, its bound ``C``, and ``clip_norm`` and ``fraction_clipped`` as metrics."""
        check_cohort(updates)
        out, norms = clip_rows(updates, self.clip_norm)
        frac = float((norms > self.clip_norm).double().mean())
        return StageOutput(out, bound=self.clip_norm, metrics={"clip_norm": self.clip_norm, "fraction_clipped": frac})

    def __call__(self, updates: torch.Tensor, ctx: RoundContext | None = None) -> torch.Tensor:
        return self.apply(updates, ctx).value


class PerLayerClip:
    """Clip each layer's slice of the flat update to its own bound ``C_l``.

    Parameters
    ----------
    layer_sizes : sequence of int
        Sizes of the layers in the flat update's order (:func:`layer_sizes`); they must sum to ``d``.
    clip_norms : sequence of float, or float
        One ``C_l > 0`` per layer; a single float ``C`` gives every layer ``C / sqrt(L)``
        so that the overall bound is ``C``.

    Examples
    --------
    >>> import torch
    >>> clip = PerLayerClip(layer_sizes=(2, 1), clip_norms=(1.0, 0.5))
    >>> [round(v, 5) for v in clip(torch.tensor([[3.0, 4.0, -2.0]]))[0].tolist()]
    [0.6, 0.8, -0.5]
    >>> round(clip.clip_norm, 4)
    1.118
    """

    def __init__(self, *, layer_sizes: Sequence[int], clip_norms: Sequence[float] | float) -> None:
        sizes = tuple(int(s) for s in layer_sizes)
        if not sizes or any(s < 1 for s in sizes):
            raise PrivacyConfigError(f"layer_sizes must be a non-empty sequence of ints >= 1, got {layer_sizes!r}")
        if isinstance(clip_norms, int | float):
            c = check_positive(clip_norms, name="clip_norms")
            norms = tuple(c / math.sqrt(len(sizes)) for _ in sizes)
        else:
            norms = tuple(check_positive(c, name=f"clip_norms[{i}]") for i, c in enumerate(clip_norms))
            if len(norms) != len(sizes):
                raise PrivacyConfigError(f"{len(norms)} clip norms for {len(sizes)} layers")
        self.layer_sizes, self.clip_norms = sizes, norms
        self.clip_norm = math.sqrt(sum(c * c for c in norms))

    def contract(self) -> StageContract:
        """Every output row has L2 norm at most ``sqrt(sum_l C_l^2)``."""
        return StageContract(bounds_rows=True)

    def apply(self, updates: torch.Tensor, ctx: RoundContext | None = None) -> StageOutput:
        """The per-layer clipped cohort and its overall bound ``sqrt(sum_l C_l^2)``."""
        check_cohort(updates)
        d = updates.shape[1]
        if sum(self.layer_sizes) != d:
            raise PrivacyConfigError(f"layer sizes sum to {sum(self.layer_sizes)}, but the updates have d={d}")
        parts = torch.split(updates, self.layer_sizes, dim=1)
        out = torch.cat([clip_rows(p, c)[0] for p, c in zip(parts, self.clip_norms, strict=True)], dim=1)
        return StageOutput(out, bound=self.clip_norm, metrics={"clip_norm": self.clip_norm})

    def __call__(self, updates: torch.Tensor, ctx: RoundContext | None = None) -> torch.Tensor:
        return self.apply(updates, ctx).value


class AdaptiveClip:
    """Adaptive clipping to the ``gamma``-quantile of update norms (Andrew et al., NeurIPS 2021).

    Parameters
    ----------
    initial_clip_norm : float
        ``C_0 > 0``.
    target_quantile : float
        ``gamma`` in (0, 1): the fraction of updates meant to stay unclipped.
    learning_rate : float
        ``eta_C > 0`` of the geometric update ``C <- C exp(-eta_C (b~ - gamma))``.
    count_noise_std : float
        ``sigma_b >= 0``: Gaussian noise on the count of unclipped updates. The count
        of centred bits ``b_i - 1/2`` has sensitivity 1/2, so it is a Gaussian query
        with noise multiplier ``2 sigma_b`` (use :meth:`update_noise_multiplier`).
    expected_clients : int
        ``m``: the fixed denominator of the estimate ``b~``.

    Examples
    --------
    >>> import torch
    >>> clip = AdaptiveClip(initial_clip_norm=1.0, target_quantile=0.5, learning_rate=0.2,
    ...                     count_noise_std=0.0, expected_clients=2)
    >>> _ = clip(torch.tensor([[0.1], [0.2]]))   # both below C: C shrinks
    >>> round(clip.clip_norm, 4)
    0.9048

    The clip norm survives a restart (:meth:`state_dict` is JSON-serialisable):

    >>> resumed = AdaptiveClip(initial_clip_norm=1.0, target_quantile=0.5, learning_rate=0.2,
    ...                        count_noise_std=0.0, expected_clients=2)
    >>> resumed.load_state_dict(clip.state_dict())
    >>> resumed.clip_norm == clip.clip_norm, resumed.rounds
    (True, 1)
    """

    #: Layout version of :meth:`state_dict` (2: the last round's facts are return values, not state).
    STATE_VERSION = 2

    def __init__(
        self,
        *,
        initial_clip_norm: float,
        target_quantile: float = 0.5,
        learning_rate: float = 0.2,
        count_noise_std: float = 0.0,
        expected_clients: int,
    ) -> None:
        self.clip_norm = check_positive(initial_clip_norm, name="initial_clip_norm")
        if not isinstance(target_quantile, int | float) or not 0.0 < target_quantile < 1.0:
            raise PrivacyConfigError(f"target_quantile must lie in (0, 1), got {target_quantile!r}")
        self.target_quantile = float(target_quantile)
        self.learning_rate = check_positive(learning_rate, name="learning_rate")
        self.count_noise_std = check_positive(count_noise_std, name="count_noise_std", allow_zero=True)
        if not isinstance(expected_clients, int) or expected_clients < 1:
            raise PrivacyConfigError(f"expected_clients must be an int >= 1, got {expected_clients!r}")
        self.expected_clients = expected_clients
        self.rounds = 0

    def update_noise_multiplier(self, noise_multiplier: float) -> float:
        """Noise multiplier of the update sum so that update + count spend ``noise_multiplier``.

        Andrew et al. (2021), Theorem 1: ``z_Delta = (z^-2 - (2 sigma_b)^-2)^(-1/2)``.

        Raises
        ------
        PrivacyConfigError
            If ``2 sigma_b <= z``: the count alone would spend more than the whole budget.
        """
        z = check_positive(noise_multiplier, name="noise_multiplier")
        if self.count_noise_std == 0.0:
            raise PrivacyConfigError("count_noise_std = 0 releases the count in the clear: no DP for the clip norm")
        zb = 2.0 * self.count_noise_std
        if zb <= z:
            raise PrivacyConfigError(
                f"count noise multiplier 2*sigma_b={zb} must exceed the total noise multiplier z={z}"
            )
        return (z**-2 - zb**-2) ** -0.5

    def contract(self) -> StageContract:
        """Every output row has L2 norm at most the round's clip norm."""
        return StageContract(bounds_rows=True)

    def __call__(self, updates: torch.Tensor, ctx: RoundContext | None = None) -> torch.Tensor:
        return self.apply(updates, ctx).value

    def apply(self, updates: torch.Tensor, ctx: RoundContext | None = None) -> StageOutput:
        """Clip to the current ``C`` (the output's bound), then move ``C`` towards the target quantile.

        Metrics: ``clip_norm`` (this round's) and ``noisy_unclipped_fraction`` ``b~``.
        """
        check_cohort(updates)
        c = self.clip_norm
        out, norms = clip_rows(updates, c)
        unclipped = float((norms <= c).double().sum())
        if self.count_noise_std > 0:
            if ctx is None:
                raise PrivacyConfigError("adaptive clipping with count noise needs the round context's generator")
            unclipped += self.count_noise_std * float(torch.randn(1, dtype=torch.float64, generator=ctx.generator))
        b = unclipped / self.expected_clients
        self.clip_norm = c * math.exp(-self.learning_rate * (b - self.target_quantile))
        self.rounds += 1
        log.debug("adaptive clip: C %.4g -> %.4g (noisy unclipped fraction %.3f)", c, self.clip_norm, b)
        return StageOutput(out, bound=c, metrics={"clip_norm": c, "noisy_unclipped_fraction": b})

    def _config(self) -> dict[str, Any]:
        return {
            "target_quantile": self.target_quantile,
            "learning_rate": self.learning_rate,
            "count_noise_std": self.count_noise_std,
            "expected_clients": self.expected_clients,
        }

    def state_dict(self) -> dict[str, Any]:
        """The clip norm and its round counter, as a JSON-serialisable dict (no tensors).

        Keys besides ``kind``, ``version`` and ``config``: ``clip_norm`` (the next
        round's) and ``rounds``.

        The initial clip norm is not part of the configuration checked on load:
        the state's ``clip_norm`` replaces it.
        """
        return {
            "kind": type(self).__name__,
            "version": self.STATE_VERSION,
            "config": self._config(),
            "clip_norm": self.clip_norm,
            "rounds": self.rounds,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state saved by :meth:`state_dict` of an ``AdaptiveClip`` with the same configuration.

        Raises
        ------
        fl_core.state.StateError
            Another kind, version or configuration, missing or unexpected keys, a clip norm
            that is not a finite number > 0, or a negative round count.
        """
        kind = type(self).__name__
        state = check_state(state, kind=kind, version=self.STATE_VERSION, keys=("clip_norm", "rounds"),
                            config=self._config())
        clip_norm = state_float(state, "clip_norm", kind=kind, positive=True)
        rounds = state_int(state, "rounds", kind=kind)
        self.clip_norm, self.rounds = clip_norm, rounds
