import json

import pytest

import benchmarks.suite.runner as runner_mod
from benchmarks.cli import main as cli_main
from benchmarks.suite import SuiteError, load_suite, parse_suite, render_report, run_suite
from benchmarks.suite.spec import BUILTIN_DIR

BASE = """
name = "t"
[setting]
dataset = "digits"
clients = 6
rounds = 2
local_epochs = 1
malicious_fraction = 0.34
seeds = [0, 1]
"""


def _suite(extra: str, base: str = BASE) -> str:
    return base + extra


GRID = """
[[attacks]]
name = "none"
[[attacks]]
name = "ipm"
params = { epsilon = 2.0 }
[[attacks]]
name = "backdoor"
[[defenses]]
name = "mean"
[[defenses]]
name = "median"
"""


@pytest.mark.parametrize(
    "extra, key, msg",
    [
        ("[[attacks]]\nname = 'alie'\n[[defenses]]\nname = 'mean'\nfoo = 1\n", "defenses[0].foo", "unknown key"),
        ("[[attacks]]\nname = 'aile'\n[[defenses]]\nname = 'mean'\n", "attacks[0].name", "Did you mean 'alie'"),
        ("[[attacks]]\nname = 'alie'\n[[defenses]]\nname = 'krun'\n", "defenses[0].name", "Did you mean 'krum'"),
        (
            "[[attacks]]\nname = 'ipm'\nparams = { eps = 1 }\n[[defenses]]\nname = 'mean'\n",
            "attacks[0].params.eps",
            "takes no 'eps'",
        ),
        (
            "[[attacks]]\nname = 'ipm'\n[[defenses]]\nname = 'krum'\nparams = { q = 1 }\n",
            "defenses[0].params.q",
            "takes no 'q'",
        ),
        ("[[attacks]]\nname = 'ipm'\n[[defenses]]\nname = 'krum'\n", "defenses[0]", "n > 2f + 2"),
        ("[[attacks]]\nname = 'ipm'\n", "defenses", "non-empty array"),
        ("[[attacks]]\nname = 'ipm'\n[[defenses]]\nname = 'nnm'\n", "defenses[0].name", "is a pre"),
    ],
)
def test_bad_suites_name_the_key(extra, key, msg):
    with pytest.raises(SuiteError) as exc:
        parse_suite(_suite(extra))
    assert exc.value.key == key
    assert msg in str(exc.value)


@pytest.mark.parametrize(
    "setting_line, key",
    [
        ("alpha = 0", "setting.alpha"),
        ("clients = 'ten'", "setting.clients"),
        ("malicious_fraction = 1.0", "setting.malicious_fraction"),
        ("dataset = 'cifar'", "setting.dataset"),
        ("seeds = [1, 1]", "setting.seeds"),
        ("clients_per_round = 99", "setting.clients_per_round"),
        ("roundz = 3", "setting.roundz"),
    ],
)
def test_bad_settings(setting_line, key):
    text = f"[setting]\n{setting_line}\n[[attacks]]\nname='none'\n[[defenses]]\nname='mean'\n"
    with pytest.raises(SuiteError) as exc:
        parse_suite(text)
    assert exc.value.key == key


def test_malformed_toml_and_missing_file():
    with pytest.raises(SuiteError, match="malformed TOML"):
        parse_suite("[setting\n")
    with pytest.raises(SuiteError, match="nor a built-in suite"):
        load_suite("no-such-suite")


def test_majority_violation_reported_before_work():
    text = BASE.replace("malicious_fraction = 0.34", "malicious_fraction = 0.5") + (
        "[[attacks]]\nname='ipm'\n[[defenses]]\nname='median'\n"
    )
    with pytest.raises(SuiteError, match=r"median.*n > 2f"):
        parse_suite(text)


def test_builtin_suites_parse():
    from benchmarks.fm.spec import is_fm_suite, parse_fm_suite
    from benchmarks.reproduce.recon import parse_recon_reproduction
    from benchmarks.reproduce.run import reproduction_kind

    for path in sorted(BUILTIN_DIR.glob("*.toml")):
        if reproduction_kind(path) == "recon":  # no suite grid: `flsec reproduce` runs it; suite run points there
            assert parse_recon_reproduction(path.read_text()).attacks
            with pytest.raises(SuiteError, match="a reconstruction reproduction: run it with flsec reproduce"):
                load_suite(path.stem)
            continue
        fm = is_fm_suite(path.read_text())
        spec = parse_fm_suite(path.read_text()) if fm else load_suite(path.stem)
        assert spec.cells()
        if fm:  # the image-suite parser points FM files to their own parser
            with pytest.raises(SuiteError, match="an FM suite"):
                load_suite(path.stem)


def test_builtin_image_suites_pass_the_attack_preflight():
    """Every attack of every built-in image suite builds on its data, adaptive ones (Fang, optimal ALIE) included:
    `standard` used to stop at its preflight ("FangKrum is adaptive: pass the defense as aggregator=")."""
    from benchmarks.fm.spec import is_fm_suite
    from benchmarks.suite.build import preflight_attacks
    from fl_core import load_dataset

    checked = set()
    from benchmarks.reproduce.run import reproduction_kind

    for path in sorted(BUILTIN_DIR.glob("*.toml")):
        if is_fm_suite(path.read_text()) or reproduction_kind(path) == "recon":
            continue
        spec = load_suite(path.stem)
        preflight_attacks(spec.attacks, spec.setting, load_dataset(spec.setting.dataset).train)
        checked |= {a.name for a in spec.attacks}
    assert {"fang-krum", "optimal-alie", "optimal-ipm", "mimic"} <= checked


def test_run_resume_and_report(tmp_path, monkeypatch):
    spec = parse_suite(_suite(GRID))
    assert len(spec.cells()) == 12
    calls = []
    crash = [True]
    real = runner_mod.run_cell

    def flaky(cell, *a, **k):
        calls.append(cell.cell_id)
        if len(calls) == 4 and crash[0]:
            crash[0] = False
            raise RuntimeError("simulated crash during the 4th cell")
        return real(cell, *a, **k)

    monkeypatch.setattr(runner_mod, "run_cell", flaky)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_suite(spec, out=tmp_path, progress=False)
    done = sorted(p.stem for p in (tmp_path / "cells").glob("*.json"))
    assert done == sorted(calls[:3])  # finished cells are on disk, the interrupted one is not
    assert not list((tmp_path / "cells").glob(".*.tmp"))
    calls.clear()
    results = run_suite(spec, out=tmp_path, progress=False)
    assert len(results) == 12
    assert len(calls) == 9  # resumed: only the missing cells ran
    r = json.loads((tmp_path / "cells" / "backdoor__mean__seed1.json").read_text())
    assert r["seed"] == 1 and r["attack"]["name"] == "backdoor" and len(r["rounds"]) == 2
    assert r["versions"]["torch"] and r["setting"]["clients"] == 6
    assert r["summary"]["final_asr"] is not None and 0 <= r["summary"]["final_asr"] <= 1
    assert len(r["malicious"]) == 2
    none = json.loads((tmp_path / "cells" / "none__median__seed0.json").read_text())
    assert none["malicious"] == [] and none["summary"]["final_asr"] is None
    report = render_report(tmp_path)
    text = report.read_text()
    assert "| ipm |" in text and "median" in text and "±" in text
    assert (tmp_path / "accuracy.png").stat().st_size > 1000
    assert (tmp_path / "attack_success.png").is_file()


def test_same_seed_same_cell_result(tmp_path):
    spec = parse_suite(_suite(GRID))
    cell = spec.cells()[1]
    from fl_core import load_dataset

    split = load_dataset("digits")
    a = runner_mod.run_cell(cell, spec, split)
    b = runner_mod.run_cell(cell, spec, split)
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in a["rounds"]]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in b["rounds"]]


def test_results_dir_of_another_suite_is_refused(tmp_path):
    run_suite(
        parse_suite(
            _suite("[[attacks]]\nname='none'\n[[defenses]]\nname='mean'\n").replace("seeds = [0, 1]", "seeds = [0]")
        ),
        out=tmp_path,
        progress=False,
    )
    with pytest.raises(SuiteError, match="different suite"):
        run_suite(parse_suite(_suite(GRID)), out=tmp_path, progress=False)


def test_results_dir_survives_an_edit_of_the_paper_table_only(tmp_path):
    """A reproduction's claims and prose are not what its cells depend on: editing them re-scores, not reruns."""
    from benchmarks.suite.store import ResultStore

    base = '[setting]\nrounds = 3\n[[attacks]]\nname = "none"\n[paper]\nsource = "A"\n'
    store = ResultStore(tmp_path)
    store.claim(base)
    store.check_owner(base.replace('source = "A"', 'source = "A, Table 2"\nvalues = { x = 0.5 }'))
    store.check_owner(base.replace('[paper]\nsource = "A"\n', ""))
    with pytest.raises(SuiteError, match="different suite file"):
        store.check_owner(base.replace("rounds = 3", "rounds = 4"))
    with pytest.raises(SuiteError, match="different suite file"):
        store.check_owner("not = [toml")


def test_cli_suite_errors_before_work(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[setting]\nalpha = -1\n[[attacks]]\nname='none'\n[[defenses]]\nname='mean'\n")
    assert cli_main(["suite", "run", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "setting.alpha" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_report_shows_the_most_exposed_client_beside_the_first_honest_one(tmp_path):
    """Krum's output is one client's update: the first honest client looks safe, the chosen one is exposed."""
    from benchmarks.suite.report import _privacy_sections

    def cell(defense, psnr, psnr_max):
        return {"attack": {"label": "none"}, "defense": {"label": defense}, "rounds": [{"metrics": {}}],
                "summary": {"psnr": psnr, "psnr_max": psnr_max, "final_asr": None},
                "exposure": {"attack": "ig", "observed": "aggregate"}}

    results = [cell("krum", 9.3, 33.6), cell("mean", 12.0, 14.5)]
    text = "\n".join(_privacy_sections(tmp_path, results, ["none"], ["krum", "mean"],
                                       {("none", "krum"): [0.7], ("none", "mean"): [0.8]}))
    first, worst = text.split("most exposed probe client")
    assert "| none | 9.3 | 12.0 |" in first and "| none | 33.6 | 14.5 |" in worst
    assert (tmp_path / "outcomes.png").stat().st_size > 1000


def test_an_edge_case_cell_holds_the_low_density_region_out_of_every_client():
    from benchmarks.suite.build import build_cell
    from fl_core import load_dataset

    spec = parse_suite(_suite("[[attacks]]\nname = 'edge-case'\n[[attacks]]\nname = 'none'\n"
                              "[[defenses]]\nname = 'mean'\n").replace("seeds = [0, 1]", "seeds = [0]"))
    split = load_dataset(spec.setting.dataset)
    edge_cell, plain_cell = spec.cells()
    run = build_cell(edge_cell, spec.setting, split)
    held = run.plan.exclude_train(split.train)
    assert len(held) > 0
    held_x = split.train.x[held].reshape(len(held), -1)
    for client in run.federation.clients:
        xs = client.data.x.reshape(len(client.data), -1)
        # no client input equals a held-out input (compared by content: the clients' data is a re-indexed subset)
        assert not bool((xs[:, None, :] == held_x[None, :, :]).all(-1).any())
    plain = build_cell(plain_cell, spec.setting, split)  # other attacks keep the whole training split
    assert sum(len(c.data) for c in plain.federation.clients) == len(split.train)
    assert sum(len(c.data) for c in run.federation.clients) == len(split.train) - len(held)


def test_suite_run_refuses_a_reproduction_sweep_and_a_model_too_big_for_the_data(tmp_path, capsys):
    assert cli_main(["suite", "run", "repro-byzfl-heatmap", "--out", str(tmp_path / "sweep")]) == 2
    assert "is a reproduction sweep; run it with flsec reproduce" in " ".join(capsys.readouterr().err.split())
    file = tmp_path / "lenet.toml"
    file.write_text(_suite("[[attacks]]\nname = 'none'\n[[defenses]]\nname = 'mean'\n").replace(
        'dataset = "digits"', 'dataset = "digits"\nmodel = "lenet5"'))
    with pytest.raises(SuiteError, match="use 'cnn' or 'mlp' for smaller images"):
        run_suite(load_suite(str(file)), out=tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists() and not (tmp_path / "sweep").exists()
