"""Adaptive attacks probe a copy of the defense in the live round's context (FLTrust's root update needs it)."""

from __future__ import annotations

import torch

from attacks.byzantine import ByzantineTransform
from attacks.optimal import OptimalALIE
from attacks.optimized import FangKrum
from attacks.threat import ThreatModel
from defenses.robust import FLTrust
from fl_core.aggregation import RoundContext


def _fltrust_reading_the_round() -> tuple[FLTrust, list]:
    seen: list = []

    def root_update(ctx: RoundContext) -> torch.Tensor:  # as fl_core.root_update does: starts from x
        seen.append(ctx.global_params.clone())
        return torch.ones_like(ctx.global_params)

    return FLTrust(server_update=root_update), seen


def test_optimal_alie_and_fang_krum_probe_fltrust_with_the_rounds_global_params():
    x = torch.full((4,), 0.5)
    updates = torch.randn(7, 4, generator=torch.Generator().manual_seed(0))
    ctx = RoundContext(3, tuple(range(7)), torch.ones(7), x, torch.Generator().manual_seed(1))
    threat = ThreatModel(malicious=frozenset({0, 1}))
    for attack in (OptimalALIE(points=3, refine=2), FangKrum()):
        rule, seen = _fltrust_reading_the_round()
        out = ByzantineTransform(attack=attack, threat=threat, aggregator=rule).apply(updates, ctx)
        assert seen and all(torch.equal(s, x) for s in seen)  # every probe saw the live round's x
        assert torch.equal(out.value[2:], updates[2:]) and bool(torch.isfinite(out.value).all())
