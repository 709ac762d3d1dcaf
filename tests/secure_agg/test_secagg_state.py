"""Explicit state of the secure-aggregation aggregators: their round counters (issue 14)."""

from __future__ import annotations

import json

import pytest
import torch

from fl_core.state import StateError
from secure_agg.aggregator import SecAggAggregator, SecAggPlusAggregator
from secure_agg.he.aggregator import BFVAggregator, CKKSAggregator

BUILD = {
    "secagg+": lambda: SecAggPlusAggregator(clip=1.0, gamma=0.0, delta=0.2, dropout_rate=0.2, seed=7),
    "secagg": lambda: SecAggAggregator(clip=1.0, gamma=0.0, delta=0.2, dropout_rate=0.2, seed=7),
    "bfv": lambda: BFVAggregator(clip=1.0, precision_bits=12, dropout_rate=0.2, seed=7),
}


def _cohort(r: int) -> torch.Tensor:
    return torch.rand(6, 3, generator=torch.Generator().manual_seed(r)) * 2 - 1


def _round(agg, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    res = agg.aggregate(_cohort(r), torch.tensor([1.0, 2.0, 1.0, 3.0, 1.0, 1.0]))
    return res.aggregate, res.kept


@pytest.mark.parametrize("name", sorted(BUILD))
def test_restored_counter_gives_bit_identical_next_rounds(name: str) -> None:
    original = BUILD[name]()
    for r in range(2):
        _round(original, r)
    state = json.loads(json.dumps(original.state_dict(), allow_nan=False))
    assert state["calls"] == 2
    resumed = BUILD[name]()
    resumed.load_state_dict(state)
    fresh = BUILD[name]()  # without the counter, rounds 2 and 3 would reuse rounds 0 and 1's randomness
    differs = False
    for r in range(2, 4):
        (a, kept_a), (b, kept_b) = _round(original, r), _round(resumed, r)
        assert torch.equal(a, b) and torch.equal(kept_a, kept_b)
        assert not bool(kept_a.all())  # a simulated dropout happened
        c, kept_c = _round(fresh, r)
        differs |= not (torch.equal(a, c) and torch.equal(kept_a, kept_c))
    assert differs


def test_he_state_excludes_the_key_holder() -> None:
    agg = BUILD["bfv"]()
    _round(agg, 0)
    assert agg._key_holder is not None
    state = agg.state_dict()
    assert set(state) == {"kind", "version", "config", "calls"}
    resumed = BUILD["bfv"]()
    resumed.load_state_dict(state)
    assert resumed._key_holder is None


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"kind": "SecAggAggregator"}, "kind"),
        ({"version": 2}, "version"),
        ({"calls": -1}, "int >= 0"),
        ({"calls": 1.0}, "int >= 0"),
        ({"calls": True}, "int >= 0"),
        ({"extra": 0}, "unexpected keys"),
    ],
)
def test_corrupted_counter_state_raises(change: dict, match: str) -> None:
    state = BUILD["secagg+"]().state_dict()
    target = BUILD["secagg+"]()
    with pytest.raises(StateError, match=match):
        target.load_state_dict({**state, **change})
    assert target.state_dict()["calls"] == 0


def test_other_configuration_or_scheme_refused() -> None:
    state = BUILD["secagg+"]().state_dict()
    with pytest.raises(StateError, match="seed=7"):
        SecAggPlusAggregator(clip=1.0, gamma=0.0, delta=0.2, dropout_rate=0.2, seed=8).load_state_dict(state)
    with pytest.raises(StateError, match="dropout_stage"):
        SecAggPlusAggregator(clip=1.0, gamma=0.0, delta=0.2, dropout_rate=0.2, seed=7,
                             dropout_stage="share_keys").load_state_dict(state)
    bfv = BUILD["bfv"]().state_dict()
    with pytest.raises(StateError, match="kind"):
        CKKSAggregator(clip=1.0, precision_bits=12, dropout_rate=0.2, seed=7).load_state_dict(bfv)
    with pytest.raises(StateError, match="precision_bits"):
        BFVAggregator(clip=1.0, precision_bits=16, dropout_rate=0.2, seed=7).load_state_dict(bfv)


def test_a_damaged_client_snapshot_is_refused_by_name():
    import numpy as np

    from secure_agg.client import SecAggClient
    from secure_agg.client_state import restore, snapshot
    from secure_agg.errors import SecAggConfigError
    from secure_agg.params import SecAggParams

    c = SecAggClient(2, np.arange(4, dtype=np.uint32), params=SecAggParams(round_id=1, t=2, d=4),
                     channel_key=bytes(32))
    c.advertise_keys()
    blob = snapshot(c)
    for bad, match in [(b"XXXX" + blob[4:], "not a version-2 client snapshot"), (blob[:-1], "input bytes"),
                       (blob[:9] + b"[" + blob[10:], "corrupt client snapshot header"), (blob[:5], "at least 9")]:
        with pytest.raises(SecAggConfigError, match=match):
            restore(bad)
