"""Explicit state of the server optimisers (issue 14)."""

from __future__ import annotations

import json

import pytest
import torch

from fl_core.server_opt import FedAdam, FedAvg, FedAvgM, ServerOptimizer
from fl_core.state import StateError

D = 6

BUILD = {
    "fedavg": lambda: FedAvg(lr=0.5),
    "fedavgm": lambda: FedAvgM(lr=0.5, momentum=0.9),
    "fedadam": lambda: FedAdam(lr=0.05, beta1=0.9, beta2=0.99, tau=1e-3),
}


def _delta(step: int) -> torch.Tensor:
    return torch.randn(D, generator=torch.Generator().manual_seed(step))


def _run(opt: ServerOptimizer, x: torch.Tensor, steps: range) -> tuple[torch.Tensor, list[torch.Tensor]]:
    trace = []
    for s in steps:
        x = opt.step(x, _delta(s))
        trace.append(x)
    return x, trace


@pytest.mark.parametrize("name", sorted(BUILD))
def test_restored_mid_run_takes_bit_identical_steps(name: str) -> None:
    original = BUILD[name]()
    x, _ = _run(original, torch.zeros(D), range(5))
    resumed = BUILD[name]()
    resumed.load_state_dict(original.state_dict())
    _, expected = _run(original, x, range(5, 10))
    _, got = _run(resumed, x, range(5, 10))
    assert all(torch.equal(a, b) for a, b in zip(expected, got, strict=True))
    assert resumed.state_dict().keys() == original.state_dict().keys()


@pytest.mark.parametrize("name", sorted(BUILD))
def test_state_header_is_json_and_tensors_are_copies(name: str) -> None:
    opt = BUILD[name]()
    _run(opt, torch.zeros(D), range(2))
    state = opt.state_dict()
    saved = {k: v.clone() for k, v in state.items() if isinstance(v, torch.Tensor)}
    _run(opt, torch.zeros(D), range(2, 4))
    assert all(torch.equal(state[k], v) for k, v in saved.items())
    plain = {k: v for k, v in state.items() if not isinstance(v, torch.Tensor)}
    assert json.loads(json.dumps(plain, allow_nan=False)) == plain


@pytest.mark.parametrize("name", sorted(BUILD))
def test_fresh_and_reset_states_round_trip(name: str) -> None:
    opt = BUILD[name]()
    _run(opt, torch.zeros(D), range(3))
    opt.reset()
    resumed = BUILD[name]()
    resumed.load_state_dict(json.loads(json.dumps(opt.state_dict())))
    assert getattr(resumed, "steps", 0) == 0


def _adam_state() -> dict:
    opt = FedAdam(lr=0.05)
    _run(opt, torch.zeros(D), range(3))
    return opt.state_dict()


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"kind": "FedAvgM"}, "kind"),
        ({"version": 0}, "version"),
        ({"config": {"lr": 0.05, "beta1": 0.5, "beta2": 0.99, "tau": 1e-3}}, "beta1=0.5"),
        ({"steps": -1}, "int >= 0"),
        ({"steps": 0}, "steps=0"),
        ({"m": None}, "both be tensors"),
        ({"m": None, "v": None}, "steps=3"),
        ({"m": torch.zeros(D + 1)}, "differ"),
        ({"v": -torch.ones(D)}, ">= 0"),
        ({"v": torch.full((D,), float("nan"))}, "NaN"),
        ({"m": torch.zeros(D, 1)}, "1 dimension"),
        ({"m": [0.0] * D}, "torch.Tensor"),
        ({"extra": 1}, "unexpected keys"),
    ],
)
def test_fedadam_corrupted_state_raises(change: dict, match: str) -> None:
    target = FedAdam(lr=0.05)
    with pytest.raises(StateError, match=match):
        target.load_state_dict({**_adam_state(), **change})
    assert target.steps == 0 and target.state_dict()["m"] is None


def test_other_optimiser_or_configuration_refused() -> None:
    momentum = FedAvgM(lr=0.5, momentum=0.9)
    _run(momentum, torch.zeros(D), range(2))
    with pytest.raises(StateError, match="kind"):
        FedAdam().load_state_dict(momentum.state_dict())
    with pytest.raises(StateError, match="momentum"):
        FedAvgM(lr=0.5, momentum=0.5).load_state_dict(momentum.state_dict())
    with pytest.raises(StateError, match="momentum is None"):
        FedAvgM(lr=0.5, momentum=0.9).load_state_dict({**momentum.state_dict(), "v": None})
    with pytest.raises(StateError, match="lr"):
        FedAvg(lr=1.0).load_state_dict(FedAvg(lr=0.5).state_dict())


def test_optimiser_without_declared_state_refuses_to_save() -> None:
    class Custom(ServerOptimizer):
        def step(self, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
            return x + delta

    with pytest.raises(NotImplementedError, match="Custom"):
        Custom().state_dict()
    with pytest.raises(NotImplementedError, match="Custom"):
        Custom().load_state_dict(FedAvg().state_dict())
