"""Image models for the federation and the model registry.

Parameters are initialised from an explicit ``torch.Generator`` (PyTorch's
default schemes: Kaiming-uniform weights with ``a = sqrt(5)`` and
``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` biases), so no global seed is touched.

Examples
--------
>>> import torch
>>> m = build_model("mlp", input_shape=(1, 8, 8), num_classes=10, generator=torch.Generator().manual_seed(0))
>>> m(torch.zeros(2, 1, 8, 8)).shape
torch.Size([2, 10])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from fl_core.errors import ConfigError
from fl_core.registry import Registry

__all__ = ["MLP", "MODELS", "LeNet5", "SmallCNN", "build_model", "init_parameters"]

#: The models, by name; ``input_shape`` and ``num_classes`` come from the data, the
#: other constructor parameters (with their defaults) from the user.
MODELS = Registry("model", context=("input_shape", "num_classes"))


def init_parameters(model: nn.Module, generator: torch.Generator) -> nn.Module:
    """Re-initialise every Linear/Conv layer of ``model`` from ``generator``, in place.

    Raises
    ------
    ConfigError
        If the model has parameters outside Linear/Conv layers (they would stay uninitialised).
    """
    covered = {
        id(p) for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)) for p in m.parameters()
    }
    if any(id(p) not in covered for p in model.parameters()):
        raise ConfigError("init_parameters only initialises Linear and Conv layers; the model has other parameters")
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
                nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5), generator=generator)
                if module.bias is not None:
                    fan_in = module.weight[0].numel()
                    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
                    nn.init.uniform_(module.bias, -bound, bound, generator=generator)
    return model


@MODELS.register("mlp", description="multilayer perceptron, 2 hidden ReLU layers (200, 200) as in McMahan et al. 2017")
class MLP(nn.Module):
    """Fully connected classifier: flatten -> [Linear, ReLU] x len(hidden) -> Linear.

    McMahan et al. (AISTATS 2017) use hidden=(200, 200) for MNIST ("2NN").
    """

    def __init__(self, *, input_shape: Sequence[int], num_classes: int, hidden: Sequence[int] = (200, 200)):
        super().__init__()
        d_in = math.prod(input_shape)
        layers: list[nn.Module] = [nn.Flatten()]
        for h in hidden:
            layers += [nn.Linear(d_in, h), nn.ReLU()]
            d_in = h
        layers.append(nn.Linear(d_in, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@MODELS.register(
    "cnn", description="small CNN: 2 x (3x3 conv, ReLU, 2x2 max-pool) with 32/64 channels, FC 128, FC classes"
)
class SmallCNN(nn.Module):
    """Two conv blocks (3x3 conv, ReLU, 2x2 max-pool) then two linear layers.

    Works for any input of at least 4x4 pixels (Fashion-MNIST 28x28, digits 8x8).
    """

    def __init__(
        self, *, input_shape: Sequence[int], num_classes: int, channels: tuple[int, int] = (32, 64), hidden: int = 128
    ):
        super().__init__()
        c_in, h, w = input_shape
        self.features = nn.Sequential(
            nn.Conv2d(c_in, channels[0], 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(channels[0], channels[1], 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        flat = channels[1] * (h // 4) * (w // 4)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(flat, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@MODELS.register(
    "lenet5", description="LeNet-5 CNN (LeCun et al. 1998): conv 5x5 6, pool, conv 5x5 16, pool, FC 120, 84, classes"
)
class LeNet5(nn.Module):
    """LeNet-5 (LeCun, Bottou, Bengio & Haffner, Proc. IEEE 1998) with ReLU and max-pooling.

    ``C1``: 6 maps of 5x5 convolutions (padding 2, so a 28x28 input keeps the paper's 32x32
    geometry), 2x2 max-pool; ``C3``: 16 maps of 5x5 convolutions, 2x2 max-pool; then fully
    connected layers of 120 and 84 units and the output layer. The model of the FL robustness
    papers on (Fashion-)MNIST-sized images. Needs images of at least 12x12 pixels.
    """

    def __init__(self, *, input_shape: Sequence[int], num_classes: int) -> None:
        super().__init__()
        c_in, h, w = input_shape
        self.features = nn.Sequential(
            nn.Conv2d(c_in, 6, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        flat = 16 * ((h // 2 - 4) // 2) * ((w // 2 - 4) // 2)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(flat, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def build_model(
    name: str, *, input_shape: Sequence[int], num_classes: int, generator: torch.Generator, **params: Any
) -> nn.Module:
    """Build a registered model (one of :data:`MODELS`) initialised from ``generator``.

    Parameters
    ----------
    name : str
        A name of :data:`MODELS`.
    input_shape : sequence of int
        Shape of one input, ``(C, H, W)`` for images.
    num_classes : int
        Number of classes (>= 2).
    generator : torch.Generator
        Draws the initial parameters.
    **params
        The model's own constructor parameters (``hidden=(64,)`` for ``mlp``).

    Raises
    ------
    UnknownNameError
        If ``name`` is not registered.
    ConfigError
        If the input shape does not suit the model, or a parameter is unknown.
    """
    entry = MODELS.check(name, {"input_shape": input_shape, "num_classes": num_classes, **params})
    if num_classes < 2:
        raise ConfigError(f"num_classes must be >= 2, got {num_classes}")
    shape = tuple(int(s) for s in input_shape)
    if entry.obj is SmallCNN and (len(shape) != 3 or shape[1] < 4 or shape[2] < 4):
        raise ConfigError(f"model 'cnn' needs images (C, H, W) with H, W >= 4, got input_shape={shape}")
    if entry.obj is LeNet5 and (len(shape) != 3 or shape[1] < 12 or shape[2] < 12):
        raise ConfigError(
            f"model 'lenet5' needs images (C, H, W) with H, W >= 12 (two 5x5 convolutions and two 2x2 pools), "
            f"got input_shape={shape}; use 'cnn' or 'mlp' for smaller images such as digits (8x8)"
        )
    # Build on the meta device so PyTorch's default initialisers do not draw from
    # (and advance) the global generator; then initialise from ``generator``.
    with torch.device("meta"):
        model: nn.Module = entry.obj(input_shape=shape, num_classes=num_classes, **params)
    model = model.to_empty(device="cpu")
    return init_parameters(model, generator)
