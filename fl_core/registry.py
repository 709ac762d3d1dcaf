"""One registry primitive for every family of named components.

A :class:`Registry` maps names to classes or factory functions of one family
(datasets, models, robust rules, attacks, DP mechanisms, secure-aggregation
protocols, ...). Everything a user may type comes from the registration:

* the **name** and a one-line **description** from :meth:`Registry.register`;
* the **parameters**, with their **defaults**, from the registered callable's
  signature (:func:`inspect.signature`) -- defaults live nowhere else.

:meth:`Registry.make` validates keyword parameters against that signature before
any work: an unknown name raises :class:`~fl_core.errors.UnknownNameError`
(listing the closest valid names), an unknown or missing parameter raises
:class:`~fl_core.errors.ConfigError` naming the component and its valid
parameters. Every registry created with ``listed=True`` (the default) enters a
module-level catalogue, :func:`catalogue`, which ``flsec list`` shows.

Names are matched after :func:`normalise` (lower case, ``-`` -> ``_``) when the
registry is created with ``normalise=True``; ``get`` and ``names`` always give the
name as it was registered. Families whose names are compared verbatim by their
callers (suite files, result ids) use ``normalise=False``: lookups are then exact,
but two names that normalise alike are still refused as duplicates.

Examples
--------
>>> toys = Registry("toy", listed=False)
>>> @toys.register("scaled-sum", description="sum of the inputs times a scale")
... class ScaledSum:
...     def __init__(self, *, scale: float = 1.0, bias: float = 0.0) -> None:
...         self.scale, self.bias = scale, bias
>>> toys.make("scaled_sum", scale=2.0).scale
2.0
>>> [(p.name, p.default) for p in toys.parameters("scaled-sum")]
[('scale', 1.0), ('bias', 0.0)]
>>> toys.make("scaled-summ")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
fl_core.errors.UnknownNameError: unknown toy 'scaled-summ'. Did you mean 'scaled-sum'? ...
>>> toys.make("scaled-sum", scal=2.0)
Traceback (most recent call last):
...
fl_core.errors.ConfigError: toy scaled-sum (ScaledSum) got unknown parameter 'scal'; valid parameters: scale, bias
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeVar

from fl_core.errors import ConfigError, UnknownNameError

__all__ = ["Entry", "Registry", "catalogue", "default_of", "normalise"]

F = TypeVar("F", bound=Callable[..., Any])

_KEYWORD = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
_CATALOGUE: dict[str, Registry] = {}


def normalise(name: str) -> str:
    """The matching key of a name: stripped, lower case, ``-`` replaced by ``_``.

    Examples
    --------
    >>> normalise(" Multi-Krum ")
    'multi_krum'
    """
    return name.strip().lower().replace("-", "_")


def _signature(obj: Callable[..., Any]) -> inspect.Signature:
    """The call signature of a class (its constructor, without ``self``) or a function."""
    try:
        return inspect.signature(obj)
    except (TypeError, ValueError) as exc:  # builtins without a signature
        raise ConfigError(f"cannot read the signature of {obj!r}: {exc}") from None


def default_of(obj: Callable[..., Any], parameter: str) -> Any:
    """The default of ``obj``'s parameter ``parameter``, read from its signature.

    Lets a wrapper reuse a library function's default instead of copying it.

    Raises
    ------
    ConfigError
        If ``obj`` has no such parameter, or the parameter has no default.

    Examples
    --------
    >>> def f(*, top_k: int = 64) -> None: ...
    >>> default_of(f, "top_k")
    64
    """
    p = _signature(obj).parameters.get(parameter)
    if p is None or p.default is inspect.Parameter.empty:
        raise ConfigError(f"{getattr(obj, '__qualname__', obj)!r} has no parameter {parameter!r} with a default")
    return p.default


@dataclass(frozen=True)
class Entry:
    """One registered component.

    Attributes
    ----------
    name : str
        The name as registered (``"krum"``, ``"fashion-mnist"``).
    obj : callable
        The class or factory function; call it with keyword parameters.
    description : str
        One line for ``flsec list``.
    family : str
        The registry's family (``"robust aggregator"``).
    tags : mapping
        Extra facts given to :meth:`Registry.register` (``kind="rule"``);
        also readable as attributes (``entry.kind``).
    """

    name: str
    obj: Callable[..., Any]
    description: str
    family: str
    tags: Mapping[str, Any] = field(default_factory=dict)

    @property
    def cls(self) -> Callable[..., Any]:
        """The registered class or function (alias of :attr:`obj`)."""
        return self.obj

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__") or attr == "tags":
            raise AttributeError(attr)
        try:
            return self.tags[attr]
        except KeyError:
            raise AttributeError(f"{self.family} entry {self.name!r} has no attribute or tag {attr!r}") from None


class Registry:
    """Names -> classes or factory functions of one family, validated by signature.

    Parameters
    ----------
    family : str
        Singular family name used in messages (``"robust aggregator"``).
    title : str, optional
        Heading for ``flsec list``; defaults to ``family``.
    context : iterable of str
        Parameters the calling code supplies (``labels``, ``generator``, ...);
        :meth:`parameters` leaves them out, :meth:`make` still checks them.
    normalise : bool
        Match names after :func:`normalise` (``True``) or exactly (``False``).
    listed : bool
        Enter the module-level :func:`catalogue` (``False`` for throw-away
        registries, e.g. in tests).

    Raises
    ------
    ConfigError
        If a listed registry of the same family already exists.
    """

    def __init__(
        self,
        family: str,
        *,
        title: str | None = None,
        context: Iterable[str] = (),
        normalise: bool = True,
        listed: bool = True,
    ) -> None:
        self.family = family
        self.title = title or family
        self.context = tuple(context)
        self.normalises = normalise
        self._entries: dict[str, Entry] = {}  # normalised key -> entry
        if listed:
            if family in _CATALOGUE:
                raise ConfigError(f"a registry of the family {family!r} already exists")
            _CATALOGUE[family] = self

    def __repr__(self) -> str:
        return f"Registry({self.family!r}, {len(self._entries)} entries)"

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._find(name) is not None

    def register(self, name: str, *, description: str, **tags: Any) -> Callable[[F], F]:
        """Decorator adding a class or factory function under ``name``.

        Parameters
        ----------
        name : str
            The public name.
        description : str
            One line for ``flsec list``.
        **tags
            Extra facts kept on the :class:`Entry` (``kind="rule"``).

        Raises
        ------
        ConfigError
            If ``name`` (after :func:`normalise`) is taken by another object, or
            the object's signature cannot be read.
        """
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"a {self.family} name must be a non-empty string, got {name!r}")
        key = normalise(name)

        def deco(obj: F) -> F:
            _signature(obj)  # refuse what make() could not validate
            old = self._entries.get(key)
            if old is not None:
                if old.obj is not obj:
                    raise ConfigError(f"{self.family} name {name!r} is already registered by {old.obj!r}")
                return obj  # the same object again (a re-import): keep the first registration
            self._entries[key] = Entry(name.strip(), obj, description, self.family, MappingProxyType(dict(tags)))
            return obj

        return deco

    def _find(self, name: str) -> Entry | None:
        entry = self._entries.get(normalise(name))
        if entry is None or (not self.normalises and entry.name != name):
            return None
        return entry

    def get(self, name: str) -> Entry:
        """The entry of ``name``.

        Raises
        ------
        UnknownNameError
            If ``name`` is not registered; the message lists the closest names.
        """
        entry = self._find(name) if isinstance(name, str) else None
        if entry is None:
            raise UnknownNameError(self.family, str(name), self.names())
        return entry

    def names(self, **tags: Any) -> list[str]:
        """Sorted registered names, optionally only those whose tags match ``tags``."""
        return [e.name for e in self.entries(**tags)]

    def entries(self, **tags: Any) -> list[Entry]:
        """Entries sorted by name, optionally only those whose tags match ``tags``."""
        found = [e for e in self._entries.values() if all(e.tags.get(k) == v for k, v in tags.items())]
        return sorted(found, key=lambda e: e.name)

    def descriptions(self) -> dict[str, str]:
        """Name -> description, sorted by name."""
        return {e.name: e.description for e in self.entries()}

    def signature_parameters(self, name: str) -> list[inspect.Parameter]:
        """Every keyword-capable parameter of ``name``'s signature, context ones included."""
        sig = _signature(self.get(name).obj)
        return [p for p in sig.parameters.values() if p.kind in _KEYWORD]

    def parameters(self, name: str) -> list[inspect.Parameter]:
        """The user-settable keyword parameters of ``name``, in signature order, with their defaults.

        A parameter whose ``default`` is :attr:`inspect.Parameter.empty` is required.
        The registry's ``context`` parameters are left out.
        """
        return [p for p in self.signature_parameters(name) if p.name not in self.context]

    def defaults(self, name: str) -> dict[str, Any]:
        """Parameter -> default of ``name`` (required parameters left out)."""
        return {p.name: p.default for p in self.parameters(name) if p.default is not inspect.Parameter.empty}

    def takes_any(self, name: str) -> bool:
        """True if ``name``'s callable accepts ``**kwargs`` (any parameter passes validation)."""
        sig = _signature(self.get(name).obj)
        return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())

    def check(self, name: str, params: Mapping[str, Any], *, context: bool = True) -> Entry:
        """Validate ``params`` for ``name`` without calling anything; return the entry.

        Parameters
        ----------
        name : str
            A registered name.
        params : mapping
            Keyword parameters to validate.
        context : bool
            ``True``: ``params`` include the context parameters, so a missing
            required context parameter is an error too. ``False``: check only
            the user parameters (the caller adds the context later).

        Raises
        ------
        UnknownNameError
            If ``name`` is not registered.
        ConfigError
            If a parameter is unknown or a required one is missing; the message
            names them, the component and its valid parameters.
        """
        entry = self.get(name)
        if self.takes_any(name):
            return entry
        every = self.signature_parameters(name)
        valid = [p.name for p in every]
        user = [p.name for p in every if p.name not in self.context]
        unknown = [k for k in params if k not in valid or (not context and k in self.context)]
        checked = every if context else [p for p in every if p.name not in self.context]
        missing = [p.name for p in checked if p.default is inspect.Parameter.empty and p.name not in params]
        what = f"{self.family} {entry.name}" + (f" ({entry.obj.__name__})" if isinstance(entry.obj, type) else "")
        listed = ", ".join(user) if user else "none"
        for bad, verb in ((unknown, "got unknown"), (missing, "needs the")):
            if bad:
                plural = "s" if len(bad) > 1 else ""
                raise ConfigError(
                    f"{what} {verb} parameter{plural} {', '.join(repr(k) for k in bad)}; valid parameters: {listed}"
                )
        return entry

    def make(self, name: str, /, **params: Any) -> Any:
        """Call the registered ``name`` with keyword ``params`` after :meth:`check`.

        Raises
        ------
        UnknownNameError
            If ``name`` is not registered.
        ConfigError
            If a parameter is unknown or a required one is missing.
        """
        return self.check(name, params).obj(**params)


def catalogue() -> dict[str, Registry]:
    """Every listed registry created so far, by family, in creation order.

    Importing a package creates its registries; ``flsec list`` imports them all
    (see :func:`benchmarks.list_cmd.load_all`).
    """
    return dict(_CATALOGUE)
