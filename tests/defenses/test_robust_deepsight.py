"""DeepSight (Rieger et al. NDSS 2022): NEUPs, threshold exceedings and DDifs against NumPy, labelling, clustering,
clipping, the model's layout, and parameter errors."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from defenses.robust import DeepSight, MissingGeneratorError, make
from defenses.robust.deepsight import (
    accepted_clusters,
    cluster_distances,
    division_differences,
    ensemble_clusters,
    neups,
    threshold_exceedings,
)
from fl_core.aggregation import RoundContext
from fl_core.errors import ConfigError, InvalidUpdateError, ToleranceError
from fl_core.params import flatten_params

SETTINGS = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def net(hidden: int = 5, classes: int = 4, inputs: int = 3, seed: int = 0) -> nn.Module:
    model = nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, classes))
    with torch.no_grad():  # every parameter drawn from the test's generator
        for p in model.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=gen(seed)))
    return model


def ref_neups(w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Eq. 7-8 with loops: e_i = sum_j |dW_ij| + |db_i|, c_i = e_i^2 / sum_j e_j^2."""
    out = np.zeros_like(b)
    for k in range(b.shape[0]):
        e = np.array([sum(abs(w[k, i, j]) for j in range(w.shape[2])) + abs(b[k, i]) for i in range(b.shape[1])])
        out[k] = e**2 / np.sum(e**2)
    return out


def ref_te(c: np.ndarray) -> np.ndarray:
    """Eq. 9-11: TE = #{i : c_i > max(0.01, 1/P) max_j c_j}."""
    return np.array([sum(v > max(0.01, 1.0 / len(row)) * max(row) for v in row) for row in c])


def test_neups_and_threshold_exceedings_match_the_definitions() -> None:
    rng = np.random.default_rng(0)
    w, b = rng.normal(size=(6, 4, 5)), rng.normal(size=(6, 4))
    w[3] *= 0.01
    w[3, 2] = 1.0  # one neuron takes the energy
    b[3] = [0.0, 0.0, 1.0, 0.0]
    c = neups(torch.from_numpy(w), torch.from_numpy(b))
    np.testing.assert_allclose(c.numpy(), ref_neups(w, b), rtol=1e-13)
    np.testing.assert_allclose(c.sum(dim=1).numpy(), np.ones(6), rtol=1e-14)
    te = threshold_exceedings(c)
    assert te.tolist() == ref_te(ref_neups(w, b)).tolist() and te[3] == 1
    # P = 200 output neurons: the threshold factor is 0.01, not 1/P
    c200 = torch.full((1, 200), 2e-4, dtype=torch.float64)
    c200[0, :50] = 0.01  # the largest
    c200[0, 150:] = 7e-5  # above max / P = 5e-5, below 0.01 max = 1e-4: not exceeding
    assert threshold_exceedings(c200).tolist() == [150]


def test_neups_are_scale_invariant_and_survive_3e38() -> None:
    rng = np.random.default_rng(1)
    w, b = rng.normal(size=(3, 4, 5)).astype(np.float32), rng.normal(size=(3, 4)).astype(np.float32)
    small = neups(torch.from_numpy(w), torch.from_numpy(b))
    big = neups(torch.from_numpy(w * np.float32(3e38 / np.abs(w).max())), torch.from_numpy(b * np.float32(0.0)))
    assert torch.isfinite(big).all()
    np.testing.assert_allclose(big.numpy(), ref_neups(w.astype(np.float64), 0.0 * b.astype(np.float64)), rtol=1e-5)
    assert neups(torch.zeros(2, 4, 5), torch.zeros(2, 4)).tolist() == [[0.0] * 4] * 2  # no change, no energy
    np.testing.assert_allclose(small.numpy(), ref_neups(w.astype(np.float64), b.astype(np.float64)), rtol=1e-5)


def test_division_differences_match_numpy() -> None:
    model = net().double()
    names = [k for k, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    g = flatten_params(model).double()
    step = 0.2 * torch.randn(3, g.numel(), generator=gen(1), dtype=torch.float64)
    local = g[None] + step
    x = torch.randn(50, 3, generator=gen(2), dtype=torch.float64)
    out = division_differences(model, names, shapes, g, step, x, batch=7)  # chunks of 7: 8 chunks, uneven

    def probs(flat: np.ndarray, xs: np.ndarray) -> np.ndarray:
        w1, b1 = flat[:15].reshape(5, 3), flat[15:20]
        w2, b2 = flat[20:40].reshape(4, 5), flat[40:44]
        z = np.maximum(xs @ w1.T + b1, 0.0) @ w2.T + b2
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    base = probs(g.numpy(), x.numpy())
    ref = np.stack([(probs(local[k].numpy(), x.numpy()) / base).mean(axis=0) for k in range(3)])
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-12)
    # the global model itself: every DDif is 1
    np.testing.assert_allclose(division_differences(model, names, shapes, g, 0 * g[None], x).numpy(), 1.0, rtol=1e-13)


def test_cluster_distances_and_the_ensemble() -> None:
    assert cluster_distances(np.array([1, 1, 0])).tolist() == [[0, 0, 1], [0, 0, 1], [1, 1, 0]]
    # three views that agree on {0, 1, 2} vs {3, 4}: the merged distances are 0 within and 1 across
    cos = np.array([[0.0 if (i < 3) == (j < 3) else 1.5 for j in range(5)] for i in range(5)])
    c = np.array([[0.25] * 4] * 3 + [[0.97, 0.01, 0.01, 0.01]] * 2)
    labels = ensemble_clusters(cos, c, [c, c, c])
    assert labels[0] == labels[1] == labels[2] != labels[3] == labels[4] and (labels >= 0).all()
    # NaN rows (a model with non-finite outputs) are noise in their DDif clustering: singletons
    ddif = c.copy()
    ddif[4] = np.nan
    labels = ensemble_clusters(cos, c, [ddif])
    assert labels[0] == labels[1] == labels[2]


def hand_cohort(seed: int = 0) -> tuple[nn.Module, torch.Tensor, np.ndarray]:
    """7 honest updates (small, all output neurons) and 3 backdoor updates (large, output neuron 2 only, the same
    direction up to 1%): the backdoor's TE is 1, the honest TE is 4, the median 4, the boundary 2."""
    model = net(seed=seed)
    d = sum(p.numel() for p in model.parameters())
    rng = np.random.default_rng(seed)
    x = 0.05 * rng.normal(size=(10, d))
    x[:7, 20:] = 0.05 + 0.01 * rng.normal(size=(7, 24))  # output layer: every neuron gets a similar update
    direction = rng.normal(size=d)
    x[7:] = 0.5 * direction + 0.005 * rng.normal(size=(3, d))
    out_w = x[7:, 20:40].reshape(3, 4, 5)
    out_w[:, [0, 1, 3], :] = 0.0
    x[7:, 20:40] = out_w.reshape(3, 20)
    x[7:, [40, 41, 43]] = 0.0
    return model, torch.from_numpy(x), x


def clipped_mean(x: np.ndarray, kept: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1)
    s = np.median(norms)
    return (x[kept] * np.minimum(1.0, s / norms[kept])[:, None]).mean(axis=0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_backdoor_cluster_is_labelled_and_rejected(seed: int) -> None:
    model, x, xn = hand_cohort(seed)
    res = DeepSight(f=3, model=model, input_shape=(3,), samples=500, generator=gen(seed)).aggregate(x)
    assert res.scores.tolist() == [4.0] * 7 + [1.0] * 3
    assert res.metrics["suspicious"] == 3.0
    kept = res.kept.numpy()
    # the three backdoor models agree in every view; any cluster holding them is at least 3/10 > ... suspicious
    # only if it has fewer than 6 honest models: they are rejected, and every honest model is accepted (a
    # cluster of honest models has no suspicious member, a noise point is its own cluster)
    assert kept.tolist() == [True] * 7 + [False] * 3
    np.testing.assert_allclose(res.aggregate.numpy(), clipped_mean(xn, kept), rtol=1e-12)
    assert res.metrics["S_t"] == pytest.approx(float(np.median(np.linalg.norm(xn, axis=1))), rel=1e-14)


def test_clusters_are_accepted_below_tau() -> None:
    labels = np.array([0, 0, 0, 0, 1, 1, 1, -1, -1])
    suspicious = np.array([1, 0, 0, 0, 1, 0, 0, 1, 0], dtype=bool)
    # cluster 0: 1/4 suspicious, cluster 1: 1/3 (not below 1/3), noise points on their own
    assert accepted_clusters(labels, suspicious, 1 / 3).tolist() == [True] * 4 + [False] * 3 + [False, True]
    assert accepted_clusters(labels, suspicious, 0.2).tolist() == [False] * 7 + [False, True]
    assert accepted_clusters(labels, suspicious, 1.0).tolist() == [True] * 7 + [False, True]


def test_the_round_context_gives_the_global_model_and_the_inputs() -> None:
    model, x, _ = hand_cohort(0)
    g = flatten_params(model)
    ctx = RoundContext(3, tuple(range(10)), torch.ones(10), g, gen(11))
    rule = DeepSight(f=3, model=model, input_shape=(3,), samples=300)
    a = rule.aggregate(x, ctx=ctx)
    b = rule.aggregate(x, ctx=RoundContext(3, tuple(range(10)), torch.ones(10), g, gen(11)))
    torch.testing.assert_close(a.aggregate, b.aggregate, rtol=0, atol=0)
    with torch.no_grad():
        model[2].bias.add_(1.0)  # with a ctx the model's own parameters are not the global model
    c = rule.aggregate(x, ctx=RoundContext(3, tuple(range(10)), torch.ones(10), g, gen(11)))
    torch.testing.assert_close(a.aggregate, c.aggregate, rtol=0, atol=0)
    with pytest.raises(InvalidUpdateError, match="global parameters have length 43, the model has d=44"):
        rule.aggregate(x, ctx=RoundContext(0, tuple(range(10)), torch.ones(10), g[:-1], gen(0)))
    with pytest.raises(MissingGeneratorError, match="explicit generator"):
        rule.aggregate(x)


def test_rows_of_3e38_are_finite_and_clipped() -> None:
    model, x, _ = hand_cohort(1)
    x32 = x.float()
    x32[8] = 3e38
    x32[9, :] = -3e38
    res = DeepSight(f=3, model=model, input_shape=(3,), samples=200, generator=gen(1)).aggregate(x32)
    assert torch.isfinite(res.aggregate).all()
    honest_max = float(torch.linalg.vector_norm(x32[:7].double(), dim=1).max())
    assert float(torch.linalg.vector_norm(res.aggregate.double())) <= honest_max * (1 + 1e-6)


@SETTINGS
@given(n=st.integers(3, 9), seed=st.integers(0, 2**32 - 1), scale=st.sampled_from([1e-3, 1.0, 1e3]))
def test_honest_only_cohorts_stay_within_the_honest_bound(n: int, seed: int, scale: float) -> None:
    model = net(seed=seed % 1000)
    x = scale * np.random.default_rng(seed).normal(size=(n, 44))
    res = DeepSight(model=model, input_shape=(3,), samples=64, generator=gen(seed % 1000)).aggregate(x)
    norms = np.linalg.norm(x, axis=1)
    kept = res.kept.numpy()
    np.testing.assert_allclose(res.aggregate.numpy(), clipped_mean(x, kept) if kept.any() else 0.0, rtol=1e-10)
    # a mean of rows clipped to the median norm: inside the ball of the median norm
    assert np.linalg.norm(res.aggregate.numpy()) <= np.median(norms) * (1 + 1e-12)


def test_the_output_layer_is_found_and_can_be_named() -> None:
    model = net()
    rule = DeepSight(model=model, input_shape=(3,))
    assert rule.output_layer == "2" and rule.d == 44 and repr(rule) == "DeepSight(f=0, output_layer='2', tau=0.3333)"
    assert make("deepsight", model=model, input_shape=(3,), output_layer="2").output_layer == "2"

    class Frozen(nn.Module):  # a frozen first layer is not part of the update: the output layer starts at 0
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Linear(3, 5).requires_grad_(False)
            self.head = nn.Linear(5, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.embed(x))

    frozen = DeepSight(model=Frozen(), input_shape=(3,))
    assert frozen.d == 12 and frozen.output_layer == "head"


class NoBias(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.out = nn.Linear(3, 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(x)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"model": "mlp"}, "model must be a torch.nn.Module, got str"),
        ({"input_shape": ()}, "input_shape must be a non-empty sequence of positive ints, got ()"),
        ({"input_shape": "3"}, "input_shape must be a non-empty sequence of positive ints, got '3'"),
        ({"input_shape": (0,)}, "input_shape[0] must be >= 1, got input_shape[0]=0"),
        ({"input_shape": (4,)}, "the model does not accept an input of shape (4,)"),
        ({"tau": 0.0}, "tau must be a finite positive number, got tau=0.0"),
        ({"tau": 1.5}, "tau must be in (0, 1], got tau=1.5"),
        ({"samples": 0}, "samples must be >= 1, got samples=0"),
        ({"seeds": 0}, "seeds must be >= 1, got seeds=0"),
        ({"min_cluster_size": 1}, "min_cluster_size must be >= 2, got min_cluster_size=1"),
        ({"output_layer": "9"}, "output_layer='9' is not a module of the model"),
        ({"output_layer": "1"}, "output_layer='1' is a ReLU, not an nn.Linear"),
        ({"output_layer": "0"}, "the model's output for input_shape=(3,) has shape (1, 4), but its output layer '0' "
                                "has 5 neurons: pass output_layer"),
        ({"model": nn.ReLU()}, "model has no trainable parameters"),
        ({"model": nn.Sequential(nn.Conv1d(1, 2, 1))}, "needs a model with an nn.Linear output layer; it has none"),
        ({"model": NoBias()}, "output layer 'out' needs a trainable weight and bias"),
        ({"f": -1}, "f must be >= 0, got f=-1"),
    ],
)
def test_parameter_errors(kwargs: dict, pattern: str) -> None:
    args = {"model": net(), "input_shape": (3,), **kwargs}
    with pytest.raises(ConfigError, match=re.escape(pattern)):
        DeepSight(**args)


def test_registry_needs_the_model() -> None:
    with pytest.raises(ConfigError, match="deepsight \\(DeepSight\\) needs the parameter"):
        make("deepsight", f=1)


def test_call_errors_name_the_values() -> None:
    rule = DeepSight(f=1, model=net(), input_shape=(3,), generator=gen())
    with pytest.raises(InvalidUpdateError, match=re.escape("DeepSight's model has d=44 parameters, but the updates "
                                                           "have d=43")):
        rule(np.ones((4, 43)))
    with pytest.raises(ToleranceError, match=re.escape("DeepSight needs n >= 3 clients to cluster, got n=2, f=1")):
        rule(np.ones((2, 44)))
    with pytest.raises(ToleranceError, match=re.escape("DeepSight needs n > 2f, got n=4, f=2")):
        DeepSight(f=2, model=net(), input_shape=(3,), generator=gen())(np.ones((4, 44)))
