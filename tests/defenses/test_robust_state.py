"""Explicit state of the stateful robust rules: FoolsGold and centered clipping (issue 14); FreqFed and DeepSight
have none."""

from __future__ import annotations

import json

import pytest
import torch
from robust_cases import TinyNet

from defenses.robust import DeepSight, FreqFed
from defenses.robust.centered_clipping import CenteredClipping
from defenses.robust.foolsgold import FoolsGold
from fl_core.aggregation import RoundContext
from fl_core.pipeline import Pipeline, Round
from fl_core.state import StateError

D = 5


def _ctx(round_idx: int, ids: tuple[int, ...]) -> RoundContext:
    n = len(ids)
    return RoundContext(round_idx, ids, torch.ones(n), torch.zeros(D), torch.Generator().manual_seed(round_idx))


def _round(round_idx: int) -> tuple[torch.Tensor, RoundContext]:
    """Cohorts of 5 of 8 clients: ids change between rounds, two Sybils (0 and 1) repeat one direction."""
    gen = torch.Generator().manual_seed(round_idx)
    ids = tuple(int(i) for i in torch.randperm(8, generator=gen)[:5])
    updates = torch.randn(5, D, generator=gen)
    sybil = torch.randn(D, generator=torch.Generator().manual_seed(999))
    for row, cid in enumerate(ids):
        if cid in (0, 1):
            updates[row] = sybil * (1 + cid)
    return updates, _ctx(round_idx, ids)


def _run(rule: FoolsGold | CenteredClipping, rounds: range) -> list[torch.Tensor]:
    out = []
    for r in rounds:
        updates, ctx = _round(r)
        res = rule.aggregate(updates, ctx=ctx)
        out.append(torch.cat([res.aggregate, res.scores.to(res.aggregate.dtype)]))
    return out


RULES = {
    "foolsgold": lambda: FoolsGold(kappa=1.0),
    "cc": lambda: CenteredClipping(tau=0.5, L=2),
}


@pytest.mark.parametrize("name", sorted(RULES))
def test_restored_mid_run_gives_bit_identical_next_outputs(name: str) -> None:
    original = RULES[name]()
    _run(original, range(4))
    resumed = RULES[name]()
    resumed.load_state_dict(original.state_dict())
    for a, b in zip(_run(resumed, range(4, 8)), _run(original, range(4, 8)), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", sorted(RULES))
def test_state_is_a_copy_and_its_header_is_json(name: str) -> None:
    rule = RULES[name]()
    _run(rule, range(2))
    state = rule.state_dict()
    before = {k: v.clone() for k, v in state.items() if isinstance(v, torch.Tensor)}
    _run(rule, range(2, 3))
    assert all(torch.equal(state[k], v) for k, v in before.items())
    header = {k: v for k, v in state.items() if not isinstance(v, torch.Tensor)}
    assert json.loads(json.dumps(header)) == header


@pytest.mark.parametrize("name", sorted(RULES))
def test_fresh_state_round_trips(name: str) -> None:
    rule = RULES[name]()
    rule.load_state_dict(RULES[name]().state_dict())
    fresh = RULES[name]()
    for a, b in zip(_run(rule, range(2)), _run(fresh, range(2)), strict=True):
        assert torch.equal(a, b)


def test_foolsgold_keeps_rescaled_histories() -> None:
    fg = FoolsGold()
    big = torch.tensor([[3e38, 0.0], [0.0, 3e38]])
    fg(big)
    fg(big)  # the sums overflow float32: stored as mantissa and power of two
    resumed = FoolsGold()
    resumed.load_state_dict(fg.state_dict())
    assert torch.equal(resumed.history(0), fg.history(0))
    assert torch.equal(resumed(big), fg(big))


def _fg_state() -> dict:
    fg = FoolsGold()
    _run(fg, range(2))
    return fg.state_dict()


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda s: {**s, "kind": "CenteredClipping"}, "kind"),
        (lambda s: {**s, "version": 2}, "version"),
        (lambda s: {k: v for k, v in s.items() if k != "exponent"}, "missing keys"),
        (lambda s: {**s, "config": {"f": 0, "kappa": 2.0}}, "another configuration"),
        (lambda s: {**s, "client_ids": s["client_ids"][:-1]}, "shape"),
        (lambda s: {**s, "client_ids": [s["client_ids"][0]] * len(s["client_ids"])}, "distinct ints"),
        (lambda s: {**s, "client_ids": [str(c) for c in s["client_ids"]]}, "distinct ints"),
        (lambda s: {**s, "history": s["history"].tolist()}, "torch.Tensor"),
        (lambda s: {**s, "history": s["history"][:, :, None]}, "2 dimension"),
        (lambda s: {**s, "history": s["history"].to(torch.int64)}, "floating-point"),
        (lambda s: {**s, "history": s["history"] * float("nan")}, "NaN"),
        (lambda s: {**s, "exponent": s["exponent"].float()}, "int64"),
        (lambda s: {**s, "exponent": None}, "both be tensors"),
        (lambda s: {**s, "history": None, "exponent": None}, "both be tensors"),
    ],
)
def test_foolsgold_corrupted_state_raises(change, match: str) -> None:
    target = FoolsGold()
    _run(target, range(1))
    before = target.state_dict()
    with pytest.raises(StateError, match=match):
        target.load_state_dict(change(_fg_state()))
    after = target.state_dict()
    assert after["client_ids"] == before["client_ids"] and torch.equal(after["history"], before["history"])


def test_centered_clipping_corrupted_state_raises() -> None:
    cc = CenteredClipping(tau=0.5, L=2)
    _run(cc, range(1))
    state = cc.state_dict()
    target = CenteredClipping(tau=0.5, L=2)
    bad = [
        ({**state, "reference": state["reference"][None]}, "1 dimension"),
        ({**state, "reference": torch.full((D,), float("inf"))}, "NaN or Inf"),
        ({**state, "reference": [0.0] * D}, "torch.Tensor"),
        ({**state, "kind": "FoolsGold"}, "kind"),
    ]
    for candidate, match in bad:
        with pytest.raises(StateError, match=match):
            target.load_state_dict(candidate)
    assert target.reference is None
    with pytest.raises(StateError, match="tau"):
        CenteredClipping(tau=1.0, L=2).load_state_dict(state)
    with pytest.raises(StateError, match="missing keys"):
        FoolsGold().load_state_dict({**state, "kind": "FoolsGold"})


def _stateless(name: str):
    """FreqFed and DeepSight keep nothing across rounds (their randomness comes from the round's generator)."""
    if name == "freqfed":
        return FreqFed(f=1)
    return DeepSight(f=1, model=TinyNet(D), input_shape=(1,), samples=64)


@pytest.mark.parametrize("name", ["freqfed", "deepsight"])
def test_stateless_rules_add_nothing_to_a_pipeline_checkpoint(name: str) -> None:
    rule = _stateless(name)
    assert not hasattr(rule, "state_dict")
    pipe = Pipeline(rule=rule, seed=3)
    state = pipe.state_dict()
    assert "rule" not in state
    gen = torch.Generator().manual_seed(5)
    updates = [torch.randn(5, D, generator=gen) for _ in range(3)]
    x = torch.zeros(D)
    ids = (0, 1, 2, 3, 4)
    first = pipe(updates[0], torch.ones(5), Round(0, ids, x))
    resumed = Pipeline(rule=_stateless(name), seed=3)
    resumed.load_state_dict(pipe.state_dict())
    for r in (1, 2):  # a pipeline restored after round 0 continues bit for bit
        a = pipe(updates[r], torch.ones(5), Round(r, ids, first.params))
        b = resumed(updates[r], torch.ones(5), Round(r, ids, first.params))
        assert torch.equal(a.params, b.params) and torch.equal(a.result.kept, b.result.kept)
