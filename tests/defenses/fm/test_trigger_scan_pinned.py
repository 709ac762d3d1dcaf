"""Characterisation of :func:`defenses.fm.trigger_scan.scan_for_triggers` on a small fixed input.

Recorded from the implementation before the scan was split into named steps (issue 14),
so that refactoring keeps the outputs: the stage-1 candidates, the reference draw from the
seeded generator, the tested order, the scores and z-scores, and the flagged order. Scores
are compared to 1e-4 (z to 1e-3) so the pins survive another BLAS; the token lists are exact.
"""

from __future__ import annotations

import pytest
import torch

from defenses.fm.trigger_scan import scan_for_triggers
from fl_core.foundation import load_encoder

TEXTS = [
    "The company reported record sales in the final quarter.",
    "Stock markets in Asia closed lower on Friday.",
    "The goalkeeper saved a late penalty to secure the draw.",
    "The band released its first album in ten years.",
]
KW = {"max_length": 16, "top_k": 4, "reference": 8}

CANDIDATES = ("spill", "hulk", "arsenic", "cher")
SCORES = {  # tested order: the candidates, then the seeded reference draw
    "spill": 0.2795, "hulk": 0.4067, "arsenic": 0.4001, "cher": 0.3985,
    "demonstrate": 0.2092, "sacrificed": 0.2780, "boise": 0.3934, "musa": 0.4139,
    "tune": 0.1838, "mocking": 0.3299, "rival": 0.2285, "redwood": 0.3046,
}  # fmt: skip
Z_SCORES = {
    "spill": 0.019, "hulk": 1.674, "arsenic": 1.588, "cher": 1.567,
    "demonstrate": -0.895, "sacrificed": 0.0, "boise": 1.501, "musa": 1.767,
    "tune": -1.226, "mocking": 0.674, "rival": -0.645, "redwood": 0.346,
}  # fmt: skip


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def fm() -> tuple[torch.nn.Module, object]:
    return load_encoder()


def test_scan_matches_the_recorded_result(fm: tuple[torch.nn.Module, object]):
    enc, tok = fm
    res = scan_for_triggers(enc, tok, TEXTS, generator=torch.Generator().manual_seed(3), **KW)
    assert res.candidates == CANDIDATES
    assert list(res.scores) == list(SCORES)
    assert res.scores == pytest.approx(SCORES, abs=1e-4)
    assert list(res.z_scores) == list(Z_SCORES)
    assert res.z_scores == pytest.approx(Z_SCORES, abs=1e-3)
    assert res.flagged == ()
    assert res.n_texts == len(TEXTS)


def test_flagged_order_is_by_score(fm: tuple[torch.nn.Module, object]):
    """Loose cut-offs flag several tokens: highest collapse score first."""
    enc, tok = fm
    res = scan_for_triggers(
        enc, tok, TEXTS, generator=torch.Generator().manual_seed(3), z_threshold=1.0, min_collapse=0.0, **KW
    )
    assert res.flagged == ("musa", "hulk", "arsenic", "cher", "boise")
    assert (res.z_threshold, res.min_collapse) == (1.0, 0.0)
