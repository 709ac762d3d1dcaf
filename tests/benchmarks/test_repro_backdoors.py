"""The backdoor reproductions (issue 19): edge-case (Wang et al. 2020) and A3FL (Zhang et al. 2023).

Fast checks of what the suite files promise: the paper's claims compare each attack with the
fixed-trigger baseline under every defense its paper targets, on ``final_asr``; the small setting
builds both attacks on Fashion-MNIST; the PGD ball of the edge-case attacker is the norm bound the
defense clips to (the paper's attacker knows it), so the clip never binds on it.
"""


import pytest
import torch

from attacks import AttackEnv, ThreatModel, build_attack
from benchmarks.reproduce.run import load_reproduction, reproduction_names

#: The defenses each paper says its attack gets through, by their labels in the suite.
TARGETED = {
    "edge-case": ("edge-case-pgd", {"norm_bound", "multi_krum", "geomed"}),
    "a3fl": ("a3fl", {"flame", "multi_krum", "norm_bound", "foolsgold"}),
}
FASHION = AttackEnv(num_classes=10, image_shape=(1, 28, 28), trigger_value=2.0)


@pytest.mark.parametrize("name", sorted(TARGETED))
def test_claims_order_the_attack_above_the_fixed_trigger_under_each_targeted_defense(name):
    assert name in reproduction_names()
    spec = load_reproduction(name)
    attack, defenses = TARGETED[name]
    assert len(spec.setting.seeds) >= 3 and spec.setting.dataset == "fashion-mnist"
    assert {d.label for d in spec.defenses} >= defenses and "paper" in spec.scales
    ordering = [c for c in spec.paper.claims if c.kind == "ordering"]
    pairs = {(h["defense"], h["attack"], lo["attack"]) for c in ordering for h, lo in c.pairs()
             if c.metric == "final_asr"}
    assert {(d, attack, "backdoor") for d in defenses} <= pairs
    assert spec.paper.differences and spec.paper.figure  # the setting gap is stated, not hidden


def test_edge_case_suite_scores_held_out_digit_sevens_and_its_pgd_ball_is_the_clip_bound():
    spec = load_reproduction("edge-case")
    attacks = {a.label: a for a in spec.attacks}
    bound = {d.label: d for d in spec.defenses}["norm_bound"].params["M"]
    pgd = attacks["edge-case-pgd"].params
    assert pgd["pgd_eps"] == bound
    assert pgd["edge_source"] == attacks["edge-case"].params["edge_source"] == "digits"  # both variants, one edge set
    plan = build_attack("edge-case", threat=ThreatModel(malicious=frozenset({0})), env=FASHION, **pgd)
    edge = plan.backdoor.inputs
    sevens = 179  # scikit-learn's digits hold 179 sevens
    assert edge.shape[1:] == (1, 28, 28) and len(edge) == round(pgd.get("test_share", 0.3) * sevens)
    assert plan.exclude_train is None  # no Fashion-MNIST input lies in the edge region
    assert plan.backdoor.target == pgd["target"] != pgd["source"]


def test_a3fl_suite_scores_the_adapted_trigger_and_its_baseline_has_the_same_patch_size():
    spec = load_reproduction("a3fl")
    attacks = {a.label: a for a in spec.attacks}
    a3fl = build_attack("a3fl", threat=ThreatModel(malicious=frozenset({0, 1})), env=FASHION,
                        **attacks["a3fl"].params)
    (hook,) = a3fl.hooks(0)
    assert a3fl.backdoor.trigger is hook.trigger is a3fl.hooks(1)[0].trigger  # one trigger, adapted and scored
    side = int(torch.sqrt(hook.trigger.mask.sum()))
    assert side == attacks["backdoor"].params["trigger_size"] == 4
    assert a3fl.backdoor.target == attacks["backdoor"].params["target"]
