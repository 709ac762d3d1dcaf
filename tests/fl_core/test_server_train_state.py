"""Explicit state of :class:`fl_core.server_train.PublicSetTraining` (issue 14).

Oracle: an optimiser saved after some rounds and restored into a freshly built one takes
exactly the steps the uninterrupted one takes (``torch.equal``), and a state that does
not fit is refused with :class:`StateError` without changing the object.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch

from fl_core.data.dataset import ArrayDataset
from fl_core.server_opt import FedAdam, FedAvg, FedAvgM, ServerOptimizer
from fl_core.server_train import PublicSetTraining
from fl_core.state import StateError
from fl_core.training import LocalTrainingConfig

IN, OUT = 3, 2
D = IN * OUT + OUT
CONFIG = LocalTrainingConfig(epochs=1, batch_size=4, lr=0.1, momentum=0.5)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One thread, restored afterwards: bit-for-bit comparisons should not depend on the thread split."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _data(name: str = "public", n: int = 10) -> ArrayDataset:
    g = torch.Generator().manual_seed(7)
    return ArrayDataset(x=torch.randn(n, IN, generator=g), y=torch.randint(0, OUT, (n,), generator=g),
                        num_classes=OUT, name=name)  # fmt: skip


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Linear(IN, OUT)


INNER = {
    "fedavg": lambda: FedAvg(lr=0.5),
    "fedavgm": lambda: FedAvgM(lr=0.5, momentum=0.9),
    "fedadam": lambda: FedAdam(lr=0.05),
}


def _build(inner: str = "fedavgm", *, seed: int = 3, model_seed: int = 0, **kw) -> PublicSetTraining:
    args = {"model": _model(model_seed), "data": _data(), "config": CONFIG, "seed": seed, "inner": INNER[inner](), **kw}
    return PublicSetTraining(**args)


def _delta(r: int) -> torch.Tensor:
    return torch.randn(D, generator=torch.Generator().manual_seed(100 + r))


def _run(opt: ServerOptimizer, x: torch.Tensor, rounds: range) -> tuple[torch.Tensor, list[torch.Tensor]]:
    trace = []
    for r in rounds:
        x = opt.step(x, _delta(r))
        trace.append(x)
    return x, trace


def _snapshot(opt: PublicSetTraining) -> dict:
    return copy.deepcopy(opt.state_dict())


def _same_state(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    for k in a:
        if isinstance(a[k], torch.Tensor) or isinstance(b[k], torch.Tensor):
            if not (isinstance(a[k], torch.Tensor) and isinstance(b[k], torch.Tensor) and torch.equal(a[k], b[k])):
                return False
        elif isinstance(a[k], dict) and isinstance(b[k], dict):
            if not _same_state(a[k], b[k]):
                return False
        elif a[k] != b[k]:
            return False
    return True


@pytest.mark.parametrize("inner", sorted(INNER))
def test_restored_mid_run_takes_bit_identical_steps(inner: str) -> None:
    original = _build(inner)
    x, _ = _run(original, torch.zeros(D), range(3))
    resumed = _build(inner, model_seed=1)  # another work model: its parameters are overwritten each step
    resumed.load_state_dict(original.state_dict())
    assert resumed.rounds == 3
    _, expected = _run(original, x, range(3, 6))
    _, got = _run(resumed, x, range(3, 6))
    assert all(torch.equal(a, b) for a, b in zip(expected, got, strict=True))
    assert _same_state(resumed.state_dict(), original.state_dict())


def test_without_the_state_the_next_step_differs() -> None:
    """The round counter and the inner momentum matter: a fresh optimiser does not continue the run."""
    original = _build("fedavgm")
    x, _ = _run(original, torch.zeros(D), range(3))
    fresh = _build("fedavgm")
    assert not torch.equal(original.step(x, _delta(3)), fresh.step(x, _delta(3)))


def test_state_is_json_with_a_json_inner_and_round_trips() -> None:
    opt = _build("fedavg")
    x, _ = _run(opt, torch.zeros(D), range(2))
    text = json.dumps(opt.state_dict(), allow_nan=False)
    resumed = _build("fedavg")
    resumed.load_state_dict(json.loads(text))
    assert torch.equal(opt.step(x, _delta(2)), resumed.step(x, _delta(2)))
    state = json.loads(text)
    assert state["kind"] == "PublicSetTraining" and state["rounds"] == 2 and state["inner"]["kind"] == "FedAvg"
    assert state["config"] == {
        "seed": 3,
        "training": {"epochs": 1, "batch_size": 4, "lr": 0.1, "momentum": 0.5, "weight_decay": 0.0,
                     "max_steps": None, "dp_sgd": None},
        "public_set": {"name": "public", "size": 10},
        "num_params": D,
    }  # fmt: skip


def test_saved_state_is_a_copy() -> None:
    opt = _build("fedavgm")
    x, _ = _run(opt, torch.zeros(D), range(2))
    state = opt.state_dict()
    saved = _snapshot(opt)
    _run(opt, x, range(2, 4))
    assert _same_state(state, saved)


def test_reset_state_round_trips() -> None:
    opt = _build("fedavgm")
    _run(opt, torch.zeros(D), range(2))
    opt.reset()
    resumed = _build("fedavgm")
    _run(resumed, torch.zeros(D), range(1))
    resumed.load_state_dict(opt.state_dict())
    assert resumed.rounds == 0 and resumed.inner.steps == 0  # type: ignore[attr-defined]


def _saved() -> dict:
    opt = _build("fedavgm")
    _run(opt, torch.zeros(D), range(2))
    return opt.state_dict()


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"kind": "FedAvgM"}, "kind"),
        ({"version": 2}, "version"),
        ({"config": {**_saved()["config"], "seed": 4}}, "seed=4"),
        ({"config": {**_saved()["config"], "public_set": {"name": "other", "size": 10}}}, "public_set"),
        ({"config": {**_saved()["config"], "num_params": D + 1}}, "num_params"),
        ({"config": {k: v for k, v in _saved()["config"].items() if k != "seed"}}, "config keys"),
        ({"rounds": -1}, "int >= 0"),
        ({"rounds": 1.0}, "int >= 0"),
        ({"rounds": True}, "int >= 0"),
        ({"inner": None}, "must be a dict"),
        ({"inner": FedAdam(lr=0.05).state_dict()}, "kind"),
        ({"inner": {**_saved()["inner"], "v": torch.full((D,), float("nan"))}}, "NaN"),
        ({"inner": {**_saved()["inner"], "config": {"lr": 0.5, "momentum": 0.5}}}, "momentum"),
        ({"extra": 1}, "unexpected keys"),
    ],
)
def test_bad_state_raises_and_changes_nothing(change: dict, match: str) -> None:
    target = _build("fedavgm")
    x, _ = _run(target, torch.zeros(D), range(1))
    before = _snapshot(target)
    with pytest.raises(StateError, match=match):
        target.load_state_dict({**_saved(), **change})
    assert _same_state(target.state_dict(), before)
    twin = _build("fedavgm")
    _run(twin, torch.zeros(D), range(1))
    assert torch.equal(target.step(x, _delta(1)), twin.step(x, _delta(1)))  # still the run it was


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"seed": 4}, "seed"),
        ({"config": LocalTrainingConfig(epochs=2, batch_size=4, lr=0.1, momentum=0.5)}, "training"),
        ({"data": _data(n=12)}, "public_set"),
    ],
)
def test_state_of_another_configuration_is_refused(kw: dict, match: str) -> None:
    target = _build("fedavgm", **kw)
    with pytest.raises(StateError, match=match):
        target.load_state_dict(_saved())
    assert target.rounds == 0 and target.inner.steps == 0  # type: ignore[attr-defined]


def test_inner_optimiser_of_another_kind_is_refused() -> None:
    target = _build("fedadam")
    with pytest.raises(StateError, match="kind 'FedAvgM'"):
        target.load_state_dict(_saved())
    assert target.rounds == 0


def test_inner_without_declared_state_refuses_to_save() -> None:
    class Custom(ServerOptimizer):
        def step(self, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
            return x + delta

    opt = PublicSetTraining(model=_model(), data=_data(), config=CONFIG, inner=Custom())
    with pytest.raises(NotImplementedError, match="Custom"):
        opt.state_dict()
