"""The FM suite's stage hooks: one per registered FM attack and FM defense, built from the registries."""

import pytest

from attacks.fm.registry import FM_ATTACKS
from benchmarks.fm.hooks import (
    ATTACK_HOOKS,
    DEFENSE_HOOKS,
    CellContext,
    CellHooks,
    ClipDPHooks,
    CompromisedFMHooks,
    FinePruningHooks,
    NoHooks,
    PublicDataHooks,
    ReinitTopHooks,
    RobustRuleHooks,
    Scores,
    TriggerScanHooks,
    cell_hooks,
)
from benchmarks.fm.runner import _only
from benchmarks.fm.spec import parse_fm_suite
from benchmarks.suite.spec import BUILTIN_DIR
from defenses.fm.registry import FM_DEFENSES
from fl_core.errors import ConfigError

GRID = """
name = "hooks"
kind = "fm"
[[attacks]]
name = "none"
[[attacks]]
name = "compromised-fm"
params = { epochs = 1, layers = [5, 6] }
[[attacks]]
name = "fm-public-data"
params = { server_training = "init", poison_fraction = 0.5 }
[[defenses]]
name = "none"
[[defenses]]
name = "trigger-scan"
params = { top_k = 8 }
[[defenses]]
name = "reinit-top"
[[defenses]]
name = "clip-dp"
params = { noise_multiplier = 0.1 }
[[defenses]]
name = "fine-pruning"
params = { finetune_epochs = 1 }
[[defenses]]
name = "median"
"""

STAGES = (
    "choose_models",
    "before_encoding",
    "init_model",
    "before_training",
    "server_optimizer",
    "round_pipeline",
    "after_training",
)


def test_every_registered_name_has_a_hook_class():
    assert sorted(ATTACK_HOOKS) == FM_ATTACKS.names()
    assert sorted(DEFENSE_HOOKS) == FM_DEFENSES.names()
    assert all(issubclass(h, CellHooks) for h in [*ATTACK_HOOKS.values(), *DEFENSE_HOOKS.values()])


def test_cell_hooks_hold_the_registry_configuration_of_the_suite_parameters():
    by = {(c.attack.name, c.defense.name): cell_hooks(c) for c in parse_fm_suite(GRID).cells()}
    assert len(by) == 18
    attack, defense = by[("compromised-fm", "trigger-scan")]
    assert isinstance(attack, CompromisedFMHooks) and isinstance(defense, TriggerScanHooks)
    # given parameters are the suite's, the others the registry's defaults (read from the library signatures)
    assert attack.config.backdoor_params() == {**FM_ATTACKS.defaults("compromised-fm"), "epochs": 1, "layers": (5, 6)}
    assert defense.config == FM_DEFENSES.make("trigger-scan", top_k=8)
    attack, defense = by[("fm-public-data", "clip-dp")]
    assert isinstance(attack, PublicDataHooks) and isinstance(defense, ClipDPHooks)
    assert attack.config == FM_ATTACKS.make("fm-public-data", server_training="init", poison_fraction=0.5)
    assert attack.config.compromised
    assert defense.config == FM_DEFENSES.make("clip-dp", noise_multiplier=0.1)
    kinds = {d: type(by[("none", d)][1]) for d in ("none", "reinit-top", "fine-pruning", "median")}
    assert kinds == {
        "none": NoHooks,
        "reinit-top": ReinitTopHooks,
        "fine-pruning": FinePruningHooks,
        "median": RobustRuleHooks,
    }
    assert isinstance(by[("none", "none")][0], NoHooks)
    # hooks may keep state for one cell: every call gives fresh ones
    cell = parse_fm_suite(GRID).cells()[-1]
    assert cell_hooks(cell)[0] is not cell_hooks(cell)[0]


def test_builtin_suite_cells_all_have_hooks():
    spec = parse_fm_suite((BUILTIN_DIR / "fm.toml").read_text())
    for cell in spec.cells():
        attack, defense = cell_hooks(cell)
        assert isinstance(attack, CellHooks) and isinstance(defense, CellHooks)


def test_base_stages_are_no_ops():
    hooks, ctx = CellHooks(), object()
    for stage in ("choose_models", "before_encoding"):
        assert getattr(hooks, stage)(ctx) is None
    for stage in ("init_model", "before_training", "server_optimizer", "round_pipeline", "after_training"):
        assert getattr(hooks, stage)(ctx, None) is None
    # each hook overrides only the stages it acts in
    acts = {
        cls.__name__: sorted(s for s in STAGES if getattr(cls, s) is not getattr(CellHooks, s))
        for cls in {*ATTACK_HOOKS.values(), *DEFENSE_HOOKS.values(), RobustRuleHooks}
    }
    assert acts == {
        "NoHooks": [],
        "CompromisedFMHooks": ["choose_models"],
        "PublicDataHooks": ["before_training", "choose_models", "server_optimizer"],
        "PoisonedSamplesHooks": ["before_encoding"],
        "TriggerScanHooks": ["before_encoding"],
        "ReinitTopHooks": ["init_model"],
        "ClipDPHooks": ["round_pipeline"],
        "FinePruningHooks": ["after_training"],
        "RobustRuleHooks": ["round_pipeline"],
    }


def test_a_stage_answered_by_both_hooks_is_a_conflict():
    cell = parse_fm_suite(GRID).cells()[0]
    assert _only([None, None], "round pipeline", cell) is None
    assert _only([None, Scores(0.9, 0.1)], "final scores", cell) == Scores(0.9, 0.1)
    with pytest.raises(ConfigError, match="both the attack and the defense set the round pipeline"):
        _only([1, 2], "round pipeline", cell)


def test_context_needs_encoded_data_before_a_model():
    cell = parse_fm_suite(GRID).cells()[0]

    class Pipe:
        clean = object()

    ctx = CellContext.create(cell, parse_fm_suite(GRID).setting, Pipe())  # type: ignore[arg-type]
    assert ctx.base == ("clean", Pipe.clean) and ctx.models == {"clean": Pipe.clean} and ctx.strip == ()
    with pytest.raises(RuntimeError, match="not encoded yet"):
        ctx.new_model()
