"""The privacy ledger: (epsilon, delta) of a whole run from Opacus' accountants.

A :class:`PrivacyLedger` records the privacy events the DP plug-ins emit each
round and turns them into ``(epsilon, delta)`` with Opacus' accountants
(``opacus.accountants.RDPAccountant``: Mironov, Talwar, Zhang 2019, "Renyi DP of
the Sampled Gaussian Mechanism"; ``PRVAccountant``: Gopi, Lee, Wutschitz,
NeurIPS 2021). No accountant math is written here: the ledger only decides
which events an accountant may compose, and how.

* Continuous Gaussian events (``gaussian_exact=True``) go to the chosen accountant
  with their sampling rate ``q``.
* Integer-noise events (discrete Gaussian, distributed discrete Gaussian, Skellam)
  carry a Gaussian-equivalent noise multiplier whose RDP curve bounds theirs. Only
  the RDP accountant may compose them (PRV needs the exact privacy-loss
  distribution), at integer orders, and by default *without* amplification by
  sampling (``q`` taken as 1), which is conservative; ``amplify_integer_noise=True``
  applies the sampled-Gaussian amplification to them as an approximation, and the
  ledger says so in :attr:`notes` and in ``round_metrics()``.
* Renyi events (Skellam) carry their exact RDP curve at integer orders: the ledger
  adds it to the RDP accountant's curve at the same orders (Opacus' ``compute_rdp``
  over the accountant's history) and converts once with Opacus'
  ``get_privacy_spent``. Only the ``"rdp"`` accountant takes them, without
  amplification by sampling.
* Pure-DP (Laplace) events add their epsilon by basic composition.
* Dropouts: the DP plug-ins size noise for the fewest survivors they tolerate
  and record the event for that many; they call :meth:`note` so that the ledger
  reports ``dp_conservative_dropouts = 1``.

A privacy budget survives a restart: :meth:`PrivacyLedger.state_dict` is a
JSON-serialisable dict (events, notes, flags, the Opacus accountant's own
``state_dict`` and the Renyi curve), and :meth:`PrivacyLedger.load_state_dict`
validates it (:class:`fl_core.state.StateError`) and replays its events, so the
restored ledger reports the same epsilon and composes the next event the same way.

Examples
--------
>>> from defenses.dp.events import GaussianEvent
>>> ledger = PrivacyLedger(delta=1e-5)
>>> for _ in range(100):
...     ledger.record(GaussianEvent(noise_multiplier=1.0, sample_rate=0.1))
>>> round(ledger.epsilon(), 2)
7.9
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.analysis import rdp as opacus_rdp

from defenses.dp.errors import PrivacyBudgetError, PrivacyConfigError, check_delta, check_epsilon, check_positive
from defenses.dp.events import GaussianEvent, PrivacyEvent, PureDPEvent, RenyiEvent
from defenses.dp.mechanisms import INTEGER_ORDERS, _calibrate_rdp
from fl_core.state import StateError, check_state, json_equal, state_bool, state_float

__all__ = ["ACCOUNTANTS", "PerClientLedger", "PrivacyLedger", "calibrate_noise_multiplier", "planned_epsilon"]

log = logging.getLogger(__name__)

#: Accountant names the ledger accepts.
ACCOUNTANTS = ("rdp", "prv")


def _new_accountant(name: str) -> RDPAccountant | PRVAccountant:
    if name == "rdp":
        return RDPAccountant()
    if name == "prv":
        return PRVAccountant()
    from fl_core.errors import UnknownNameError

    raise UnknownNameError("accountant", name, ACCOUNTANTS)


def _accountant_epsilon(acc: RDPAccountant | PRVAccountant, delta: float, *, integer_orders: bool) -> float:
    if not acc.history:
        return 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # opacus' "optimal order is the largest alpha" hint
        if isinstance(acc, RDPAccountant):
            alphas = list(INTEGER_ORDERS) if integer_orders else None
            return float(acc.get_epsilon(delta=delta, alphas=alphas))
        return float(acc.get_epsilon(delta=delta, eps_error=0.01))


def _curve_epsilon(acc: RDPAccountant, curve: dict[int, float], delta: float) -> float:
    """Epsilon of the accountant's Gaussian history plus a Renyi ``curve`` (order -> rdp), at the curve's orders."""
    orders = sorted(curve)
    total = np.array([curve[a] for a in orders], dtype=float)
    for z, q, steps in acc.history:
        total += opacus_rdp.compute_rdp(q=q, noise_multiplier=z, steps=steps, orders=orders)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        eps, _ = opacus_rdp.get_privacy_spent(orders=orders, rdp=total, delta=delta)
    return float(eps)


#: ``type`` tag of each event class in a ledger's state.
_EVENT_TAGS: dict[type, str] = {GaussianEvent: "gaussian", PureDPEvent: "pure_dp", RenyiEvent: "renyi"}
_EVENT_CLASSES = {tag: cls for cls, tag in _EVENT_TAGS.items()}
_NUMBER_FIELDS = ("noise_multiplier", "sample_rate", "epsilon")


def _event_state(event: PrivacyEvent) -> dict[str, Any]:
    """One event as a JSON-able dict (``type`` tag plus its fields; tuples as lists)."""
    fields = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(event).items()}
    return {"type": _EVENT_TAGS[type(event)], **fields}


def _check_event_field(name: str, value: object) -> object:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    ok = {
        "steps": type(value) is int,
        "gaussian_exact": isinstance(value, bool),
        "mechanism": isinstance(value, str),
        "orders": isinstance(value, list | tuple) and all(type(a) is int for a in value),
        "rdp": isinstance(value, list | tuple)
        and all(isinstance(r, int | float) and not isinstance(r, bool) for r in value),
    }.get(name, number if name in _NUMBER_FIELDS else False)
    if not ok:
        raise StateError(f"PrivacyLedger state: event field {name}={value!r} has the wrong type")
    return tuple(value) if isinstance(value, list | tuple) else value


def _event_from_state(obj: object) -> PrivacyEvent:
    """Rebuild an event saved by :func:`_event_state`; :class:`StateError` if it is not one."""
    if not isinstance(obj, Mapping) or obj.get("type") not in _EVENT_CLASSES:
        raise StateError(f"PrivacyLedger state: not a saved privacy event: {obj!r}")
    cls = _EVENT_CLASSES[obj["type"]]
    names = {f.name for f in dataclasses.fields(cls)}
    if set(obj) - {"type"} != names:
        raise StateError(f"PrivacyLedger state: a {obj['type']} event needs exactly the fields {sorted(names)}")
    args = {name: _check_event_field(name, obj[name]) for name in names}
    try:
        return cls(**args)  # type: ignore[arg-type]
    except PrivacyConfigError as exc:
        raise StateError(f"PrivacyLedger state: invalid event {obj!r}: {exc}") from exc


def _str_list(state: Mapping[str, Any], key: str) -> list[str]:
    value = state[key]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise StateError(f"PrivacyLedger state: {key} must be a list of str, got {value!r}")
    return list(value)


def planned_epsilon(
    *, noise_multiplier: float, sample_rate: float, rounds: int, delta: float, accountant: str = "rdp"
) -> float:
    """Epsilon after ``rounds`` Gaussian releases with noise multiplier ``z`` and sampling rate ``q``.

    Examples
    --------
    >>> round(planned_epsilon(noise_multiplier=1.0, sample_rate=0.1, rounds=100, delta=1e-5), 2)
    7.9
    """
    led = PrivacyLedger(delta=delta, accountant=accountant)
    led.record(GaussianEvent(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=_check_rounds(rounds)))
    return led.epsilon()


def calibrate_noise_multiplier(
    *, target_epsilon: float, delta: float, sample_rate: float, rounds: int, accountant: str = "rdp"
) -> float:
    """Smallest noise multiplier (within 0.5 % of epsilon) reaching ``target_epsilon`` after ``rounds`` (Opacus).

    Raises
    ------
    PrivacyBudgetError
        If no multiplier up to Opacus' limit reaches the target.

    Examples
    --------
    >>> z = calibrate_noise_multiplier(target_epsilon=4.0, delta=1e-5, sample_rate=0.1, rounds=100)
    >>> planned_epsilon(noise_multiplier=z, sample_rate=0.1, rounds=100, delta=1e-5) <= 4.0
    True
    """
    _new_accountant(accountant)
    q = _check_rate(sample_rate)
    return _calibrate_rdp(target_epsilon, delta, sample_rate=q, steps=_check_rounds(rounds), accountant=accountant)


def _check_rounds(rounds: int) -> int:
    if not isinstance(rounds, int) or rounds < 1:
        raise PrivacyConfigError(f"rounds must be an int >= 1, got {rounds!r}")
    return rounds


def _check_rate(q: float) -> float:
    if not isinstance(q, int | float) or not 0.0 < q <= 1.0:
        raise PrivacyConfigError(f"sample_rate must lie in (0, 1], got {q!r}")
    return float(q)


class PrivacyLedger:
    """Records privacy events and reports ``(epsilon, delta)`` after every round.

    Parameters
    ----------
    delta : float
        The ``delta`` at which epsilon is reported, in (0, 1).
    accountant : str
        ``"rdp"`` or ``"prv"`` (Opacus' accountants).
    amplify_integer_noise : bool
        Apply amplification by sampling to integer-noise events (approximation; see the module docstring).
    target_epsilon : float, optional
        Budget; :meth:`check_plan` and :meth:`record` refuse to exceed it.
    """

    def __init__(
        self,
        *,
        delta: float,
        accountant: str = "rdp",
        amplify_integer_noise: bool = False,
        target_epsilon: float | None = None,
    ) -> None:
        self.delta = check_delta(delta)
        self.accountant_name = accountant
        self._acc = _new_accountant(accountant)
        self.amplify_integer_noise = bool(amplify_integer_noise)
        self.target_epsilon = None if target_epsilon is None else check_epsilon(target_epsilon, name="target_epsilon")
        self._pure_epsilon = 0.0
        self._integer = False
        self._curve: dict[int, float] = {}
        self.events: list[PrivacyEvent] = []
        self.notes: list[str] = []
        self.conservative_dropouts = False
        if self.amplify_integer_noise:
            self.note("integer-noise events are amplified by sampling as if Gaussian (approximation)")

    def note(self, text: str, *, dropouts: bool = False) -> None:
        """Attach a statement to the ledger (logged once); ``dropouts=True`` flags conservative dropout accounting."""
        if text not in self.notes:
            self.notes.append(text)
            log.info("privacy ledger: %s", text)
        self.conservative_dropouts |= dropouts

    def check_plan(self, *, noise_multiplier: float, sample_rate: float, rounds: int) -> float:
        """Epsilon the ledger will reach after ``rounds`` more such rounds; raise if it exceeds the target.

        Raises
        ------
        PrivacyBudgetError
            When ``target_epsilon`` is set and the plan overshoots it.
        """
        trial = PrivacyLedger(
            delta=self.delta, accountant=self.accountant_name, amplify_integer_noise=self.amplify_integer_noise
        )
        for ev in self.events:
            trial.record(ev)
        trial.record(
            GaussianEvent(
                noise_multiplier=check_positive(noise_multiplier, name="noise_multiplier"),
                sample_rate=_check_rate(sample_rate),
                steps=_check_rounds(rounds),
            )
        )
        eps = trial.epsilon()
        if self.target_epsilon is not None and eps > self.target_epsilon:
            raise PrivacyBudgetError(
                f"noise multiplier {noise_multiplier} with q={sample_rate} over {rounds} rounds reaches "
                f"epsilon={eps:.4g} > target {self.target_epsilon} at delta={self.delta}"
            )
        return eps

    def record(self, event: PrivacyEvent) -> None:
        """Compose one event into the ledger."""
        if isinstance(event, PureDPEvent):
            self._pure_epsilon += event.epsilon * event.steps
        elif isinstance(event, RenyiEvent):
            self._record_curve(event)
        elif isinstance(event, GaussianEvent):
            q = event.sample_rate
            if not event.gaussian_exact:
                if self.accountant_name != "rdp":
                    raise PrivacyConfigError(
                        f"{event.mechanism} noise can only be accounted with the 'rdp' accountant "
                        f"(its Renyi curve is bounded by a Gaussian's, its privacy-loss distribution is not); "
                        f"got accountant={self.accountant_name!r}"
                    )
                self._integer = True
                if q < 1.0 and not self.amplify_integer_noise:
                    self.note(
                        f"{event.mechanism} events accounted without amplification by sampling "
                        f"(q={q} taken as 1): conservative"
                    )
                    q = 1.0
            for _ in range(event.steps):
                self._acc.step(noise_multiplier=float(event.noise_multiplier), sample_rate=float(q))
        else:
            raise PrivacyConfigError(f"not a privacy event: {event!r}")
        self.events.append(event)

    def _record_curve(self, event: RenyiEvent) -> None:
        if self.accountant_name != "rdp":
            raise PrivacyConfigError(
                f"{event.mechanism} events carry a Renyi curve: only the 'rdp' accountant composes them, "
                f"got accountant={self.accountant_name!r}"
            )
        if self._curve and set(event.orders) != set(self._curve):
            raise PrivacyConfigError(
                f"{event.mechanism} event's Renyi orders differ from those already recorded: "
                f"{event.orders!r} vs {tuple(sorted(self._curve))!r}"
            )
        if event.sample_rate < 1.0:
            self.note(
                f"{event.mechanism} events accounted without amplification by sampling "
                f"(q={event.sample_rate} taken as 1): conservative"
            )
        for a, r in zip(event.orders, event.rdp, strict=True):
            self._curve[a] = self._curve.get(a, 0.0) + event.steps * r

    def epsilon(self, delta: float | None = None) -> float:
        """Epsilon spent so far at ``delta`` (default: the ledger's)."""
        d = self.delta if delta is None else check_delta(delta)
        if self._curve:
            return _curve_epsilon(self._acc, self._curve, d) + self._pure_epsilon  # type: ignore[arg-type]
        return _accountant_epsilon(self._acc, d, integer_orders=self._integer) + self._pure_epsilon

    #: Layout version of :meth:`state_dict`.
    STATE_VERSION = 1

    def _config(self) -> dict[str, Any]:
        return {
            "delta": self.delta,
            "accountant": self.accountant_name,
            "amplify_integer_noise": self.amplify_integer_noise,
            "target_epsilon": self.target_epsilon,
        }

    def state_dict(self) -> dict[str, Any]:
        """The ledger's state as a JSON-serialisable dict (no tensors).

        Keys: ``kind``, ``version``, ``config`` (delta, accountant,
        amplify_integer_noise, target_epsilon), ``events`` (each a dict with a
        ``type`` tag), ``notes``, ``conservative_dropouts``, ``accountant_state``
        (Opacus' ``state_dict`` of the accountant, history as lists),
        ``renyi_curve`` (``[order, rdp]`` pairs), ``pure_epsilon`` and ``integer_noise``.

        Examples
        --------
        >>> import json
        >>> from defenses.dp.events import GaussianEvent
        >>> led = PrivacyLedger(delta=1e-5)
        >>> led.record(GaussianEvent(noise_multiplier=1.0, sample_rate=0.1, steps=100))
        >>> restored = PrivacyLedger(delta=1e-5)
        >>> restored.load_state_dict(json.loads(json.dumps(led.state_dict())))
        >>> restored.epsilon() == led.epsilon()
        True
        """
        return {
            "kind": type(self).__name__,
            "version": self.STATE_VERSION,
            "config": self._config(),
            "events": [_event_state(ev) for ev in self.events],
            "notes": list(self.notes),
            "conservative_dropouts": self.conservative_dropouts,
            **self._derived_state(),
        }

    def _derived_state(self) -> dict[str, Any]:
        """The part of the state the events determine (accountant, Renyi curve, pure-DP epsilon, flag)."""
        acc = self._acc.state_dict()
        return {
            "accountant_state": {"history": [list(h) for h in acc["history"]], "mechanism": acc["mechanism"]},
            "renyi_curve": [[a, r] for a, r in sorted(self._curve.items())],
            "pure_epsilon": self._pure_epsilon,
            "integer_noise": self._integer,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state saved by :meth:`state_dict` of a ledger with the same configuration.

        The events are replayed into a fresh ledger; the saved accountant
        history, Renyi curve, pure-DP epsilon and flags must equal what they
        give, so a corrupted state is refused, never half-loaded.

        Raises
        ------
        fl_core.state.StateError
            Another kind, version or configuration, missing or unexpected keys,
            a malformed event, or derived values that disagree with the events.
        """
        state = check_state(
            state,
            kind=type(self).__name__,
            version=self.STATE_VERSION,
            keys=("events", "notes", "conservative_dropouts", "accountant_state", "renyi_curve",
                  "pure_epsilon", "integer_noise"),
            config=self._config(),
        )
        dropouts = state_bool(state, "conservative_dropouts", kind="PrivacyLedger")
        trial = self._replay(state)
        self._check_derived(state, trial)
        self.events, self._acc, self._curve = trial.events, trial._acc, trial._curve
        self._pure_epsilon, self._integer = trial._pure_epsilon, trial._integer
        self.notes, self.conservative_dropouts = _str_list(state, "notes"), dropouts

    def _replay(self, state: Mapping[str, Any]) -> PrivacyLedger:
        events = state["events"]
        if not isinstance(events, list):
            raise StateError(f"PrivacyLedger state: events must be a list, got {type(events).__name__}")
        trial = PrivacyLedger(
            delta=self.delta, accountant=self.accountant_name, amplify_integer_noise=self.amplify_integer_noise
        )
        for obj in events:
            try:
                trial.record(_event_from_state(obj))
            except PrivacyConfigError as exc:
                raise StateError(f"PrivacyLedger state: event {obj!r} cannot be composed: {exc}") from exc
        return trial

    def _check_derived(self, state: Mapping[str, Any], trial: PrivacyLedger) -> None:
        state_float(state, "pure_epsilon", kind="PrivacyLedger")
        for key, want in trial._derived_state().items():
            if not json_equal(state[key], want):
                raise StateError(
                    f"PrivacyLedger state: {key} does not match its events (corrupted state): "
                    f"saved {state[key]!r}, the events give {want!r}"
                )
        notes = _str_list(state, "notes")
        if missing := [n for n in trial.notes if n not in notes]:
            raise StateError(f"PrivacyLedger state: notes lack what the events imply: {missing}")

    @property
    def releases(self) -> int:
        """Number of releases recorded."""
        return sum(ev.steps for ev in self.events)

    def round_metrics(self) -> dict[str, float]:
        """``dp_epsilon``, ``dp_delta``, ``dp_releases`` and the conservative-dropout and approximation flags."""
        return {
            "dp_epsilon": self.epsilon(),
            "dp_delta": self.delta,
            "dp_releases": float(self.releases),
            "dp_conservative_dropouts": float(self.conservative_dropouts),
            "dp_integer_noise_amplified": float(self.amplify_integer_noise and self._integer),
        }


class PerClientLedger:
    """One :class:`PrivacyLedger` per client, for local DP (each client accounts its own releases).

    Examples
    --------
    >>> from defenses.dp.events import GaussianEvent
    >>> led = PerClientLedger(delta=1e-5)
    >>> led.record(3, GaussianEvent(noise_multiplier=2.0))
    >>> sorted(led.ledgers), led.epsilon(7)
    ([3], 0.0)
    """

    def __init__(self, *, delta: float, accountant: str = "rdp") -> None:
        self.delta = check_delta(delta)
        _new_accountant(accountant)
        self.accountant_name = accountant
        self.ledgers: dict[Hashable, PrivacyLedger] = {}

    #: Layout version of :meth:`state_dict`.
    STATE_VERSION = 1

    def _config(self) -> dict[str, Any]:
        return {"delta": self.delta, "accountant": self.accountant_name}

    def state_dict(self) -> dict[str, Any]:
        """Every client's ledger state (:meth:`PrivacyLedger.state_dict`) as ``[client_id, state]`` pairs.

        JSON-serialisable when the client ids are ints or strs (a list of pairs,
        so int ids stay ints through JSON).

        Examples
        --------
        >>> import json
        >>> from defenses.dp.events import GaussianEvent
        >>> led = PerClientLedger(delta=1e-5)
        >>> led.record(3, GaussianEvent(noise_multiplier=2.0))
        >>> restored = PerClientLedger(delta=1e-5)
        >>> restored.load_state_dict(json.loads(json.dumps(led.state_dict())))
        >>> restored.epsilon(3) == led.epsilon(3)
        True
        """
        return {
            "kind": type(self).__name__,
            "version": self.STATE_VERSION,
            "config": self._config(),
            "ledgers": [[cid, led.state_dict()] for cid, led in self.ledgers.items()],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state saved by :meth:`state_dict` with the same ``delta`` and accountant.

        Raises
        ------
        fl_core.state.StateError
            As :meth:`PrivacyLedger.load_state_dict`, for the whole state or any client's,
            or a client id that is repeated or not hashable.
        """
        state = check_state(
            state, kind=type(self).__name__, version=self.STATE_VERSION, keys=("ledgers",), config=self._config()
        )
        pairs = state["ledgers"]
        if not isinstance(pairs, list) or not all(isinstance(p, list | tuple) and len(p) == 2 for p in pairs):
            raise StateError("PerClientLedger state: ledgers must be a list of [client_id, ledger state] pairs")
        ledgers: dict[Hashable, PrivacyLedger] = {}
        for cid, sub in pairs:
            if not isinstance(cid, Hashable) or cid in ledgers:
                raise StateError(f"PerClientLedger state: client id {cid!r} is repeated or not hashable")
            led = PrivacyLedger(delta=self.delta, accountant=self.accountant_name)
            led.load_state_dict(sub)
            ledgers[cid] = led
        self.ledgers = ledgers

    def record(self, client_id: Hashable, event: PrivacyEvent) -> None:
        """Compose ``event`` into ``client_id``'s ledger."""
        if client_id not in self.ledgers:
            self.ledgers[client_id] = PrivacyLedger(delta=self.delta, accountant=self.accountant_name)
        self.ledgers[client_id].record(event)

    def epsilon(self, client_id: Hashable) -> float:
        """Epsilon spent by ``client_id`` (0 if it never released anything)."""
        led = self.ledgers.get(client_id)
        return 0.0 if led is None else led.epsilon()

    def max_epsilon(self) -> float:
        """The largest epsilon over all clients (0 before any release)."""
        return max((led.epsilon() for led in self.ledgers.values()), default=0.0)

    def round_metrics(self) -> dict[str, float]:
        """``dp_local_max_epsilon``, ``dp_delta`` and the number of clients with a ledger."""
        return {
            "dp_local_max_epsilon": self.max_epsilon(),
            "dp_delta": self.delta,
            "dp_local_clients": float(len(self.ledgers)),
        }
