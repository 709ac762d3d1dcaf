import pytest
import torch

from fl_core.data.dataset import ArrayDataset
from fl_core.errors import ConfigError, UnknownNameError
from fl_core.models import build_model
from fl_core.params import flatten_params
from fl_core.training import LocalTrainingConfig, TrainingHook, evaluate, local_train


def _toy(n=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, 1, 4, 4, generator=g) + 2.0 * (y.float() * 2 - 1).view(-1, 1, 1, 1)
    return ArrayDataset(x=x, y=y, num_classes=2, name="toy")


@pytest.mark.parametrize(
    "name, shape", [("mlp", (1, 28, 28)), ("cnn", (1, 28, 28)), ("mlp", (1, 8, 8)), ("cnn", (1, 8, 8))]
)
def test_models_shapes_and_generator_init(name, shape):
    m1 = build_model(name, input_shape=shape, num_classes=10, generator=torch.Generator().manual_seed(1))
    m2 = build_model(name, input_shape=shape, num_classes=10, generator=torch.Generator().manual_seed(1))
    m3 = build_model(name, input_shape=shape, num_classes=10, generator=torch.Generator().manual_seed(2))
    assert m1(torch.zeros(3, *shape)).shape == (3, 10)
    assert torch.equal(flatten_params(m1), flatten_params(m2))
    assert not torch.equal(flatten_params(m1), flatten_params(m3))


def test_model_init_does_not_touch_global_rng():
    state = torch.get_rng_state()
    build_model("cnn", input_shape=(1, 8, 8), num_classes=10, generator=torch.Generator().manual_seed(0))
    assert torch.equal(state, torch.get_rng_state())


def test_default_init_bounds():
    m = build_model("mlp", input_shape=(1, 8, 8), num_classes=10, generator=torch.Generator().manual_seed(0))
    lin = m.net[1]
    bound = 1 / 64**0.5  # kaiming_uniform(a=sqrt 5) and bias bounds are both 1/sqrt(fan_in)
    assert lin.weight.abs().max() <= bound and lin.weight.abs().max() > 0.9 * bound
    assert lin.bias.abs().max() <= bound


def test_model_errors():
    with pytest.raises(UnknownNameError, match="Did you mean 'cnn'"):
        build_model("cnm", input_shape=(1, 8, 8), num_classes=10, generator=torch.Generator())
    with pytest.raises(ConfigError, match="H, W >= 4"):
        build_model("cnn", input_shape=(1, 2, 2), num_classes=10, generator=torch.Generator())


def test_local_training_learns_and_is_reproducible():
    data = _toy()
    models = []
    for _ in range(2):
        m = build_model("mlp", input_shape=(1, 4, 4), num_classes=2, generator=torch.Generator().manual_seed(0))
        before = evaluate(m, data)
        res = local_train(
            m,
            data,
            config=LocalTrainingConfig(epochs=3, batch_size=20, lr=0.1),
            generator=torch.Generator().manual_seed(5),
        )
        models.append(m)
    assert res.steps == 30 and res.num_samples == 200
    after = evaluate(models[0], data)
    assert after.accuracy > 0.95 and after.loss < before.loss
    assert torch.equal(flatten_params(models[0]), flatten_params(models[1]))


def test_hooks_are_called_in_the_loop():
    calls = []

    class Recorder(TrainingHook):
        def on_batch(self, x, y, *, step, generator):
            calls.append(("batch", step))
            return x, 1 - y  # label flip

        def extra_loss(self, model, x, y, logits):
            calls.append(("loss", None))
            return torch.zeros(())

        def after_backward(self, model, *, step):
            calls.append(("backward", step))

        def after_step(self, model, *, step):
            calls.append(("step", step))

    data = _toy()
    m = build_model("mlp", input_shape=(1, 4, 4), num_classes=2, generator=torch.Generator().manual_seed(0))
    local_train(
        m,
        data,
        config=LocalTrainingConfig(epochs=2, batch_size=50, lr=0.1),
        generator=torch.Generator().manual_seed(0),
        hooks=[Recorder()],
    )
    assert calls[:4] == [("batch", 0), ("loss", None), ("backward", 0), ("step", 0)]
    assert len(calls) == 4 * 8
    assert evaluate(m, data).accuracy < 0.1  # it learned the flipped labels


def test_gradient_hook_can_freeze_training():
    class ZeroGrad(TrainingHook):
        def after_backward(self, model, *, step):
            for p in model.parameters():
                p.grad.zero_()

    m = build_model("mlp", input_shape=(1, 4, 4), num_classes=2, generator=torch.Generator().manual_seed(0))
    before = flatten_params(m)
    local_train(m, _toy(), config=LocalTrainingConfig(lr=0.1), generator=torch.Generator(), hooks=[ZeroGrad()])
    assert torch.equal(before, flatten_params(m))


def test_max_steps():
    m = build_model("mlp", input_shape=(1, 4, 4), num_classes=2, generator=torch.Generator().manual_seed(0))
    res = local_train(
        m, _toy(), config=LocalTrainingConfig(epochs=5, batch_size=10, max_steps=7), generator=torch.Generator()
    )
    assert res.steps == 7


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"epochs": 0}, "epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"lr": 0.0}, "lr"),
        ({"lr": float("inf")}, "lr"),
        ({"momentum": 1.0}, "momentum"),
        ({"max_steps": 0}, "max_steps"),
    ],
)
def test_bad_training_config(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        LocalTrainingConfig(**kwargs)


def test_dropout_draws_come_from_the_clients_generator_and_leave_the_global_rng_alone():
    """Two calls with different global RNG states train identically; the global state is as before the call."""
    from torch import nn

    from fl_core.data.dataset import ArrayDataset
    from fl_core.training import LocalTrainingConfig, local_train

    X, y = torch.randn(64, 8, generator=torch.Generator().manual_seed(0)), torch.arange(64) % 2
    data, cfg = ArrayDataset(X, y, 2, "toy"), LocalTrainingConfig(epochs=1, batch_size=16, lr=0.1)

    def train(global_seed: int) -> torch.Tensor:
        model = nn.Sequential(nn.Linear(8, 16), nn.Dropout(0.5), nn.Linear(16, 2))
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(0.1)
        torch.manual_seed(global_seed)
        before = torch.get_rng_state()
        local_train(model, data, config=cfg, generator=torch.Generator().manual_seed(3))
        assert torch.equal(torch.get_rng_state(), before)
        return torch.cat([p.flatten() for p in model.parameters()])

    assert torch.equal(train(1), train(2))


# --- LeNet-5 and FedSGD (issue 21) ---


def test_lenet5_has_lecuns_parameter_count_on_28x28():
    """C1 6x(25+1)=156, C3 16x(6x25+1)=2,416, F5 400x120+120=48,120, F6 120x84+84=10,164, out 84x10+10=850."""
    m = build_model("lenet5", input_shape=(1, 28, 28), num_classes=10, generator=torch.Generator().manual_seed(0))
    assert sum(p.numel() for p in m.parameters()) == 61_706
    assert m(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_lenet5_refuses_images_smaller_than_12_pixels():
    with pytest.raises(ConfigError, match=r"'lenet5' needs images .* H, W >= 12.*input_shape=\(1, 8, 8\)"):
        build_model("lenet5", input_shape=(1, 8, 8), num_classes=10, generator=torch.Generator().manual_seed(0))


def test_fedsgd_full_batch_is_one_step_of_the_full_gradient():
    """FedSGD (McMahan et al. 2017): the update is exactly -lr times the gradient of the mean loss on all data."""
    data = _toy(n=50)
    model = build_model("mlp", input_shape=(1, 4, 4), num_classes=2, generator=torch.Generator().manual_seed(0))
    x0 = flatten_params(model).clone()
    ref = build_model("mlp", input_shape=(1, 4, 4), num_classes=2, generator=torch.Generator().manual_seed(0))
    loss = torch.nn.functional.cross_entropy(ref(data.x), data.y)
    grad = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(ref.parameters()))])
    cfg = LocalTrainingConfig.fedsgd(lr=0.3)
    res = local_train(model, data, config=cfg, generator=torch.Generator().manual_seed(1))
    assert res.steps == 1 and res.num_samples == 50
    torch.testing.assert_close(flatten_params(model) - x0, -0.3 * grad, rtol=1e-5, atol=1e-6)


def test_fedsgd_minibatch_is_one_step_and_full_batch_refuses_dp():
    data = _toy(n=50)
    model = build_model("mlp", input_shape=(1, 4, 4), num_classes=2, generator=torch.Generator().manual_seed(0))
    cfg = LocalTrainingConfig.fedsgd(lr=0.1, batch_size=8)
    assert (cfg.epochs, cfg.max_steps, cfg.momentum, cfg.batch_size) == (1, 1, 0.0, 8)
    assert local_train(model, data, config=cfg, generator=torch.Generator().manual_seed(1)).steps == 1
    full = LocalTrainingConfig(epochs=2, batch_size=None, lr=0.1)
    assert local_train(model, data, config=full, generator=torch.Generator().manual_seed(1)).steps == 2
    from fl_core.training import DPSGDConfig

    with pytest.raises(ConfigError, match="give a batch_size, not None"):
        LocalTrainingConfig(batch_size=None, dp_sgd=DPSGDConfig(noise_multiplier=1.0, max_grad_norm=1.0))
    with pytest.raises(ConfigError, match="batch_size"):
        LocalTrainingConfig.fedsgd(lr=0.1, batch_size=0)
