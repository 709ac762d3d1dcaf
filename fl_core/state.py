"""Checks shared by every ``load_state_dict``: one header, one error, no silent garbage.

A stateful flsec object (a privacy ledger, FoolsGold, centered clipping, adaptive
clipping, a server optimiser, a secure-aggregation round counter) saves its state
as a plain dict, as Opacus' accountants and torch modules do::

    {"kind": "<class name>", "version": <int>, "config": {...}, <state keys>...}

``kind`` and ``version`` say which class and which layout wrote it; ``config`` holds
the constructor arguments the state only makes sense with (a state is loaded into an
object built with the same configuration, as a torch ``state_dict`` is loaded into a
module of the same architecture). Values are JSON types where possible; tensors
stay tensors where the state *is* a tensor (each class documents which).

Loading validates before it assigns anything: every failure raises
:class:`StateError` naming the problem, so a corrupted or mismatched state never
half-loads.

Examples
--------
>>> state = {"kind": "Counter", "version": 1, "config": {"step": 2}, "count": 3}
>>> check_state(state, kind="Counter", version=1, keys=("count",), config={"step": 2})["count"]
3
>>> check_state(state, kind="Other", version=1, keys=("count",), config={"step": 2})
Traceback (most recent call last):
...
fl_core.state.StateError: state of kind 'Counter' cannot be loaded into a Other (expected kind 'Other')
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from fl_core.errors import FlsecError

__all__ = [
    "DelegatedState",
    "RoundCounterState",
    "StateError",
    "check_state",
    "json_equal",
    "state_bool",
    "state_float",
    "state_int",
    "state_tensor",
]


class StateError(FlsecError):
    """A state dict does not fit the object it is loaded into (kind, version, keys, config, values)."""


HEADER = ("kind", "version", "config")


def check_state(
    state: object,
    *,
    kind: str,
    version: int,
    keys: Iterable[str],
    config: Mapping[str, Any] | None = None,
) -> Mapping[str, Any]:
    """Check a state's header, its exact set of keys and its configuration; return it as a mapping.

    Parameters
    ----------
    state : object
        What was handed to ``load_state_dict``.
    kind : str
        The class name that writes such states.
    version : int
        The layout version this class reads.
    keys : iterable of str
        The state keys besides ``kind``, ``version`` and ``config``.
    config : mapping, optional
        The loading object's configuration; the state's ``config`` must equal it.

    Raises
    ------
    StateError
        Not a mapping, another kind or version, missing or unexpected keys, another configuration.
    """
    if not isinstance(state, Mapping):
        raise StateError(f"a {kind} state must be a dict, got {type(state).__name__}")
    got_kind = state.get("kind")
    if got_kind != kind:
        raise StateError(f"state of kind {got_kind!r} cannot be loaded into a {kind} (expected kind {kind!r})")
    got_version = state.get("version")
    if type(got_version) is not int or got_version != version:
        raise StateError(f"{kind} state has version {got_version!r}; this flsec reads version {version}")
    expected = set(HEADER) | set(keys)
    missing, extra = sorted(expected - set(state)), sorted(set(map(str, state)) - expected)
    if missing or extra:
        raise StateError(f"{kind} state: missing keys {missing}, unexpected keys {extra}")
    _check_config(kind, state["config"], config or {})
    return state


def _check_config(kind: str, got: object, expected: Mapping[str, Any]) -> None:
    if not isinstance(got, Mapping):
        raise StateError(f"{kind} state: config must be a dict, got {type(got).__name__}")
    if set(got) != set(expected):
        raise StateError(f"{kind} state: config keys {sorted(map(str, got))} differ from {sorted(expected)}")
    differ = [name for name, want in expected.items() if not json_equal(got[name], want)]
    if differ:
        detail = ", ".join(f"{name}={got[name]!r} (this object: {expected[name]!r})" for name in differ)
        raise StateError(f"{kind} state was saved with another configuration: {detail}")


def json_equal(a: object, b: object) -> bool:
    """Equality of values as JSON keeps them: tuples equal lists, NaN equals NaN, a bool never equals an int.

    Examples
    --------
    >>> json_equal({"h": [(1.0, 0.1, 3)]}, {"h": [[1.0, 0.1, 3]]}), json_equal(True, 1)
    (True, False)
    """
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return set(a) == set(b) and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, bool) != isinstance(b, bool):
        return False
    return bool(a == b)


def state_int(state: Mapping[str, Any], key: str, *, kind: str, low: int = 0) -> int:
    """``state[key]`` as an ``int >= low`` (``bool`` refused).

    Examples
    --------
    >>> state_int({"calls": 4}, "calls", kind="X")
    4
    """
    value = state[key]
    if type(value) is not int or value < low:
        raise StateError(f"{kind} state: {key} must be an int >= {low}, got {value!r}")
    return value


def state_float(
    state: Mapping[str, Any], key: str, *, kind: str, positive: bool = False, allow_none: bool = False
) -> float | None:
    """``state[key]`` as a finite float (``> 0`` with ``positive``; ``None`` kept with ``allow_none``).

    Examples
    --------
    >>> state_float({"c": 2}, "c", kind="X", positive=True)
    2.0
    """
    value = state[key]
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise StateError(f"{kind} state: {key} must be a finite number, got {value!r}")
    if positive and not value > 0:
        raise StateError(f"{kind} state: {key} must be > 0, got {value!r}")
    return float(value)


def state_bool(state: Mapping[str, Any], key: str, *, kind: str) -> bool:
    """``state[key]`` as a ``bool`` (no truthy stand-ins)."""
    value = state[key]
    if not isinstance(value, bool):
        raise StateError(f"{kind} state: {key} must be a bool, got {value!r}")
    return value


def state_tensor(
    state: Mapping[str, Any],
    key: str,
    *,
    kind: str,
    ndim: int,
    shape: tuple[int | None, ...] | None = None,
    floating: bool = True,
    allow_none: bool = False,
) -> torch.Tensor | None:
    """A clone of ``state[key]`` if it is a tensor of ``ndim`` dims, the ``shape`` (``None`` = any) and finite.

    ``floating=True`` asks for a floating-point dtype, ``False`` for ``int64``.

    Examples
    --------
    >>> state_tensor({"v": torch.zeros(3)}, "v", kind="X", ndim=1, shape=(3,)).shape
    torch.Size([3])
    >>> state_tensor({"v": torch.zeros(2)}, "v", kind="X", ndim=1, shape=(3,))
    Traceback (most recent call last):
    ...
    fl_core.state.StateError: X state: v has shape (2,), expected (3,)
    """
    value = state[key]
    if value is None and allow_none:
        return None
    if not isinstance(value, torch.Tensor):
        raise StateError(f"{kind} state: {key} must be a torch.Tensor, got {type(value).__name__}")
    if value.ndim != ndim:
        raise StateError(f"{kind} state: {key} must have {ndim} dimension(s), got shape {tuple(value.shape)}")
    if shape is not None and any(w is not None and g != w for g, w in zip(value.shape, shape, strict=True)):
        want = tuple("*" if w is None else w for w in shape)
        raise StateError(f"{kind} state: {key} has shape {tuple(value.shape)}, expected {want}")
    if floating:
        if not value.is_floating_point():
            raise StateError(f"{kind} state: {key} must be a floating-point tensor, got {value.dtype}")
        if value.numel() and not bool(torch.isfinite(value).all()):
            raise StateError(f"{kind} state: {key} holds NaN or Inf")
    elif value.dtype != torch.int64:
        raise StateError(f"{kind} state: {key} must be an int64 tensor, got {value.dtype}")
    return value.detach().clone()


class RoundCounterState:
    """Mixin for objects whose only state is a round counter ``_calls`` (the secure-aggregation aggregators).

    The class supplies ``_config()``: the constructor arguments, in JSON types.
    ``state_dict()`` is JSON-serialisable: ``kind``, ``version``, ``config``, ``calls``.

    Examples
    --------
    >>> class Counter(RoundCounterState):
    ...     def __init__(self, seed: int) -> None:
    ...         self.seed, self._calls = seed, 0
    ...     def _config(self) -> dict[str, Any]:
    ...         return {"seed": self.seed}
    >>> c = Counter(1); c._calls = 5
    >>> d = Counter(1); d.load_state_dict(c.state_dict()); d._calls
    5
    >>> Counter(2).load_state_dict(c.state_dict())
    Traceback (most recent call last):
    ...
    fl_core.state.StateError: Counter state was saved with another configuration: seed=1 (this object: 2)
    """

    #: Layout version of :meth:`state_dict`.
    STATE_VERSION = 1
    _calls: int

    def _config(self) -> dict[str, Any]:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """``kind``, ``version``, ``config`` and ``calls`` (rounds run so far), all JSON types.

        An object that runs a robust rule of its own (attribute ``rule``, e.g. grouped SecAgg+
        or two-server sharing with centered clipping) also saves the rule's state under ``rule``.
        """
        out = {"kind": type(self).__name__, "version": self.STATE_VERSION, "config": self._config(),
               "calls": self._calls}
        save = getattr(getattr(self, "rule", None), "state_dict", None)
        if callable(save):
            try:
                out["rule"] = save()
            except NotImplementedError:
                pass
        return out

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the round counter from a state of the same class and configuration.

        Raises
        ------
        StateError
            Another kind, version or configuration, missing or unexpected keys, or a
            ``calls`` that is not an int >= 0.
        """
        kind = type(self).__name__
        state = dict(state)
        rule_state = state.pop("rule", None)
        state = check_state(state, kind=kind, version=self.STATE_VERSION, keys=("calls",), config=self._config())
        if rule_state is not None:
            getattr(self, "rule").load_state_dict(rule_state)  # noqa: B009
        self._calls = state_int(state, "calls", kind=kind)


class DelegatedState:
    """Mixin for objects whose state is that of some attributes (``STATE_PARTS``, e.g. a privacy ledger).

    The class supplies ``_config()`` (the constructor arguments a state only fits with,
    in JSON types) and lists in ``STATE_PARTS`` the attributes that have their own
    ``state_dict()`` / ``load_state_dict()``; each part is one key of the state.

    Examples
    --------
    >>> class Part:
    ...     def __init__(self): self.n = 0
    ...     def state_dict(self): return {"n": self.n}
    ...     def load_state_dict(self, s): self.n = s["n"]
    >>> class Holder(DelegatedState):
    ...     STATE_PARTS = ("part",)
    ...     def __init__(self, z: float) -> None:
    ...         self.z, self.part = z, Part()
    ...     def _config(self) -> dict[str, Any]:
    ...         return {"z": self.z}
    >>> a = Holder(1.0); a.part.n = 3
    >>> b = Holder(1.0); b.load_state_dict(a.state_dict()); b.part.n
    3
    """

    #: Layout version of :meth:`state_dict`.
    STATE_VERSION = 1
    #: The attributes whose states make up this object's.
    STATE_PARTS: tuple[str, ...] = ()

    def _config(self) -> dict[str, Any]:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """``kind``, ``version``, ``config`` and one key per part with that part's ``state_dict()``."""
        parts = {p: getattr(self, p).state_dict() for p in self.STATE_PARTS}
        return {"kind": type(self).__name__, "version": self.STATE_VERSION, "config": self._config(), **parts}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state of the same class and configuration, part by part (each part checks its own).

        Raises
        ------
        StateError
            Another kind, version or configuration, missing or unexpected keys, or a part's error.
        """
        state = check_state(state, kind=type(self).__name__, version=self.STATE_VERSION, keys=self.STATE_PARTS,
                            config=self._config())
        for p in self.STATE_PARTS:
            getattr(self, p).load_state_dict(state[p])
