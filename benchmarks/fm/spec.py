"""FM suite files: federated fine-tuning of MiniLM on BBC News, FM attacks x FM defenses.

A suite file (``kind = "fm"`` tells ``flsec suite run`` to use this runner)::

    name = "fm"
    kind = "fm"
    [setting]
    clients = 10                 # Dirichlet(alpha) label skew over the client pool
    rounds = 5
    mode = "full"                # or "lora"; trainable_layers top layers are fine-tuned
    target = 3                   # the attacks' target class (3 = sport)
    [[attacks]]
    name = "compromised-fm"      # none | compromised-fm | fm-public-data
    params = { epochs = 2 }
    [[defenses]]
    name = "trigger-scan"        # none | fine-pruning | reinit-top | clip-dp | trigger-scan | a robust rule

Every key, name and parameter is checked before any work (:class:`SuiteError` names the key).

A *reproduction* (``flsec reproduce NAME`` on ``benchmarks/suites/repro-NAME.toml``) is an FM
suite with a ``[paper]`` table (the published figure and its claims, exactly as for image
reproductions: :mod:`benchmarks.reproduce.paper`), at least 3 seeds, and ``[scale.NAME]`` tables
of setting overrides (``[scale.paper]``: the paper's model size, cohort and rounds, for a GPU);
:func:`fm_variant` applies a scale and a seed list. A plain FM suite takes neither table.

Examples
--------
>>> spec = parse_fm_suite('name = "t"\\nkind = "fm"\\n[[attacks]]\\nname = "none"\\n[[defenses]]\\nname = "median"\\n')
>>> [c.cell_id for c in spec.cells()]
['none__median__seed0']
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import tomllib

from attacks.fm.registry import BACKDOOR_FIELDS, FM_ATTACKS
from benchmarks.reproduce.paper import Paper, parse_paper
from benchmarks.suite.spec import (
    Cell,
    ComponentSpec,
    SuiteError,
    _check_keys,
    _check_param_types,
    _rule_params,
    load_toml,
    parse_grid,
    parse_scales,
    scale_overrides,
)
from defenses.fm.registry import FM_DEFENSES
from defenses.robust.registry import get as get_rule
from fl_core import FlsecError
from fl_core.foundation import FINE_TUNE_MODES

__all__ = [
    "ATTACKS",
    "BACKDOOR_PARAMS",
    "DEFENSES",
    "DESCRIPTIONS",
    "FMSetting",
    "FMSuiteSpec",
    "fm_variant",
    "is_fm_suite",
    "parse_fm_suite",
]

#: FMBackdoor's parameters, taken by both FM attacks (for the compromised FM)
BACKDOOR_PARAMS = set(BACKDOOR_FIELDS)
#: attack name -> allowed parameters (read from :data:`attacks.fm.registry.FM_ATTACKS`)
ATTACKS: dict[str, set[str]] = {n: {p.name for p in FM_ATTACKS.parameters(n)} for n in FM_ATTACKS.names()}
#: FM defense name -> allowed parameters (read from :data:`defenses.fm.registry.FM_DEFENSES`;
#: robust-rule names are accepted too)
DEFENSES: dict[str, set[str]] = {n: {p.name for p in FM_DEFENSES.parameters(n)} for n in FM_DEFENSES.names()}

#: one line per FM attack and FM defense (from the registries)
DESCRIPTIONS: dict[str, dict[str, str]] = {
    "attacks": FM_ATTACKS.descriptions(),
    "defenses": {
        **FM_DEFENSES.descriptions(),
        "<robust rule>": "any rule of defenses.robust (krum, median, flame, ...) on the client updates",
    },
}


@dataclass(frozen=True)
class FMSetting:
    """The federation and data every cell of an FM suite runs (see the module docstring)."""

    clients: int = 10
    alpha: float = 0.5
    rounds: int = 5
    local_epochs: int = 1
    batch_size: int = 16
    lr: float = 0.05
    momentum: float = 0.9
    mode: str = "full"
    trainable_layers: int = 2
    lora_rank: int = 8
    max_length: int = 64
    seeds: tuple[int, ...] = (0,)
    target: int = 3
    trigger: str = "cf"
    trigger_max_position: int = 30
    val_size: int = 100
    aux_size: int = 200
    public_size: int = 400
    assumed_f: int = 2
    device: str = "cpu"


_INT = (
    "clients",
    "rounds",
    "local_epochs",
    "batch_size",
    "trainable_layers",
    "lora_rank",
    "max_length",
    "target",
    "trigger_max_position",
    "val_size",
    "aux_size",
    "public_size",
    "assumed_f",
)


@dataclass(frozen=True)
class FMSuiteSpec:
    """A validated FM suite; a reproduction also carries the paper's claims (``paper``) and
    named ``scales`` (setting overrides: ``paper``, the paper's setting)."""

    name: str
    description: str
    setting: FMSetting
    attacks: tuple[ComponentSpec, ...]
    defenses: tuple[ComponentSpec, ...]
    source: str
    paper: Paper | None = None
    scales: dict[str, dict[str, Any]] = field(default_factory=dict)

    def cells(self) -> list[Cell]:
        """Attack x defense x seed."""
        return [Cell(a, d, s) for s in self.setting.seeds for a in self.attacks for d in self.defenses]


def is_fm_suite(text: str) -> bool:
    """True if the TOML text declares ``kind = "fm"`` (malformed TOML: False; the parser reports it)."""
    try:
        return tomllib.loads(text).get("kind") == "fm"
    except tomllib.TOMLDecodeError:
        return False


def _parse_setting(raw: Any, where: str = "setting") -> FMSetting:
    """The validated setting; errors name ``where.KEY`` (``scale.paper.KEY`` for a scale's overrides)."""
    if not isinstance(raw, dict):
        raise SuiteError(where, "must be a table")
    known = {f.name: f for f in fields(FMSetting)}
    _check_keys(raw, set(known), where)
    values: dict[str, Any] = {}
    for k, v in raw.items():
        want: tuple[type, ...] = (int,) if k in _INT else (int, float) if k in ("alpha", "lr", "momentum") else (str,)
        if k == "seeds":
            ok = isinstance(v, list) and v and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v)
            if not ok or len(set(v)) != len(v):
                raise SuiteError(f"{where}.seeds", f"must be a non-empty list of distinct integers >= 0, got {v!r}")
            v = tuple(v)
        elif isinstance(v, bool) or not isinstance(v, want):
            raise SuiteError(f"{where}.{k}", f"must be {'/'.join(t.__name__ for t in want)}, got {v!r}")
        values[k] = v
    s = FMSetting(**values)
    checks = [
        ("clients", s.clients >= 2, f"must be >= 2, got {s.clients}"),
        ("alpha", math.isfinite(s.alpha) and s.alpha > 0, f"must be > 0, got {s.alpha}"),
        ("mode", s.mode in FINE_TUNE_MODES, f"must be one of {FINE_TUNE_MODES}, got {s.mode!r}"),
        ("target", 0 <= s.target < 5, f"must be a BBC News class in [0, 5), got {s.target}"),
        ("trigger", len(s.trigger.split()) == 1, f"must be one word, got {s.trigger!r}"),
        ("lr", math.isfinite(s.lr) and s.lr > 0, f"must be a finite number > 0, got {s.lr}"),
        ("momentum", 0 <= s.momentum < 1, f"must be in [0, 1), got {s.momentum}"),
        ("trainable_layers", 1 <= s.trainable_layers <= 6, f"must be in [1, 6] (MiniLM), got {s.trainable_layers}"),
        ("max_length", 8 <= s.max_length <= 512, f"must be in [8, 512], got {s.max_length}"),
        ("assumed_f", s.assumed_f >= 0, f"must be >= 0, got {s.assumed_f}"),
    ]
    for k in ("rounds", "local_epochs", "batch_size", "lora_rank", "val_size", "aux_size", "public_size"):
        checks.append((k, getattr(s, k) >= 1, f"must be >= 1, got {getattr(s, k)}"))
    for key, ok, msg in checks:
        if not ok:
            raise SuiteError(f"{where}.{key}", msg)
    return s


def _build(registry: Any, c: ComponentSpec, where: str) -> Any:
    """The registered component, built to check the values; an error names the parameter it is about."""
    try:
        return registry.make(c.name, **c.params)
    except FlsecError as exc:
        key = next((k for k in c.params if str(exc).startswith(f"{k} ")), None)
        raise SuiteError(f"{where}.params" + (f".{key}" if key else ""), str(exc)) from None


def _validate_attack(a: ComponentSpec, where: str) -> None:
    if a.name not in FM_ATTACKS:
        raise SuiteError(f"{where}.name", f"unknown FM attack {a.name!r}; valid: {', '.join(FM_ATTACKS)}")
    for k in a.params:
        if k not in ATTACKS[a.name]:
            raise SuiteError(f"{where}.params.{k}", f"{a.name!r} takes no {k!r}; it takes {sorted(ATTACKS[a.name])}")
    _build(FM_ATTACKS, a, where)


def _validate_defense(d: ComponentSpec, where: str, setting: FMSetting) -> None:
    if d.pre:
        raise SuiteError(f"{where}.pre", "FM suites take no pre-aggregators")
    if d.name in FM_DEFENSES:
        allowed = DEFENSES[d.name]
    else:
        try:
            entry = get_rule(d.name)
        except FlsecError as exc:
            msg = f"not an FM defense ({', '.join(FM_DEFENSES)}) nor a robust rule: {exc}"
            raise SuiteError(f"{where}.name", msg) from None
        if entry.kind != "rule":
            raise SuiteError(f"{where}.name", f"{d.name!r} is a {entry.kind}, not an aggregation rule")
        allowed = set(_rule_params(entry.cls))
        _check_param_types(entry.cls.__init__, {k: v for k, v in d.params.items() if k in allowed}, where, repr(d.name))
    for k in d.params:
        if k not in allowed:
            raise SuiteError(f"{where}.params.{k}", f"{d.name!r} takes no {k!r}; it takes {sorted(allowed)}")
    if d.name not in FM_DEFENSES:
        return
    defense = _build(FM_DEFENSES, d, where)
    if d.name == "reinit-top":
        r = defense.r
        if setting.mode != "full" or not isinstance(r, int) or not 1 <= r <= setting.trainable_layers:
            raise SuiteError(
                f"{where}.params.r",
                f"needs mode = 'full' and 1 <= r <= trainable_layers={setting.trainable_layers}, got mode "
                f"{setting.mode!r} and r = {r!r}",
            )


def parse_fm_suite(text: str, *, source: str = "<string>") -> FMSuiteSpec:
    """Parse and validate an FM suite; raises :class:`SuiteError` naming the offending key.

    A ``[paper]`` table makes it a reproduction (at least 3 seeds; its claims' selectors must
    name attacks and defenses of the grid); ``[scale.NAME]`` tables need one.
    """
    raw, name = load_toml(
        text, source=source, allowed={"name", "kind", "description", "setting", "attacks", "defenses", "paper",
                                      "scale"}
    )
    if raw.get("kind") != "fm":
        raise SuiteError("kind", f"must be 'fm' for an FM suite, got {raw.get('kind')!r}")
    setting = _parse_setting(raw.get("setting", {}))
    attacks, defenses = parse_grid(raw)
    for i, a in enumerate(attacks):
        _validate_attack(a, f"attacks[{i}]")
    for i, d in enumerate(defenses):
        _validate_defense(d, f"defenses[{i}]", setting)
    scales = parse_scales(raw.get("scale", {}), raw.get("setting", {}), lambda s, w: _parse_setting(s, where=w))
    for scale, over in scales.items():  # a scale's setting must suit every defense (reinit-top's r)
        scaled = _parse_setting({**raw.get("setting", {}), **{k: v for k, v in over.items() if k != "device"}},
                                where=f"scale.{scale}")
        for i, d in enumerate(defenses):
            _validate_defense(d, f"defenses[{i}] (scale {scale})", scaled)
    paper = None
    if "paper" in raw:
        coords = {"attack": [a.label for a in attacks], "defense": [d.label for d in defenses]}
        paper = parse_paper(raw["paper"], coordinates=coords)
        if len(setting.seeds) < 3:
            raise SuiteError("setting.seeds",
                             f"a reproduction runs at least 3 seeds by default, got {list(setting.seeds)}")
    elif scales:
        raise SuiteError("scale", "scales belong to reproductions: add a [paper] table")
    return FMSuiteSpec(name, str(raw.get("description", "")), setting, attacks, defenses, text, paper, scales)


def fm_variant(spec: FMSuiteSpec, *, scale: str | None = None, seeds: Sequence[int] | None = None) -> FMSuiteSpec:
    """The FM suite at ``scale`` (``small`` or None: the ``[setting]`` itself) with ``seeds`` (None: the file's).

    Its ``source`` names the scale and seeds when they differ from the file's, so each such
    variant owns its own results directory (:class:`benchmarks.suite.store.ResultStore`).

    Raises
    ------
    SuiteError
        If ``scale`` is not one of the file's ``[scale.NAME]`` tables, its device is not available
        here, or ``seeds`` are not distinct non-negative integers.

    Examples
    --------
    >>> text = ('name = "r"\\nkind = "fm"\\n[setting]\\nseeds = [0, 1, 2]\\n[[attacks]]\\nname = "none"\\n'
    ...         '[[defenses]]\\nname = "median"\\n[paper]\\nsource = "s"\\nfigure = "f"\\n[[paper.claims]]\\n'
    ...         'kind = "range"\\nmetric = "accuracy"\\nlow = 0.5\\n[scale.paper]\\nrounds = 50\\n')
    >>> v = fm_variant(parse_fm_suite(text), scale="paper", seeds=[3, 4, 5])
    >>> v.setting.rounds, v.setting.seeds, [c.cell_id for c in v.cells()][0]
    (50, (3, 4, 5), 'none__median__seed3')
    """
    over = scale_overrides(spec.scales, scale, seeds)
    if not over:
        return spec
    setting = replace(spec.setting, **over)
    source = spec.source + f"\n# variant: scale {scale or 'small'}; seeds {list(setting.seeds)}\n"
    return replace(spec, setting=setting, source=source)
