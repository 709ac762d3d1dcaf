"""Reconstruction-attack reproductions (``kind = "recon"``): DLG, iDLG and TAG with verdicts computed from the run.

A reconstruction reproduction is a file ``benchmarks/suites/repro-NAME.toml`` with
``kind = "recon"``::

    name = "repro-idlg"
    kind = "recon"
    [setting]
    dataset = "fashion-mnist"   # fashion-mnist | digits (images), bbc-news (text: TAG on MiniLM)
    targets = 8                 # victims per seed: one gradient of one sample each
    seeds = [0, 1, 2]           # the seed picks the victims, the model's initial weights and the attack's init
    init = "uniform"            # images: the sigmoid LeNet's U(-0.5, 0.5) of Zhu et al., or "default"
    max_tokens = 12             # text: the sentence's length in tokens, [CLS] and [SEP] included

    [[attacks]]
    name = "dlg"                # a registry name (attacks.reconstruction): dlg, idlg, inverting-gradients, tag
    label = "dlg"               # optional: several entries of one attack need distinct labels
    params = { iterations = 300, line_search = false }

    [scale.paper]               # setting overrides: the paper's setting
    targets = 100

    [paper]                     # as for every reproduction (benchmarks.reproduce.paper), over RECON_METRICS
    ...

Each (attack, seed) is one cell: for every victim ``i`` the client computes the gradient of
one sample on a fresh model (:func:`attacks.reconstruction.observe_gradient`, or
:func:`~attacks.reconstruction.observe_text_gradient` for a sentence on MiniLM), the attack
sees only that :class:`~attacks.reconstruction.ServerView`, and the scoring code compares its
reconstruction with the ground truth: PSNR (best match, capped at 100 dB) and SSIM for images
(:func:`benchmarks.recon.score_images`), ROUGE-1 / ROUGE-2 F-measures (Lin 2004,
:func:`attacks.reconstruction.rouge_n`) on the decoded words for text, and the label accuracy.
The cell's metrics are the means over its victims, so every figure of the verdict is per seed,
with a 95% t-interval over seeds (:func:`benchmarks.reproduce.verdict.evaluate`). Cells are
written atomically to ``OUT/cells/LABEL__seedS.json``; a re-run skips the finished ones.

Examples
--------
>>> spec = parse_recon_reproduction('''
... kind = "recon"
... [setting]
... dataset = "digits"
... targets = 2
... seeds = [0, 1, 2]
... [[attacks]]
... name = "idlg"
... params = { iterations = 5 }
... [scale.paper]
... targets = 100
... [paper]
... source = "Zhao et al. 2020"
... figure = "Table 1"
... [[paper.claims]]
... kind = "range"
... metric = "label_accuracy"
... where = { attack = "idlg" }
... low = 1.0
... ''', source="repro-x.toml")
>>> spec.name, [c for c in spec.cells()][0], recon_variant(spec, scale="paper").setting.targets
('repro-x', ('idlg', 0), 100)
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from rich.console import Console

from benchmarks.reproduce.paper import RECON_METRICS, Paper, parse_paper
from benchmarks.reproduce.verdict import Verdict, evaluate, fmt_interval
from benchmarks.suite.schema import SuiteError
from benchmarks.suite.spec import load_toml, parse_scales, scale_overrides

__all__ = [
    "IMAGE_DATASETS",
    "TEXT_DATASETS",
    "ReconAttack",
    "ReconSetting",
    "ReconSpec",
    "load_recon_reproduction",
    "parse_recon_reproduction",
    "recon_variant",
    "run_recon_cell",
    "run_recon_reproduction",
]

log = logging.getLogger(__name__)

IMAGE_DATASETS = ("fashion-mnist", "digits")
TEXT_DATASETS = ("bbc-news",)
IMAGE_ATTACKS = ("dlg", "idlg", "inverting-gradients")
TEXT_ATTACKS = ("tag",)
_RUNNER_PARAMS = {"tag": ("special_ids",)}  # given by the runner (the tokenizer's special tokens), not the file


@dataclass(frozen=True)
class ReconSetting:
    """What one reconstruction cell runs: the data, how many victims per seed, the seeds.

    Attributes
    ----------
    dataset : str
        ``fashion-mnist`` or ``digits`` (the sigmoid LeNet of Zhu et al.), ``bbc-news`` (MiniLM).
    targets : int
        Victims per seed; each is one sample's gradient (batch 1).
    seeds : tuple of int
        One cell per attack and seed.
    init : str
        Images: the LeNet's initialisation, ``"uniform"`` (``U(-0.5, 0.5)``, the DLG code) or ``"default"``.
    max_tokens : int
        Text: tokens per sentence, special tokens included (longer sentences are truncated).
    """

    dataset: str = "fashion-mnist"
    targets: int = 4
    seeds: tuple[int, ...] = (0, 1, 2)
    init: str = "uniform"
    max_tokens: int = 12

    @property
    def modality(self) -> str:
        """``"text"`` for a text dataset, ``"image"`` otherwise."""
        return "text" if self.dataset in TEXT_DATASETS else "image"

    def describe(self) -> str:
        """One line for the report."""
        if self.modality == "text":
            return (f"{self.dataset}, MiniLM-L6 classifier (5 classes), one sentence of at most {self.max_tokens} "
                    f"tokens per gradient, {self.targets} victims per seed")
        return (f"{self.dataset}, sigmoid LeNet of Zhu et al. ({self.init} init), one image per gradient, "
                f"{self.targets} victims per seed")


@dataclass(frozen=True)
class ReconAttack:
    """One attack of the reproduction: a registry name, a label and its keyword parameters."""

    name: str
    label: str
    params: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        ps = ", ".join(f"{k}={v}" for k, v in self.params.items())
        return f"{self.label}" + (f" ({self.name}{': ' + ps if ps else ''})" if ps or self.name != self.label else "")


@dataclass(frozen=True)
class ReconSpec:
    """A parsed reconstruction reproduction; ``paper``, ``setting.seeds`` and ``scales`` as for the other kinds."""

    name: str
    description: str
    setting: ReconSetting
    attacks: tuple[ReconAttack, ...]
    source: str
    paper: Paper | None = None
    scales: dict[str, dict[str, Any]] = field(default_factory=dict)

    def cells(self) -> list[tuple[str, int]]:
        """The (attack label, seed) cells."""
        return [(a.label, s) for a in self.attacks for s in self.setting.seeds]


def _parse_setting(raw: Any, where: str) -> ReconSetting:
    if not isinstance(raw, dict):
        raise SuiteError(where, f"must be a table, got {raw!r}")
    known = {f.name for f in fields(ReconSetting)}
    for k in raw:
        if k not in known:
            raise SuiteError(f"{where}.{k}", f"unknown key; valid: {', '.join(sorted(known))}")
    values = dict(raw)
    ds = values.get("dataset", ReconSetting.dataset)
    if ds not in IMAGE_DATASETS + TEXT_DATASETS:
        raise SuiteError(f"{where}.dataset", f"must be one of {', '.join(IMAGE_DATASETS + TEXT_DATASETS)}, got {ds!r}")
    for key, low in (("targets", 1), ("max_tokens", 4)):
        v = values.get(key, getattr(ReconSetting, key))
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise SuiteError(f"{where}.{key}", f"must be an integer >= {low}, got {v!r}")
    if values.get("init", "uniform") not in ("uniform", "default"):
        raise SuiteError(f"{where}.init", f"must be 'uniform' or 'default', got {values['init']!r}")
    if "seeds" in values:
        seeds = values["seeds"]
        if (not isinstance(seeds, list) or not seeds
                or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)):
            raise SuiteError(f"{where}.seeds", f"must be a non-empty list of non-negative integers, got {seeds!r}")
        if len(set(seeds)) != len(seeds):
            raise SuiteError(f"{where}.seeds", f"has duplicates: {seeds}")
        values["seeds"] = tuple(seeds)
    return ReconSetting(**values)


def _parse_attacks(raw: Any, setting: ReconSetting) -> tuple[ReconAttack, ...]:
    from attacks.reconstruction import build_reconstruction_attack
    from fl_core.errors import ConfigError

    if not isinstance(raw, list) or not raw:
        raise SuiteError("attacks", "must be a non-empty array of tables ([[attacks]])")
    valid = TEXT_ATTACKS if setting.modality == "text" else IMAGE_ATTACKS
    out = []
    for i, a in enumerate(raw):
        where = f"attacks[{i}]"
        if not isinstance(a, dict):
            raise SuiteError(where, f"must be a table, got {a!r}")
        for k in a:
            if k not in ("name", "label", "params"):
                raise SuiteError(f"{where}.{k}", "unknown key; valid: label, name, params")
        name = a.get("name")
        if name not in valid:
            raise SuiteError(f"{where}.name", f"{name!r} is not an attack for {setting.modality} data "
                                              f"({setting.dataset}); valid: {', '.join(valid)}")
        params = a.get("params", {})
        if not isinstance(params, dict):
            raise SuiteError(f"{where}.params", f"must be a table, got {params!r}")
        for k in _RUNNER_PARAMS.get(name, ()):
            if k in params:
                raise SuiteError(f"{where}.params.{k}", "is set by the runner (from the tokenizer)")
        try:
            build_reconstruction_attack(name, **params)
        except (ConfigError, TypeError) as exc:
            raise SuiteError(f"{where}.params", str(exc)) from None
        label = a.get("label", name)
        if not isinstance(label, str) or not label:
            raise SuiteError(f"{where}.label", f"must be a non-empty string, got {label!r}")
        out.append(ReconAttack(name=name, label=label, params=dict(params)))
    labels = [a.label for a in out]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise SuiteError("attacks", f"duplicate labels {dup}; give each entry a distinct label")
    return tuple(out)


def parse_recon_reproduction(text: str, *, source: str = "<string>") -> ReconSpec:
    """Parse and validate a reconstruction reproduction; raises :class:`SuiteError` naming the offending key."""
    raw, name = load_toml(text, source=source,
                          allowed={"name", "kind", "description", "setting", "attacks", "paper", "scale"})
    if raw.get("kind") != "recon":
        raise SuiteError("kind", f"must be 'recon' for a reconstruction reproduction, got {raw.get('kind')!r}")
    base = raw.get("setting", {})
    setting = _parse_setting(base, "setting")
    attacks = _parse_attacks(raw.get("attacks"), setting)
    def check(scaled: dict[str, Any], where: str) -> None:
        if _parse_setting(scaled, where).modality != setting.modality:
            raise SuiteError(f"{where}.dataset", f"must stay {setting.modality} data like [setting]")

    scales = parse_scales(raw.get("scale", {}), base, check, deferred=())
    if "paper" not in raw:
        raise SuiteError("paper", "a reconstruction reproduction needs a [paper] table")
    paper = parse_paper(raw["paper"], coordinates={"attack": [a.label for a in attacks]}, metrics=RECON_METRICS)
    if len(setting.seeds) < 3:
        raise SuiteError("setting.seeds", f"a reproduction runs at least 3 seeds by default, got {list(setting.seeds)}")
    return ReconSpec(name=name, description=str(raw.get("description", "")), setting=setting, attacks=attacks,
                     source=text, paper=paper, scales=scales)


def load_recon_reproduction(path: str | Path) -> tuple[ReconSpec, Paper]:
    """The reconstruction reproduction in file ``path`` and its paper."""
    p = Path(path)
    spec = parse_recon_reproduction(p.read_text(), source=str(p))
    assert spec.paper is not None
    return spec, spec.paper


def recon_variant(spec: ReconSpec, *, scale: str | None = None, seeds: Sequence[int] | None = None) -> ReconSpec:
    """``spec`` at ``scale`` (``small`` or None: the ``[setting]`` itself) with ``seeds`` (None: the file's).

    Raises
    ------
    SuiteError
        For an unknown scale or a bad seed list.
    """
    over = scale_overrides(spec.scales, scale, seeds)
    setting = replace(spec.setting, **over) if over else spec.setting
    return replace(spec, setting=setting)


def _first_sentence(text: str) -> str:
    return re.split(r"(?<=[.!?])\s+", text.strip(), maxsplit=1)[0]


def _image_cell(setting: ReconSetting, attack: ReconAttack, seed: int) -> list[dict[str, float]]:
    import torch

    from attacks.reconstruction import SigmoidLeNet, build_reconstruction_attack, label_accuracy, observe_gradient
    from benchmarks.recon import score_images
    from fl_core import load_dataset
    from fl_core.rng import torch_generator

    split = load_dataset(setting.dataset)
    shape = tuple(split.test.x.shape[1:])
    data_range = float(split.train.x.max() - split.train.x.min())
    win = 11 if min(shape[1:]) >= 11 else 7
    rows = []
    for i in range(setting.targets):
        g = torch_generator(seed, 21, i)  # the victim: the model's weights and which test image
        model = SigmoidLeNet(input_shape=shape, num_classes=10, generator=g, init=setting.init)
        j = int(torch.randint(len(split.test), (1,), generator=g))
        x, y = split.test.x[j : j + 1], split.test.y[j : j + 1]
        view = observe_gradient(model, x, y)
        rec = build_reconstruction_attack(attack.name, **attack.params).reconstruct(
            view, generator=torch_generator(seed, 22, i))
        row = score_images(rec.x, x, data_range, win)
        if rec.labels is not None:
            row["label_accuracy"] = label_accuracy(rec.labels, y)
        rows.append(row)
    return rows


def _text_cell(setting: ReconSetting, attack: ReconAttack, seed: int) -> list[dict[str, float]]:
    import torch

    from attacks.reconstruction import (
        build_reconstruction_attack,
        label_accuracy,
        load_minilm,
        observe_text_gradient,
        rouge_n,
    )
    from fl_core import load_dataset
    from fl_core.rng import torch_generator

    split = load_dataset(setting.dataset)
    model, tok = load_minilm(num_classes=len(split.test.class_names), generator=torch_generator(seed, 23))
    special = tuple(tok.all_special_ids)
    rows = []
    for i in range(setting.targets):
        g = torch_generator(seed, 24, i)  # the victim: which test article (its first sentence) and its label
        j = int(torch.randint(len(split.test), (1,), generator=g))
        ids = tok(_first_sentence(split.test.texts[j]), return_tensors="pt", truncation=True,
                  max_length=setting.max_tokens)["input_ids"]
        y = split.test.y[j : j + 1]
        view = observe_text_gradient(model, ids, y)
        rec = build_reconstruction_attack(attack.name, special_ids=special, **attack.params).reconstruct(
            view, generator=torch_generator(seed, 25, i))
        ref = tok.decode(ids[0].tolist(), skip_special_tokens=True).split()
        cand = tok.decode(rec.x[0].tolist(), skip_special_tokens=True).split()
        row = {"rouge1": rouge_n(cand, ref, n=1), "label_accuracy": label_accuracy(rec.labels, y)}
        if len(ref) >= 2:
            row["rouge2"] = rouge_n(cand, ref, n=2)
        log.info("TAG victim %d (seed %d): %r -> %r, ROUGE-1 %.3f", i, seed, " ".join(ref), " ".join(cand),
                 row["rouge1"])
        rows.append(row | {"truth": " ".join(ref), "recovered": " ".join(cand)})  # type: ignore[dict-item]
    return rows


def run_recon_cell(setting: ReconSetting, attack: ReconAttack, seed: int, out: Path) -> dict[str, Any]:
    """Run (or load) the cell of ``attack`` and ``seed``: every victim scored, and the means over them.

    A finished cell of another setting or other attack parameters (a changed file) is run again.
    """
    from benchmarks.recon import _atomic_write

    path = out / "cells" / f"{attack.label}__seed{seed}.json"
    key = {"setting": {k: v for k, v in asdict(setting).items() if k != "seeds"}, "attack": asdict(attack)}
    if path.is_file():
        old = json.loads(path.read_text())
        if {"setting": old.get("setting"), "attack": old.get("attack")} == json.loads(json.dumps(key)):
            return old
        log.info("cell %s was computed for another setting; running it again", path.name)
    t0 = time.perf_counter()
    rows = (_text_cell if setting.modality == "text" else _image_cell)(setting, attack, seed)
    record: dict[str, Any] = {**key, "label": attack.label, "seed": seed, "victims": rows,
                              "seconds": time.perf_counter() - t0}
    for m in RECON_METRICS:
        vals = [r[m] for r in rows if m in r]
        record[m] = sum(vals) / len(vals) if vals else None
    _atomic_write(path, json.dumps(record, indent=1))
    return record


def _flat(record: Mapping[str, Any]) -> dict[str, Any]:
    return {"attack": record["label"], "seed": record["seed"], **{m: record.get(m) for m in RECON_METRICS}}


def run_recon_reproduction(
    name: str | Path,
    *,
    scale: str = "small",
    seeds: list[int] | None = None,
    out: str | Path | None = None,
    console: Console | None = None,
    progress: bool = True,
    command: str | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """Run (or resume) a reconstruction reproduction and write its verdict; returns the ``verdict.json`` record.

    ``name`` is the file (the dispatch in :func:`benchmarks.reproduce.run.run_reproduction` resolves
    built-in names); the record has the fields of the image reproductions' records.
    """
    from benchmarks.reproduce.record import _commit, render_reproduction, write_record

    spec, paper = load_recon_reproduction(name)
    sub = recon_variant(spec, scale=scale, seeds=seeds)
    out = Path(out) if out is not None else Path("runs") / "reproduce" / f"{spec.name}-{scale}"
    console = console or Console(stderr=True)
    commit = _commit()
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    records, ran = [], 0
    for label, seed in sub.cells():
        attack = next(a for a in sub.attacks if a.label == label)
        done = (out / "cells" / f"{label}__seed{seed}.json").is_file()
        rec = run_recon_cell(sub.setting, attack, seed, out)
        ran += not done
        if progress:
            console.print(f"[bold]{spec.name}[/] {label} seed {seed}: "
                          + ", ".join(f"{m} {rec[m]:.3f}" for m in RECON_METRICS if rec.get(m) is not None)
                          + f" ({rec['seconds']:.0f} s)")
        records.append(rec)
    seconds = time.perf_counter() - t0
    load1 = os.getloadavg()
    cells = [_flat(r) for r in records]
    verdict = evaluate(paper, cells, attacks=[a.label for a in sub.attacks])
    record = write_record(
        out, ran=ran, verdict=verdict, paper=paper, name=spec.name, kind="recon", scale=scale,
        setting=f"{sub.setting.describe()}; attacks: {'; '.join(a.describe() for a in sub.attacks)}",
        seeds=list(sub.setting.seeds), cells=len(cells),
        command=command or f"flsec reproduce {spec.name.removeprefix('repro-')} --scale {scale}", commit=commit,
        threads=threads, seconds=seconds, cell_seconds=sum(float(r.get("seconds", 0.0)) for r in records),
        loads=(load0, load1))
    (out / "reproduction.md").write_text(render_reproduction(record, verdict) + _cells_section(records, verdict))
    console.print(f"[bold]{spec.name}[/]: {verdict.verdict} ({verdict.gap}); report {out / 'reproduction.md'}")
    return record


def _cells_section(records: Sequence[Mapping[str, Any]], verdict: Verdict) -> str:
    """Per-cell figures (each seed's means over its victims), and the recovered sentences for text."""
    metrics = [m for m in RECON_METRICS if any(r.get(m) is not None for r in records)]
    lines = ["", "### Cells (per seed: mean over the seed's victims)", "",
             "| attack | seed | " + " | ".join(metrics) + " | s |", "|---" * (len(metrics) + 3) + "|"]
    for r in records:
        vals = [("" if r.get(m) is None else (f"{r[m]:.1f}" if m == "psnr" else f"{r[m]:.3f}")) for m in metrics]
        lines.append(f"| {r['label']} | {r['seed']} | " + " | ".join(vals) + f" | {r['seconds']:.0f} |")
    texts = [(r["label"], r["seed"], v) for r in records for v in r["victims"] if "truth" in v]
    if texts:
        lines += ["", "### Recovered sentences", "", "| attack | seed | true | recovered | ROUGE-1 |",
                  "|---|---|---|---|---|"]
        lines += [f"| {a} | {s} | {v['truth']} | {v['recovered']} | {v['rouge1']:.3f} |" for a, s, v in texts]
    def fig(row: Mapping[str, Any], metric: str) -> str:
        if "group" in row:
            return f"{row['group']} {fmt_interval(row['interval'], metric)}"
        return (f"{row['higher']} {fmt_interval(row['interval'], metric)} vs {row['lower']} "
                f"{fmt_interval(row['other'], metric)}")

    summary = [f"{c.claim.metric}: " + "; ".join(fig(row, c.claim.metric) for row in c.rows) for c in verdict.claims]
    return "\n".join([*lines, "", "Figures: " + " | ".join(summary), ""])
