import pytest
import torch
from torch import nn

from attacks.reconstruction import (
    DLG,
    IDLG,
    ImprintAttack,
    InvertingFedAvg,
    InvertingGradients,
    MissingLayerError,
    ServerView,
    SigmoidLeNet,
    UnsupportedBatchError,
    ViewMismatchError,
    brightness_thresholds,
    build_reconstruction_attack,
    idlg_label,
    observe_gradient,
    plant_imprint,
    recover_token_set,
)
from fl_core.errors import ConfigError, UnknownNameError
from fl_core.params import flatten_params

G = torch.Generator


def _model(shape=(1, 8, 8)):
    return SigmoidLeNet(input_shape=shape, num_classes=10, generator=G().manual_seed(0))


def _view(b=1, shape=(1, 8, 8)):
    x = torch.randn(b, *shape, generator=G().manual_seed(1))
    return observe_gradient(_model(shape), x, torch.arange(b) % 10)


def test_view_that_does_not_match_the_model():
    m = _model()
    p = flatten_params(m)
    with pytest.raises(ViewMismatchError, match=r"observed has shape \(5,\).*d=\d+"):
        ServerView(
            model=m,
            params=p,
            observed=torch.zeros(5),
            kind="gradient",
            batch_size=1,
            input_shape=(1, 8, 8),
            num_classes=10,
        )
    bad = torch.zeros_like(p)
    bad[3] = float("nan")
    with pytest.raises(ViewMismatchError, match="NaN"):
        ServerView(
            model=m, params=p, observed=bad, kind="gradient", batch_size=1, input_shape=(1, 8, 8), num_classes=10
        )
    with pytest.raises(ViewMismatchError, match="kind"):
        ServerView(model=m, params=p, observed=p, kind="weights", batch_size=1, input_shape=(1, 8, 8), num_classes=10)
    with pytest.raises(ConfigError, match="learning rate"):
        ServerView(model=m, params=p, observed=p, kind="update", batch_size=1, input_shape=(1, 8, 8), num_classes=10)
    wrong_shape = ServerView(
        model=m, params=p, observed=p, kind="gradient", batch_size=1, input_shape=(1, 28, 28), num_classes=10
    )
    with pytest.raises(ViewMismatchError, match=r"maps \(1, 28, 28\)|does not accept"):
        DLG(iterations=1).reconstruct(wrong_shape, generator=G().manual_seed(0))
    wrong_classes = ServerView(
        model=m, params=p, observed=p, kind="gradient", batch_size=1, input_shape=(1, 8, 8), num_classes=5
    )
    with pytest.raises(ViewMismatchError, match="num_classes=5"):
        InvertingGradients(iterations=1).reconstruct(wrong_classes, generator=G().manual_seed(0))


def test_batch_sizes_the_attacks_cannot_handle():
    v4 = _view(b=4)
    with pytest.raises(UnsupportedBatchError, match="batch_size=4"):
        idlg_label(v4)
    with pytest.raises(UnsupportedBatchError, match="batch_size=4"):
        IDLG(iterations=1).reconstruct(v4, generator=G().manual_seed(0))
    with pytest.raises(UnsupportedBatchError, match="up to 2, got 4"):
        DLG(iterations=1, max_batch=2).reconstruct(v4, generator=G().manual_seed(0))
    with pytest.raises(UnsupportedBatchError, match="'update'"):
        InvertingFedAvg(iterations=1).reconstruct(v4, generator=G().manual_seed(0))
    public = torch.randn(100, 1, 8, 8, generator=G().manual_seed(2))
    imprinted = plant_imprint(_model(), input_shape=(1, 8, 8), thresholds=brightness_thresholds(public, num_bins=4))
    x = torch.randn(8, 1, 8, 8, generator=G().manual_seed(3))
    with pytest.raises(UnsupportedBatchError, match="8 samples cannot be separated by 4 bins"):
        ImprintAttack().reconstruct(observe_gradient(imprinted, x, torch.zeros(8, dtype=torch.long)))


def test_models_without_the_layers_an_analytic_attack_needs():
    conv_only = nn.Sequential(nn.Conv2d(1, 10, 8), nn.Sigmoid(), nn.Flatten())
    x = torch.randn(1, 1, 8, 8, generator=G().manual_seed(0))
    v = observe_gradient(conv_only, x, torch.tensor([2]))
    with pytest.raises(MissingLayerError, match=r"final nn\.Linear layer with 10 outputs"):
        idlg_label(v)
    with pytest.raises(MissingLayerError, match="ImprintBlock"):
        ImprintAttack().reconstruct(_view())
    with pytest.raises(MissingLayerError, match=r"nn\.Embedding"):
        recover_token_set(_view())


def test_registry_and_hyperparameters():
    with pytest.raises(UnknownNameError, match="'inverting-gradients'"):
        build_reconstruction_attack("inverting-gradient")
    with pytest.raises(ConfigError, match=r"dlg \(DLG\) got unknown parameter 'restarts'"):
        build_reconstruction_attack("dlg", restarts=3)
    with pytest.raises(ConfigError, match="bounds"):
        InvertingGradients(bounds=(1.0, 0.0))
    with pytest.raises(ConfigError, match="num_bins"):
        brightness_thresholds(torch.zeros(3, 4), num_bins=8)
