"""FM reproductions: the [paper] and [scale] tables of an FM suite, and the verdict computed on synthetic cells.

Nothing here trains an FM: the runs replace the FM suite runner by one that writes known cell results."""

import json

import pytest
import torch

import benchmarks.reproduce.fm as repro_fm
from benchmarks.fm.spec import fm_variant, parse_fm_suite
from benchmarks.reproduce.fm import _run_source, load_fm_reproduction, run_fm_reproduction
from benchmarks.suite.spec import BUILTIN_DIR, SuiteError
from benchmarks.suite.store import ResultStore

TINY = """
name = "fm-repro-tiny"
kind = "fm"
[setting]
clients = 2
rounds = 1
trainable_layers = 1
seeds = [0, 1, 2]
[[attacks]]
name = "none"
[[attacks]]
name = "compromised-fm"
[[defenses]]
name = "none"
[[defenses]]
name = "median"
[scale.paper]
rounds = 9
trainable_layers = 2
[paper]
source = "A et al."
figure = "Table 1"
[[paper.claims]]
kind = "ordering"
metric = "final_asr"
higher = { attack = "compromised-fm" }
lower = { attack = "none" }
for_each = { defense = ["none", "median"] }
[[paper.claims]]
kind = "range"
metric = "accuracy_drop"
where = { attack = "compromised-fm", defense = ["none", "median"] }
low = -0.02
high = 0.02
"""

#: the keys of the image reproductions' verdict.json record (benchmarks.reproduce.run.run_reproduction)
RECORD_KEYS = {"name", "kind", "scale", "paper", "setting", "seeds", "cells", "command", "commit", "threads", "seconds",
               "cell_seconds", "loadavg_start", "loadavg_end", "verdict", "gap", "claims", "cells_run_now"}


def test_builtin_fm_reproduction_parses_with_paper_scale_and_3_seeds():
    spec, paper = load_fm_reproduction("fm-backdoor")
    assert spec.paper is paper and len(spec.setting.seeds) >= 3 and "paper" in spec.scales
    assert {c.metric for c in paper.claims} <= {"final_asr", "accuracy", "accuracy_drop"}
    assert {a.name for a in spec.attacks} >= {"none", "compromised-fm"}
    assert paper.values and paper.differences
    plain = parse_fm_suite((BUILTIN_DIR / "fm.toml").read_text())  # a plain FM suite is unchanged
    assert plain.paper is None and plain.scales == {}


@pytest.mark.parametrize(
    ("old", "new", "key", "match"),
    [
        ('lower = { attack = "none" }', 'lower = { attack = "fm-public-data" }', "paper.claims[0].lower.attack",
         "'fm-public-data' is not in the suite"),
        ('metric = "final_asr"', 'metric = "asr"', "paper.claims[0].metric", "unknown metric 'asr'"),
        ("for_each = { defense = [\"none\", \"median\"] }\n", "", "paper.claims[0]", "must fix defense"),
        ("seeds = [0, 1, 2]", "seeds = [0, 1]", "setting.seeds", "at least 3 seeds"),
        ("rounds = 9", "rounds = 0", "scale.paper.rounds", "must be >= 1, got 0"),
        ("rounds = 9", "round = 9", "scale.paper.round", "unknown key"),
        ("rounds = 9", 'rounds = "9"', "scale.paper.rounds", "must be int"),
        ("[scale.paper]", "[scale.small]", "scale.small", "the \\[setting\\] itself"),
        ("[scale.paper]", "[sweep]\nrounds = [1, 2]\n[scale.paper]", "sweep", "unknown key"),
    ],
)
def test_bad_fm_reproduction_tables_name_their_key(old, new, key, match):
    assert old in TINY
    with pytest.raises(SuiteError, match=match) as exc:
        parse_fm_suite(TINY.replace(old, new, 1))
    assert exc.value.key == key


def test_scale_needs_a_paper_and_suits_every_defense():
    plain = TINY[: TINY.index("[paper]")]
    with pytest.raises(SuiteError, match="add a \\[paper\\] table") as exc:
        parse_fm_suite(plain)
    assert exc.value.key == "scale"
    lora = TINY.replace("trainable_layers = 2", 'trainable_layers = 2\nmode = "lora"').replace(
        "[scale.paper]", '[[defenses]]\nname = "reinit-top"\nparams = { r = 1 }\n[scale.paper]')
    with pytest.raises(SuiteError, match="mode = 'full'") as exc:
        parse_fm_suite(lora)
    assert exc.value.key == "defenses[2] (scale paper).params.r"


def test_fm_variant_applies_scale_and_seeds():
    spec = parse_fm_suite(TINY)
    assert fm_variant(spec) is spec and fm_variant(spec, scale="small") is spec
    big = fm_variant(spec, scale="paper")
    assert (big.setting.rounds, big.setting.trainable_layers, big.setting.seeds) == (9, 2, (0, 1, 2))
    assert big.source != spec.source and "scale paper" in big.source  # its own results directory
    other = fm_variant(spec, seeds=[5, 6, 7])
    assert other.setting.seeds == (5, 6, 7) and other.setting.rounds == 1
    assert other.cells()[0].cell_id == "none__none__seed5"
    with pytest.raises(SuiteError, match="unknown scale 'huge'") as exc:
        fm_variant(spec, scale="huge")
    assert exc.value.key == "--scale"
    with pytest.raises(SuiteError, match="distinct non-negative") as exc:
        fm_variant(spec, seeds=[0, 0])
    assert exc.value.key == "--seeds"


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present here")
def test_cuda_scale_is_refused_only_when_chosen():
    spec = parse_fm_suite(TINY.replace("rounds = 9", 'rounds = 9\ndevice = "cuda"'))
    assert spec.scales["paper"]["device"] == "cuda"
    with pytest.raises(SuiteError) as exc:
        fm_variant(spec, scale="paper")
    assert exc.value.key == "scale.paper.device"


def test_load_fm_reproduction_errors(tmp_path):
    with pytest.raises(SuiteError, match="no such reproduction") as exc:
        load_fm_reproduction("no-such-thing")
    assert exc.value.key == "no-such-thing"
    with pytest.raises(SuiteError, match="not an FM suite") as exc:
        load_fm_reproduction("ndss21")
    assert exc.value.key == "kind"
    plain = tmp_path / "plain.toml"
    plain.write_text(TINY[: TINY.index("[scale.paper]")])
    with pytest.raises(SuiteError, match="without a \\[paper\\] table"):
        load_fm_reproduction(str(plain))


def test_results_directory_belongs_to_the_grid_not_the_claims():
    spec = parse_fm_suite(TINY)
    src = _run_source(spec)
    assert "[paper]" not in src and "[scale.paper]" not in src
    again = parse_fm_suite(src)
    assert (again.setting, again.attacks, again.defenses) == (spec.setting, spec.attacks, spec.defenses)
    edited = parse_fm_suite(TINY.replace("low = -0.02", "low = -0.05").replace('"A et al."', '"B et al."'))
    assert _run_source(edited) == src
    assert _run_source(parse_fm_suite(TINY.replace("rounds = 1", "rounds = 2", 1))) != src


def _fake_runner(asr: dict, acc: dict, calls: list):
    """A stand-in for run_fm_suite: writes one known result per cell (asr/acc by (attack, defense, seed))."""

    def run(spec, *, out, progress=True, console=None):
        calls.append(spec)
        store = ResultStore(out)
        store.claim(spec.source)
        results = []
        for cell in spec.cells():
            a, d, s = cell.attack.label, cell.defense.label, cell.seed
            r = {
                "suite": spec.name, "kind": "fm", "cell_id": cell.cell_id,
                "attack": {"name": cell.attack.name, "label": a, "params": cell.attack.params},
                "defense": {"name": cell.defense.name, "label": d, "params": cell.defense.params},
                "seed": s, "order": [spec.attacks.index(cell.attack), spec.defenses.index(cell.defense)],
                "setting": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(spec.setting).items()},
                "seconds": 2.0, "info": {}, "versions": {"flsec": "test"},
                "rounds": [{"round_idx": 0, "test_accuracy": acc[a, d, s], "attack_success_rate": asr[a, d, s]}],
                "summary": {"final_accuracy": acc[a, d, s], "final_asr": asr[a, d, s], "max_asr": asr[a, d, s]},
            }
            if not store.done(cell.cell_id):
                store.write(cell.cell_id, r)
            results.append(r)
        return results

    return run


def _tables(backdoor_asr_median: list[float]):
    asr, acc = {}, {}
    for s in range(3):
        for d in ("none", "median"):
            asr["none", d, s] = [0.01, 0.02, 0.015][s]
            acc["none", d, s] = [0.95, 0.96, 0.955][s]
            asr["compromised-fm", d, s] = [0.97, 0.98, 0.99][s] if d == "none" else backdoor_asr_median[s]
            acc["compromised-fm", d, s] = acc["none", d, s] - [0.005, -0.004, 0.002][s]
    return asr, acc


def test_run_on_synthetic_cells_gives_the_known_verdict_and_resumes(tmp_path, monkeypatch):
    path = tmp_path / "repro-tiny.toml"
    path.write_text(TINY)
    calls = []
    monkeypatch.setattr(repro_fm, "run_fm_suite", _fake_runner(*_tables([0.96, 0.97, 0.98]), calls))
    out = tmp_path / "out"
    rec = run_fm_reproduction(str(path), out=out, progress=False, threads=1)
    assert set(rec) == RECORD_KEYS
    assert rec["kind"] == "fm" and rec["verdict"] == "reproduced" and rec["cells"] == 12 and rec["cells_run_now"] == 12
    assert rec["seeds"] == [0, 1, 2] and rec["threads"] == 1 and rec["cell_seconds"] == pytest.approx(24.0)
    order, drop = rec["claims"]
    assert [r["status"] for r in order["rows"]] == ["holds, separated"] * 2
    assert order["rows"][0]["higher"] == "none, compromised-fm" and order["rows"][0]["lower"] == "none, none"
    assert order["rows"][0]["interval"]["mean"] == pytest.approx(0.98)
    assert [r["status"] for r in drop["rows"]] == ["within"] * 2
    assert drop["rows"][0]["interval"]["mean"] == pytest.approx(0.001)
    assert json.loads((out / "verdict.json").read_text()) == rec
    md = (out / "reproduction.md").read_text()
    assert "**Verdict: reproduced.**" in md and (out / "report.md").is_file()
    assert "[paper]" not in (out / "suite.toml").read_text()  # the store belongs to the grid
    # a rerun finds every cell done: it keeps the first run's timing and re-evaluates the claims
    edited = TINY.replace("low = -0.02\nhigh = 0.02", "low = 0.01\nhigh = 0.02")
    path.write_text(edited)
    again = run_fm_reproduction(str(path), out=out, progress=False)
    assert again["cells_run_now"] == 0 and again["seconds"] == rec["seconds"] and again["threads"] == 1
    assert [r["status"] for r in again["claims"][1]["rows"]] == ["below"] * 2
    assert again["verdict"] == "ordering only"


def test_backdoor_washed_out_under_a_rule_is_not_reproduced(tmp_path, monkeypatch):
    path = tmp_path / "repro-tiny.toml"
    path.write_text(TINY)
    monkeypatch.setattr(repro_fm, "run_fm_suite", _fake_runner(*_tables([0.01, 0.01, 0.012]), []))
    rec = run_fm_reproduction(str(path), out=tmp_path / "out", progress=False)
    rows = rec["claims"][0]["rows"]
    assert [r["status"].split(",")[0] for r in rows] == ["holds", "fails"]
    assert rec["verdict"] == "not reproduced"


def test_run_refuses_bad_input_before_any_work(tmp_path, monkeypatch):
    path = tmp_path / "repro-tiny.toml"
    path.write_text(TINY)
    calls = []
    monkeypatch.setattr(repro_fm, "run_fm_suite", _fake_runner({}, {}, calls))
    with pytest.raises(SuiteError, match="unknown scale"):
        run_fm_reproduction(str(path), scale="huge", out=tmp_path / "a")
    with pytest.raises(SuiteError, match="distinct non-negative"):
        run_fm_reproduction(str(path), seeds=[1, 1], out=tmp_path / "b")
    other = tmp_path / "c"
    ResultStore(other).claim("name = 'another suite'\n")
    with pytest.raises(SuiteError, match="different suite file"):
        run_fm_reproduction(str(path), out=other)
    assert calls == [] and not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
