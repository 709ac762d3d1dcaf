"""The README's pipeline-in-your-own-loop example runs, resists two Byzantine clients and accounts epsilon."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
import torch

from defenses.dp import planned_epsilon


def _snippet() -> str:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    start = readme.index("# README: pipeline-loop")
    return readme[start : readme.index("```", start)]


def test_readme_pipeline_loop_runs_defends_and_accounts():
    namespace: dict = {}
    with contextlib.redirect_stdout(io.StringIO()) as out:
        exec(compile(_snippet(), "README-pipeline-loop", "exec"), namespace)
    assert "median: distance to w_true" in out.getvalue()
    robust, w_true = namespace["robust"], namespace["w_true"]
    assert float((robust.weight.detach().T - w_true).norm()) < 0.2  # 2 of 10 clients send -20x their update
    # the same loop with the plain mean is dragged away by the two attackers
    from fl_core.pipeline import Pipeline

    plain = torch.nn.Linear(5, 1)
    for r in range(30):
        namespace["train_round"](plain, Pipeline(seed=0), r)
    assert float((plain.weight.detach().T - w_true).norm()) > 1.0
    dp = namespace["dp"]
    want = planned_epsilon(noise_multiplier=1.0, sample_rate=1.0, rounds=30, delta=1e-5)
    assert dp.ledger.epsilon() == pytest.approx(want)
    assert namespace["out"].metrics["dp_noise_std"] == pytest.approx(0.5 / 10)  # z C / m
