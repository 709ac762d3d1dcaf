"""The poisoning-attack reproductions (Fang et al. 2020, Bagdasaryan et al. 2020, DBA): fast checks of their files.

Each file must compare what its paper compares, keep its threat model at the paper scale, and (DBA) give the
distributed and the centralised attack comparable global triggers. The runs themselves are ``flsec reproduce NAME``.
"""

from dataclasses import replace

import pytest
import torch

from attacks import AttackEnv, ThreatModel
from attacks.registry import build_attack
from benchmarks.reproduce.run import load_reproduction
from benchmarks.reproduce.verdict import evaluate
from benchmarks.suite.spec import variants

NAMES = ("fang20", "bagdasaryan", "dba")
#: Fang et al.'s attacks and the rule each is tailored to.
TAILORED = {"fang-krum": "krum", "fang-trmean": "trimmed_mean"}


def _cpu(spec):
    """The spec with its scales' devices dropped, so the paper scale can be checked on a CPU-only machine."""
    return replace(spec, scales={k: {kk: vv for kk, vv in v.items() if kk != "device"} for k, v in spec.scales.items()})


def _settings(name):
    spec = _cpu(load_reproduction(name))
    ((_, paper),) = variants(spec, scale="paper")
    return spec, spec.setting, paper.setting


def _groups(claim):
    return [g for pair in claim.pairs() for g in pair] if claim.kind == "ordering" else claim.items()


@pytest.mark.parametrize("name", NAMES)
def test_paper_scale_is_a_valid_larger_run_with_a_gpu_device(name):
    raw = load_reproduction(name).scales["paper"]
    spec, small, paper = _settings(name)
    assert raw["device"] == "cuda" and len(spec.setting.seeds) >= 3
    assert paper.clients > small.clients and paper.rounds >= small.rounds


def test_fang_compares_each_tailored_attack_on_its_own_rule_with_both_baselines():
    spec, small, paper = _settings("fang20")
    groups = [g for c in spec.paper.claims for g in _groups(c)]
    for g in groups:  # a tailored attack is only ever judged against the rule it is tailored to
        assert g["attack"] not in TAILORED or TAILORED[g["attack"]] == g["defense"]
    orderings = [c for c in spec.paper.claims if c.kind == "ordering"]
    pairs = {(hi["attack"], lo["attack"], hi["defense"]) for c in orderings for hi, lo in c.pairs()}
    assert pairs == {(a, b, d) for a, d in TAILORED.items() for b in ("fang-gaussian", "label-flip")}
    assert {(g["attack"], g["defense"]) for c in spec.paper.claims if c.kind == "range" for g in c.items()} == \
        set(TAILORED.items())
    # 20% compromised worker devices, full knowledge, at both scales (Fang et al.'s default)
    assert small.malicious_fraction == paper.malicious_fraction == 0.2 and small.omniscient and paper.omniscient


def test_bagdasaryan_is_one_attacker_in_one_round_scored_right_after_it():
    spec, small, paper = _settings("bagdasaryan")
    for s in (small, paper):
        assert s.expected_f == 1 and s.m == s.clients  # the one attacker is in the cohort of the attack round
        assert s.attack_end == s.rounds and s.attack_end - s.attack_start == 1  # final_asr = ASR after replacement
    assert {c.metric for c in spec.paper.claims} == {"final_asr"}
    replacement, unboosted = (a for a in spec.attacks)
    assert (replacement.name, unboosted.name) == ("model-replacement", "backdoor")
    assert replacement.params == unboosted.params  # same trigger, target and poisoned share: only the boost differs


def _plan(attack, *, n_malicious):
    env = AttackEnv(num_classes=10, image_shape=(1, 8, 8), trigger_value=1.0)
    return build_attack(attack.name, threat=ThreatModel(malicious=frozenset(range(n_malicious))), env=env,
                        **attack.params)


def test_dba_and_centralised_triggers_are_comparable_on_digits():
    spec, small, paper = _settings("dba")
    dba, central = spec.attacks
    assert (dba.name, central.name) == ("dba", "backdoor")
    f = small.expected_f
    assert f == dba.params["parts"] == paper.expected_f  # one attacker per local pattern, at both scales
    d_plan, c_plan = _plan(dba, n_malicious=f), _plan(central, n_malicious=f)
    g_dba, g_central = d_plan.backdoor.trigger, c_plan.backdoor.trigger
    assert int(g_dba.mask.sum()) == 8 and torch.equal(g_dba.mask, g_central.mask)  # the same global trigger
    assert d_plan.backdoor.target == c_plan.backdoor.target
    local = [hooks[0].trigger.mask for _, hooks in sorted(d_plan.client_hooks.items())]
    central_local = [hooks[0].trigger.mask for _, hooks in sorted(c_plan.client_hooks.items())]
    # DBA: the attackers' local patterns are disjoint and their union is the global trigger;
    # centralised: every attacker embeds the whole global trigger
    assert int(torch.stack(local).sum()) == int(g_dba.mask.sum())
    assert torch.equal(torch.stack(local).any(dim=0), g_dba.mask)
    assert all(torch.equal(m, g_central.mask) for m in central_local)
    fractions = {h[0].poison_fraction for p in (d_plan, c_plan) for h in p.client_hooks.values()}
    assert fractions == {0.3125}  # the same poisoned share of every batch (the paper's 20/64 on MNIST)


def _synthetic_cells(spec, favour_paper: bool):
    """Three seeds of cells in which the paper's claims hold by a wide margin (or are reversed)."""
    cells = []
    for a in spec.attacks:
        for d in spec.defenses:
            strong = a.name in ("fang-krum", "fang-trmean", "model-replacement", "dba")
            if a.name in TAILORED and TAILORED[a.name] != d.label:
                strong = False
            if not favour_paper:
                strong = not strong and a.name != "none"
            for s in range(3):
                acc = (0.95 if a.name == "none" else 0.5 if strong else 0.93) + 0.001 * s
                asr = None if a.name == "none" else (0.97 if strong else 0.05) + 0.001 * s
                cells.append({"attack": a.label, "defense": d.label, "seed": s, "accuracy": acc, "asr": asr})
    return cells


@pytest.mark.parametrize("name", NAMES)
def test_claims_are_wired_to_the_grid_labels(name):
    """On cells where the paper is right by a wide margin the verdict is 'reproduced'; reversed, 'not reproduced'."""
    spec = load_reproduction(name)
    attacks = [a.label for a in spec.attacks]
    assert evaluate(spec.paper, _synthetic_cells(spec, True), attacks=attacks).verdict == "reproduced"
    assert evaluate(spec.paper, _synthetic_cells(spec, False), attacks=attacks).verdict == "not reproduced"
