"""The registry of robust rules and pre-aggregators: a :class:`fl_core.registry.Registry`.

Each entry holds the class, its kind (``"rule"`` or ``"pre"``, a tag) and a
one-line description for ``flsec list``. Names are lower case with underscores;
lookups also accept hyphens (``"multi-krum"``). Unknown names raise
:class:`~fl_core.errors.UnknownNameError` listing the closest valid names; the
hyper-parameters and their defaults are the class's constructor signature.

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
fl_core.errors.ConfigError: robust aggregator krum (Krum) got unknown parameter 'zz'; valid parameters: f
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Literal, TypeVar

from fl_core.errors import ConfigError
from fl_core.registry import Entry, Registry

__all__ = ["ROBUST", "RegistryEntry", "entries", "get", "make", "names", "parameters", "register"]

Kind = Literal["rule", "pre"]
T = TypeVar("T", bound=type)

#: An entry of the robust registry; ``entry.kind`` is its ``"rule"`` / ``"pre"`` tag.
RegistryEntry = Entry

#: Robust rules (``kind="rule"``: ``(n, d) -> (d,)``) and pre-aggregators (``kind="pre"``: ``(n, d) -> (m, d)``).
ROBUST = Registry("robust aggregator", title="defenses: robust rules and pre-aggregators (kind)")


def register(name: str, *, kind: Kind, description: str) -> Callable[[T], T]:
    """Class decorator adding a rule or pre-aggregator to :data:`ROBUST`.

    Raises
    ------
    ConfigError
        If ``name`` is already taken by another class or the kind is unknown.
    """
    if kind not in ("rule", "pre"):
        raise ConfigError(f"registry kind must be 'rule' or 'pre', got {kind!r}")
    return ROBUST.register(name, description=description, kind=kind)


def get(name: str) -> Entry:
    """Look ``name`` up; raise :class:`~fl_core.errors.UnknownNameError` if absent."""
    return ROBUST.get(name)


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
    return ROBUST.make(name, **hyper)


def names(kind: Kind | None = None) -> list[str]:
    """Sorted registered names, optionally of one kind."""
    return ROBUST.names() if kind is None else ROBUST.names(kind=kind)


def entries() -> list[Entry]:
    """All entries sorted by kind then name (for ``flsec list``)."""
    return sorted(ROBUST.entries(), key=lambda e: (e.kind != "rule", e.name))
