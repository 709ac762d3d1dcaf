"""The round pipeline as one value: known answers, per-stage randomness, state, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from attacks import ALIE, IPM, ByzantineTransform, ThreatModel
from defenses.dp import CentralDPFedAvg, L2Clip
from defenses.dp.dp_fedavg import FixedDenominatorMean
from defenses.robust import Bucketing, Compose, Krum, Mean
from fl_core import Federation, LocalTrainingConfig, load_dataset, make_clients
from fl_core.aggregation import StageOutput
from fl_core.errors import ConfigError, InvalidUpdateError
from fl_core.pipeline import Pipeline, Round, StageKind
from fl_core.server_opt import FedAvg, FedAvgM
from fl_core.state import StateError
from secure_agg import SecAggPlusAggregator


def _round(r: int, n: int, d: int) -> Round:
    return Round(index=r, client_ids=tuple(range(10, 10 + n)), global_params=torch.ones(d))


def test_clip_mean_optimizer_known_answer():
    U = torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.0, -2.0]])
    pipe = Pipeline(client=[L2Clip(clip_norm=1.0)], rule=FixedDenominatorMean(denominator=4.0),
                    optimizer=FedAvg(lr=2.0))
    out = pipe(U, torch.ones(3), _round(0, 3, 2))
    want = (torch.tensor([0.6, 0.8]) + torch.tensor([0.3, 0.4]) + torch.tensor([0.0, -1.0])) / 4
    assert torch.allclose(out.delta, want) and torch.allclose(out.params, 1 + 2 * want)
    assert out.metrics["clip_norm"] == 1.0 and out.metrics["fraction_clipped"] == pytest.approx(2 / 3)
    assert torch.allclose(out.rows_seen.norm(dim=1), torch.tensor([1.0, 0.5, 1.0]))


def test_a_secure_protocol_hides_the_rows_and_gives_the_mean():
    U = torch.randn(5, 7, generator=torch.Generator().manual_seed(0)) * 0.1
    out = Pipeline(secure=SecAggPlusAggregator(clip=1.0, seed=1))(U, torch.ones(5), _round(0, 5, 7))
    assert out.rows_seen is None
    assert torch.allclose(out.delta, U.mean(0), atol=1e-4)


class _Draw:
    """A stage that records the first draw of the generator it was given, and changes nothing."""

    def __init__(self) -> None:
        self.draws: list[float] = []

    def __call__(self, x: torch.Tensor, ctx) -> torch.Tensor:
        self.draws.append(float(torch.rand(1, generator=ctx.generator)))
        return x


@pytest.mark.parametrize("attack", [IPM(epsilon=0.5), ALIE(), None])
def test_changing_the_attack_leaves_every_other_stage_draws_unchanged(attack):
    """Each stage has its own stream (seed, round, kind, position): another attack, or none, shifts nothing."""
    threat = ThreatModel(malicious=frozenset({10, 11}))
    U = torch.randn(6, 4, generator=torch.Generator().manual_seed(2))

    def draws(atk):
        client, server = _Draw(), _Draw()
        transform = None if atk is None else ByzantineTransform(attack=atk, threat=threat)
        pipe = Pipeline(attack=transform, client=[client], rule=Compose(Bucketing(s=2), Mean()), server=[server],
                        seed=9)
        outs = [pipe(U, torch.ones(6), _round(r, 6, 4)) for r in range(3)]
        return client.draws, server.draws, outs

    reference = draws(ALIE() if attack is None else None)
    got = draws(attack)
    assert got[0] == reference[0] and got[1] == reference[1]
    assert len(set(got[0] + got[1])) == 6  # every stage and round has a stream of its own


def test_central_noise_draws_do_not_depend_on_the_attack():
    threat = ThreatModel(malicious=frozenset({10}))
    U = torch.randn(5, 3000, generator=torch.Generator().manual_seed(4))
    noises = []
    for atk in (IPM(epsilon=0.5), ALIE(z=1.0)):
        dp = CentralDPFedAvg(clip_norm=1.0, noise_multiplier=1.0, expected_clients=5, sample_rate=1.0, delta=1e-5)
        out = dp.pipeline(attack=ByzantineTransform(attack=atk, threat=threat), seed=3)(U, torch.ones(5),
                                                                                          _round(0, 5, 3000))
        noises.append(out.delta - out.result.aggregate)
    assert not torch.equal(noises[0], torch.zeros(3000))
    assert torch.allclose(noises[0], noises[1], atol=1e-6)


def test_stage_streams_are_derived_from_the_documented_keys():
    from fl_core.rng import Stream, torch_generator

    server = _Draw()
    Pipeline(server=[server], seed=4)(torch.zeros(2, 3), torch.ones(2), _round(7, 2, 3))
    want = float(torch.rand(1, generator=torch_generator(4, Stream.PLUGIN, 7, StageKind.SERVER_TRANSFORM, 0)))
    assert server.draws == [want]


def _dp_pipeline() -> tuple[CentralDPFedAvg, Pipeline]:
    dp = CentralDPFedAvg(clip_norm=1.0, noise_multiplier=1.1, expected_clients=4, sample_rate=0.2, delta=1e-5)
    return dp, dp.pipeline(optimizer=FedAvgM(lr=1.0, momentum=0.9), seed=6)


def test_a_restored_pipeline_gives_the_same_epsilon_and_the_same_next_round():
    U = [torch.randn(4, 5, generator=torch.Generator().manual_seed(r)) for r in range(4)]
    dp, pipe = _dp_pipeline()
    x = torch.zeros(5)
    for r in range(2):
        x = pipe(U[r], torch.ones(4), Round(r, (0, 1, 2, 3), x)).params
    state = json.loads(json.dumps({k: v for k, v in pipe.state_dict().items() if k != "optimizer"}))
    state["optimizer"] = pipe.state_dict()["optimizer"]
    dp2, resumed = _dp_pipeline()
    resumed.load_state_dict(state)
    assert dp2.ledger.epsilon() == dp.ledger.epsilon()
    for r in range(2, 4):
        a = pipe(U[r], torch.ones(4), Round(r, (0, 1, 2, 3), x))
        b = resumed(U[r], torch.ones(4), Round(r, (0, 1, 2, 3), x))
        assert torch.equal(a.params, b.params) and a.metrics == b.metrics
        x = a.params
    assert dp2.ledger.epsilon() == dp.ledger.epsilon()


def test_pipeline_state_refuses_a_slot_it_does_not_have():
    _, pipe = _dp_pipeline()
    with pytest.raises(StateError, match=r"slots \['server.5'\]"):
        pipe.load_state_dict({"server.5": {}})


def test_a_refused_stage_state_leaves_the_whole_pipeline_as_it_was():
    """Load a good server-noise ledger and a corrupt optimiser state: the ledger is not half-restored."""
    U = torch.randn(4, 5, generator=torch.Generator().manual_seed(0))
    _, pipe = _dp_pipeline()
    pipe(U, torch.ones(4), Round(0, (0, 1, 2, 3), torch.zeros(5)))
    state = pipe.state_dict()
    dp2, fresh = _dp_pipeline()
    before = fresh.state_dict()
    bad = {**state, "optimizer": {**state["optimizer"], "version": 999}}
    assert list(bad)[-1] == "optimizer"  # the noise's ledger is loaded first, then the optimiser refuses
    with pytest.raises(StateError):
        fresh.load_state_dict(bad)
    assert fresh.state_dict() == before and dp2.ledger.epsilon() == 0.0


def test_federation_runs_the_same_pipeline_as_the_shorthand():
    split = load_dataset("digits")
    parts = [np.arange(i * 30, (i + 1) * 30) for i in range(6)]
    local = LocalTrainingConfig(max_steps=2)

    def fed(**kw):
        return Federation(model_name="mlp", clients=make_clients(split.train, parts), test_data=split.test,
                          clients_per_round=6, local=local, seed=1, **kw)

    a = fed(aggregator=Krum(f=1), update_transforms=[L2Clip(clip_norm=0.5)])
    b = fed(pipeline=Pipeline(client=[L2Clip(clip_norm=0.5)], rule=Krum(f=1), seed=1))
    ha, hb = a.run(rounds=2), b.run(rounds=2)
    assert torch.equal(a.global_params, b.global_params)
    assert [r.kept for r in ha.records] == [r.kept for r in hb.records]
    assert ha.records[-1].metrics == hb.records[-1].metrics


def test_bad_input_is_refused_with_a_specific_error():
    with pytest.raises(ConfigError, match=r"client\[0\] must be callable or have apply"):
        Pipeline(client=[3])
    with pytest.raises(ConfigError, match="optimizer must be a ServerOptimizer"):
        Pipeline(optimizer="fedavg")
    with pytest.raises(ConfigError, match="rule must be an fl_core Aggregator"):
        Pipeline(rule=lambda u: u.mean(0))
    with pytest.raises(ConfigError, match="seed must be"):
        Pipeline(seed=-1)
    pipe = Pipeline()
    with pytest.raises(ConfigError, match=r"info must be a fl_core\.pipeline\.Round"):
        pipe(torch.zeros(2, 3), torch.ones(2), (0, (1, 2), torch.zeros(3)))
    with pytest.raises(InvalidUpdateError, match=r"updates must be \(n, d\) = \(3, 3\)"):
        pipe(torch.zeros(2, 3), torch.ones(2), _round(0, 3, 3))

    class Shrinks:
        def apply(self, x, ctx):
            return StageOutput(x[:1])

    with pytest.raises(InvalidUpdateError, match=r"Shrinks returned shape \(1, 3\), expected \(2, 3\)"):
        Pipeline(client=[Shrinks()])(torch.zeros(2, 3), torch.ones(2), _round(0, 2, 3))
    with pytest.raises(ConfigError, match=r"give either pipeline or the stages \['aggregator'\]"):
        split = load_dataset("digits")
        Federation(model_name="mlp", clients=make_clients(split.train, [np.arange(10)]), test_data=split.test,
                   clients_per_round=1, pipeline=Pipeline(), aggregator=Mean())


def test_extreme_and_invalid_rows_through_the_pipeline():
    """A 3e38 row is valid input (a finite result); NaN rows, NaN weights and a stage that emits NaN are refused."""
    U = torch.randn(6, 4, generator=torch.Generator().manual_seed(3)) * 0.1
    U[0] = 3e38
    info = _round(0, 6, 4)
    out = Pipeline(client=[L2Clip(clip_norm=1.0)], rule=Krum(f=1))(U, torch.ones(6), info)
    assert torch.isfinite(out.params).all() and not bool(out.result.kept[0])
    dp = CentralDPFedAvg(clip_norm=1.0, noise_multiplier=1.0, expected_clients=6, sample_rate=1.0, delta=1e-5)
    assert torch.isfinite(dp.pipeline(rule=Krum(f=1))(U, torch.ones(6), info).params).all()
    bad = U.clone()
    bad[2, 1] = float("nan")
    with pytest.raises(InvalidUpdateError, match="non-finite"):
        Pipeline(rule=Krum(f=1))(bad, torch.ones(6), info)
    with pytest.raises(InvalidUpdateError):
        Pipeline()(U[1:], torch.tensor([1.0, float("nan"), 1.0, 1.0, 1.0]), _round(0, 5, 4))

    class EmitsNaN:
        def __call__(self, aggregate, ctx):
            return aggregate * float("nan")

    with pytest.raises(InvalidUpdateError, match="aggregate"):
        Pipeline(server=[EmitsNaN()])(U[1:], torch.ones(5), _round(0, 5, 4))
