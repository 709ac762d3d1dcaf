"""Explicit state of the privacy ledgers, adaptive clipping and the DP wrappers (issue 14)."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from defenses.dp.clipping import AdaptiveClip
from defenses.dp.distributed import DistributedDiscreteGaussian
from defenses.dp.dp_fedavg import CentralDPFedAvg, LocalGaussianDP
from defenses.dp.events import GaussianEvent, PureDPEvent, RenyiEvent
from defenses.dp.ledger import PerClientLedger, PrivacyLedger
from fl_core.aggregation import RoundContext
from fl_core.errors import FlsecError
from fl_core.pipeline import Round, RoundOutput
from fl_core.state import StateError


def _gaussian_ledger(accountant: str = "rdp") -> PrivacyLedger:
    led = PrivacyLedger(delta=1e-5, accountant=accountant)
    for z in (1.0, 1.0, 1.3):
        led.record(GaussianEvent(noise_multiplier=z, sample_rate=0.1, steps=10))
    led.record(PureDPEvent(epsilon=0.1))
    led.note("restart test", dropouts=True)
    return led


def _renyi_ledger() -> PrivacyLedger:
    led = PrivacyLedger(delta=1e-5)
    led.record(GaussianEvent(noise_multiplier=2.0, sample_rate=0.5, gaussian_exact=False, mechanism="ddg"))
    led.record(RenyiEvent(orders=(2, 3, 4), rdp=(0.1, 0.15, 0.2), sample_rate=0.5, mechanism="skellam"))
    return led


LEDGERS = {
    "rdp": lambda: _gaussian_ledger("rdp"),
    "prv": lambda: _gaussian_ledger("prv"),
    "renyi": _renyi_ledger,
}
NEXT_EVENT = {
    "rdp": GaussianEvent(noise_multiplier=1.1, sample_rate=0.1),
    "prv": GaussianEvent(noise_multiplier=1.1, sample_rate=0.1),
    "renyi": RenyiEvent(orders=(2, 3, 4), rdp=(0.1, 0.15, 0.2), mechanism="skellam"),
}


def _fresh_like(led: PrivacyLedger) -> PrivacyLedger:
    return PrivacyLedger(delta=led.delta, accountant=led.accountant_name)


@pytest.mark.parametrize("through_json", [False, True])
@pytest.mark.parametrize("name", sorted(LEDGERS))
def test_restored_ledger_same_epsilon_and_same_next_round(name: str, through_json: bool) -> None:
    original = LEDGERS[name]()
    state = original.state_dict()
    if through_json:
        state = json.loads(json.dumps(state, allow_nan=False))
    restored = _fresh_like(original)
    restored.load_state_dict(state)
    assert restored.epsilon() == original.epsilon()
    assert restored.round_metrics() == original.round_metrics()
    assert restored.notes == original.notes and restored.events == original.events
    original.record(NEXT_EVENT[name])
    restored.record(NEXT_EVENT[name])
    assert restored.epsilon() == original.epsilon()
    assert restored.state_dict() == original.state_dict()


def test_ledger_state_is_plain_json() -> None:
    state = _renyi_ledger().state_dict()
    assert json.loads(json.dumps(state, allow_nan=False)) == json.loads(json.dumps(state))
    assert {"kind", "version", "config"} <= set(state)


def test_empty_ledger_round_trips() -> None:
    restored = PrivacyLedger(delta=1e-5)
    restored.load_state_dict(PrivacyLedger(delta=1e-5).state_dict())
    assert restored.epsilon() == 0.0 and restored.events == []


def _corrupt(state: dict, path: tuple, value: object) -> dict:
    bad = copy.deepcopy(state)
    target = bad
    for key in path[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return bad


@pytest.mark.parametrize(
    ("path", "value", "match"),
    [
        (("kind",), "PerClientLedger", "kind"),
        (("version",), 99, "version"),
        (("notes",), KeyError, "missing keys"),
        (("extra",), 1, "unexpected keys"),
        (("config", "delta"), 1e-6, "another configuration"),
        (("config", "accountant"), "prv", "another configuration"),
        (("events", 0, "noise_multiplier"), -1.0, "invalid event"),
        (("events", 0, "noise_multiplier"), "1.0", "wrong type"),
        (("events", 0, "steps"), True, "wrong type"),
        (("events", 0, "type"), "laplace?", "not a saved privacy event"),
        (("events", 0, "surprise"), 1, "exactly the fields"),
        (("accountant_state", "history", 0, 0), 9.0, "does not match its events"),
        (("pure_epsilon",), 0.0, "does not match its events"),
        (("pure_epsilon",), "0.1", "finite number"),
        (("notes",), "text", "list of str"),
        (("conservative_dropouts",), 1, "bool"),
        (("events",), {}, "must be a list"),
    ],
)
def test_corrupted_ledger_state_raises(path: tuple, value: object, match: str) -> None:
    original = _gaussian_ledger()
    bad = _corrupt(original.state_dict(), path, value)
    target = _fresh_like(original)
    before = target.state_dict()
    with pytest.raises(StateError, match=match):
        target.load_state_dict(bad)
    assert target.state_dict() == before  # nothing half-loaded


def test_corrupted_renyi_curve_and_notes_raise() -> None:
    state = _renyi_ledger().state_dict()
    with pytest.raises(StateError, match="renyi_curve"):
        PrivacyLedger(delta=1e-5).load_state_dict(_corrupt(state, ("renyi_curve", 0, 1), 0.0))
    with pytest.raises(StateError, match="notes lack"):
        PrivacyLedger(delta=1e-5).load_state_dict(_corrupt(state, ("notes",), []))


def test_state_error_is_a_value_error() -> None:
    assert issubclass(StateError, FlsecError) and issubclass(StateError, ValueError)
    with pytest.raises(StateError, match="must be a dict"):
        PrivacyLedger(delta=1e-5).load_state_dict([1, 2])  # type: ignore[arg-type]


def test_per_client_ledger_round_trip_through_json() -> None:
    led = PerClientLedger(delta=1e-5)
    for cid in (3, 7, 3):
        led.record(cid, GaussianEvent(noise_multiplier=2.0))
    restored = PerClientLedger(delta=1e-5)
    restored.load_state_dict(json.loads(json.dumps(led.state_dict())))
    assert restored.round_metrics() == led.round_metrics()
    assert sorted(restored.ledgers) == [3, 7]
    led.record(7, GaussianEvent(noise_multiplier=2.0))
    restored.record(7, GaussianEvent(noise_multiplier=2.0))
    assert restored.epsilon(7) == led.epsilon(7)


def test_per_client_ledger_corrupted() -> None:
    led = PerClientLedger(delta=1e-5)
    led.record(3, GaussianEvent(noise_multiplier=2.0))
    state = led.state_dict()
    with pytest.raises(StateError, match="repeated"):
        PerClientLedger(delta=1e-5).load_state_dict({**state, "ledgers": state["ledgers"] * 2})
    with pytest.raises(StateError, match="pairs"):
        PerClientLedger(delta=1e-5).load_state_dict({**state, "ledgers": [[3]]})
    with pytest.raises(StateError, match="another configuration"):
        PerClientLedger(delta=1e-3).load_state_dict(state)
    with pytest.raises(StateError, match="kind"):
        PrivacyLedger(delta=1e-5).load_state_dict(state)


def _clip() -> AdaptiveClip:
    return AdaptiveClip(initial_clip_norm=1.0, target_quantile=0.5, learning_rate=0.3, count_noise_std=0.5,
                        expected_clients=6)


def _ctx(round_idx: int) -> RoundContext:
    gen = torch.Generator().manual_seed(100 + round_idx)
    return RoundContext(round_idx, tuple(range(6)), torch.ones(6), torch.zeros(4), gen)


def _cohort(round_idx: int) -> torch.Tensor:
    return torch.randn(6, 4, generator=torch.Generator().manual_seed(round_idx)) * (1 + round_idx)


@pytest.mark.parametrize("through_json", [False, True])
def test_adaptive_clip_restored_mid_run_is_bit_identical(through_json: bool) -> None:
    original = _clip()
    for r in range(3):
        original(_cohort(r), _ctx(r))
    state = original.state_dict()
    if through_json:
        state = json.loads(json.dumps(state, allow_nan=False))
    resumed = _clip()
    resumed.load_state_dict(state)
    assert resumed.rounds == 3
    for r in range(3, 6):
        out_r, out_o = resumed.apply(_cohort(r), _ctx(r)), original.apply(_cohort(r), _ctx(r))
        assert torch.equal(out_r.value, out_o.value)
        assert out_r.bound == out_o.bound and out_r.metrics == out_o.metrics
        assert resumed.clip_norm == original.clip_norm


def test_adaptive_clip_fresh_state_round_trips() -> None:
    resumed = _clip()
    resumed.load_state_dict(json.loads(json.dumps(_clip().state_dict(), allow_nan=False)))
    assert resumed.rounds == 0 and resumed.clip_norm == 1.0


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("clip_norm", 0.0, "> 0"),
        ("clip_norm", float("nan"), "finite"),
        ("clip_norm", "1.0", "finite"),
        ("rounds", -1, "int >= 0"),
        ("rounds", 2.0, "int >= 0"),
        ("last_unclipped_fraction", None, "unexpected"),
        ("kind", "L2Clip", "kind"),
        ("version", "1", "version"),
    ],
)
def test_adaptive_clip_corrupted_state(key: str, value: object, match: str) -> None:
    original = _clip()
    original(_cohort(0), _ctx(0))
    target = _clip()
    with pytest.raises(StateError, match=match):
        target.load_state_dict({**original.state_dict(), key: value})
    assert target.clip_norm == 1.0 and target.rounds == 0


def test_adaptive_clip_other_configuration() -> None:
    other = AdaptiveClip(initial_clip_norm=1.0, target_quantile=0.9, learning_rate=0.3, count_noise_std=0.5,
                         expected_clients=6)
    with pytest.raises(StateError, match=r"target_quantile=0\.5"):
        other.load_state_dict(_clip().state_dict())


def test_central_dp_fedavg_delegates_to_ledger_and_adaptive_clip() -> None:
    def build() -> CentralDPFedAvg:
        clip = AdaptiveClip(initial_clip_norm=1.0, count_noise_std=5.0, expected_clients=6)
        return CentralDPFedAvg(clip=clip, noise_multiplier=1.0, expected_clients=6, sample_rate=0.1, delta=1e-5)

    def step(dp: CentralDPFedAvg, r: int) -> RoundOutput:
        cohort = _cohort(r)
        info = Round(index=r, client_ids=tuple(range(cohort.shape[0])), global_params=torch.zeros(cohort.shape[1]))
        return dp.pipeline(seed=3)(cohort, torch.ones(cohort.shape[0]), info)

    original = build()
    for r in range(3):
        step(original, r)
    resumed = build()
    resumed.load_state_dict(json.loads(json.dumps(original.state_dict(), allow_nan=False)))
    assert resumed.ledger.epsilon() == original.ledger.epsilon()
    assert resumed.noise.ledger is resumed.ledger
    for r in range(3, 5):
        out_o, out_r = step(original, r), step(resumed, r)
        assert torch.equal(out_o.params, out_r.params) and out_o.metrics == out_r.metrics
    assert resumed.noise.round_metrics() == original.noise.round_metrics()

    bad = original.state_dict()
    bad["clip"]["clip_norm"] = -1.0
    before = resumed.state_dict()
    with pytest.raises(StateError, match="clip_norm"):
        resumed.load_state_dict(bad)
    assert resumed.state_dict() == before
    flat = CentralDPFedAvg(clip_norm=1.0, noise_multiplier=1.0, expected_clients=6, sample_rate=0.1, delta=1e-5)
    with pytest.raises(StateError, match="another configuration"):
        flat.load_state_dict(original.state_dict())


def test_local_dp_and_ddg_delegate_to_their_ledgers() -> None:
    ldp = LocalGaussianDP(clip_norm=1.0, noise_multiplier=1.0, delta=1e-5)
    ldp(torch.zeros(6, 4), _ctx(0))
    resumed = LocalGaussianDP(clip_norm=1.0, noise_multiplier=1.0, delta=1e-5)
    resumed.load_state_dict(json.loads(json.dumps(ldp.state_dict())))
    assert resumed.round_metrics() == ldp.round_metrics()
    with pytest.raises(StateError, match="noise_multiplier"):
        LocalGaussianDP(clip_norm=1.0, noise_multiplier=2.0, delta=1e-5).load_state_dict(ldp.state_dict())

    def ddg(min_survivors: int = 3) -> DistributedDiscreteGaussian:
        return DistributedDiscreteGaussian(clip_norm=1.0, noise_multiplier=1.0, expected_clients=4,
                                           min_survivors=min_survivors, sample_rate=0.5, delta=1e-5)

    original = ddg()
    original.ledger.record(original.event(8))
    restored = ddg()
    restored.load_state_dict(json.loads(json.dumps(original.state_dict())))
    assert restored.ledger.round_metrics() == original.ledger.round_metrics()
    with pytest.raises(StateError, match="min_survivors"):
        ddg(min_survivors=4).load_state_dict(original.state_dict())
