"""A suite's defense axis takes pipelines: robust rules, DP with a target epsilon, secure protocols, compositions."""

from __future__ import annotations

import math

import pytest

from benchmarks.suite.runner import run_suite
from benchmarks.suite.spec import SuiteError, load_suite, parse_suite
from defenses.dp import planned_epsilon

HEAD = """
name = "t"
[setting]
dataset = "digits"
clients = 6
rounds = 2
local_epochs = 1
malicious_fraction = 0.2
[[attacks]]
name = "none"
"""


def _suite(defenses: str):
    return parse_suite(HEAD + defenses)


def test_defense_entries_become_pipelines_with_default_labels():
    spec = _suite("""
[[defenses]]
name = "median"
[[defenses]]
dp = { variant = "central", epsilon = 4.0, clip_norm = 1.0 }
[[defenses]]
name = "krum"
dp = { variant = "central", noise_multiplier = 0.5, clip_norm = 1.0 }
[[defenses]]
secure = { name = "secagg_plus", params = { clip = 1.0 } }
[[defenses]]
secure = { name = "secagg-plus", params = { clip = 1.0 } }
dp = { variant = "distributed", epsilon = 8.0, clip_norm = 1.0, bits = 20 }
[[defenses]]
dp = { variant = "local", epsilon = 50.0, clip_norm = 1.0 }
""")
    assert [d.label for d in spec.defenses] == [
        "median", "dp-central", "krum+dp-central", "secagg_plus", "secagg-plus+dp-distributed", "dp-local"
    ]
    assert spec.defenses[1].dp.epsilon == 4.0 and spec.defenses[2].dp.noise_multiplier == 0.5


@pytest.mark.parametrize(
    ("entry", "match"),
    [
        ('secure = { name = "secagg_plus", params = { clip = 1.0 } }\nname = "krum"',
         r"defenses\[0\]: .*Krum needs the plaintext rows, which SecAggPlusAggregator hides"),
        ('name = "foolsgold"\ndp = { variant = "central", epsilon = 4.0, clip_norm = 1.0 }',
         r"defenses\[0\]: .*FoolsGold declares none"),
        ('secure = { name = "bfv", params = { clip = 1.0 } }\n'
         'dp = { variant = "central", epsilon = 4.0, clip_norm = 1.0 }', r"central DP adds the server's noise"),
        ('name = "median"\ndp = { variant = "distributed", epsilon = 4.0, clip_norm = 1.0 }',
         r"no robust rule \('median\+dp-distributed'\) can run"),
        ('dp = { variant = "central", epsilon = 4.0, clip_norm = 1.0, zz = 1 }', r"defenses\[0\]\.dp\.zz: unknown key"),
        ('dp = { variant = "centrl", epsilon = 4.0 }', r"defenses\[0\]\.dp\.variant: unknown DP-FedAvg variant"),
        ('dp = { variant = "central", clip_norm = 1.0 }', r"defenses\[0\]\.dp: give exactly one of epsilon"),
        ('dp = { variant = "central", epsilon = -1.0, clip_norm = 1.0 }', r"defenses\[0\]\.dp\.epsilon: must be"),
        ('dp = { variant = "central", epsilon = 4.0, clip_norm = "1" }', r"defenses\[0\]\.dp\.clip_norm: dp 'central'"),
        ('secure = { name = "secag", params = { clip = 1.0 } }', r"defenses\[0\]\.secure\.name: unknown secure"),
        ('secure = { name = "bfv", params = { clip = 1.0, bits = 3 } }', r"defenses\[0\]\.secure\.params\.bits"),
    ],
)
def test_a_bad_pipeline_entry_names_its_key_before_any_work(entry, match):
    with pytest.raises(SuiteError, match=match):
        _suite("[[defenses]]\n" + entry + "\n")


def test_threat_suites_parse():
    spec = load_suite("threat")
    assert len(spec.cells()) == 65
    assert [d.label for d in spec.defenses] == [
        "mean", "median", "flame", "krum", "fltrust", "central-dp-eps4", "secagg+", "secagg+ddp-eps4", "bfv-he",
        "grouped-secagg+median", "two-server+krum", "two-server+fltrust", "two-server+flame",
    ]
    two_server = {d.label: d for d in spec.defenses if d.secure is not None and d.secure.name == "two_server"}
    assert {label: d.name for label, d in two_server.items()} == {
        "two-server+krum": "krum", "two-server+fltrust": "fltrust", "two-server+flame": "flame"
    }
    short = load_suite("threat-short")  # make demo's
    assert [a.label for a in short.attacks] == ["none", "model-replacement", "pixel-backdoor"]
    assert len(short.cells()) == 27
    assert {d.label for d in short.defenses} == {d.label for d in spec.defenses} - {
        "krum", "fltrust", "two-server+fltrust", "two-server+flame"
    }


def test_dp_and_secure_cells_report_epsilon_and_match_plaintext(tmp_path):
    spec = _suite("""
[[defenses]]
name = "mean"
[[defenses]]
label = "cdp"
dp = { variant = "central", epsilon = 8.0, clip_norm = 1.0 }
[[defenses]]
label = "sa"
secure = { name = "secagg_plus", params = { clip = 10.0 } }
""")
    results = {r["defense"]["label"]: r for r in run_suite(spec, out=tmp_path, progress=False)}
    cdp = results["cdp"]["summary"]["epsilon"]
    # calibrated to the target: the ledger's epsilon is at most 8 and within 0.5 % of it
    assert 8.0 * 0.995 <= cdp <= 8.0
    z = results["cdp"]["rounds"][-1]["metrics"]["dp_noise_multiplier"]
    assert cdp == pytest.approx(planned_epsilon(noise_multiplier=z, sample_rate=1.0, rounds=2, delta=1e-5))
    assert results["mean"]["summary"]["epsilon"] is None and results["sa"]["summary"]["epsilon"] is None
    # SecAgg+ computes the same weighted mean up to quantisation: the same accuracy
    acc_mean, acc_sa = (results[k]["summary"]["final_accuracy"] for k in ("mean", "sa"))
    assert math.isclose(acc_mean, acc_sa, abs_tol=0.02)
