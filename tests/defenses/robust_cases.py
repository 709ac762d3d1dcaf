"""Shared factories and loop-based reference implementations for the robust-rule tests.

The references are written straight from the papers, with explicit Python loops
over clients and pairs, so that the vectorised rules can be checked against an
independent, obviously-correct oracle on random data.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from defenses.robust import (
    ARC,
    CAF,
    FLAME,
    MDA,
    NNM,
    RLR,
    Bucketing,
    Bulyan,
    CenteredClipping,
    Compose,
    DeepSight,
    DnC,
    FLDetector,
    FLTrust,
    FoolsGold,
    FreqFed,
    GeometricMedian,
    Krum,
    Meamed,
    Mean,
    Median,
    MoNNA,
    MultiKrum,
    NormBound,
    SignGuard,
    TrimmedMean,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def fltrust_with(g0: torch.Tensor | np.ndarray) -> FLTrust:
    rule = FLTrust()
    rule.set_server_update(g0)
    return rule


class TinyNet(nn.Module):
    """A model with exactly ``d`` trainable parameters: ``r`` free ones, then an output ``Linear(h, P)``.

    ``P = 2`` output neurons when ``d >= 2`` (else 1), ``h = d // P - 1`` features, ``r = d - P (h + 1)``;
    an input is one number, repeated ``h`` times and shifted by the free parameters' sum, so every
    parameter takes part in the output (``h = 0``: the output is the bias).
    """

    def __init__(self, d: int) -> None:
        super().__init__()
        p = 2 if d >= 2 else 1
        h = d // p - 1
        self.shift = nn.Parameter(torch.linspace(-0.1, 0.1, d - p * (h + 1)))
        with warnings.catch_warnings():  # h = 0: PyTorch warns that initialising an empty weight is a no-op
            warnings.simplefilter("ignore")
            self.out = nn.Linear(h, p)
        with torch.no_grad():
            self.out.weight.copy_(torch.linspace(-0.5, 0.5, p * h).reshape(p, h))
            self.out.bias.copy_(torch.linspace(-0.2, 0.2, p))
        self.h = h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(x.repeat(1, self.h) + self.shift.sum())


def deepsight_for(d: int, f: int = 0, **kw) -> DeepSight:
    """DeepSight on a :class:`TinyNet` with ``d`` parameters (its current parameters are the global model)."""
    net = TinyNet(d)
    return DeepSight(f=f, model=net, input_shape=(1,), samples=64, generator=gen(6), **kw)


# name -> factory(f, d) building a fresh rule that tolerates f (deterministic given the seed)
RULES: dict[str, Callable[[int, int], object]] = {
    "mean": lambda f, d: Mean(),
    "median": lambda f, d: Median(f=f),
    "trimmed_mean": lambda f, d: TrimmedMean(f=f),
    "krum": lambda f, d: Krum(f=f),
    "multi_krum": lambda f, d: MultiKrum(f=f),
    "bulyan": lambda f, d: Bulyan(f=f),
    "geomed": lambda f, d: GeometricMedian(f=f),
    "centered_clipping": lambda f, d: CenteredClipping(f=f, tau=1.0),
    "norm_bound": lambda f, d: NormBound(f=f, M=1.0),
    "fltrust": lambda f, d: fltrust_with(torch.ones(d, dtype=torch.float64)),
    "flame": lambda f, d: FLAME(f=f, generator=gen(1)),
    "foolsgold": lambda f, d: FoolsGold(f=f),
    "dnc": lambda f, d: DnC(f=f, b=max(1, d // 2), generator=gen(2)),
    "nnm+krum": lambda f, d: Compose(NNM(f=f), Krum(f=f)),
    "arc+median": lambda f, d: Compose(ARC(f=f), Median(f=f)),
    "bucketing+median": lambda f, d: Compose(Bucketing(s=1, generator=gen(3)), Median(f=f)),
    "meamed": lambda f, d: Meamed(f=f),
    "mda": lambda f, d: MDA(f=f),
    "monna": lambda f, d: MoNNA(f=f, server_update=lambda ctx: torch.ones(d, dtype=torch.float64)),
    "caf": lambda f, d: CAF(f=f),
    "rlr": lambda f, d: RLR(f=f),
    "signguard": lambda f, d: SignGuard(f=f, fraction=1.0, generator=gen(4)),
    "fldetector": lambda f, d: FLDetector(f=f, generator=gen(5)),
    "freqfed": lambda f, d: FreqFed(f=f),
    "deepsight": lambda f, d: deepsight_for(d, f),
}

# minimal n for a given f, per rule
MIN_N: dict[str, Callable[[int], int]] = {
    "mean": lambda f: 1,
    "median": lambda f: 2 * f + 1,
    "trimmed_mean": lambda f: 2 * f + 1,
    "krum": lambda f: 2 * f + 3,
    "multi_krum": lambda f: 2 * f + 3,
    "bulyan": lambda f: 4 * f + 3,
    "geomed": lambda f: 2 * f + 1,
    "centered_clipping": lambda f: 2 * f + 1,
    "norm_bound": lambda f: f + 1,
    "fltrust": lambda f: f + 1,
    "flame": lambda f: max(3, 2 * f + 1),
    "foolsgold": lambda f: max(2, f + 1),
    "dnc": lambda f: 2 * f + 1,
    "nnm+krum": lambda f: 2 * f + 3,
    "arc+median": lambda f: 2 * f + 1,
    "bucketing+median": lambda f: 2 * f + 1,
    "meamed": lambda f: 2 * f + 1,
    "mda": lambda f: 2 * f + 1,
    "monna": lambda f: 2 * f + 1,
    "caf": lambda f: 2 * f + 1,
    "rlr": lambda f: f + 1,
    "signguard": lambda f: 2 * f + 1,
    "fldetector": lambda f: max(2, f + 1),
    "freqfed": lambda f: max(3, 2 * f + 1),
    "deepsight": lambda f: max(3, 2 * f + 1),
}


def ref_krum_scores(x: np.ndarray, f: int) -> np.ndarray:
    """Blanchard et al.: sum of squared distances to the n - f - 2 closest others."""
    n = len(x)
    scores = np.zeros(n)
    for i in range(n):
        dists = sorted(float(np.sum((x[i] - x[j]) ** 2)) for j in range(n) if j != i)
        scores[i] = sum(dists[: n - f - 2])
    return scores


def ref_bulyan(x: np.ndarray, f: int) -> np.ndarray:
    """El Mhamdi et al.: recursive Krum selection of theta = n - 2f, then beta-closest-to-median."""
    n, d = x.shape
    theta, beta = n - 2 * f, n - 4 * f
    remaining = list(range(n))
    selected = []
    for _ in range(theta):
        size = len(remaining)
        if size == 1:
            selected.append(remaining.pop())
            continue
        k = min(max(size - f - 2, 1), size - 1)
        best, best_key = None, None
        for i in remaining:
            dists = sorted(float(np.sum((x[i] - x[j]) ** 2)) for j in remaining if j != i)
            key = (sum(dists[:k]), sum(dists), i)
            if best_key is None or key < best_key:
                best, best_key = i, key
        remaining.remove(best)
        selected.append(best)
    sel = x[selected]
    out = np.zeros(d)
    for c in range(d):
        col = np.sort(sel[:, c])
        med = np.median(col)
        # beta values closest to the median: contiguous window with the smallest max gap
        best_a = min(
            range(theta - beta + 1),
            key=lambda a, col=col, med=med: (max(med - col[a], col[a + beta - 1] - med), a),
        )
        out[c] = col[best_a : best_a + beta].mean()
    return out
