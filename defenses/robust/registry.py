"""The one registry of robust rules and pre-aggregators, by name.

Each entry holds the class, its kind (``"rule"`` or ``"pre"``) and a one-line
description for ``flsec list``. Names are lower case with underscores;
lookups also accept hyphens (``"multi-krum"``). Unknown names raise
:class:`~fl_core.errors.UnknownNameError` listing the closest valid names.

Examples
--------
>>> import defenses.robust  # registers every rule
>>> from defenses.robust.registry import make
>>> make("krum", f=1)
Krum(f=1)
>>> make("krun")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
fl_core.errors.UnknownNameError: unknown robust aggregator 'krun'. Did you mean 'krum'? ...
>>> make("krum", f=1, zz=3)
Traceback (most recent call last):
...
fl_core.errors.ConfigError: krum (Krum) got unknown parameter 'zz'; valid parameters: f
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from fl_core.errors import ConfigError, UnknownNameError

__all__ = ["RegistryEntry", "entries", "get", "make", "names", "parameters", "register"]

Kind = Literal["rule", "pre"]
T = TypeVar("T", bound=type)


@dataclass(frozen=True)
class RegistryEntry:
    """One registered rule or pre-aggregator.

    Attributes
    ----------
    name : str
        Registry name (``"krum"``).
    kind : {"rule", "pre"}
        ``"rule"``: an aggregator ``(n, d) -> (d,)``; ``"pre"``: a
        pre-aggregator ``(n, d) -> (m, d)``.
    cls : type
        The class; call it with keyword-only hyper-parameters.
    description : str
        One line for ``flsec list``.
    """

    name: str
    kind: Kind
    cls: type
    description: str


_REGISTRY: dict[str, RegistryEntry] = {}


def _normalise(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def register(name: str, *, kind: Kind, description: str) -> Callable[[T], T]:
    """Class decorator adding a rule or pre-aggregator to the registry.

    Raises
    ------
    ConfigError
        If ``name`` is already taken by another class or the kind is unknown.
    """
    key = _normalise(name)
    if kind not in ("rule", "pre"):
        raise ConfigError(f"registry kind must be 'rule' or 'pre', got {kind!r}")

    def deco(cls: T) -> T:
        old = _REGISTRY.get(key)
        if old is not None and old.cls is not cls:
            raise ConfigError(f"robust aggregator name {key!r} already registered by {old.cls}")
        _REGISTRY[key] = RegistryEntry(key, kind, cls, description)
        return cls

    return deco


def get(name: str) -> RegistryEntry:
    """Look ``name`` up; raise :class:`~fl_core.errors.UnknownNameError` if absent."""
    key = _normalise(name) if isinstance(name, str) else name
    try:
        return _REGISTRY[key]
    except (KeyError, TypeError):
        raise UnknownNameError("robust aggregator", str(name), _REGISTRY) from None


def parameters(cls: type) -> list[inspect.Parameter] | None:
    """The keyword parameters of ``cls``'s constructor, or ``None`` if it takes ``**kwargs``.

    Examples
    --------
    >>> import defenses.robust
    >>> [p.name for p in parameters(get("multi_krum").cls)]
    ['f', 'm']
    """
    params = inspect.signature(cls).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    keyword = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [p for p in params if p.kind in keyword]


def make(name: str, **hyper: Any) -> Any:
    """Instantiate the registered class ``name`` with keyword-only hyper-parameters.

    Raises
    ------
    UnknownNameError
        If ``name`` is not registered.
    ConfigError
        If a hyper-parameter is not one of the class's keyword parameters, or a
        required one is missing; the message names them and the valid ones.
    """
    entry = get(name)
    params = parameters(entry.cls)
    if params is not None:
        valid = [p.name for p in params]
        unknown = [k for k in hyper if k not in valid]
        missing = [p.name for p in params if p.default is inspect.Parameter.empty and p.name not in hyper]
        what = f"{entry.name} ({entry.cls.__name__})"
        listed = ", ".join(valid) if valid else "none"
        if unknown:
            plural = "s" if len(unknown) > 1 else ""
            names_ = ", ".join(repr(k) for k in unknown)
            raise ConfigError(f"{what} got unknown parameter{plural} {names_}; valid parameters: {listed}")
        if missing:
            plural = "s" if len(missing) > 1 else ""
            names_ = ", ".join(repr(k) for k in missing)
            raise ConfigError(f"{what} needs the parameter{plural} {names_}; valid parameters: {listed}")
    return entry.cls(**hyper)


def names(kind: Kind | None = None) -> list[str]:
    """Sorted registered names, optionally of one kind."""
    return sorted(k for k, e in _REGISTRY.items() if kind is None or e.kind == kind)


def entries() -> list[RegistryEntry]:
    """All entries sorted by kind then name (for ``flsec list``)."""
    return sorted(_REGISTRY.values(), key=lambda e: (e.kind != "rule", e.name))
