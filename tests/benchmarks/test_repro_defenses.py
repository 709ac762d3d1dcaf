"""The defense/durability reproductions (issue 21): Neurotoxin, FLAME, FLTrust.

Fast checks of the built-in files ``benchmarks/suites/repro-{neurotoxin,flame,fltrust}.toml``:
they parse with their paper claims, their ``[scale.paper]`` overrides are applied by
:func:`benchmarks.suite.spec.variants`, every backdoor-success claim is about backdoor attacks,
Neurotoxin's attack window leaves the clean rounds its claim names, and Neurotoxin and its
baseline share trigger, target and poison fraction. The runs themselves are ``flsec reproduce``.
"""

from __future__ import annotations

from dataclasses import replace
from functools import cache

import pytest

from attacks import AttackSchedule, ThreatModel, build_attack
from attacks.registry import ATTACKS
from benchmarks.reproduce.paper import Claim
from benchmarks.reproduce.run import load_reproduction
from benchmarks.suite.build import attack_env
from benchmarks.suite.schema import SuiteSpec
from benchmarks.suite.spec import variants
from fl_core import load_dataset

NAMES = ["neurotoxin", "flame", "fltrust"]


@cache
def _load(name: str) -> SuiteSpec:
    """Each file parsed once per session (parsing validates every defense, which takes a moment)."""
    return load_reproduction(name)


def _cpu(spec: SuiteSpec) -> SuiteSpec:
    """The spec with its scales' device dropped (the paper scale names CUDA; the overrides are what is checked)."""
    return replace(spec, scales={k: {kk: vv for kk, vv in v.items() if kk != "device"} for k, v in spec.scales.items()})


@pytest.mark.parametrize("name", NAMES)
def test_parses_with_paper_claims_and_a_paper_scale(name: str) -> None:
    spec = _load(name)
    assert spec.paper is not None and spec.paper.claims
    assert len(spec.setting.seeds) >= 3
    assert "paper" in spec.scales


@pytest.mark.parametrize("name", NAMES)
def test_paper_scale_overrides_reach_the_setting(name: str) -> None:
    spec = _cpu(_load(name))
    ((coords, paper),) = variants(spec, scale="paper")
    assert coords == {}
    for key, value in spec.scales["paper"].items():
        assert getattr(paper.setting, key) == value, key
    # the keys the paper scale leaves alone keep the small setting's values
    untouched = {"seeds", "partition", "malicious_fraction"} - set(spec.scales["paper"])
    for key in untouched:
        assert getattr(paper.setting, key) == getattr(spec.setting, key), key
    ((_, small),) = variants(spec, scale="small")
    assert small.setting == spec.setting


def _selected_attacks(spec: SuiteSpec, claim: Claim) -> set[str]:
    labels = {a.label for a in spec.attacks}
    chosen: set[str] = set()
    for sel in (claim.higher, claim.lower, claim.for_each, claim.where):
        v = sel.get("attack")
        if v is not None:
            chosen |= set(v if isinstance(v, list) else [v])
    return chosen or labels


@pytest.mark.parametrize("name", NAMES)
def test_backdoor_success_claims_are_about_backdoor_attacks(name: str) -> None:
    spec = _load(name)
    by_label = {a.label: a.name for a in spec.attacks}
    asr_claims = [c for c in spec.paper.claims if c.metric == "final_asr"]
    for claim in asr_claims:
        for label in _selected_attacks(spec, claim):
            assert ATTACKS.get(by_label[label]).tags["kind"] == "backdoor", (claim.text, label)


@pytest.mark.parametrize("scale", ["small", "paper"])
def test_neurotoxin_window_leaves_clean_rounds_after_the_stop(scale: str) -> None:
    ((_, spec),) = variants(_cpu(_load("neurotoxin")), scale=scale)
    s = spec.setting
    schedule = AttackSchedule(start=s.attack_start, end=s.attack_end, every=s.attack_every)
    active = [r for r in range(s.rounds) if schedule.active(r)]
    assert active, "the attack never runs"
    k = s.rounds - 1 - active[-1]
    assert k == s.rounds - s.attack_end
    # "well before the last round": at least as many clean rounds after the stop as attacking rounds
    assert k >= len(active)
    if scale == "small":
        (claim,) = [c for c in spec.paper.claims if c.metric == "final_asr"]
        assert f"k = {k} " in claim.text


def test_neurotoxin_and_its_baseline_share_trigger_target_and_poison_fraction() -> None:
    spec = _load("neurotoxin")
    attacks = {a.name: a for a in spec.attacks}
    base, nt = attacks["backdoor"], attacks["neurotoxin"]
    extra = set(nt.params) - set(base.params)
    assert extra <= {"mask_ratio", "norm_bound"}
    assert {k: nt.params[k] for k in base.params} == base.params
    env = attack_env(load_dataset("digits").train)
    threat = ThreatModel(malicious=frozenset({1, 3}))
    plans = {n: build_attack(n, threat=threat, env=env, aggregator=None, **attacks[n].params) for n in attacks}
    a, b = plans["backdoor"].backdoor, plans["neurotoxin"].backdoor
    assert a.target == b.target
    assert bool((a.trigger.mask == b.trigger.mask).all()) and a.trigger.value == b.trigger.value
