"""`flsec list`: every family, names, descriptions, parameters with defaults, and --family."""

from __future__ import annotations

import pytest

from benchmarks.cli import build_parser, main
from benchmarks.list_cmd import load_all, parameter_text, registries, select
from fl_core.errors import UnknownNameError

FAMILIES = [
    "dataset",
    "model",
    "partition scheme",
    "server optimizer",
    "robust aggregator",
    "DP mechanism",
    "DP-FedAvg variant",
    "secure aggregation protocol",
    "attack",
    "reconstruction attack",
    "FM attack",
    "FM defense",
]


def test_every_family_is_listed() -> None:
    families = load_all()
    assert set(FAMILIES) <= set(families)
    titles = registries()
    assert len(titles) == len(families)
    for reg in families.values():
        assert titles[reg.title] == reg.descriptions() and titles[reg.title]


def test_parameter_text_shows_defaults_and_required() -> None:
    families = load_all()
    assert parameter_text(families["robust aggregator"], "norm_bound") == "f=0, M (required), reject=False"
    assert parameter_text(families["server optimizer"], "fedavgm") == "lr=1.0, momentum=0.9"
    assert parameter_text(families["partition scheme"], "iid") == ""
    assert "dropout_stage=MASKED_INPUT" in parameter_text(families["secure aggregation protocol"], "secagg")
    assert parameter_text(families["FM defense"], "clip-dp") == "clip_norm=1.0, noise_multiplier=0.01"


def test_select_filters_by_family_and_names_unknown_ones() -> None:
    families = load_all()
    assert set(select(families, "dp")) == {"DP mechanism", "DP-FedAvg variant"}
    assert set(select(families, "secure")) == {"secure aggregation protocol"}
    assert select(families, None) == families
    with pytest.raises(UnknownNameError, match="unknown registry family 'dpp'"):
        select(families, "dpp")


def test_flsec_list_prints_every_family(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for needle in ("DP mechanism", "secure aggregation protocol", "FM defense", "multi_krum", "secagg_plus"):
        assert needle in out
    assert "[rule]" in out  # tags are shown, not eaten as markup


def test_flsec_list_family_filter(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "--family", "dp"]) == 0
    out = capsys.readouterr().out
    assert "gaussian" in out and "central" in out and "krum" not in out
    assert main(["list", "--family", "nope"]) == 2
    assert "unknown registry family 'nope'" in capsys.readouterr().err


def test_help_names_the_families() -> None:
    parser = build_parser()
    text = parser.format_help()
    assert "list" in text and "DP mechanisms" in text and "secure-aggregation protocols" in text


def test_verbose_flag_turns_on_info_logs_even_when_an_import_added_a_root_handler():
    import logging

    from rich.logging import RichHandler

    root = logging.getLogger()
    saved = (root.level, list(root.handlers))
    try:
        root.addHandler(logging.StreamHandler())  # what an imported library may do before the CLI configures logging
        assert main(["-v", "list"]) == 0
        assert root.level == logging.INFO and [type(h) for h in root.handlers] == [RichHandler]
    finally:
        root.handlers[:] = saved[1]
        root.setLevel(saved[0])
