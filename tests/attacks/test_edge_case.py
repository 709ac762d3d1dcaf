"""The edge-case backdoor (Wang et al. 2020): the tail rule, hold-out, mixing ratio, PGD ball, metric, errors."""

import numpy as np
import pytest
import torch

from attacks import (
    AttackEnv,
    AttackSchedule,
    Backdoor,
    EdgeCaseMix,
    EdgeCaseSet,
    ThreatModel,
    attack_success_rate,
    build_attack,
)
from attacks.edge_case import load_edge_case_set, tail_indices
from fl_core import LocalTrainingConfig, build_model, load_dataset, make_clients, partition
from fl_core.aggregation import RoundContext
from fl_core.data.dataset import ArrayDataset
from fl_core.errors import ConfigError
from fl_core.params import flatten_params
from fl_core.rng import numpy_generator
from fl_core.training import local_train

DIGITS = AttackEnv(num_classes=10, image_shape=(1, 8, 8), trigger_value=1.8)
THREAT = ThreatModel(malicious=frozenset({0}))


def test_tail_rule_picks_the_farthest_inputs_ties_to_the_lower_index():
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0], [1.0, 0.0], [0.0, -5.0], [2.0, 0.0], [-1.0, 1.0]])
    # distances from (0, 0): 0, 5, 1, 5, 2, sqrt(2)
    assert tail_indices(x, center=torch.zeros(2), k=2).tolist() == [1, 3]
    assert tail_indices(x, center=torch.zeros(2), k=4).tolist() == [1, 3, 4, 5]
    # another centre moves the tail: from (3, 4) the farthest is (0, -5) (distance sqrt(90))
    assert tail_indices(x, center=torch.tensor([3.0, 4.0]), k=1).tolist() == [3]
    with pytest.raises(ConfigError, match=r"tail size k must be in \[1, 6\], got 0"):
        tail_indices(x, center=torch.zeros(2), k=0)
    with pytest.raises(ConfigError, match="center has 3 values but the inputs have 2"):
        tail_indices(x, center=torch.zeros(3), k=1)


def test_edge_case_set_is_the_source_tail_of_the_pool_split_into_disjoint_parts():
    # pool: class 7 at distances 1..8 from the training mean of class 7 (the origin), class 2 far away
    train_x = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [50.0, 50.0]]).reshape(3, 1, 1, 2)
    train_y = torch.tensor([7, 7, 2])
    pool = torch.tensor([[float(d), 0.0] for d in (3, 8, 1, 6, 2, 7, 4, 5)] + [[100.0, 100.0]]).reshape(9, 1, 1, 2)
    pool_y = torch.tensor([7] * 8 + [2])
    edge = EdgeCaseSet.from_split(train_x=train_x, train_y=train_y, pool_x=pool, pool_y=pool_y, source=7, target=1,
                                  tail_fraction=0.5, test_share=0.5, seed=0)
    assert edge.tail.tolist() == [1, 5, 3, 7]  # distances 8, 7, 6, 5: the far class-2 input is not a candidate
    assert len(edge.test_idx) == 2 and len(edge.train_idx) == 2
    assert set(edge.train_idx) | set(edge.test_idx) == {1, 5, 3, 7}
    assert not set(edge.train_idx) & set(edge.test_idx)
    assert torch.equal(edge.train_x, pool[edge.train_idx]) and torch.equal(edge.test_x, pool[edge.test_idx])
    again = EdgeCaseSet.from_split(train_x=train_x, train_y=train_y, pool_x=pool, pool_y=pool_y, source=7, target=1,
                                   tail_fraction=0.5, test_share=0.5, seed=0)
    assert again.test_idx.tolist() == edge.test_idx.tolist()  # the split is a function of the seed
    # ceil(0.3 * 8) = 3 tail inputs, round(0.3 * 3) = 1 of them held out for the test
    small = EdgeCaseSet.from_split(train_x=train_x, train_y=train_y, pool_x=pool, pool_y=pool_y, source=7, target=1,
                                   tail_fraction=0.3, test_share=0.3, seed=1)
    assert small.tail.tolist() == [1, 5, 3] and len(small.test_idx) == 1


def test_digits_edge_cases_come_from_the_test_split_and_no_client_holds_one():
    split = load_dataset("digits")
    edge = load_edge_case_set("digits", source=7, target=1, tail_fraction=0.5, test_share=0.3, seed=0)
    sevens = np.flatnonzero(split.test.labels == 7)
    assert set(edge.tail) <= set(sevens.tolist()) and len(edge.tail) == int(np.ceil(0.5 * len(sevens)))
    mu = split.train.x[split.train.y == 7].reshape(-1, 64).mean(dim=0)
    dist = (split.test.x.reshape(-1, 64) - mu).norm(dim=1)
    far_rest = dist[np.setdiff1d(sevens, edge.tail)].max()
    assert bool((dist[edge.tail] >= far_rest).all())  # every tail input is farther than every other 7
    parts = partition(split.train.labels, scheme="iid", n_clients=6, generator=numpy_generator(0, 1))
    held = torch.cat([edge.train_x, edge.test_x]).reshape(-1, 64)
    for client in make_clients(split.train, parts):
        assert float(torch.cdist(held, client.data.x.reshape(-1, 64)).min()) > 0.0
    # the p-edge-case region in the training split: the 7s at least as far from mu as the nearest tail input
    assert edge.radius == pytest.approx(float(dist[edge.tail].min()))
    drop = edge.holdout(split.train)
    d_train = (split.train.x.reshape(-1, 64) - mu).norm(dim=1)
    expected = np.flatnonzero((split.train.labels == 7) & (d_train.numpy() >= edge.radius - 1e-5))
    assert drop.tolist() == expected.tolist() and 0 < len(drop) < int((split.train.labels == 7).sum())
    plan = build_attack("edge-case", threat=THREAT, env=DIGITS, tail_fraction=0.5)
    assert plan.exclude_train is not None and plan.exclude_train(split.train).tolist() == drop.tolist()


def test_cross_domain_digits_are_the_source_digits_in_mnist_layout_and_nothing_is_held_out():
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    edge = load_edge_case_set("fashion-mnist", source=7, target=1, tail_fraction=0.1, test_share=0.3, seed=3,
                              edge_source="digits")
    sevens = np.flatnonzero(bunch.target == 7)
    assert edge.tail.tolist() == sevens.tolist()
    assert sorted([*edge.train_idx, *edge.test_idx]) == sevens.tolist() and not set(edge.train_idx) & set(edge.test_idx)
    assert len(edge.test_idx) == round(0.3 * len(sevens)) and edge.train_x.shape == (len(edge.train_idx), 1, 28, 28)
    black = -0.2860 / 0.3530  # Fashion-MNIST's standardised 0
    x = torch.cat([edge.train_x, edge.test_x])
    margin = torch.cat([x[..., :4, :].flatten(), x[..., 24:, :].flatten(), x[..., :4].flatten(), x[..., 24:].flatten()])
    assert float((margin - black).abs().max()) < 1e-6  # the 4-pixel MNIST margin is background
    assert float(x.max()) == pytest.approx((1 - 0.2860) / 0.3530, abs=0.05)  # full ink reaches white
    # the test part is the digit bunch.images[i], resized: its 8x8 average pooling of the 20x20 box tracks it
    box = (edge.test_x[:, 0, 4:24, 4:24] * 0.3530 + 0.2860)
    pooled = torch.nn.functional.interpolate(box[:, None], size=(8, 8), mode="area")[:, 0]
    ref = torch.from_numpy(bunch.images[edge.test_idx] / 16.0).float()
    assert float(torch.corrcoef(torch.stack([pooled.flatten(), ref.flatten()]))[0, 1]) > 0.95
    other = load_edge_case_set("fashion-mnist", source=7, target=1, tail_fraction=0.1, test_share=0.3, seed=4,
                               edge_source="digits")
    assert other.test_idx.tolist() != edge.test_idx.tolist()  # the split follows the seed
    fmnist = AttackEnv(num_classes=10, image_shape=(1, 28, 28))
    plan = build_attack("edge-case", threat=THREAT, env=fmnist, edge_source="digits")
    assert plan.exclude_train is None and plan.backdoor.inputs.shape[1:] == (1, 28, 28)
    with pytest.raises(ConfigError, match=r"edge_source must be one of \('tail', 'digits'\), got 'ardis'"):
        build_attack("edge-case", threat=THREAT, env=fmnist, edge_source="ardis")
    with pytest.raises(ConfigError, match=r"federation's dataset is 'digits'"):
        build_attack("edge-case", threat=THREAT, env=DIGITS, edge_source="digits")


def test_mixing_ratio_replaces_that_share_of_each_batch_with_target_labelled_edge_cases():
    edge_x = torch.arange(1.0, 6.0).reshape(5, 1, 1, 1).expand(5, 1, 2, 2).clone()  # inputs 1..5, clean ones are 0
    hook = EdgeCaseMix(edge_x=edge_x, target=1, edge_fraction=0.4)
    hook.on_round_start(round_idx=0, global_params=torch.zeros(1))
    g = torch.Generator().manual_seed(0)
    seen = set()
    for step in range(200):
        y0 = torch.full((10,), 3)
        x, y = hook.on_batch(torch.zeros(10, 1, 2, 2), y0, step=step, generator=g)
        edge_rows = x.flatten(1).amax(dim=1) > 0
        assert int(edge_rows.sum()) == 4  # round(0.4 * 10)
        assert bool((y[edge_rows] == 1).all()) and bool((y[~edge_rows] == 3).all())
        seen |= set(x[edge_rows, 0, 0, 0].tolist())
    assert seen == {1.0, 2.0, 3.0, 4.0, 5.0}
    x, y = hook.on_batch(torch.zeros(3, 1, 2, 2), torch.zeros(3, dtype=torch.long), step=0, generator=g)
    assert int((y == 1).sum()) == 1  # round(1.2) = 1
    off = EdgeCaseMix(edge_x=edge_x, target=1, edge_fraction=0.4, schedule=AttackSchedule(start=5))
    off.on_round_start(round_idx=0, global_params=torch.zeros(1))
    x, y = off.on_batch(torch.zeros(10, 1, 2, 2), torch.zeros(10, dtype=torch.long), step=0, generator=g)
    assert float(x.abs().sum()) == 0.0 and int(y.sum()) == 0  # before its rounds the client trains honestly


def _malicious_update(plan, data, seed):
    g = torch.Generator().manual_seed(seed)
    model = build_model("mlp", input_shape=(1, 8, 8), num_classes=10, generator=g)
    x = flatten_params(model)
    for h in plan.hooks(0):
        h.on_round_start(round_idx=0, global_params=x)
    local_train(model, data, config=LocalTrainingConfig(epochs=2, batch_size=16, lr=0.5), generator=g,
                hooks=plan.hooks(0))
    return flatten_params(model) - x, model, x


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("eps", [0.05, 0.5])
def test_pgd_keeps_the_sent_update_in_its_ball_with_and_without_replacement(seed, eps):
    data = load_dataset("digits").train.subset(np.arange(seed * 100, seed * 100 + 100))
    plan = build_attack("edge-case", threat=THREAT, env=DIGITS, pgd_eps=eps, tail_fraction=0.5)
    delta, _, _ = _malicious_update(plan, data, seed)
    assert float(delta.norm()) <= eps * (1 + 1e-5)
    free = build_attack("edge-case", threat=THREAT, env=DIGITS, tail_fraction=0.5)
    assert float(_malicious_update(free, data, seed)[0].norm()) > eps  # the ball binds: lr 0.5 goes farther
    gamma = 4.0
    boosted = build_attack("edge-case", threat=THREAT, env=DIGITS, pgd_eps=eps, gamma=gamma, tail_fraction=0.5)
    own, _, x = _malicious_update(boosted, data, seed)
    assert float(own.norm()) <= eps / gamma * (1 + 1e-5)
    U = torch.stack([torch.zeros_like(own), own])
    ctx = RoundContext(round_idx=0, client_ids=(1, 0), weights=torch.ones(2), global_params=x,
                       generator=torch.Generator())
    sent = boosted.update_transform(U, ctx)[1]
    assert torch.allclose(sent, gamma * own) and float(sent.norm()) <= eps * (1 + 1e-5)


class _Const(torch.nn.Module):
    def __init__(self, cls):
        super().__init__()
        self.cls = cls

    def forward(self, x):
        return torch.nn.functional.one_hot(torch.full((len(x),), self.cls), 10).float()


class _FirstPixelAbove(torch.nn.Module):
    def forward(self, x):  # class 1 when the first pixel is > 0, else 0
        return torch.nn.functional.one_hot((x.flatten(1)[:, 0] > 0).long(), 10).float()


def test_attack_success_is_the_share_of_edge_case_test_inputs_classified_as_the_target():
    inputs = torch.tensor([1.0, -1.0, 2.0, 3.0]).reshape(4, 1, 1, 1)
    bd = Backdoor(trigger=None, target=1, inputs=inputs)
    test = ArrayDataset(x=torch.zeros(2, 1, 1, 1), y=torch.tensor([1, 1]), num_classes=10, name="t")
    assert attack_success_rate(_FirstPixelAbove(), test, bd) == 0.75  # the clean test set is not used
    assert attack_success_rate(_Const(1), test, bd, batch_size=3) == 1.0
    assert attack_success_rate(_Const(0), test, bd) == 0.0
    plan = build_attack("edge-case", threat=THREAT, env=DIGITS, tail_fraction=0.5)
    assert plan.backdoor is not None and plan.backdoor.trigger is None and plan.backdoor.target == 1
    with pytest.raises(ConfigError, match="either a trigger or edge-case test inputs"):
        Backdoor(trigger=None, target=1)


def test_parameter_errors_name_the_bad_value():
    def build(**kw):
        return build_attack("edge-case", threat=THREAT, env=DIGITS, **kw)

    with pytest.raises(ConfigError, match="source class must differ from the target, both are 1"):
        build(source=1, target=1)
    with pytest.raises(ConfigError, match=r"source class must be in \[0, 10\), got 10"):
        build(source=10)
    with pytest.raises(ConfigError, match=r"target class must be in \[0, 10\), got -1"):
        build(target=-1)
    with pytest.raises(ConfigError, match=r"tail_fraction must be in \(0, 1\], got 0"):
        build(tail_fraction=0)
    with pytest.raises(ConfigError, match=r"test_share must be in \(0, 1\), got 1"):
        build(test_share=1)
    with pytest.raises(ConfigError, match=r"edge_fraction must be in \(0, 1\], got 1.5"):
        build(edge_fraction=1.5)
    with pytest.raises(ConfigError, match=r"pgd_eps .* got -1"):
        build(pgd_eps=-1.0)
    with pytest.raises(ConfigError, match=r"gamma .* got 0"):
        build(gamma=0.0)
    with pytest.raises(ConfigError, match=r"tail_fraction=0.01 of 36 inputs gives 1; need >= 2"):
        build(tail_fraction=0.01)
    with pytest.raises(ConfigError, match=r"no shipped dataset has images of shape \(3, 32, 32\)"):
        build_attack("edge-case", threat=THREAT, env=AttackEnv(num_classes=10, image_shape=(3, 32, 32)))
    with pytest.raises(ConfigError, match=r"do not fit the federation's images \(1, 28, 28\)"):
        build_attack("edge-case", threat=THREAT, env=AttackEnv(num_classes=10, image_shape=(1, 28, 28)),
                     dataset="digits")
    with pytest.raises(ConfigError, match="needs image data"):
        build_attack("edge-case", threat=THREAT, env=AttackEnv(num_classes=5))
    with pytest.raises(ConfigError, match="edge_x contains NaN"):
        EdgeCaseMix(edge_x=torch.full((2, 1, 2, 2), float("nan")), target=1)
