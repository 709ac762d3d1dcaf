import json

import numpy as np
import pytest
import torch

from benchmarks.cli import main as cli_main
from fl_core import (
    AggregationResult,
    Aggregator,
    Client,
    Federation,
    LocalTrainingConfig,
    load_dataset,
    make_clients,
    partition,
)
from fl_core.errors import ConfigError, DeviceError, InvalidUpdateError
from fl_core.rng import numpy_generator


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _fed(split, *, seed=0, rounds_clients=10, m=5, **kw):
    parts = partition(
        split.train.labels, scheme="dirichlet", alpha=0.5, n_clients=rounds_clients, generator=numpy_generator(seed, 1)
    )
    return Federation(
        model_name="mlp",
        clients=make_clients(split.train, parts),
        test_data=split.test,
        clients_per_round=m,
        seed=seed,
        local=LocalTrainingConfig(epochs=1, batch_size=32, lr=0.05, momentum=0.9),
        **kw,
    )


def test_same_seed_gives_identical_history(digits):
    h1 = _fed(digits, seed=3).run(rounds=4)
    h2 = _fed(digits, seed=3).run(rounds=4)
    h3 = _fed(digits, seed=4).run(rounds=4)
    v1 = [r.deterministic_view() for r in h1.records]
    assert v1 == [r.deterministic_view() for r in h2.records]
    assert v1 != [r.deterministic_view() for r in h3.records]


def test_same_seed_gives_identical_model(digits):
    a, b = _fed(digits, seed=1), _fed(digits, seed=1)
    a.run(rounds=2)
    b.run(rounds=2)
    assert torch.equal(a.global_params, b.global_params)


def test_run_does_not_touch_global_rng(digits):
    state = torch.get_rng_state()
    np_state = np.random.get_state()[1].copy()  # noqa: NPY002 (checks the legacy global state)
    _fed(digits).run(rounds=1)
    assert torch.equal(state, torch.get_rng_state())
    assert np.array_equal(np_state, np.random.get_state()[1])  # noqa: NPY002


def test_sampling_without_replacement_and_varies(digits):
    fed = _fed(digits, m=5)
    cohorts = [tuple(c.id for c in fed.sample_clients(r)) for r in range(6)]
    assert all(len(set(c)) == 5 for c in cohorts)
    assert len(set(cohorts)) > 1


def test_digits_fedavg_reaches_90_percent(digits):
    parts = partition(digits.train.labels, scheme="dirichlet", alpha=0.5, n_clients=10, generator=numpy_generator(0, 1))
    fed = Federation(
        model_name="mlp",
        clients=make_clients(digits.train, parts),
        test_data=digits.test,
        clients_per_round=10,
        seed=0,
        local=LocalTrainingConfig(epochs=2, batch_size=32, lr=0.05, momentum=0.9),
    )
    hist = fed.run(rounds=20)
    assert hist.final_accuracy >= 0.90


class _Recorder(Aggregator):
    """Mean that keeps only even client ids and records what it saw."""

    name = "recorder"

    def __init__(self):
        self.seen = []

    def _aggregate(self, updates, weights, ctx):
        self.seen.append((updates.clone(), weights.clone(), ctx))
        keep = torch.tensor([cid % 2 == 0 for cid in ctx.client_ids])
        w = weights * keep
        return AggregationResult(aggregate=(w / w.sum()) @ updates, kept=keep, metrics={"bytes": 42.0})


def test_pipeline_plug_in_points(digits):
    agg = _Recorder()
    order = []

    def zero_odd(U, ctx):
        order.append("update")
        U = U.clone()
        U[torch.tensor([cid % 2 == 1 for cid in ctx.client_ids])] = 0.0
        return U

    def halve(delta, ctx):
        order.append("aggregate")
        return delta / 2

    fed = _fed(digits, m=6, aggregator=agg, update_transforms=[zero_odd], aggregate_transforms=[halve])
    x0 = fed.global_params
    rec = fed.run_round(0)
    U, w, ctx = agg.seen[0]
    assert order == ["update", "aggregate"]
    assert ctx.round_idx == 0 and len(ctx.client_ids) == 6
    assert torch.equal(ctx.global_params, x0)
    assert w.tolist() == [len(fed.clients[c].data) for c in ctx.client_ids]
    odd = torch.tensor([c % 2 == 1 for c in ctx.client_ids])
    assert (U[odd] == 0).all() and (U[~odd] != 0).any()
    keep = ~odd
    expected = x0 + 0.5 * ((w * keep) / (w * keep).sum()) @ U
    assert torch.allclose(fed.global_params, expected, atol=1e-6)
    assert rec.kept == tuple(c for c in ctx.client_ids if c % 2 == 0)
    assert rec.metrics == {"bytes": 42.0}


def test_identity_round_with_zero_updates_keeps_model(digits):
    fed = _fed(digits, update_transforms=[lambda U, ctx: torch.zeros_like(U)])
    x0 = fed.global_params
    fed.run_round(0)
    assert torch.equal(fed.global_params, x0)


def test_transform_with_wrong_shape_or_nan_is_rejected(digits):
    fed = _fed(digits, update_transforms=[lambda U, ctx: U[:2]])
    with pytest.raises(InvalidUpdateError, match="returned shape"):
        fed.run_round(0)
    fed = _fed(digits, update_transforms=[lambda U, ctx: U * float("nan")])
    with pytest.raises(InvalidUpdateError, match="non-finite"):
        fed.run_round(0)


def test_federation_config_errors(digits):
    clients = make_clients(digits.train, [np.arange(10), np.arange(10, 20)])
    with pytest.raises(ConfigError, match=r"clients_per_round must be <= 2, got clients_per_round=3"):
        Federation(model_name="mlp", clients=clients, test_data=digits.test, clients_per_round=3)
    with pytest.raises(ConfigError, match=r"clients_per_round must be an int, got 1.5"):
        Federation(model_name="mlp", clients=clients, test_data=digits.test, clients_per_round=1.5)
    # NumPy integers are integers
    fed = Federation(model_name="mlp", clients=clients, test_data=digits.test, clients_per_round=np.int64(2))
    assert fed.clients_per_round == 2 and type(fed.clients_per_round) is int
    dup = [Client(id=0, data=clients[0].data), Client(id=0, data=clients[1].data)]
    with pytest.raises(ConfigError, match=r"duplicate client ids: \[0\]"):
        Federation(model_name="mlp", clients=dup, test_data=digits.test, clients_per_round=1)
    with pytest.raises(ConfigError, match="exactly one of"):
        Federation(clients=clients, test_data=digits.test, clients_per_round=1)
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="CUDA is not available"):
            Federation(model_name="mlp", clients=clients, test_data=digits.test, clients_per_round=1, device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_round_matches_shapes(digits):
    fed = _fed(digits, device="cuda")
    fed.run(rounds=1)
    assert fed.global_params.device.type == "cuda"


def test_cli_run_writes_history(tmp_path, capsys):
    out = tmp_path / "h.json"
    rc = cli_main(["run", "--dataset", "digits", "--rounds", "2", "--clients", "4", "--out", str(out)])
    assert rc == 0
    payload = json.loads(out.read_text())
    assert payload["dataset"] == "digits" and len(payload["history"]["records"]) == 2
    assert payload["config"]["clients"] == 4


@pytest.mark.parametrize(
    "argv, match",
    [
        (["run", "--alpha", "0"], "alpha=0.0"),
        (["run", "--dataset", "digits", "--clients", "5000"], "n_clients=5000 is more than the 1438 samples"),
        (["run", "--model", "resnet"], "unknown model 'resnet'"),
        (["run", "--dataset", "mnist"], "unknown dataset 'mnist'"),
        (["run", "--data-path", "/nonexistent"], "not found: /nonexistent"),
        (["run", "--dataset", "digits", "--server-opt", "sgd"], "unknown server optimizer 'sgd'"),
        (["run", "--dataset", "digits", "--rounds", "0"], "rounds must be >= 1"),
    ],
)
def test_cli_bad_input_fails_before_training(argv, match, capsys):
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert match in " ".join(err.split())
    assert "rounds ━" not in err  # no progress bar: nothing trained


@pytest.mark.slow
def test_default_job_reaches_85_percent_on_fashion_mnist(tmp_path):
    out = tmp_path / "h.json"
    assert cli_main(["run", "--out", str(out)]) == 0
    payload = json.loads(out.read_text())
    assert payload["dataset"] == "fashion-mnist"
    assert payload["history"]["records"][-1]["test_accuracy"] >= 0.85


def test_plugin_metrics_are_recorded(digits):
    class NoisyServer:
        def __init__(self):
            self.calls = 0

        def __call__(self, delta, ctx):
            self.calls += 1
            return delta

        def round_metrics(self):
            return {"epsilon": 0.5 * self.calls}

    fed = _fed(digits, aggregate_transforms=[NoisyServer()])
    hist = fed.run(rounds=2)
    assert [r.metrics["epsilon"] for r in hist.records] == [0.5, 1.0]


def test_hooks_learn_the_round_and_global_model(digits):
    from fl_core import TrainingHook

    seen = []

    class RoundSpy(TrainingHook):
        def on_round_start(self, *, round_idx, global_params):
            seen.append((round_idx, global_params.clone()))

    parts = partition(digits.train.labels, scheme="iid", n_clients=3, generator=numpy_generator(0))
    clients = make_clients(digits.train, parts, hooks=lambda k: [RoundSpy()] if k == 1 else [])
    fed = Federation(model_name="mlp", clients=clients, test_data=digits.test, clients_per_round=3, seed=0)
    x0 = fed.global_params
    fed.run(rounds=2)
    assert [r for r, _ in seen] == [0, 1]
    assert torch.equal(seen[0][1], x0) and not torch.equal(seen[1][1], x0)


class _DrawingMean(Aggregator):
    """Mean that records one draw of its stage generator per round."""

    def __init__(self):
        self.draws = []

    def _aggregate(self, updates, weights, ctx):
        self.draws.append(torch.rand(4, generator=ctx.generator).tolist())
        return AggregationResult(aggregate=updates.mean(0), kept=torch.ones(len(updates), dtype=torch.bool))


def _noise_recorder(draws):
    def noise(delta, ctx):
        draws.append(torch.rand(4, generator=ctx.generator).tolist())
        return delta

    return noise


def _attack(amount):
    """An 'attack' that consumes ``amount`` draws of its stage generator and perturbs the first row."""

    def transform(updates, ctx):
        out = updates.clone()
        out[0] += 0.01 * torch.randn(amount, generator=ctx.generator).sum()
        return out

    return transform


def test_each_stage_has_its_own_random_stream(digits):
    """Changing the attack (how much it draws) leaves the defense's and the server noise's draws unchanged."""
    runs = []
    for amount in (1, 1000):
        agg, noise = _DrawingMean(), []
        fed = _fed(digits, aggregator=agg, update_transforms=[_attack(amount)],
                   aggregate_transforms=[_noise_recorder(noise)])
        fed.run(rounds=2)
        runs.append((agg.draws, noise))
    assert runs[0] == runs[1]
    (agg_draws, noise_draws), _ = runs
    assert agg_draws[0] != agg_draws[1] and agg_draws[0] != noise_draws[0]  # distinct per round and per stage
