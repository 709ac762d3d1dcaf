"""Explicit state of the privacy ledgers, adaptive clipping and the DP wrappers (issue 14)."""

from __future__ import annotations

import copy
import json

import pytest

from defenses.dp.events import GaussianEvent, PureDPEvent, RenyiEvent
from defenses.dp.ledger import PerClientLedger, PrivacyLedger
from fl_core.errors import FlsecError
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
