"""Suite files: a TOML setting plus a grid of attacks x defenses, validated before any work.

A suite file::

    name = "quick"
    description = "..."

    [setting]
    dataset = "fashion-mnist"     # any fl_core dataset
    model = "mlp"
    partition = "dirichlet"
    alpha = 0.5
    clients = 10
    clients_per_round = 10
    rounds = 10
    local_epochs = 1
    seeds = [0]
    malicious_fraction = 0.2      # attackers among all clients (sampled per seed)
    omniscient = true             # attackers see the honest updates of the round
    attack_start = 0              # first attacking round; attack_end (exclusive) optional
    exposure = true               # probe the server's reconstruction of a client image (PSNR column)

    [[attacks]]
    name = "alie"                 # attack registry name
    label = "alie"                # optional: row label in the report
    params = { z = 1.0 }          # optional keyword parameters

    [[defenses]]
    name = "krum"                 # robust-rule registry name
    params = { f = 2 }            # f defaults to the expected attackers per cohort (0 for "mean")
    pre = ["nnm"]                 # optional pre-aggregators (names or {name, params} tables)

    [[defenses]]                  # a defense is a pipeline: any of a rule, a secure protocol, DP
    label = "secagg+ddp"
    secure = { name = "secagg_plus", params = { clip = 1.0 } }   # secure-protocol registry name
    dp = { variant = "distributed", epsilon = 4.0, clip_norm = 1.0, bits = 18 }
    # dp: variant central | local | distributed; epsilon (target after the suite's rounds,
    # calibrated) or noise_multiplier; delta (default 1e-5); the variant's other parameters

Every key is checked (unknown keys, types, ranges, names against the registries,
parameters against each component's signature, each rule's tolerance for the
cohort size and f) and the first problem is reported with its key path.

Examples
--------
>>> spec = parse_suite('name = "t"\\n[setting]\\ndataset = "digits"\\n[[attacks]]\\nname = "none"\\n'
...                    '[[defenses]]\\nname = "median"\\n')
>>> [c.cell_id for c in spec.cells()]
['none__median__seed0']
"""

from __future__ import annotations

import collections.abc
import inspect
import math
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import tomllib
import torch

from attacks import attack_names, attack_parameters
from attacks.registry import attack_builder
from benchmarks.suite.defense import build_pipeline, dp_user_parameters
from benchmarks.suite.schema import Cell, ComponentSpec, DPSpec, Setting, SuiteError, SuiteSpec
from defenses.dp.registry import DP_FEDAVG
from defenses.robust.registry import get as get_rule
from fl_core import DATASETS, MODELS, PARTITIONS, SERVER_OPTIMIZERS, FlsecError
from fl_core.checks import is_int, is_real
from fl_core.device import resolve_device
from fl_core.pipeline import Round
from secure_agg.registry import SECURE_PROTOCOLS

__all__ = [
    "BUILTIN_DIR",
    "Cell",
    "ComponentSpec",
    "Setting",
    "SuiteError",
    "SuiteSpec",
    "load_suite",
    "load_toml",
    "parse_grid",
    "parse_scales",
    "parse_suite",
    "scale_overrides",
    "variants",
]

BUILTIN_DIR = Path(__file__).resolve().parent.parent / "suites"


_SETTING_TYPES: dict[str, tuple[type, ...]] = {
    f.name: (
        (int, float)
        if f.type in ("float", "float | None")
        else (bool,)
        if f.type == "bool"
        else (list,)
        if f.name == "seeds"
        else (int,)
        if f.type in ("int", "int | None")
        else (str,)
    )
    for f in fields(Setting)
}


def _check_keys(table: Mapping[str, Any], allowed: set[str], where: str) -> None:
    for k in table:
        if k not in allowed:
            import difflib

            close = difflib.get_close_matches(k, sorted(allowed), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise SuiteError(
                f"{where}.{k}" if where else k, f"unknown key{hint}; valid keys: {', '.join(sorted(allowed))}"
            )


def _parse_setting(raw: Any, where: str = "setting") -> Setting:
    try:
        return _parse_setting_at(raw)
    except SuiteError as exc:
        if where == "setting":
            raise
        raise SuiteError(f"{where} ({exc.key})", str(exc).split(": ", 1)[1]) from None


def _parse_setting_at(raw: Any) -> Setting:
    if not isinstance(raw, dict):
        raise SuiteError("setting", "must be a table")
    _check_keys(raw, set(_SETTING_TYPES), "setting")
    values: dict[str, Any] = {}
    for k, v in raw.items():
        types = _SETTING_TYPES[k]
        if isinstance(v, bool) and bool not in types:
            raise SuiteError(f"setting.{k}", f"must be {'/'.join(t.__name__ for t in types)}, got {v!r}")
        if not isinstance(v, types):
            raise SuiteError(f"setting.{k}", f"must be {'/'.join(t.__name__ for t in types)}, got {v!r}")
        values[k] = v
    if "seeds" in values:
        seeds = values["seeds"]
        if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
            raise SuiteError("setting.seeds", f"must be a non-empty list of non-negative integers, got {seeds!r}")
        if len(set(seeds)) != len(seeds):
            raise SuiteError("setting.seeds", f"has duplicates: {seeds}")
        values["seeds"] = tuple(seeds)
    s = Setting(**values)
    checks = [
        ("dataset", s.dataset in DATASETS, f"unknown dataset {s.dataset!r}; valid: {', '.join(DATASETS)}"),
        ("model", s.model in MODELS, f"unknown model {s.model!r}; valid: {', '.join(MODELS)}"),
        ("partition", s.partition in PARTITIONS, f"unknown partition {s.partition!r}; valid: {', '.join(PARTITIONS)}"),
        (
            "server_opt",
            s.server_opt in SERVER_OPTIMIZERS,
            f"unknown server optimizer {s.server_opt!r}; valid: {', '.join(SERVER_OPTIMIZERS)}",
        ),
        ("alpha", math.isfinite(s.alpha) and s.alpha > 0, f"Dirichlet alpha must be finite and > 0, got {s.alpha}"),
        ("clients", s.clients >= 2, f"must be >= 2, got {s.clients}"),
        ("clients_per_round", 1 <= s.m <= s.clients, f"must be in [1, clients={s.clients}], got {s.m}"),
        ("rounds", s.rounds >= 1, f"must be >= 1, got {s.rounds}"),
        ("local_epochs", s.local_epochs >= 1, f"must be >= 1, got {s.local_epochs}"),
        (
            "local_epochs",
            not s.fedsgd or s.local_epochs == 1,
            f"fedsgd takes one gradient step per client per round: local_epochs must be 1, got {s.local_epochs}",
        ),
        (
            "gamma_similarity",
            0.0 <= s.gamma_similarity <= 1.0,
            f"must be in [0, 1] (1 = IID, 0 = sorted labels), got {s.gamma_similarity}",
        ),
        (
            "gamma_similarity",
            "gamma_similarity" not in raw or s.partition == "gamma",
            f"applies to partition = 'gamma' only, the partition is {s.partition!r}",
        ),
        ("batch_size", s.batch_size >= 1, f"must be >= 1, got {s.batch_size}"),
        ("lr", math.isfinite(s.lr) and s.lr > 0, f"must be a finite number > 0, got {s.lr}"),
        (
            "server_lr",
            s.server_lr is None or (math.isfinite(s.server_lr) and s.server_lr > 0),
            f"must be a finite number > 0, got {s.server_lr}",
        ),
        ("shards_per_client", s.shards_per_client >= 1, f"must be >= 1, got {s.shards_per_client}"),
        (
            "data_path",
            s.data_path is None or Path(s.data_path).is_dir(),
            f"no such directory: {s.data_path!r} (the directory that holds the dataset's files)",
        ),
        ("momentum", 0 <= s.momentum < 1, f"must be in [0, 1), got {s.momentum}"),
        ("malicious_fraction", 0 <= s.malicious_fraction < 1, f"must be in [0, 1), got {s.malicious_fraction}"),
        (
            "malicious_fraction",
            round(s.malicious_fraction * s.clients) < s.clients,
            f"{s.malicious_fraction} makes all {s.clients} clients attackers",
        ),
        ("attack_start", s.attack_start >= 0, f"must be >= 0, got {s.attack_start}"),
        (
            "attack_end",
            s.attack_end is None or s.attack_end > s.attack_start,
            f"must be > attack_start={s.attack_start}, got {s.attack_end}",
        ),
        ("attack_every", s.attack_every >= 1, f"must be >= 1, got {s.attack_every}"),
        ("root_size", s.root_size >= 1, f"must be >= 1, got {s.root_size}"),
    ]
    for key, ok, msg in checks:
        if not ok:
            raise SuiteError(f"setting.{key}", msg)
    try:
        resolve_device(s.device)
    except FlsecError as exc:
        raise SuiteError("setting.device", str(exc)) from None
    return s


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _matches(value: Any, tp: Any) -> bool:
    """Whether a TOML value fits a parameter annotation (the simple types suites use; others are not checked)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in typing.get_args(tp))
    if origin is typing.Literal:
        return value in typing.get_args(tp)
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return is_int(value)
    if tp is float:
        return is_real(value)
    if tp is str:
        return isinstance(value, str)
    if origin in (tuple, list, Sequence, collections.abc.Sequence) or tp in (tuple, list):
        return isinstance(value, list)
    return True


def _check_param_types(fn: Any, params: Mapping[str, Any], where: str, what: str, *, sub: str = ".params") -> None:
    """Each value of ``params`` against ``fn``'s annotations; the first mismatch names its key path."""
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # an annotation that cannot be resolved: leave the check to the constructor
        return
    for k, v in params.items():
        if k in hints and not _matches(v, hints[k]):
            raise SuiteError(f"{where}{sub}.{k}", f"{what} expects {_type_name(hints[k])}, got {v!r}")


def _parse_component(raw: Any, where: str, *, allow_pre: bool) -> ComponentSpec:
    if isinstance(raw, str):
        raw = {"name": raw}
    if not isinstance(raw, dict):
        raise SuiteError(where, f"must be a table with a name, got {raw!r}")
    keys = {"name", "label", "params", "pre", "secure", "dp"} if allow_pre else {"name", "label", "params"}
    _check_keys(raw, keys, where)
    piped = allow_pre and ("secure" in raw or "dp" in raw)
    name = raw.get("name", "mean" if piped else None)
    if not isinstance(name, str) or not name:
        raise SuiteError(f"{where}.name", "missing or not a string")
    params = raw.get("params", {})
    if not isinstance(params, dict):
        raise SuiteError(f"{where}.params", f"must be a table, got {params!r}")
    pre = tuple(_parse_component(p, f"{where}.pre[{i}]", allow_pre=False) for i, p in enumerate(raw.get("pre", [])))
    secure = _parse_component(raw["secure"], f"{where}.secure", allow_pre=False) if "secure" in raw else None
    dp = _parse_dp(raw["dp"], f"{where}.dp") if "dp" in raw else None
    parts = [*(p.name for p in pre), *([name] if "name" in raw or not piped else [])]
    parts += [secure.name] if secure else []
    parts += [f"dp-{dp.variant}"] if dp else []
    label = raw.get("label") or "+".join(parts)
    if not isinstance(label, str) or "__" in label or "/" in label:
        raise SuiteError(f"{where}.label", f"must be a string without '__' or '/', got {label!r}")
    return ComponentSpec(name=name, label=label, params=dict(params), pre=pre, secure=secure, dp=dp)


def _real(raw: Mapping[str, Any], key: str, where: str, *, allow_inf: bool = False) -> float | None:
    v = raw.get(key)
    if v is None:
        return None
    if not is_real(v) or not (v > 0) or (math.isinf(v) and not allow_inf):
        raise SuiteError(f"{where}.{key}", f"must be a {'' if allow_inf else 'finite '}number > 0, got {v!r}")
    return float(v)


def _parse_dp(raw: Any, where: str) -> DPSpec:
    """A ``dp`` table: variant, epsilon or noise_multiplier, delta, and the variant's own parameters."""
    if not isinstance(raw, dict):
        raise SuiteError(where, f"must be a table with a variant, got {raw!r}")
    variant = raw.get("variant")
    if not isinstance(variant, str):
        raise SuiteError(f"{where}.variant", f"missing or not a string; valid: {', '.join(DP_FEDAVG.names())}")
    if variant not in DP_FEDAVG.names():
        raise SuiteError(f"{where}.variant", f"unknown DP-FedAvg variant {variant!r}; valid: "
                                            f"{', '.join(DP_FEDAVG.names())}")
    own = dp_user_parameters(variant)
    _check_keys(raw, {"variant", "epsilon", "noise_multiplier", "delta", *own}, where)
    eps, z = _real(raw, "epsilon", where, allow_inf=True), raw.get("noise_multiplier")
    if (eps is None) == (z is None):
        raise SuiteError(where, "give exactly one of epsilon (a target, calibrated) and noise_multiplier")
    if z is not None and (not is_real(z) or not 0 <= z < math.inf):
        raise SuiteError(f"{where}.noise_multiplier", f"must be a finite number >= 0, got {z!r}")
    delta = raw.get("delta", 1e-5)
    if not is_real(delta) or not 0 < delta < 1:
        raise SuiteError(f"{where}.delta", f"must lie in (0, 1), got {delta!r}")
    params = {k: v for k, v in raw.items() if k in own}
    _check_param_types(DP_FEDAVG.get(variant).obj.__init__, params, where, f"dp {variant!r}", sub="")
    return DPSpec(variant=variant, epsilon=eps, noise_multiplier=None if z is None else float(z),
                  delta=float(delta), params=params)


def _validate_attack(spec: ComponentSpec, where: str) -> None:
    if spec.name not in attack_names():
        from fl_core.errors import UnknownNameError

        raise SuiteError(f"{where}.name", str(UnknownNameError("attack", spec.name, attack_names())))
    allowed = attack_parameters(spec.name)
    for k in spec.params:
        if k not in allowed:
            raise SuiteError(f"{where}.params.{k}", f"attack {spec.name!r} takes no {k!r}; it takes {allowed}")
    _check_param_types(attack_builder(spec.name), spec.params, where, f"attack {spec.name!r}")


def _rule_params(cls: type) -> list[str]:
    return [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "args", "kwargs")]


def _validate_rule(spec: ComponentSpec, where: str) -> None:
    for i, comp in enumerate([*spec.pre, spec]):
        key = f"{where}.pre[{i}]" if i < len(spec.pre) else where
        try:
            entry = get_rule(comp.name)
        except FlsecError as exc:
            raise SuiteError(f"{key}.name", str(exc)) from None
        want = "pre" if i < len(spec.pre) else "rule"
        if entry.kind != want:
            raise SuiteError(f"{key}.name", f"{comp.name!r} is a {entry.kind}, expected a {want} here")
        allowed = _rule_params(entry.cls)
        for k in comp.params:
            if k not in allowed:
                raise SuiteError(f"{key}.params.{k}", f"{comp.name!r} takes no {k!r}; it takes {allowed}")
        _check_param_types(entry.cls.__init__, comp.params, key, repr(comp.name))


def _validate_secure(spec: ComponentSpec, where: str) -> None:
    try:
        entry = SECURE_PROTOCOLS.get(spec.name)
    except FlsecError as exc:
        raise SuiteError(f"{where}.name", str(exc)) from None
    allowed = [p.name for p in SECURE_PROTOCOLS.parameters(spec.name)]
    for k in spec.params:  # a protocol with **params checks them itself when the pipeline is built below
        if k not in allowed and not SECURE_PROTOCOLS.takes_any(spec.name):
            raise SuiteError(f"{where}.params.{k}", f"{spec.name!r} takes no {k!r}; it takes {allowed}")
    _check_param_types(entry.obj.__init__, spec.params, where, repr(spec.name))


def _validate_defense(spec: ComponentSpec, where: str, setting: Setting) -> None:
    _validate_rule(spec, where)
    if spec.secure is not None:
        _validate_secure(spec.secure, f"{where}.secure")
    # composition, tolerance and ranges: build the pipeline and run a tiny cohort of m rows through it
    try:
        d = 4
        # d = 4: the rules that read a model's layout (DeepSight) get a stand-in with 4 parameters
        pipe = build_pipeline(spec, setting=setting, d=d, seed=0, server_update=lambda ctx: torch.ones(d) * 0.1,
                              model=torch.nn.Linear(1, 2), input_shape=(1,))
        pipe.check_cohort_size(setting.m)
        U = torch.randn(setting.m, d, generator=torch.Generator().manual_seed(0)) * 0.1
        pipe(U, torch.ones(setting.m), Round(index=0, client_ids=tuple(range(setting.m)), global_params=torch.zeros(d)))
    except FlsecError as exc:
        raise SuiteError(
            where,
            f"{spec.label!r} cannot run with clients_per_round={setting.m}, "
            f"malicious_fraction={setting.malicious_fraction}: {exc}",
        ) from None


def load_toml(text: str, *, source: str, allowed: set[str]) -> tuple[dict[str, Any], str]:
    """The suite file's table (top-level keys checked against ``allowed``) and its name."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SuiteError(source, f"malformed TOML: {exc}") from None
    _check_keys(raw, allowed, "")
    name = raw.get("name", Path(source).stem)
    if not isinstance(name, str) or not name:
        raise SuiteError("name", f"must be a non-empty string, got {name!r}")
    return raw, name


def parse_grid(raw: Mapping[str, Any]) -> tuple[tuple[ComponentSpec, ...], tuple[ComponentSpec, ...]]:
    """The ``[[attacks]]`` and ``[[defenses]]`` entries: non-empty, well-formed, distinct labels."""
    for key in ("attacks", "defenses"):
        if not isinstance(raw.get(key), list) or not raw[key]:
            raise SuiteError(key, "must be a non-empty array of tables ([[" + key + "]])")
    attacks = tuple(_parse_component(a, f"attacks[{i}]", allow_pre=False) for i, a in enumerate(raw["attacks"]))
    defenses = tuple(_parse_component(d, f"defenses[{i}]", allow_pre=True) for i, d in enumerate(raw["defenses"]))
    for key, comps in (("attacks", attacks), ("defenses", defenses)):
        labels = [c.label for c in comps]
        dup = sorted({x for x in labels if labels.count(x) > 1})
        if dup:
            raise SuiteError(key, f"duplicate labels {dup}; give each entry a distinct label")
    return attacks, defenses


def parse_suite(text: str, *, source: str = "<string>") -> SuiteSpec:
    """Parse and fully validate a suite; raises :class:`SuiteError` naming the offending key."""
    raw, name = load_toml(
        text,
        source=source,
        allowed={"name", "kind", "description", "setting", "attacks", "defenses", "paper", "sweep", "scale"},
    )
    if "kind" in raw:
        hints = {"fm": " (an FM suite: benchmarks.fm.spec.parse_fm_suite reads it; flsec suite run does)",
                 "recon": " (a reconstruction reproduction: run it with flsec reproduce)"}
        raise SuiteError("kind", f"image suites take no kind, got {raw['kind']!r}" + hints.get(str(raw["kind"]), ""))
    setting = _parse_setting(raw.get("setting", {}))
    attacks, defenses = parse_grid(raw)
    for i, a in enumerate(attacks):
        _validate_attack(a, f"attacks[{i}]")
    for i, d in enumerate(defenses):
        _validate_defense(d, f"defenses[{i}]", setting)
    sweep = _parse_sweep(raw.get("sweep", {}), raw.get("setting", {}))
    scales = parse_scales(raw.get("scale", {}), raw.get("setting", {}), lambda s, w: _parse_setting(s, where=w))
    spec = SuiteSpec(
        name=name,
        description=str(raw.get("description", "")),
        setting=setting,
        attacks=attacks,
        defenses=defenses,
        source=text,
        sweep=sweep,
        scales=scales,
    )
    # every combination of the sweep, at every scale, must run (a scale's device is checked when it is chosen)
    cpu = replace(spec, scales={k: {kk: vv for kk, vv in v.items() if kk != "device"} for k, v in scales.items()})
    for scale in (None, *scales):
        for _, sub in variants(cpu, scale=scale):
            if sub.setting != setting:
                for i, d in enumerate(defenses):
                    _validate_defense(d, f"defenses[{i}] at {_variant_label(sub, scale)}", sub.setting)
    if "paper" in raw:
        from benchmarks.reproduce.paper import parse_paper

        coords: dict[str, list[Any]] = {"attack": [a.label for a in attacks], "defense": [d.label for d in defenses]}
        coords |= {k: list(v) for k, v in sweep}
        paper = parse_paper(raw["paper"], coordinates=coords)
        if len(setting.seeds) < 3:
            raise SuiteError("setting.seeds", f"a reproduction runs at least 3 seeds by default, "
                                              f"got {list(setting.seeds)}")
        spec = replace(spec, paper=paper)
    elif sweep or scales:
        raise SuiteError("sweep" if sweep else "scale",
                         "sweeps and scales belong to reproductions: add a [paper] table")
    return spec


def _variant_label(spec: SuiteSpec, scale: str | None) -> str:
    keys = [k for k, _ in spec.sweep]
    label = ", ".join(f"{k}={getattr(spec.setting, k)}" for k in keys) or "the setting"
    return f"{label}{f' (scale {scale})' if scale else ''}"


def _parse_sweep(raw: Any, base: Mapping[str, Any]) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    """``[sweep]``: setting keys to lists of values; the grid runs once per combination."""
    if not isinstance(raw, dict):
        raise SuiteError("sweep", f"must be a table of setting keys to lists of values, got {raw!r}")
    out = []
    for k, v in raw.items():
        if k not in _SETTING_TYPES or k == "seeds":
            raise SuiteError(f"sweep.{k}", f"not a setting key that can be swept; valid: "
                                           f"{', '.join(sorted(set(_SETTING_TYPES) - {'seeds'}))}")
        if not isinstance(v, list) or not v or len(set(map(repr, v))) != len(v):
            raise SuiteError(f"sweep.{k}", f"must be a non-empty list of distinct values, got {v!r}")
        for x in v:
            _parse_setting({**base, k: x}, where=f"sweep.{k}={x!r}")
        out.append((k, tuple(v)))
    return tuple(out)


def parse_scales(raw: Any, base: Mapping[str, Any], check: Callable[[dict[str, Any], str], object], *,
                 deferred: tuple[str, ...] = ("device",)) -> dict[str, dict[str, Any]]:
    """``[scale.NAME]``: setting overrides for another scale (``paper``: the paper's setting, for a GPU).

    ``check(setting, where)`` validates the setting each scale gives (it raises :class:`SuiteError`);
    the ``deferred`` keys are checked only when the scale is chosen: a file may name CUDA for a GPU
    machine and still be read on a laptop. Used by image, FM and reconstruction files alike.

    Examples
    --------
    >>> parse_scales({"paper": {"rounds": 500, "device": "cuda"}}, {"rounds": 5}, lambda s, w: None)
    {'paper': {'rounds': 500, 'device': 'cuda'}}
    >>> parse_scales({"small": {}}, {}, lambda s, w: None)
    Traceback (most recent call last):
    ...
    benchmarks.suite.schema.SuiteError: scale.small: the small scale is the [setting] itself; name other scales only
    """
    if not isinstance(raw, dict):
        raise SuiteError("scale", f"must be a table of [scale.NAME] tables, got {raw!r}")
    out = {}
    for name, over in raw.items():
        if name == "small":
            raise SuiteError("scale.small", "the small scale is the [setting] itself; name other scales only")
        if not isinstance(over, dict):
            raise SuiteError(f"scale.{name}", f"must be a table of setting overrides, got {over!r}")
        check({**base, **{k: v for k, v in over.items() if k not in deferred}}, f"scale.{name}")
        out[name] = dict(over)
    return out


def scale_overrides(scales: Mapping[str, Mapping[str, Any]], scale: str | None,
                    seeds: Sequence[int] | None) -> dict[str, Any]:
    """The setting overrides of ``scale`` (``small`` or None: none) and of ``seeds``, checked before any work.

    Shared by image, FM and reconstruction files: the scale must be one of ``scales``, its ``device``
    available here, and ``seeds`` (which win over the scale's) distinct non-negative integers.

    Examples
    --------
    >>> scale_overrides({"paper": {"rounds": 50, "seeds": [0, 1]}}, "paper", [4, 5, 6])
    {'rounds': 50, 'seeds': (4, 5, 6)}
    >>> scale_overrides({}, "paper", None)
    Traceback (most recent call last):
    ...
    benchmarks.suite.schema.SuiteError: --scale: unknown scale 'paper'; valid: small, (none)
    """
    over: dict[str, Any] = {}
    if scale not in (None, "small"):
        if scale not in scales:
            raise SuiteError("--scale", f"unknown scale {scale!r}; valid: small, {', '.join(scales) or '(none)'}")
        over = dict(scales[scale])
        if "device" in over:
            try:
                resolve_device(over["device"])
            except FlsecError as exc:
                raise SuiteError(f"scale.{scale}.device", str(exc)) from None
    if "seeds" in over:
        over["seeds"] = tuple(over["seeds"])
    if seeds is not None:
        seeds = list(seeds)
        if not seeds or not all(is_int(s) and s >= 0 for s in seeds) or len(set(seeds)) != len(seeds):
            raise SuiteError("--seeds", f"must be distinct non-negative integers, got {seeds}")
        over["seeds"] = tuple(seeds)
    return over


def variants(
    spec: SuiteSpec, *, scale: str | None = None, seeds: Sequence[int] | None = None
) -> list[tuple[dict[str, Any], SuiteSpec]]:
    """The suites a (reproduction) suite runs: one per combination of its ``[sweep]``, at ``scale``.

    Each comes with its sweep coordinates; its ``source`` names the variant, scale and seeds, so
    each runs in its own results directory. A suite without a sweep gives itself (with the scale
    and seeds applied).

    Raises
    ------
    SuiteError
        If ``scale`` is not ``small`` nor one of the file's ``[scale.NAME]`` tables, or ``seeds`` is bad.
    """
    import itertools

    over = scale_overrides(spec.scales, scale, seeds)
    keys = [k for k, _ in spec.sweep]
    out = []
    for combo in itertools.product(*[v for _, v in spec.sweep]) if spec.sweep else [()]:
        coords = dict(zip(keys, combo, strict=True))
        values = {**over, **coords}
        setting = replace(spec.setting, **values) if values else spec.setting
        tag = ", ".join(f"{k}={v!r}" for k, v in coords.items())
        source = spec.source
        if values:
            source += f"\n# variant: {tag or '-'}; scale {scale or 'small'}; seeds {list(setting.seeds)}\n"
        out.append((coords, replace(spec, setting=setting, source=source)))
    return out


def load_suite(path_or_name: str | Path) -> SuiteSpec:
    """Load a suite file, or a built-in suite by name (``quick``, ``standard``)."""
    p = Path(path_or_name)
    if not p.is_file():
        builtin = BUILTIN_DIR / f"{path_or_name}.toml"
        if builtin.is_file():
            p = builtin
        else:
            names = sorted(f.stem for f in BUILTIN_DIR.glob("*.toml"))
            raise SuiteError(str(path_or_name), f"no such file, nor a built-in suite ({', '.join(names)})")
    return parse_suite(p.read_text(), source=str(p))
