"""Mimic (Karimireddy, He & Jaggi, ICLR 2022): the copied client, the direction over rounds, the state."""

import numpy as np
import pytest
import torch

from attacks import AttackEnv, ByzantineTransform, Mimic, ThreatModel, build_attack
from attacks.byzantine import AttackView
from fl_core.aggregation import RoundContext
from fl_core.errors import ConfigError
from fl_core.state import StateError

# honest ids 10..13, attacker 14; the largest update is client 10's, the furthest along +z is client 11's
H = torch.tensor([[-3.0, 0.0], [2.0, 0.1], [0.5, 0.4], [0.0, -0.5]])
IDS = (10, 11, 12, 13, 14)
THREAT = ThreatModel(malicious=frozenset({14}))


def _view(benign, ids, f=1, own=None):
    n = len(ids)
    ctx = RoundContext(0, tuple(ids), torch.ones(n), torch.zeros(benign.shape[1]), torch.Generator())
    return AttackView(own=benign[:f] if own is None else own, benign=benign, n=n, f=f, ctx=ctx, aggregator=None)


def _oracle(rounds, *, warmup, seed=0):
    """The paper's estimate (authors' code), in NumPy: z over the warm-up rounds and the argmax of <z, x_i>."""
    d = rounds[0].shape[1]
    z = torch.randn(d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).numpy()
    mu, picks = None, []
    for t, X in enumerate(np.asarray(r, dtype=np.float64) for r in rounds):
        if t >= warmup:
            break
        if t == 0:
            mu = X.mean(axis=0)
            c = ((X - mu) @ z) @ (X - mu)
            z = c / np.linalg.norm(c)
        else:
            mu = t / (t + 1) * mu + X.mean(axis=0) / (t + 1)
            c = ((X - mu) @ z) @ (X - mu)
            z = t / (t + 1) * z + c / np.linalg.norm(c) / (t + 1)
            z = z / np.linalg.norm(z)
        picks.append(int(np.argmax(X @ z)))
    return z, picks


def test_hand_computed_choice_and_an_exact_copy():
    # mu = (-0.125, 0); z0 = randn(seed 0) = (1.541, -0.293); one power step gives z ~ (0.9997, 0.024),
    # so <z, x_i> = (-3.0, 2.002, 0.51, -0.012): client 11, not the largest update (client 10)
    attack = Mimic(threat=THREAT)
    out = attack.craft(_view(H, IDS))
    assert attack.target == 11
    assert torch.equal(out, H[1:2])
    z = attack.direction
    assert z is not None and z[0] == pytest.approx(0.9997, abs=1e-3) and z[1] == pytest.approx(0.024, abs=2e-3)
    assert np.allclose(z.numpy(), _oracle([H], warmup=1)[0])


def test_every_attacker_sends_the_same_bit_exact_copy():
    ids = (10, 11, 12, 13, 14, 15, 16)
    threat = ThreatModel(malicious=frozenset({14, 15, 16}))
    B = H * 1.000001 + 1e-7
    out = Mimic(threat=threat).craft(_view(B, ids, f=3))
    assert out.shape == (3, 2) and all(torch.equal(row, B[1]) for row in out)


def test_the_target_is_kept_by_client_id_after_the_warmup():
    attack = Mimic(threat=THREAT)
    attack.craft(_view(H, IDS))
    # round 2: another row order and other values; client 11 is now the smallest along z, still copied
    ids = (13, 14, 11, 10, 12)
    B = torch.tensor([[9.0, 9.0], [-5.0, 0.0], [4.0, 4.0], [1.0, 1.0]])  # rows of clients 13, 11, 10, 12
    assert torch.equal(attack.craft(_view(B, ids)), B[1:2])
    assert attack.target == 11


def test_a_target_not_sampled_is_replaced_for_that_round_only():
    attack = Mimic(threat=THREAT)
    attack.craft(_view(H, IDS))
    z = attack.direction
    B = torch.tensor([[0.0, 0.0], [1.0, -3.0], [0.5, 2.0]])  # clients 10, 12, 13; 11 is not sampled
    out = attack.craft(_view(B, (10, 12, 13, 14)))
    assert torch.equal(out, B[int(torch.argmax(B.double() @ z))].unsqueeze(0)) and attack.target == 11
    assert torch.equal(attack.craft(_view(H, IDS)), H[1:2])


def test_direction_estimated_over_the_warmup_rounds_matches_the_paper_update():
    g = torch.Generator().manual_seed(3)
    rounds = [torch.randn(6, 5, generator=g) * torch.tensor([3.0, 1.0, 0.5, 0.2, 0.1]) for _ in range(4)]
    ids = (0, 1, 2, 3, 4, 5, 6)
    threat = ThreatModel(malicious=frozenset({6}))
    attack = Mimic(warmup=3, threat=threat)
    outs = [attack.craft(_view(X, ids)) for X in rounds]
    z, picks = _oracle(rounds, warmup=3)
    assert np.allclose(attack.direction.numpy(), z, atol=1e-12)
    for X, out, i in zip(rounds[:3], outs[:3], picks, strict=True):
        assert torch.equal(out, X[i : i + 1])
    assert attack.target == picks[2]
    assert torch.equal(outs[3], rounds[3][picks[2] : picks[2] + 1])  # fixed after the warm-up


def test_through_the_registry_the_malicious_rows_copy_the_chosen_honest_row():
    plan = build_attack("mimic", threat=THREAT, env=AttackEnv(num_classes=10))
    U = torch.cat([H, torch.tensor([[50.0, 50.0]])])  # client 14's own update is replaced
    ctx = RoundContext(0, IDS, torch.ones(5), torch.zeros(2), torch.Generator())
    out = plan.update_transform(U, ctx)
    assert torch.equal(out[:4], H) and torch.equal(out[4], H[1])
    assert isinstance(plan.update_transform, ByzantineTransform)
    assert plan.update_transform.attack.target == 11


def test_non_omniscient_attackers_copy_one_of_their_own_benign_updates():
    threat = ThreatModel(malicious=frozenset({1, 3}), omniscient=False)
    own = torch.tensor([[1.0, 0.0], [-1.0, 0.5]])
    attack = Mimic(threat=threat)
    out = attack.craft(_view(own, (0, 1, 2, 3), f=2, own=own))
    assert attack.target in (1, 3)
    assert torch.equal(out, own[(1, 3).index(attack.target)].expand(2, -1))


def test_without_a_threat_rows_are_their_positions():
    attack = Mimic()
    attack.craft(_view(H, IDS))
    assert attack.target == 1


def test_state_round_trip_and_resume():
    rounds = [H, H.flip(0), H * 2]
    a = Mimic(warmup=2, seed=5, threat=THREAT)
    a.craft(_view(rounds[0], IDS))
    b = Mimic(warmup=2, seed=5, threat=THREAT)
    b.load_state_dict(a.state_dict())
    for X in rounds[1:]:
        assert torch.equal(a.craft(_view(X, IDS)), b.craft(_view(X, IDS)))
    assert a.target == b.target and torch.equal(a.direction, b.direction)
    state = a.state_dict()
    assert state["rounds"] == 3 and type(state["target"]) is int and state["z"].dtype == torch.float64
    fresh = Mimic(warmup=2, seed=5)
    fresh.load_state_dict(Mimic(warmup=2, seed=5).state_dict())
    assert fresh.target is None and fresh.direction is None
    a.reset()
    assert a.target is None and a.state_dict()["rounds"] == 0


def test_bad_states_are_refused_naming_the_problem():
    a = Mimic(threat=THREAT)
    a.craft(_view(H, IDS))
    state = a.state_dict()
    with pytest.raises(StateError, match="another configuration: warmup=1 \\(this object: 2\\)"):
        Mimic(warmup=2).load_state_dict(state)
    with pytest.raises(StateError, match="target must be a client id"):
        Mimic().load_state_dict({**state, "target": "11"})
    with pytest.raises(StateError, match="rounds=0 disagrees"):
        Mimic().load_state_dict({**state, "rounds": 0})
    with pytest.raises(StateError, match="z holds NaN or Inf"):
        Mimic().load_state_dict({**state, "z": torch.tensor([float("nan"), 0.0], dtype=torch.float64)})
    with pytest.raises(StateError, match=r"mu has shape \(3,\) but z \(2,\)"):
        Mimic().load_state_dict({**state, "mu": torch.zeros(3, dtype=torch.float64)})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"warmup": 0}, "warmup must be an int >= 1, got 0"),
        ({"warmup": 1.5}, "warmup must be an int >= 1, got 1.5"),
        ({"seed": -2}, "seed must be an int >= 0, got -2"),
        ({"threat": "all"}, "threat must be a ThreatModel or None, got str"),
    ],
)
def test_invalid_parameters_are_named(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        Mimic(**kwargs)


def test_a_threat_that_does_not_fit_the_view_is_an_error():
    with pytest.raises(ConfigError, match=r"names 3 reference clients among \(10, 11, 12, 13, 14\).*view has 4"):
        Mimic(threat=ThreatModel(malicious=frozenset({13, 14}))).craft(_view(H, IDS))
