"""FLDetector (Zhang et al. 2022): L-BFGS against the BFGS recursion, the gap statistic, detection, state."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from defenses.robust import FLDetector, MissingGeneratorError, StateMismatchError, make
from defenses.robust.fldetector import gap_statistic, lbfgs_hvp
from fl_core.aggregation import RoundContext
from fl_core.errors import ToleranceError
from fl_core.state import StateError

F64 = torch.float64


def ref_bfgs(s: np.ndarray, y: np.ndarray) -> np.ndarray:
    """m BFGS updates of sigma I, sigma = y_m.s_m / s_m.s_m (Nocedal & Wright eq. 6.19), as a dense matrix."""
    d = s.shape[1]
    b = (y[-1] @ s[-1]) / (s[-1] @ s[-1]) * np.eye(d)
    for sk, yk in zip(s, y, strict=True):
        bs = b @ sk
        b = b - np.outer(bs, bs) / (sk @ bs) + np.outer(yk, yk) / (yk @ sk)
    return b


@pytest.mark.parametrize(("m", "d", "seed"), [(1, 3, 0), (3, 5, 1), (5, 8, 2), (4, 4, 3)])
def test_lbfgs_compact_form_equals_the_bfgs_recursion(m: int, d: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(d, d))
    a = a @ a.T + d * np.eye(d)  # positive curvature: y.s > 0
    s = rng.normal(size=(m, d))
    y = s @ a.T
    v = rng.normal(size=d)
    got = lbfgs_hvp(torch.from_numpy(s), torch.from_numpy(y), torch.from_numpy(v)).numpy()
    np.testing.assert_allclose(got, ref_bfgs(s, y) @ v, rtol=1e-9, atol=1e-9)
    # the secant condition for the last pair
    last = lbfgs_hvp(torch.from_numpy(s), torch.from_numpy(y), torch.from_numpy(s[-1])).numpy()
    np.testing.assert_allclose(last, y[-1], rtol=1e-9, atol=1e-9)


def test_gap_statistic_cases() -> None:
    rng = np.random.default_rng(0)
    two = np.concatenate([0.1 + 0.01 * rng.random(12), 0.9 + 0.01 * rng.random(4)])
    assert gap_statistic(two, k_max=10, samples=20, rng=np.random.default_rng(1)) == 2
    assert gap_statistic(np.full(6, 0.2), k_max=10, samples=20, rng=np.random.default_rng(1)) == 1
    assert gap_statistic(np.array([0.1, 0.9]), k_max=10, samples=20, rng=np.random.default_rng(1)) == 1


class Quadratic:
    """Clients minimising 0.5 w^T A w - b_i^T w: honest update -0.1 (A w - b_i) plus small noise."""

    def __init__(self, n: int = 10, d: int = 20, seed: int = 0) -> None:
        self.g = torch.Generator().manual_seed(seed)
        a = torch.randn(d, d, generator=self.g, dtype=F64)
        self.a = a @ a.T / d + torch.eye(d, dtype=F64)
        self.b = torch.randn(n, d, generator=self.g, dtype=F64)
        self.n, self.d = n, d
        self.w = torch.zeros(d, dtype=F64)

    def honest(self) -> torch.Tensor:
        return -0.1 * (self.w @ self.a - self.b) + 1e-3 * torch.randn(self.n, self.d, generator=self.g, dtype=F64)

    def ctx(self, t: int) -> RoundContext:
        return RoundContext(round_idx=t, client_ids=tuple(range(100, 100 + self.n)), weights=torch.ones(self.n),
                            global_params=self.w.clone(), generator=torch.Generator().manual_seed(t))


def attacked(q: Quadratic, attack: str, f: int) -> torch.Tensor:
    x = q.honest()
    if attack == "noise":
        x[:f] = torch.randn(f, q.d, generator=q.g, dtype=F64)
    else:  # scaled opposite of the honest mean
        x[:f] = -3.0 * x[f:].mean(dim=0)
    return x


@pytest.mark.parametrize("attack", ["noise", "flip"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_detects_inconsistent_clients_and_drops_them(attack: str, seed: int) -> None:
    q, f = Quadratic(seed=seed), 3
    det = FLDetector(f=f, window=5)
    for t in range(12):
        x = attacked(q, attack, f)
        res = det.aggregate(x, ctx=q.ctx(t))
        q.w = q.w + res.aggregate
    assert det.removed == {100, 101, 102}
    assert res.kept.tolist() == [False] * 3 + [True] * 7
    torch.testing.assert_close(res.aggregate, x[3:].mean(dim=0))
    assert res.metrics["removed"] == 3.0 and bool(torch.isfinite(res.scores).all())


def test_a_row_of_3e38_is_detected_without_overflow() -> None:
    q, f = Quadratic(seed=4), 1
    det = FLDetector(f=f, window=4)
    for t in range(10):
        x = q.honest().float()
        x[0] = 3e38
        res = det.aggregate(x, ctx=q.ctx(t))
        assert bool(torch.isfinite(res.aggregate).all())
        q.w = q.w + res.aggregate.double()
    assert det.removed == {100}
    torch.testing.assert_close(res.aggregate, x[1:].mean(dim=0))


def test_state_round_trip_continues_identically() -> None:
    q, f = Quadratic(seed=5), 3
    live = FLDetector(f=f, window=5)
    inputs = []
    for t in range(14):  # record a run (its model trajectory) once
        inputs.append((attacked(q, "noise", f), q.ctx(t)))
        q.w = q.w + live.aggregate(inputs[-1][0], ctx=inputs[-1][1]).aggregate
    first = FLDetector(f=f, window=5)
    for x, ctx in inputs[:6]:
        first.aggregate(x, ctx=ctx)
    resumed = FLDetector(f=f, window=5)
    resumed.load_state_dict(first.state_dict())
    for x, ctx in inputs[6:]:
        a, b = first.aggregate(x, ctx=ctx), resumed.aggregate(x, ctx=ctx)
        assert torch.equal(a.aggregate, b.aggregate) and torch.equal(a.kept, b.kept)
    assert first.removed == resumed.removed == live.removed == {100, 101, 102}


def test_state_errors() -> None:
    det = FLDetector(window=5)
    det(torch.ones(3, 2, dtype=F64))
    det(torch.zeros(3, 2, dtype=F64))
    state = det.state_dict()
    with pytest.raises(StateError, match="configuration"):
        FLDetector(window=4).load_state_dict(state)
    bad = dict(state, prev_updates=torch.zeros(2, 2, dtype=F64))
    with pytest.raises(StateError, match="prev_updates"):
        FLDetector(window=5).load_state_dict(bad)
    with pytest.raises(StateError, match="distances"):
        FLDetector(window=5).load_state_dict(dict(state, distances=[[0, ["x"]]]))


def test_without_context_the_previous_aggregate_is_the_model_step() -> None:
    det = FLDetector(window=1)
    det(torch.tensor([[1.0, 0.0], [3.0, 0.0]], dtype=F64))  # aggregate (2, 0): w_1 = (2, 0)
    det(torch.tensor([[0.0, 1.0], [0.0, 3.0]], dtype=F64))  # aggregate (0, 2): the pair ((2, 0), (-2, 2))
    state = det.state_dict()
    assert state["s"].tolist() == [[2.0, 0.0]] and state["y"].tolist() == [[-2.0, 2.0]]
    assert state["global"].tolist() == [2.0, 0.0]
    with pytest.raises(MissingGeneratorError, match="FLDetector is randomised"):
        det(torch.tensor([[0.0, 1.0], [5.0, 3.0]], dtype=F64))  # a window of scores: detection needs a generator


def test_input_errors_and_registry() -> None:
    det = FLDetector()
    det(torch.ones(3, 2))
    with pytest.raises(StateMismatchError, match="d=2 but got d=3"):
        det(torch.ones(3, 3))
    with pytest.raises(ToleranceError, match="n >= 2"):
        FLDetector()(torch.ones(1, 2))
    assert make("fldetector", window=3).window == 3
