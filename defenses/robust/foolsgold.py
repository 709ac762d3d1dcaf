"""FoolsGold (Fung, Yoon, Beschastnikh, RAID 2020).

Examples
--------
>>> import torch
>>> fg = FoolsGold()
>>> sybils = torch.tensor([[1.0, 1.0, 0.0, 0.0]]).repeat(3, 1)
>>> honest = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
>>> result = fg.aggregate(torch.cat([sybils, honest]))
>>> result.kept.tolist()
[False, False, False, True, True, True]
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from defenses.robust.base import RobustAggregator, check_positive, require
from defenses.robust.distances import pairwise_cosine_similarity
from defenses.robust.errors import StateMismatchError
from defenses.robust.registry import register
from fl_core.aggregation import AggregationResult, RoundContext
from fl_core.numerics import WIDE, abs_max, all_finite, combine, rows_finite
from fl_core.state import StateError, check_state, state_tensor

__all__ = ["FoolsGold", "foolsgold_weights"]

logger = logging.getLogger(__name__)

#: cosines within this many ``eps`` of the histories' dtype of 1 count as parallel
_PARALLEL_EPS = 64


def foolsgold_weights(history: torch.Tensor, *, kappa: float = 1.0) -> torch.Tensor:
    """FoolsGold learning rates ``alpha`` in ``[0, 1]`` from clients' history vectors ``(n, d)``.

    Implements Algorithm 1 of the paper (without the optional feature-importance
    weighting): pairwise cosine similarities ``cs`` of the histories with the
    diagonal set to 0, ``v_i = max_j cs_ij``, pardoning ``cs_ij *= v_i / v_j``
    when ``v_i < v_j``, ``alpha_i = 1 - max_j cs_ij`` clipped to ``[0, 1]``,
    rescaled by ``max alpha``, ``1 -> 0.99``, then the logit
    ``kappa * (ln(alpha / (1 - alpha)) + 0.5)`` clipped to ``[0, 1]``.
    The cosines are those of
    :func:`~defenses.robust.distances.pairwise_cosine_similarity`, exact in
    range for any finite magnitude, and a cosine within ``64 eps`` of 1 (``eps``
    of the histories' dtype) counts as 1: the Gram-based cosine of two parallel
    vectors of different lengths can fall a rounding error short of 1, which
    the rescaling by ``max alpha`` would otherwise amplify into a full rate
    when every client has a parallel partner (``d = 1``). The rates are float64.

    Examples
    --------
    >>> import torch
    >>> H = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    >>> foolsgold_weights(H).tolist()
    [0.0, 0.0, 1.0]
    """
    n = history.shape[0]
    cs = pairwise_cosine_similarity(history)
    # parallel histories of different magnitudes (Sybils scaling one update) get a cosine
    # a rounding error short of 1: within the histories' precision it is 1
    tolerance = _PARALLEL_EPS * torch.finfo(history.dtype).eps
    cs = torch.where(cs >= 1.0 - tolerance, torch.ones_like(cs), cs)
    cs.fill_diagonal_(0.0)
    v = cs.max(dim=1).values
    # pardoning: cs_ij *= v_i / v_j where v_i < v_j (so v_j > v_i >= 0, never a division by 0)
    pardon = v[:, None] < v[None, :]
    ratio = v[:, None] / torch.where(pardon, v[None, :], torch.ones_like(cs))
    cs = torch.where(pardon, cs * ratio, cs)
    alpha = (1.0 - cs.max(dim=1).values).clamp(0.0, 1.0)
    top = alpha.max()
    if not bool(top > 0):
        return torch.zeros(n, dtype=cs.dtype, device=history.device)
    alpha = alpha / top
    alpha = torch.where(alpha >= 1.0, torch.full_like(alpha, 0.99), alpha)
    with torch.no_grad():
        logit = kappa * (torch.log(alpha / (1.0 - alpha)) + 0.5)
    return torch.nan_to_num(logit, nan=0.0, neginf=0.0, posinf=1.0).clamp(0.0, 1.0)


def _renormalised_sum(
    mantissa: torch.Tensor, exponent: torch.Tensor, updates: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``m 2^e + x`` as a new pair ``(m', e')``, ``m'`` of maximum magnitude below 2, per row.

    ``e' = max(e + exp(max|m|), exp(max|x|))`` (binary exponents), so both terms
    are at most 1 after scaling by ``2^-e'``; the sum is formed in float64 and
    rounded once to the rows' dtype. Parts below the dtype's precision relative
    to the total are lost, as in any floating-point sum.

    Examples
    --------
    >>> import torch
    >>> m, e = _renormalised_sum(torch.tensor([[3e38]]), torch.tensor([0]), torch.tensor([[3e38]]))
    >>> float(m[0, 0]) * 2.0 ** int(e[0]) == 2 * float(torch.tensor(3e38))
    True
    """
    m_exp = torch.frexp(abs_max(mantissa, dim=1).to(WIDE))[1].to(torch.int64) + exponent
    x_exp = torch.frexp(abs_max(updates, dim=1).to(WIDE))[1].to(torch.int64)
    new_exp = torch.maximum(m_exp, x_exp)
    two = torch.tensor(2.0, dtype=WIDE, device=updates.device)
    total = mantissa.to(WIDE) * torch.pow(two, (exponent - new_exp).to(WIDE))[:, None]
    total += updates.to(WIDE) * torch.pow(two, (-new_exp).to(WIDE))[:, None]
    return total.to(updates.dtype), new_exp


@register(
    "foolsgold",
    kind="rule",
    description="down-weight clients whose update histories are too similar (Sybils) (Fung et al. 2020); stateful",
)
class FoolsGold(RobustAggregator):
    """FoolsGold: learning rates that shrink for clients with similar update histories.

    Fung, Yoon, Beschastnikh, "The Limitations of Federated Learning in Sybil
    Settings", RAID 2020. The rule keeps, per client id, the sum of all its
    past updates (its history). Each round it computes the learning rates
    ``alpha`` with :func:`foolsgold_weights` from the current cohort's
    histories and returns ``sum_i alpha_i x_i / sum_i alpha_i``.

    Client ids come from ``ctx.client_ids`` when called by fl_core, else row
    ``i`` is client ``i`` in every round. :meth:`reset` forgets all histories.

    Extreme magnitudes: a history is a sum over rounds, so two float32 updates
    of ``3e38`` would overflow it. Each history is therefore stored as a row
    ``m_i`` in the updates' dtype and a power of two, ``h_i = m_i 2^e_i``
    (``e_i = 0`` until a sum overflows, then ``m_i`` is renormalised to a
    maximum magnitude below 2, exactly). FoolsGold only uses the directions of
    the histories (cosines), which the scale ``2^e_i`` does not change.

    Parameters
    ----------
    f : int
        Sybils assumed; FoolsGold makes no assumption on their number (only
        ``n > f``), but needs ``n >= 2``.
    kappa : float
        Confidence parameter of the logit (the paper's default 1).

    Notes
    -----
    The paper adds ``sum_i alpha_i x_i`` to the model with the server learning
    rate; this rule normalises by ``sum alpha`` so it is a drop-in for the
    mean. If every ``alpha`` is 0 the aggregate is the zero update (warning
    logged). ``scores`` are the ``alpha``; ``kept`` is ``alpha > 0``. The
    optional feature-importance weighting of the paper is not implemented.

    Examples
    --------
    >>> import numpy as np
    >>> FoolsGold()(np.array([[1.0, 0.0], [0.0, 1.0]]))
    array([0.5, 0.5])

    The histories survive a restart through :meth:`state_dict` / :meth:`load_state_dict`:

    >>> fg = FoolsGold()
    >>> _ = fg(np.array([[1.0, 0.0], [0.0, 1.0]]))
    >>> resumed = FoolsGold()
    >>> resumed.load_state_dict(fg.state_dict())
    >>> resumed.history(1).tolist()
    [0.0, 1.0]
    """


    #: Layout version of :meth:`state_dict`.
    STATE_VERSION: ClassVar[int] = 1

    def __init__(self, *, f: int = 0, kappa: float = 1.0) -> None:
        super().__init__(f=f)
        self.kappa = check_positive("kappa", kappa)
        self._rows: dict[int, int] = {}
        self._history: torch.Tensor | None = None
        self._exponent: torch.Tensor | None = None

    def reset(self) -> None:
        """Forget every client's history."""
        self._rows = {}
        self._history = None
        self._exponent = None

    def _config(self) -> dict[str, Any]:
        return {"f": self.f, "kappa": self.kappa}

    def state_dict(self) -> dict[str, Any]:
        """Every client's history: ``client_ids`` (a list, in row order) and two tensors.

        ``history`` is the ``(rows, d)`` tensor of mantissas ``m_i`` in the updates'
        dtype and ``exponent`` the ``(rows,)`` int64 tensor of the powers ``e_i``
        (``h_i = m_i 2^e_i``); both are ``None`` before the first round. The
        tensors are clones (torch's convention: save with ``torch.save``); the
        rest is JSON-serialisable.
        """
        history, exponent = self._history, self._exponent
        return {
            "kind": type(self).__name__,
            "version": self.STATE_VERSION,
            "config": self._config(),
            "client_ids": [int(c) for c in self._rows],
            "history": None if history is None else history.detach().clone(),
            "exponent": None if exponent is None else exponent.detach().clone(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore histories saved by :meth:`state_dict` of a FoolsGold with the same ``f`` and ``kappa``.

        Raises
        ------
        fl_core.state.StateError
            Another kind, version or configuration, missing or unexpected keys,
            client ids that are not distinct ints, or tensors of the wrong type,
            shape or with NaN/Inf.
        """
        kind = type(self).__name__
        state = check_state(state, kind=kind, version=self.STATE_VERSION,
                            keys=("client_ids", "history", "exponent"), config=self._config())
        ids = state["client_ids"]
        if not isinstance(ids, list | tuple) or any(type(c) is not int for c in ids) or len(set(ids)) != len(ids):
            raise StateError(f"{kind} state: client_ids must be a list of distinct ints, got {ids!r}")
        rows = len(ids)
        history = state_tensor(state, "history", kind=kind, ndim=2, shape=(rows, None), allow_none=True)
        exponent = state_tensor(state, "exponent", kind=kind, ndim=1, shape=(rows,), floating=False,
                                allow_none=True)
        if (history is None) != (exponent is None) or (history is None and rows):
            raise StateError(f"{kind} state: history and exponent must both be tensors when clients were seen")
        if exponent is not None and history is not None:
            exponent = exponent.to(history.device)
        self._rows = {c: r for r, c in enumerate(ids)}
        self._history, self._exponent = history, exponent

    def history(self, client_id: int) -> torch.Tensor | None:
        """The summed past updates of ``client_id`` (``None`` if never seen).

        In the updates' dtype, or in float64 once the sum exceeds that dtype's range.
        """
        if self._history is None or self._exponent is None or client_id not in self._rows:
            return None
        row = self._rows[client_id]
        exponent = int(self._exponent[row])
        if exponent == 0:
            return self._history[row].clone()
        return self._history[row].to(WIDE) * torch.pow(torch.tensor(2.0, dtype=WIDE), exponent)

    def _accumulate(self, rows: torch.Tensor, updates: torch.Tensor) -> None:
        """``h_i += x_i`` for the cohort's rows, renormalising the sums that overflow."""
        assert self._history is not None and self._exponent is not None
        mantissa, exponent = self._history[rows], self._exponent[rows]
        total = mantissa + updates
        if bool((exponent == 0).all()) and all_finite(total):
            self._history[rows] = total
            return
        redo = (exponent != 0) | ~rows_finite(total)
        if bool(redo.any()):
            r = redo.nonzero().squeeze(1)
            total[r], self._exponent[rows[r]] = _renormalised_sum(mantissa[r], exponent[r], updates[r])
        self._history[rows] = total

    def check_tolerance(self, n: int) -> None:
        require(n >= 2, f"FoolsGold needs n >= 2 clients to compare, got n={n}, f={self.f}")
        super().check_tolerance(n)

    def _rows_for(self, ids: list[int], updates: torch.Tensor) -> torch.Tensor:
        d = updates.shape[1]
        if self._history is not None and self._history.shape[1] != d:
            raise StateMismatchError(
                f"FoolsGold holds histories of d={self._history.shape[1]} but got d={d}; call reset() between runs"
            )
        new = [c for c in dict.fromkeys(ids) if c not in self._rows]
        if self._history is None or self._exponent is None:
            self._history = torch.zeros(0, d, dtype=updates.dtype, device=updates.device)
            self._exponent = torch.zeros(0, dtype=torch.int64, device=updates.device)
        self._history = self._history.to(device=updates.device, dtype=updates.dtype)
        self._exponent = self._exponent.to(device=updates.device)
        if new:
            start = self._history.shape[0]
            for k, c in enumerate(new):
                self._rows[c] = start + k
            pad = torch.zeros(len(new), d, dtype=updates.dtype, device=updates.device)
            self._history = torch.cat([self._history, pad])
            fresh = torch.zeros(len(new), dtype=torch.int64, device=updates.device)
            self._exponent = torch.cat([self._exponent, fresh])
        return torch.tensor([self._rows[c] for c in ids], device=updates.device)

    def _aggregate(self, updates: torch.Tensor, weights: torch.Tensor, ctx: RoundContext | None) -> AggregationResult:
        n = updates.shape[0]
        ids = list(ctx.client_ids) if ctx is not None else list(range(n))
        if len(ids) != n or len(set(ids)) != n:
            raise StateMismatchError(f"FoolsGold needs {n} distinct client ids, got {ids}")
        rows = self._rows_for(ids, updates)
        assert self._history is not None
        self._accumulate(rows, updates)
        alpha = foolsgold_weights(self._history[rows], kappa=self.kappa)
        total = alpha.sum()
        if bool(total > 0):
            agg = combine(alpha / total, updates)
        else:
            logger.warning("FoolsGold: every learning rate is 0; returning the zero update")
            agg = torch.zeros_like(updates[0])
        return AggregationResult(aggregate=agg, kept=alpha > 0, scores=alpha)

    def __repr__(self) -> str:
        return f"FoolsGold(f={self.f}, kappa={self.kappa})"
