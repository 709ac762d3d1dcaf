"""``flsec bench two-server`` on a tiny grid: report structure, finite ratios, bytes as the wire formulas say."""

from __future__ import annotations

import json
import math

import pytest

from benchmarks.bench_twoserver import GOALS, RULES, make_cohort, run_twoserver_bench
from benchmarks.cli import build_parser, main
from fl_core.errors import ConfigError
from secure_agg.twoserver import TwoServerParams

N, D = 10, 1000


@pytest.fixture(scope="module")
def report() -> dict:
    return run_twoserver_bench(ns=[N], ds=[D], rules=["norm_bound", "krum"], plain_repeats=1)


def test_report_structure(report: dict) -> None:
    assert set(report) == {"goals", "rows", "secagg", "environment"}
    assert [(r["n"], r["d"], r["rule"], r["status"]) for r in report["rows"]] == [
        (N, D, "norm_bound", "ok"),
        (N, D, "krum", "ok"),
    ]
    assert report["secagg"][0]["status"] == "ok" and report["secagg"][0]["secagg_server_s"] > 0
    assert report["environment"]["wall_s"] > 0
    for row in report["rows"]:
        assert set(row["goals_met"]) == {"online_over_plain", "upload_over_f32", "peer_over_cohort"}
        assert row["goals_met"]["online_over_plain"] == (
            row["online_over_plain"] <= GOALS["online_over_plain"][row["rule"]]
        )
        assert row["accepted"] == N - 1  # row 0 is three times the bound: validation rejects it


def test_ratios_positive_and_finite(report: dict) -> None:
    for row in report["rows"]:
        for key in ("online_over_plain", "online_over_secagg", "upload_over_f32", "peer_over_cohort",
                    "plain_s", "online_s0", "online_s1", "dealer_s", "client_s"):
            assert math.isfinite(row[key]) and row[key] > 0, (row["rule"], key, row[key])
        assert row["online_max_s"] == max(row["online_s0"], row["online_s1"])


def test_bytes_match_the_formulas(report: dict) -> None:
    bound = make_cohort(N, D, 0)[2]
    triples = len(TwoServerParams.from_bound(d=D, bound=bound).levels) + 1
    for row in report["rows"]:
        assert row["triples"] == triples
        # one seed to S0, one ring vector to S1, plus headers, nonces, tags and the weight
        assert 8 * D <= row["client_upload_B"] <= 8 * D + 300
        assert row["upload_over_f32"] == pytest.approx(row["client_upload_B"] / (4 * D))
        # each direction: E for every triple (n d words each) and the aggregate share (d words),
        # plus the O(n^2) scalars (norms per level, the Gram matrix) and frame overheads
        for key in ("peer_B_s0_to_s1", "peer_B_s1_to_s0"):
            bulk = 8 * (triples * N * D + D)
            assert bulk <= row[key] <= bulk + 8 * (triples * N + N * N) + 1000, (row["rule"], key)
        assert row["peer_B_total"] == row["peer_B_s0_to_s1"] + row["peer_B_s1_to_s0"]
        assert row["peer_over_cohort"] == pytest.approx(row["peer_B_total"] / (8 * N * D))
        # the dealer sends seeds (and O(n^2) corrections to S1), never O(n d)
        assert 0 < row["dealer_B_s0"] < 1000 and 0 < row["dealer_B_s1"] < 8 * (triples * N + N * N) + 1000


def test_skips_what_does_not_fit_and_refuses_unknown_rules() -> None:
    rep = run_twoserver_bench(ns=[5], ds=[100], rules=["krum"], mem_fraction=1e-9, secagg_max=0)
    assert rep["rows"][0]["status"].startswith("skipped: projected peak")
    with pytest.raises(ConfigError):
        run_twoserver_bench(ns=[5], ds=[100], rules=["median"])
    assert set(GOALS["online_over_plain"]) <= set(RULES)


def test_cli_registers_two_server(tmp_path) -> None:
    sub = next(a for a in build_parser()._subparsers._group_actions if a.dest == "command")
    bench = sub.choices["bench"]
    assert "two-server" in next(a for a in bench._subparsers._group_actions).choices
    code = main(["bench", "two-server", "--n", "5", "--d", "200", "--rules", "fltrust", "--plain-repeats", "1",
                 "--out", str(tmp_path)])
    assert code == 0
    data = json.loads((tmp_path / "bench_twoserver.json").read_text())
    assert data["rows"][0]["rule"] == "fltrust" and data["rows"][0]["status"] == "ok"
    assert (tmp_path / "bench_twoserver.csv").stat().st_size > 0


def test_floors_are_one_opening_plus_the_rules_own_product() -> None:
    report = run_twoserver_bench(ns=[6], ds=[3000], rules=["krum", "norm_bound"], secagg_max=0, floors=True)
    rows = {r["rule"]: r for r in report["rows"]}
    for name, product in (("krum", "floor_gram_s"), ("norm_bound", "floor_row_sums_s")):
        r = rows[name]
        assert r["floor_s"] == r["floor_opening_s"] + r[product] and r["floor_s"] > 0
        assert r["floor_over_plain"] == r["floor_s"] / r["plain_s"]
    # the same (n, d) is measured once: both rows carry the same parts
    assert rows["krum"]["floor_opening_s"] == rows["norm_bound"]["floor_opening_s"]
    assert "floor_s" not in run_twoserver_bench(ns=[6], ds=[300], rules=["krum"], secagg_max=0)["rows"][0]
