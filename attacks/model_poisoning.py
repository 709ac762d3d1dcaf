"""Model-poisoning attacks: the crafted updates of Byzantine clients.

Each class crafts the ``(f, d)`` malicious rows from an :class:`~attacks.byzantine.AttackView`.

* :class:`SignFlip` — send ``-scale * own`` (Damaskinos et al. 2018; Allen-Zhu et al. 2021).
* :class:`GaussianNoise` — send ``N(mu, sigma^2 I)`` (Blanchard et al., NeurIPS 2017).
* :class:`FangGaussian` — Fang et al.'s Gaussian baseline (USENIX Security 2020, Sec. 5): each
  attacker draws every coordinate from the Gaussian with that coordinate's mean and variance
  over the benign reference rows.
* :class:`Scaling` — model replacement: boost the (backdoored) own update by
  ``gamma = n / eta`` so it survives averaging (Bagdasaryan et al., AISTATS 2020, Eq. 3).
* :class:`ConstrainedScaling` — constrain-and-scale's scaling step: boost by ``gamma``
  but keep the L2 norm within ``norm_bound`` (Bagdasaryan et al. 2020, Sec. 4.3; the
  training constraint is :class:`~attacks.hooks.AnomalyEvasion`).
* :class:`ALIE` — "A Little Is Enough" (Baruch et al., NeurIPS 2019):
  ``mu - z sigma`` with ``s = floor(n/2 + 1) - f`` and ``z = Phi^{-1}((n - s) / n)``.
* :class:`IPM` — inner-product manipulation (Xie, Koyejo & Gupta, UAI 2019): ``-epsilon * mu``.

Examples
--------
>>> import torch
>>> round(ALIE.z_max(n=50, f=10), 4)  # s = 26 - 10 = 16, Phi^{-1}(34/50)
0.4677
"""

from __future__ import annotations

import math

import torch
from scipy.stats import norm

from attacks.byzantine import AttackView, ModelPoisoning
from fl_core.errors import ConfigError

__all__ = ["ALIE", "IPM", "ConstrainedScaling", "FangGaussian", "GaussianNoise", "Scaling", "SignFlip"]


def _positive(name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{name} must be a positive finite number, got {value}")


class SignFlip(ModelPoisoning):
    """Send ``-scale`` times the client's own benign update."""

    def __init__(self, *, scale: float = 1.0) -> None:
        _positive("scale", scale)
        self.scale = scale

    def craft(self, view: AttackView) -> torch.Tensor:
        return -self.scale * view.own


class GaussianNoise(ModelPoisoning):
    """Send i.i.d. Gaussian vectors ``N(mean, sigma^2 I)`` drawn from the round's generator."""

    def __init__(self, *, sigma: float = 1.0, mean: float = 0.0) -> None:
        _positive("sigma", sigma)
        self.sigma, self.mean = sigma, mean

    def craft(self, view: AttackView) -> torch.Tensor:
        noise = torch.randn(view.own.shape, generator=view.ctx.generator, dtype=torch.float32)
        return (self.mean + self.sigma * noise).to(view.own.device)


class FangGaussian(ModelPoisoning):
    """Fang et al.'s Gaussian attack: row ``k`` is ``mu + sigma * z_k``, ``z_k ~ N(0, I)`` independent per attacker.

    ``mu`` and ``sigma`` are the coordinate-wise mean and (population) standard deviation of
    the benign reference rows, so a coordinate on which they agree is sent exactly.

    Examples
    --------
    >>> import torch
    >>> from fl_core.aggregation import RoundContext
    >>> from attacks.byzantine import AttackView
    >>> B = torch.tensor([[1.0, 3.0], [1.0, 5.0]])
    >>> ctx = RoundContext(0, (0, 1, 2), torch.ones(3), torch.zeros(2), torch.Generator().manual_seed(0))
    >>> m = FangGaussian().craft(AttackView(B[:1], B, 3, 1, ctx, None))
    >>> m.shape, float(m[0, 0])  # the first coordinate has no spread among the benign rows
    (torch.Size([1, 2]), 1.0)
    """

    def craft(self, view: AttackView) -> torch.Tensor:
        if view.benign.shape[0] < 2:
            raise ConfigError(
                f"FangGaussian needs at least 2 benign reference updates for a variance, got {view.benign.shape[0]}"
            )
        rows = view.benign.double()  # float32 squares of a 1e38 row would overflow the variance
        mu, sigma = rows.mean(dim=0), rows.std(dim=0, unbiased=False)
        z = torch.randn((view.f, mu.numel()), generator=view.ctx.generator, dtype=torch.float32).to(mu.device)
        big = torch.finfo(view.benign.dtype).max
        return (mu + sigma * z.double()).clamp(-big, big).to(view.benign.dtype)


class Scaling(ModelPoisoning):
    """Model replacement: ``gamma * own`` with ``gamma = n / eta`` by default (Bagdasaryan et al. 2020).

    ``eta`` is the server learning rate of the FedAvg step the attacker expects.
    """

    def __init__(self, *, gamma: float | None = None, eta: float = 1.0) -> None:
        if gamma is not None:
            _positive("gamma", gamma)
        _positive("eta", eta)
        self.gamma, self.eta = gamma, eta

    def factor(self, n: int) -> float:
        return self.gamma if self.gamma is not None else n / self.eta

    def craft(self, view: AttackView) -> torch.Tensor:
        return self.factor(view.n) * view.own


class ConstrainedScaling(Scaling):
    """Scale by ``gamma`` but never beyond L2 norm ``norm_bound`` (constrain-and-scale's bound S)."""

    def __init__(self, *, norm_bound: float, gamma: float | None = None, eta: float = 1.0) -> None:
        super().__init__(gamma=gamma, eta=eta)
        _positive("norm_bound", norm_bound)
        self.norm_bound = norm_bound

    def craft(self, view: AttackView) -> torch.Tensor:
        scaled = self.factor(view.n) * view.own
        norms = scaled.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return scaled * torch.clamp(self.norm_bound / norms, max=1.0)


class ALIE(ModelPoisoning):
    """A Little Is Enough (Baruch, Baruch & Goldberg, NeurIPS 2019).

    Every attacker sends ``mu - z_max * sigma`` where ``mu`` and ``sigma`` are the
    coordinate-wise mean and standard deviation of the benign reference rows and
    ``z_max = Phi^{-1}((n - s) / n)``, ``s = floor(n / 2 + 1) - f`` (the number of
    benign clients the attackers need on their side). ``z`` overrides ``z_max``.
    """

    def __init__(self, *, z: float | None = None) -> None:
        if z is not None and not math.isfinite(z):
            raise ConfigError(f"z must be finite, got {z}")
        self.z = z

    @staticmethod
    def z_max(*, n: int, f: int) -> float:
        """The paper's ``z_max`` for ``n`` clients of which ``f`` are malicious."""
        if not 0 < f < n:
            raise ConfigError(f"ALIE needs 0 < f < n, got n={n}, f={f}")
        s = math.floor(n / 2 + 1) - f
        p = (n - s) / n
        if not 0 < p < 1:
            raise ConfigError(f"ALIE's z is undefined for n={n}, f={f} (s={s}, (n-s)/n={p})")
        return float(norm.ppf(p))

    def craft(self, view: AttackView) -> torch.Tensor:
        z = self.z if self.z is not None else self.z_max(n=view.n, f=view.f)
        mu = view.benign.mean(dim=0)
        sigma = view.benign.std(dim=0, unbiased=False)
        return (mu - z * sigma).expand(view.f, -1).clone()


class IPM(ModelPoisoning):
    """Inner-product manipulation (Xie, Koyejo & Gupta, UAI 2019): every attacker sends ``-epsilon * mu``.

    Small ``epsilon`` (0.1) defeats Krum, large (e.g. 100) defeats coordinate-wise median / trimmed mean.
    """

    def __init__(self, *, epsilon: float = 0.1) -> None:
        _positive("epsilon", epsilon)
        self.epsilon = epsilon

    def craft(self, view: AttackView) -> torch.Tensor:
        return (-self.epsilon * view.benign.mean(dim=0)).expand(view.f, -1).clone()
