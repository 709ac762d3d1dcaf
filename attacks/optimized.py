"""Attacks that optimise the malicious update against the aggregation rule.

* :class:`MinMax` and :class:`MinSum` (Shejwalkar & Houmansadr, NDSS 2021,
  "Manipulating the Byzantine", AGR-agnostic attacks, Alg. 1): the malicious
  update is ``mu + gamma * p`` with a perturbation ``p`` (inverse unit vector,
  inverse standard deviation or inverse sign of the benign mean ``mu``), and
  ``gamma`` is the largest value (by the paper's halving search, start 50,
  tolerance 1e-5) such that
  - min-max: its largest distance to a benign update is at most the largest
    distance between two benign updates;
  - min-sum: its sum of squared distances to the benign updates is at most the
    largest such sum of a benign update.
* :class:`FangKrum` (Fang et al., USENIX Security 2020, "Local model poisoning
  attacks to Byzantine-robust FL", Sec. 3.3 full knowledge): ``-lambda * s`` with
  ``s`` the sign of the benign mean, ``lambda`` from the paper's upper bound,
  halved until the defense (a copy of the live aggregator) selects it.
* :class:`FangTrimmedMean` (Fang et al. 2020, Sec. 3.4; also against the median):
  per coordinate, values beyond the benign extreme opposite to the benign direction,
  drawn uniformly from ``[w_max, b w_max]`` or ``[w_min / b, w_min]`` (``b = 2``).

Examples
--------
>>> import torch
>>> from attacks.byzantine import AttackView
>>> from fl_core.aggregation import RoundContext
>>> B = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
>>> ctx = RoundContext(0, (0, 1, 2, 3), torch.ones(4), torch.zeros(2), torch.Generator())
>>> m = MinMax(perturbation="unit_vec").craft(AttackView(B[:1], B, 4, 1, ctx, None))
>>> bool(torch.cdist(m, B).max() <= torch.cdist(B, B).max() + 1e-4)
True
"""

from __future__ import annotations

import abc
import math

import torch

from attacks.byzantine import AttackView, ModelPoisoning
from fl_core.errors import ConfigError

__all__ = ["FangKrum", "FangTrimmedMean", "MinMax", "MinSum", "perturbation_direction"]

PERTURBATIONS = ("unit_vec", "std", "sign")


def perturbation_direction(benign: torch.Tensor, kind: str) -> torch.Tensor:
    """The paper's perturbation ``p``: ``-mu/||mu||``, ``-std`` or ``-sign(mu)``."""
    mu = benign.mean(dim=0)
    if kind == "unit_vec":
        return -mu / mu.norm().clamp_min(1e-12)
    if kind == "std":
        return -benign.std(dim=0, unbiased=False)
    if kind == "sign":
        return -torch.sign(mu)
    raise ConfigError(f"perturbation must be one of {PERTURBATIONS}, got {kind!r}")


def _sq_dists(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """(a, b) squared Euclidean distances via one matrix product."""
    a2 = (A * A).sum(dim=1, keepdim=True)
    b2 = (B * B).sum(dim=1, keepdim=True).T
    return (a2 + b2 - 2.0 * A @ B.T).clamp_min(0.0)


class _AgrAgnostic(ModelPoisoning):
    def __init__(self, *, perturbation: str = "unit_vec", gamma_init: float = 50.0, tol: float = 1e-5) -> None:
        if perturbation not in PERTURBATIONS:
            raise ConfigError(f"perturbation must be one of {PERTURBATIONS}, got {perturbation!r}")
        if not (math.isfinite(gamma_init) and gamma_init > 0) or not (math.isfinite(tol) and tol > 0):
            raise ConfigError(f"gamma_init and tol must be finite and > 0, got gamma_init={gamma_init}, tol={tol}")
        self.perturbation, self.gamma_init, self.tol = perturbation, gamma_init, tol

    @abc.abstractmethod
    def _passes(self, sq_dists: torch.Tensor, bound: torch.Tensor) -> bool:
        """Whether a candidate with squared distances ``sq_dists`` to the benign rows passes the criterion."""

    @abc.abstractmethod
    def _threshold(self, benign: torch.Tensor) -> torch.Tensor:
        """The criterion's bound computed from the benign rows alone."""

    def search_gamma(self, benign: torch.Tensor) -> tuple[float, torch.Tensor]:
        """The paper's halving search for gamma; returns (gamma, malicious update).

        The candidate ``mu + gamma p``'s squared distance to a benign row ``b_i`` is the quadratic
        ``||mu - b_i||^2 + 2 gamma p.(mu - b_i) + gamma^2 ||p||^2``: its three coefficients are computed
        once (float64), so each step of the search costs O(n) instead of O(n d).
        """
        B = benign.double()
        mu = B.mean(dim=0)
        p = perturbation_direction(B, self.perturbation)
        diff = mu.unsqueeze(0) - B
        c, e, q = (diff * diff).sum(dim=1), diff @ p, p @ p
        bound = self._threshold(B)
        gamma, step, best = self.gamma_init, self.gamma_init, 0.0
        while abs(best - gamma) > self.tol:
            if self._passes((c + 2.0 * gamma * e + gamma * gamma * q).clamp_min(0.0), bound):
                best = gamma
                gamma += step / 2
            else:
                gamma -= step / 2
            step /= 2
        return best, (mu + best * p).to(benign.dtype)

    def craft(self, view: AttackView) -> torch.Tensor:
        if view.benign.shape[0] < 2:
            raise ConfigError(
                f"{type(self).__name__} needs at least 2 benign reference updates, got {view.benign.shape[0]} "
                "(non-omniscient with a single attacker has none to compare)"
            )
        _, mal = self.search_gamma(view.benign)
        return mal.expand(view.f, -1).clone()


class MinMax(_AgrAgnostic):
    """Min-max AGR-agnostic attack (Shejwalkar & Houmansadr, NDSS 2021): the malicious update's largest
    distance to a benign update is at most the largest distance between two benign updates."""

    def _threshold(self, benign: torch.Tensor) -> torch.Tensor:
        return _sq_dists(benign, benign).max()

    def _passes(self, sq_dists: torch.Tensor, bound: torch.Tensor) -> bool:
        return bool(sq_dists.max() <= bound)


class MinSum(_AgrAgnostic):
    """Min-sum AGR-agnostic attack (Shejwalkar & Houmansadr, NDSS 2021): the malicious update's sum of
    squared distances to the benign updates is at most the largest such sum of a benign update."""

    def _threshold(self, benign: torch.Tensor) -> torch.Tensor:
        return _sq_dists(benign, benign).sum(dim=1).max()

    def _passes(self, sq_dists: torch.Tensor, bound: torch.Tensor) -> bool:
        return bool(sq_dists.sum() <= bound)


class FangKrum(ModelPoisoning):
    """Fang et al.'s attack on Krum (full knowledge), adaptive: probes a copy of the defense."""

    needs_aggregator = True

    def __init__(self, *, threshold: float = 1e-5) -> None:
        if not threshold > 0:
            raise ConfigError(f"threshold must be > 0, got {threshold}")
        self.threshold = threshold

    @staticmethod
    def lambda_upper_bound(benign: torch.Tensor, *, n: int, f: int) -> float:
        """Fang et al.'s bound: min_i sum of distances to its n-f-2 nearest benign neighbours over
        ((n - 2f - 1) sqrt(d)), plus max_i ||Delta_i|| / sqrt(d) (distances to the received global model)."""
        h, d = benign.shape
        dist = _sq_dists(benign.double(), benign.double()).sqrt()
        k = max(0, min(n - f - 2, h - 1))
        first = 0.0
        if k > 0 and n - 2 * f - 1 > 0:
            nearest = dist.sort(dim=1).values[:, 1 : k + 1].sum(dim=1)
            first = float(nearest.min()) / ((n - 2 * f - 1) * math.sqrt(d))
        return first + float(benign.double().norm(dim=1).max()) / math.sqrt(d)

    def craft(self, view: AttackView) -> torch.Tensor:
        s = torch.sign(view.benign.mean(dim=0))
        lam = self.lambda_upper_bound(view.benign, n=view.n, f=view.f)
        probe_rows = view.benign if view.benign.shape[0] + view.f <= view.n else view.benign[: view.n - view.f]
        while lam > self.threshold:
            mal = (-lam * s).expand(view.f, -1)
            cohort = torch.cat([probe_rows, mal])
            result = view.probe(cohort)
            if bool(result.kept[probe_rows.shape[0] :].any()):
                break
            lam /= 2
        return (-lam * s).expand(view.f, -1).clone()


class FangTrimmedMean(ModelPoisoning):
    """Fang et al.'s attack on trimmed mean and median (full knowledge), ``b = 2``."""

    def __init__(self, *, b: float = 2.0) -> None:
        if not b > 1:
            raise ConfigError(f"b must be > 1, got {b}")
        self.b = b

    def craft(self, view: AttackView) -> torch.Tensor:
        B = view.benign
        s = torch.sign(B.mean(dim=0))
        w_max, w_min = B.max(dim=0).values, B.min(dim=0).values
        u = torch.rand((view.f, B.shape[1]), generator=view.ctx.generator).to(B.device, B.dtype)
        # s < 0 (benign direction decreasing): push up, beyond w_max; s >= 0: push down, below w_min
        hi_lo = torch.where(w_max > 0, w_max, w_max / self.b)
        hi_hi = torch.where(w_max > 0, self.b * w_max, w_max)
        lo_lo = torch.where(w_min > 0, w_min / self.b, self.b * w_min)
        lo_hi = torch.where(w_min > 0, w_min, w_min)
        up = hi_lo + u * (hi_hi - hi_lo)
        down = lo_lo + u * (lo_hi - lo_lo)
        return torch.where(s < 0, up, down)
