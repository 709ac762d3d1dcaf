import numpy as np
import pytest
import torch

from attacks import (
    AttackEnv,
    AttackSchedule,
    Backdoor,
    PixelTrigger,
    ThreatModel,
    attack_names,
    attack_parameters,
    attack_success_rate,
    build_attack,
    detection_rates,
)
from fl_core import Federation, LocalTrainingConfig, load_dataset, make_clients, partition
from fl_core.data.dataset import ArrayDataset
from fl_core.errors import ConfigError, UnknownNameError
from fl_core.rng import numpy_generator

ENV = AttackEnv(num_classes=10, image_shape=(1, 8, 8), trigger_value=2.0)


class _Const(torch.nn.Module):
    def __init__(self, cls):
        super().__init__()
        self.cls = cls

    def forward(self, x):
        out = torch.zeros(len(x), 10)
        out[:, self.cls] = 1.0
        return out


class _TriggerDetector(torch.nn.Module):
    """Predicts 3 when the trigger pixels are set, else the true label encoded in pixel (0, 0)."""

    def __init__(self, trigger):
        super().__init__()
        self.trigger = trigger

    def forward(self, x):
        hit = (x[:, 0][:, self.trigger.mask] == self.trigger.value).all(dim=1)
        pred = x[:, 0, 0, 0].long()
        pred[hit] = 3
        return torch.nn.functional.one_hot(pred, 10).float()


def test_attack_success_rate_excludes_target_class():
    y = torch.tensor([3, 3, 1, 2, 5, 7])
    x = torch.zeros(6, 1, 8, 8)
    x[:, 0, 0, 0] = y.float()
    test = ArrayDataset(x=x, y=y, num_classes=10, name="t")
    trig = PixelTrigger.corner(height=8, width=8, size=2, value=9.0)
    bd = Backdoor(trigger=trig, target=3)
    assert attack_success_rate(_Const(3), test, bd) == 1.0
    assert attack_success_rate(_Const(1), test, bd) == 0.0
    assert attack_success_rate(_TriggerDetector(trig), test, bd) == 1.0
    only_target = ArrayDataset(x=x[:2], y=y[:2], num_classes=10, name="t")
    with pytest.raises(ConfigError, match="no sample outside the target class 3"):
        attack_success_rate(_Const(3), only_target, bd)


def test_detection_rates():
    r = detection_rates(client_ids=(0, 1, 2, 3, 4), kept=(0, 1, 4), malicious={3, 4})
    assert (r.tpr, r.fpr, r.n_malicious, r.n_benign) == (0.5, 1 / 3, 2, 3)
    none = detection_rates(client_ids=(0, 1), kept=(0, 1), malicious={5})
    assert none.tpr is None and none.fpr == 0.0


def test_every_attack_builds_and_names_are_checked():
    threat = ThreatModel(malicious=frozenset({0, 1}))
    for name in attack_names():
        if name == "text-backdoor":
            plan = build_attack(name, threat=threat, env=AttackEnv(num_classes=5))
            assert plan.backdoor is not None
            continue
        plan = build_attack(name, threat=threat, env=ENV, aggregator=_KeepAll())
        assert plan.name == name
        assert set(plan.client_hooks) <= set(threat.malicious)
    with pytest.raises(UnknownNameError, match="Did you mean 'min-max'"):
        build_attack("minmax", threat=threat, env=ENV)
    with pytest.raises(ConfigError, match=r"attack alie got unknown parameter 'sigma'; valid parameters: z"):
        build_attack("alie", threat=threat, env=ENV, sigma=1.0)
    with pytest.raises(ConfigError, match=r"target class must be in \[0, 10\)"):
        build_attack("backdoor", threat=threat, env=ENV, target=12)
    with pytest.raises(ConfigError, match="need image data"):
        build_attack("backdoor", threat=threat, env=AttackEnv(num_classes=5))
    assert "epsilon" in attack_parameters("ipm")


class _KeepAll:
    def aggregate(self, U, w=None, ctx=None):
        from fl_core.aggregation import WeightedMean

        return WeightedMean().aggregate(U, w)


def _digits_fed(split, plan, *, seed=0, n_clients=10):
    parts = partition(split.train.labels, scheme="iid", n_clients=n_clients, generator=numpy_generator(seed, 1))
    return Federation(
        model_name="mlp",
        clients=make_clients(split.train, parts, hooks=plan.hooks),
        test_data=split.test,
        clients_per_round=n_clients,
        seed=seed,
        update_transforms=[plan.update_transform] if plan.update_transform else [],
        local=LocalTrainingConfig(epochs=2, batch_size=32, lr=0.05, momentum=0.9),
    )


def test_model_replacement_backdoor_survives_fedavg_after_one_round():
    """Bagdasaryan et al. 2020: one attacker boosting by gamma = n replaces the global model.

    Digits, 10 IID clients, FedAvg; clean rounds 0-4, one attacking round 5 (20% of each attacker
    batch poisoned). Right after it the backdoor succeeds on >= 90% of triggered non-target test
    digits; the global model is then the attacker's (trained on 144 samples): clean accuracy dips
    (measured 0.75) and is back above 0.9 after one clean round.
    """
    split = load_dataset("digits")
    threat = ThreatModel(malicious=frozenset({0}), schedule=AttackSchedule(start=5, end=6))
    env = AttackEnv(num_classes=10, image_shape=(1, 8, 8), trigger_value=float(split.train.x.max()))
    plan = build_attack("model-replacement", threat=threat, env=env, target=0, trigger_size=3)
    fed = _digits_fed(split, plan)
    fed.run(rounds=5)
    before = attack_success_rate(fed.model, split.test, plan.backdoor)
    fed.run(rounds=1)
    after = attack_success_rate(fed.model, split.test, plan.backdoor)
    assert before < 0.2
    assert after >= 0.9
    assert fed.history.records[-1].test_accuracy >= 0.7
    assert fed.history.records[-1].metrics["attack_active"] == 1.0
    fed.run(rounds=1)
    assert fed.history.records[-1].test_accuracy >= 0.9
    assert fed.history.records[-1].metrics["attack_active"] == 0.0


def test_sign_flip_majority_breaks_fedavg_but_not_without_attack():
    split = load_dataset("digits")
    env = AttackEnv(num_classes=10, image_shape=(1, 8, 8), trigger_value=1.0)
    threat = ThreatModel.sample(n_clients=10, fraction=0.3, generator=np.random.default_rng(0))
    clean = _digits_fed(split, build_attack("none", threat=threat, env=env)).run(rounds=3).final_accuracy
    attacked = (
        _digits_fed(split, build_attack("sign-flip", threat=threat, env=env, scale=5.0)).run(rounds=3).final_accuracy
    )
    assert clean > 0.85 and attacked < 0.5


def test_centralised_backdoor_can_carry_dbas_whole_global_trigger():
    """Xie et al. 2020 compare DBA with a centralised attacker holding its global trigger: same pixels and target."""
    threat = ThreatModel(malicious=frozenset({0, 1, 2, 3}))
    dba = build_attack("dba", threat=threat, env=ENV, target=2, parts=4)
    central = build_attack("backdoor", threat=threat, env=ENV, target=2, trigger="dba", parts=4)
    assert torch.equal(central.backdoor.trigger.mask, dba.backdoor.trigger.mask)
    assert central.backdoor.target == dba.backdoor.target == 2
    for c in threat.malicious:  # every centralised attacker poisons with the whole global trigger
        (hook,) = central.hooks(c)
        assert torch.equal(hook.trigger.mask, dba.backdoor.trigger.mask)
    corner = build_attack("backdoor", threat=threat, env=ENV, target=2)
    assert not torch.equal(corner.backdoor.trigger.mask, dba.backdoor.trigger.mask)
    with pytest.raises(ConfigError, match=r"trigger must be one of \('corner', 'dba'\), got 'bars'"):
        build_attack("backdoor", threat=threat, env=ENV, trigger="bars")
