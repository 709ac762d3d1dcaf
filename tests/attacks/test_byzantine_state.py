"""A stateful attack's state travels with the pipeline's checkpoint (Mimic's target and direction)."""

from __future__ import annotations

import io

import pytest
import torch

from attacks.byzantine import ByzantineTransform
from attacks.mimic import Mimic
from attacks.model_poisoning import SignFlip
from attacks.threat import ThreatModel
from fl_core.pipeline import Pipeline, Round
from fl_core.state import StateError


def _pipeline() -> Pipeline:
    threat = ThreatModel(malicious=frozenset({0, 1}))
    return Pipeline(attack=ByzantineTransform(attack=Mimic(warmup=2, seed=3), threat=threat))


def _round(p: Pipeline, r: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(r)
    updates = torch.randn(6, 4, generator=g)
    return p(updates, torch.ones(6), Round(r, tuple(range(6)), torch.zeros(4))).params


def test_resumed_pipeline_mimics_the_same_client_as_the_original():
    original = _pipeline()
    for r in range(2):
        _round(original, r)
    buf = io.BytesIO()
    torch.save(original.state_dict(), buf)  # the convention for states holding tensors
    buf.seek(0)
    state = torch.load(buf)
    assert "attack" in state
    resumed, fresh = _pipeline(), _pipeline()
    resumed.load_state_dict(state)
    for r in range(2, 4):
        assert torch.equal(_round(original, r), _round(resumed, r))
    # without the state the attack starts its warm-up again: round 2 differs from the original's
    assert not torch.equal(_round(fresh, 2), _round(_pipeline_after(2), 2))


def _pipeline_after(rounds: int) -> Pipeline:
    p = _pipeline()
    for r in range(rounds):
        _round(p, r)
    return p


def test_a_stateless_attack_saves_nothing_and_refuses_a_state():
    t = ByzantineTransform(attack=SignFlip(), threat=ThreatModel(malicious=frozenset({0})))
    assert "attack" not in Pipeline(attack=t).state_dict()
    with pytest.raises(StateError, match="SignFlip has no state"):
        t.load_state_dict({"target": 1})
