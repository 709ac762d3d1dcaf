"""FLDetector (Zhang, Cao, Jia, Gong, KDD 2022): flag clients whose updates an L-BFGS model cannot predict.

Examples
--------
>>> import torch
>>> det = FLDetector(window=3, generator=torch.Generator().manual_seed(0))
>>> det(torch.tensor([[1.0, 0.0], [0.0, 1.0]])).tolist()  # no history yet: the mean of every client
[0.5, 0.5]
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch
from sklearn.cluster import KMeans

from defenses.robust.base import RobustAggregator, check_count, require, resolve_generator
from defenses.robust.errors import StateMismatchError
from defenses.robust.registry import register
from fl_core.aggregation import AggregationResult, RoundContext
from fl_core.numerics import WIDE, combine, row_norms
from fl_core.state import StateError, check_state, state_int, state_tensor

__all__ = ["FLDetector", "gap_statistic", "lbfgs_hvp"]

logger = logging.getLogger(__name__)


def lbfgs_hvp(s: torch.Tensor, y: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``B v`` for the L-BFGS Hessian approximation ``B`` built from the pairs ``(s_k, y_k)``, rows of ``(m, d)``.

    The compact representation of Byrd, Nocedal, Schnabel, "Representations of
    quasi-Newton matrices and their use in limited memory methods", Math.
    Programming 63, 1994 (Theorem 2.3), with ``B_0 = sigma I``,
    ``sigma = y_m . s_m / s_m . s_m`` (as in FLDetector's code)::

        B = sigma I - [sigma S  Y] [[sigma S^T S, L], [L^T, -D]]^-1 [sigma S^T; Y^T]

    with ``L`` the strictly lower triangle and ``D`` the diagonal of ``S^T Y``. It
    equals ``m`` BFGS updates of ``sigma I``. Only ``(m, m)`` matrices are inverted.
    Everything is float64.

    Examples
    --------
    >>> import torch
    >>> s, y = torch.tensor([[1.0, 0.0]], dtype=torch.float64), torch.tensor([[2.0, 0.0]], dtype=torch.float64)
    >>> lbfgs_hvp(s, y, torch.tensor([1.0, 1.0], dtype=torch.float64)).tolist()  # B = 2 I satisfies B s = y
    [2.0, 2.0]
    """
    s, y, v = s.to(WIDE), y.to(WIDE), v.to(WIDE)
    sy = s @ y.T
    sigma = (y[-1] @ s[-1]) / (s[-1] @ s[-1])
    lower = torch.tril(sy, diagonal=-1)
    middle = torch.cat([torch.cat([sigma * (s @ s.T), lower], dim=1),
                        torch.cat([lower.T, -torch.diag(torch.diagonal(sy))], dim=1)], dim=0)
    rhs = torch.cat([sigma * (s @ v), y @ v])
    coef = torch.linalg.solve(middle, rhs)
    m = s.shape[0]
    return sigma * v - (sigma * (coef[:m] @ s) + coef[m:] @ y)


def gap_statistic(scores: np.ndarray, *, k_max: int, samples: int, rng: np.random.Generator) -> int:
    """Number of clusters of 1-D ``scores`` by the gap statistic (Tibshirani, Walther, Hastie, JRSS-B 2001).

    The scores are rescaled to ``[0, 1]``; for ``k = 1..K`` (``K = min(k_max,
    distinct scores, n - 1)``) k-means (scikit-learn, k-means++, one start, seeded from
    ``rng``) gives ``W_k``, the within-cluster sum of squares, and ``samples``
    reference sets of ``n`` uniform points give ``E*[log W_k]`` and its standard
    error ``s_k``; the answer is the smallest ``k`` with
    ``Gap(k) >= Gap(k + 1) - s_(k+1)`` (``K`` if none), 1 for constant scores.

    Examples
    --------
    >>> import numpy as np
    >>> gap_statistic(np.array([0.1, 0.11, 0.12, 0.9, 0.91]), k_max=4, samples=10, rng=np.random.default_rng(0))
    2
    """
    n = scores.shape[0]
    distinct = np.unique(scores).size
    if distinct < 2:
        return 1
    x = ((scores - scores.min()) / (scores.max() - scores.min())).reshape(-1, 1)
    top = min(k_max, distinct, n - 1)  # k = n would fit every reference set exactly (log 0)
    if top < 2:
        return 1

    def log_w(data: np.ndarray, k: int) -> float:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = KMeans(n_clusters=k, n_init=1, random_state=int(rng.integers(2**31))).fit(data)
        with np.errstate(divide="ignore"):
            return float(np.log(fit.inertia_))

    gap, err = [], []
    for k in range(1, top + 1):
        ref = np.array([log_w(rng.uniform(size=(n, 1)), k) for _ in range(samples)])
        gap.append(ref.mean() - log_w(x, k))
        err.append(ref.std() * math.sqrt(1.0 + 1.0 / samples))
    for k in range(1, top):
        if gap[k - 1] >= gap[k] - err[k]:
            return k
    return top


@register(
    "fldetector",
    kind="rule",
    description="flag clients whose updates an L-BFGS prediction from past rounds misses "
    "(Zhang et al. 2022); stateful",
)
class FLDetector(RobustAggregator):
    """FLDetector: detect malicious clients by the consistency of their updates across rounds.

    Zhang, Cao, Jia, Gong, "FLDetector: Defending Federated Learning Against
    Model Poisoning Attacks via Detecting Malicious Clients", KDD 2022
    (Algorithm 1). With ``w_t`` the global model and ``g_t^i`` client ``i``'s
    update in round ``t``, the server keeps the last ``N`` (``window``) pairs
    ``(w_k - w_{k-1}, gbar_k - gbar_{k-1})`` of global-model and aggregate
    differences, and each round:

    1. predicts ``ghat_t^i = g_{t-1}^i + H_t (w_t - w_{t-1})`` with ``H_t`` the
       L-BFGS Hessian approximation of those pairs (:func:`lbfgs_hvp`), for every
       client that also took part in the previous round;
    2. scores ``d_t^i = ||ghat_t^i - g_t^i||`` normalised to sum 1 over the
       clients scored, and the suspicious score ``s_t^i`` is the mean of the
       client's last ``N`` normalised distances;
    3. once ``N`` pairs are kept, if the gap statistic (:func:`gap_statistic`)
       finds more than one cluster among the scores, 2-means splits them and the
       cluster of larger mean is malicious: those clients are removed for good
       and detection stops (the paper stops at its first detection and
       continues without them; detecting again on the rest would split honest
       clients by noise, as the scores are rescaled to ``[0, 1]``).

    The aggregate is the mean of the clients not removed, which is what the
    paper does after detection (it pairs FLDetector with FedAvg or a robust
    rule); compose it with a rule by filtering through ``kept`` if needed.

    ``w_t`` is ``ctx.global_params`` inside fl_core; without a ``ctx`` the
    server is assumed to apply the aggregate unchanged
    (``w_t = w_{t-1} + gbar_{t-1}``, from ``w_0 = 0``). Client ids come from
    ``ctx.client_ids``, else row ``i`` is client ``i``. The state (pairs,
    last updates, distances, removed ids) is float64 and survives a restart
    through :meth:`state_dict` / :meth:`load_state_dict`.

    Extreme values: all arithmetic is float64 (a float32 row of ``3e38``
    squared fits) and the mean is formed with :func:`~fl_core.numerics.combine`;
    before detection such a row moves the mean like any other.

    Parameters
    ----------
    f : int
        Byzantine clients assumed; FLDetector needs only ``n > f`` and ``n >= 2``.
    window : int
        ``N``, the rounds of history (the paper's 10).
    samples : int
        Reference sets of the gap statistic (20 in the authors' code).
    k_max : int
        Largest number of clusters the gap statistic considers (10).
    generator : torch.Generator, optional
        Seeds the gap statistic's k-means and reference sets when no ``ctx`` is
        given; ``ctx.generator`` takes precedence.

    Notes
    -----
    ``kept`` marks the clients not removed; ``scores`` are the suspicious scores
    (NaN for a client not scored yet); ``metrics["removed"]`` counts the removed ids.

    False alarms: the gap statistic sees the rescaled scores only, so honest noise
    can read as two clusters. Measured on a noisy quadratic (``d = 20``,
    ``window = 5``, 16 rounds, no attack): honest clients were removed in 4 of 6
    seeds with ``n = 10`` and in 1 of 4 seeds with ``n = 50``; with 3 of 10 clients
    sending noise or a scaled flipped mean, exactly the attackers were removed in
    every seed. The paper evaluates ``n = 100``.
    """

    #: Layout version of :meth:`state_dict`.
    STATE_VERSION: ClassVar[int] = 1

    OUTPUT_REGION = "hull"

    def __init__(
        self,
        *,
        f: int = 0,
        window: int = 10,
        samples: int = 20,
        k_max: int = 10,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(f=f)
        self.window = check_count("window", window, minimum=1)
        self.samples = check_count("samples", samples, minimum=1)
        self.k_max = check_count("k_max", k_max, minimum=2)
        self.generator = generator
        self.reset()

    def reset(self) -> None:
        """Forget all history and removed clients."""
        self._global: torch.Tensor | None = None
        self._agg: torch.Tensor | None = None
        self._s: torch.Tensor | None = None
        self._y: torch.Tensor | None = None
        self._prev_ids: list[int] = []
        self._prev: torch.Tensor | None = None
        self._dist: dict[int, list[float]] = {}
        self._removed: set[int] = set()

    @property
    def removed(self) -> set[int]:
        """Ids of the clients removed as malicious."""
        return set(self._removed)

    def check_tolerance(self, n: int) -> None:
        require(n >= 2, f"FLDetector needs n >= 2 clients to compare, got n={n}, f={self.f}")
        super().check_tolerance(n)

    def _config(self) -> dict[str, Any]:
        return {"f": self.f, "window": self.window, "samples": self.samples, "k_max": self.k_max}

    def state_dict(self) -> dict[str, Any]:
        """History as tensors (float64 clones, ``None`` before use) and JSON values (ids, distances)."""

        def clone(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.detach().clone()

        return {
            "kind": type(self).__name__,
            "version": self.STATE_VERSION,
            "config": self._config(),
            "global": clone(self._global),
            "aggregate": clone(self._agg),
            "s": clone(self._s),
            "y": clone(self._y),
            "prev_ids": list(self._prev_ids),
            "prev_updates": clone(self._prev),
            "distances": [[c, list(v)] for c, v in self._dist.items()],
            "removed": sorted(self._removed),
            "rounds": 0 if self._s is None else int(self._s.shape[0]),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict` of an FLDetector with the same configuration.

        Raises
        ------
        fl_core.state.StateError
            Another kind, version or configuration, missing keys, or values of the wrong type or shape.
        """
        kind = type(self).__name__
        keys = ("global", "aggregate", "s", "y", "prev_ids", "prev_updates", "distances", "removed", "rounds")
        state = check_state(state, kind=kind, version=self.STATE_VERSION, keys=keys, config=self._config())
        g = state_tensor(state, "global", kind=kind, ndim=1, allow_none=True)
        d = None if g is None else g.shape[0]
        agg = state_tensor(state, "aggregate", kind=kind, ndim=1, shape=(d,), allow_none=True)
        rounds = state_int(state, "rounds", kind=kind)
        s = state_tensor(state, "s", kind=kind, ndim=2, shape=(rounds, d), allow_none=True)
        y = state_tensor(state, "y", kind=kind, ndim=2, shape=(rounds, d), allow_none=True)
        ids = state["prev_ids"]
        if not isinstance(ids, list) or any(type(c) is not int for c in ids) or len(set(ids)) != len(ids):
            raise StateError(f"{kind} state: prev_ids must be a list of distinct ints, got {ids!r}")
        prev = state_tensor(state, "prev_updates", kind=kind, ndim=2, shape=(len(ids), d), allow_none=True)
        dist, removed = state["distances"], state["removed"]
        if not isinstance(dist, list) or any(
            not isinstance(e, list | tuple) or len(e) != 2 or type(e[0]) is not int
            or not isinstance(e[1], list) or not all(isinstance(v, float) and math.isfinite(v) for v in e[1])
            for e in dist
        ):
            raise StateError(f"{kind} state: distances must be a list of [client id, [finite floats]]")
        if not isinstance(removed, list) or any(type(c) is not int for c in removed):
            raise StateError(f"{kind} state: removed must be a list of ints, got {removed!r}")
        if (s is None) != (y is None) or (rounds > 0) != (s is not None) or (g is None) != (agg is None):
            raise StateError(f"{kind} state: s and y (and global and aggregate) must be given together")
        self._global, self._agg, self._s, self._y = g, agg, s, y
        self._prev_ids, self._prev = list(ids), prev
        self._dist = {c: list(v) for c, v in dist}
        self._removed = set(removed)

    def _scores(self, ids: list[int], x: torch.Tensor, step: torch.Tensor | None) -> None:
        """Append this round's normalised prediction errors of the clients seen in the previous round."""
        if step is None or self._s is None or self._prev is None:
            return
        rows = {c: r for r, c in enumerate(self._prev_ids)}
        both = [(i, rows[c]) for i, c in enumerate(ids) if c in rows and c not in self._removed]
        if not both:
            return
        now = torch.tensor([i for i, _ in both], device=x.device)
        before = torch.tensor([r for _, r in both], device=x.device)
        predicted = self._prev.index_select(0, before) + lbfgs_hvp(self._s, self._y, step)[None, :]
        dist = row_norms(x.index_select(0, now) - predicted)
        total = dist.sum()
        share = dist / total if bool(total > 0) else torch.zeros_like(dist)
        for (i, _), v in zip(both, share.tolist(), strict=True):
            history = self._dist.setdefault(ids[i], [])
            history.append(float(v))
            del history[: -self.window]

    def _detect(self, ids: list[int], ctx: RoundContext | None) -> None:
        if self._removed or self._s is None or self._s.shape[0] < self.window:
            return
        scored = [c for c in ids if c not in self._removed and self._dist.get(c)]
        if len(scored) < 2:
            return
        scores = np.array([np.mean(self._dist[c]) for c in scored])
        gen = resolve_generator(self.generator, ctx, "FLDetector")
        rng = np.random.default_rng(int(torch.randint(2**62, (1,), generator=gen)))
        if gap_statistic(scores, k_max=self.k_max, samples=self.samples, rng=rng) < 2:
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = KMeans(n_clusters=2, n_init=10, random_state=int(rng.integers(2**31))).fit(scores.reshape(-1, 1))
        bad = int(np.argmax(fit.cluster_centers_.reshape(-1)))
        flagged = [c for c, label in zip(scored, fit.labels_, strict=True) if label == bad]
        logger.info("FLDetector: removing clients %s", flagged)
        self._removed.update(flagged)

    def _aggregate(self, updates: torch.Tensor, weights: torch.Tensor, ctx: RoundContext | None) -> AggregationResult:
        n, d = updates.shape
        ids = list(ctx.client_ids) if ctx is not None else list(range(n))
        if len(ids) != n or len(set(ids)) != n:
            raise StateMismatchError(f"FLDetector needs {n} distinct client ids, got {ids}")
        if self._global is not None and self._global.shape[0] != d:
            raise StateMismatchError(
                f"FLDetector holds a history of d={self._global.shape[0]} but got d={d}; call reset() between runs"
            )
        x = updates.to(WIDE)
        if ctx is not None:
            w = ctx.global_params.to(device=updates.device, dtype=WIDE).reshape(-1)
        elif self._global is not None and self._agg is not None:
            w = self._global.to(updates.device) + self._agg.to(updates.device)
        else:
            w = torch.zeros(d, dtype=WIDE, device=updates.device)
        for name in ("_global", "_agg", "_s", "_y", "_prev"):
            t = getattr(self, name)
            if t is not None:
                setattr(self, name, t.to(updates.device))
        step = None if self._global is None else w - self._global
        self._scores(ids, x, step)
        self._detect(ids, ctx)
        kept = torch.tensor([c not in self._removed for c in ids], dtype=torch.bool, device=updates.device)
        count = int(kept.sum())
        if count:
            agg = combine(kept.to(WIDE) / count, updates)
        else:
            logger.warning("FLDetector: every client in the cohort was removed; returning the zero update")
            agg = torch.zeros_like(updates[0])
        g = agg.to(WIDE)
        if self._global is not None and self._agg is not None:
            pair_s, pair_y = (w - self._global)[None], (g - self._agg)[None]
            if bool(pair_s.abs().sum() > 0):  # a zero step carries no curvature (and would make B singular)
                self._s = pair_s if self._s is None else torch.cat([self._s, pair_s])[-self.window :]
                self._y = pair_y if self._y is None else torch.cat([self._y, pair_y])[-self.window :]
        self._global, self._agg = w, g
        self._prev_ids, self._prev = ids, x
        scores = torch.tensor(
            [float(np.mean(self._dist[c])) if self._dist.get(c) else float("nan") for c in ids],
            dtype=WIDE, device=updates.device,
        )
        metrics = {"removed": float(len(self._removed))}
        return AggregationResult(aggregate=agg, kept=kept, scores=scores, metrics=metrics)

    def __repr__(self) -> str:
        return f"FLDetector(f={self.f}, window={self.window})"
