"""The one local-training loop of flsec, with hooks for attacks and defenses.

Every client, honest or malicious, trains with :func:`local_train`. What
attacks and defenses need to change (poisoned batches, an extra loss term such
as a proximal or anomaly-evasion term, gradient masks, projections after each
step) is expressed as a :class:`TrainingHook`; the loop itself never changes.

Examples
--------
>>> import torch
>>> from fl_core.data.dataset import ArrayDataset
>>> from fl_core.models import build_model
>>> g = torch.Generator().manual_seed(0)
>>> data = ArrayDataset(x=torch.randn(64, 1, 8, 8, generator=g), y=torch.randint(0, 2, (64,), generator=g),
...                     num_classes=2, name="toy")
>>> model = build_model("mlp", input_shape=(1, 8, 8), num_classes=2, generator=g)
>>> res = local_train(model, data, config=LocalTrainingConfig(epochs=1, batch_size=16, lr=0.1), generator=g)
>>> res.steps, res.num_samples
(4, 64)
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fl_core.checks import as_int, as_real
from fl_core.data.dataset import ArrayDataset, TextDataset
from fl_core.errors import ConfigError

__all__ = [
    "DPSGDConfig",
    "EvalResult",
    "LocalResult",
    "LocalTrainingConfig",
    "TrainingHook",
    "evaluate",
    "local_train",
]


@dataclass(frozen=True)
class DPSGDConfig:
    """Example-level DP-SGD (Abadi et al., CCS 2016) through Opacus' ``PrivacyEngine``.

    Batches are Poisson-sampled with rate ``batch_size / len(data)`` from the
    client's explicit generator, per-example gradients are clipped to
    ``max_grad_norm`` and Gaussian noise ``N(0, (noise_multiplier * max_grad_norm)^2)``
    is added from a generator derived from it (Opacus' ``secure_mode`` is off).

    Attributes
    ----------
    noise_multiplier : float
        ``sigma`` of DP-SGD (>= 0).
    max_grad_norm : float
        Per-example clipping bound ``C`` (> 0).
    delta : float
        ``delta`` at which the client's epsilon is reported in :class:`LocalResult`.
    accountant : str
        Opacus accountant, ``"rdp"`` or ``"prv"``.
    """

    noise_multiplier: float
    max_grad_norm: float
    delta: float = 1e-5
    accountant: str = "rdp"

    def __post_init__(self) -> None:
        _set = object.__setattr__
        _set(self, "noise_multiplier", as_real("DP-SGD noise_multiplier", self.noise_multiplier, low=0.0))
        _set(self, "max_grad_norm", as_real("DP-SGD max_grad_norm", self.max_grad_norm, low=0.0, low_open=True))
        _set(self, "delta", as_real("DP-SGD delta", self.delta, low=0.0, high=1.0, low_open=True, high_open=True))
        if self.accountant not in ("rdp", "prv"):
            raise ConfigError(f"DP-SGD accountant must be 'rdp' or 'prv', got {self.accountant!r}")


@dataclass(frozen=True)
class LocalTrainingConfig:
    """Hyper-parameters of local SGD.

    Attributes
    ----------
    epochs : int
        Passes over the client's data (E in McMahan et al. 2017).
    batch_size : int or None
        Mini-batch size (B); ``None`` is full batch (B = the client's whole dataset, McMahan et al.
        2017's ``B = inf``).
    lr : float
        Client learning rate.
    momentum : float
        SGD momentum (0 = plain SGD).
    weight_decay : float
        L2 weight decay.
    max_steps : int or None
        Stop after this many optimiser steps (None = all epochs). ``max_steps=1`` is FedSGD
        (McMahan et al., AISTATS 2017: one gradient step per client per round; see :meth:`fedsgd`).
    dp_sgd : DPSGDConfig or None
        Example-level DP-SGD through Opacus (None = plain SGD).
    """

    epochs: int = 1
    batch_size: int | None = 32
    lr: float = 0.05
    momentum: float = 0.0
    weight_decay: float = 0.0
    max_steps: int | None = None
    dp_sgd: DPSGDConfig | None = None

    def __post_init__(self) -> None:
        _set = object.__setattr__
        _set(self, "epochs", as_int("local epochs", self.epochs, minimum=1))
        if self.batch_size is not None:
            _set(self, "batch_size", as_int("batch_size", self.batch_size, minimum=1))
        _set(self, "lr", as_real("lr", self.lr, low=0.0, low_open=True))
        _set(self, "momentum", as_real("momentum", self.momentum, low=0.0, high=1.0, high_open=True))
        _set(self, "weight_decay", as_real("weight_decay", self.weight_decay, low=0.0))
        if self.max_steps is not None:
            _set(self, "max_steps", as_int("max_steps", self.max_steps, minimum=1))
        if self.dp_sgd is not None and not isinstance(self.dp_sgd, DPSGDConfig):
            raise ConfigError(f"dp_sgd must be a DPSGDConfig or None, got {type(self.dp_sgd).__name__}")
        if self.dp_sgd is not None and self.batch_size is None:
            raise ConfigError("DP-SGD samples Poisson batches of an expected size: give a batch_size, not None "
                              "(full batch)")

    @classmethod
    def fedsgd(cls, *, lr: float, batch_size: int | None = None, weight_decay: float = 0.0) -> LocalTrainingConfig:
        """FedSGD (McMahan et al., AISTATS 2017, Sec. 2): one gradient step per client per round.

        The client's update is ``-lr * g`` with ``g`` the gradient on its whole dataset
        (``batch_size=None``) or on one random mini-batch of ``batch_size``; the same training
        loop runs it, stopped after its first step (``max_steps=1``, no momentum: a fresh
        optimiser's first momentum step is the plain gradient step anyway).

        Examples
        --------
        >>> c = LocalTrainingConfig.fedsgd(lr=0.1)
        >>> c.max_steps, c.batch_size, c.epochs
        (1, None, 1)
        """
        return cls(epochs=1, batch_size=batch_size, lr=lr, momentum=0.0, weight_decay=weight_decay, max_steps=1)


class TrainingHook:
    """Override any of these methods to change local training; the defaults do nothing.

    Examples
    --------
    >>> class FlipAllLabels(TrainingHook):
    ...     def on_batch(self, x, y, *, step, generator):
    ...         return x, 9 - y
    """

    def on_round_start(self, *, round_idx: int, global_params: torch.Tensor) -> None:
        """Runs before the client's local training in round ``round_idx`` with the broadcast ``x``.

        Attacks use it to switch on only in their rounds or to remember the global model.
        """

    def on_batch(self, x, y: torch.Tensor, *, step: int, generator: torch.Generator):
        """Transform a batch before the forward pass (data poisoning); returns ``(x, y)``."""
        return x, y

    def extra_loss(self, model: nn.Module, x, y: torch.Tensor, logits: torch.Tensor) -> torch.Tensor | None:
        """An extra loss term added to the cross-entropy (e.g. FedProx, anomaly evasion)."""
        return None

    def after_backward(self, model: nn.Module, *, step: int) -> None:
        """Runs after ``loss.backward()`` and before the step (gradient masks, clipping)."""

    def after_step(self, model: nn.Module, *, step: int) -> None:
        """Runs after each optimiser step (projections, norm constraints)."""


@dataclass(frozen=True)
class LocalResult:
    """What a client reports about its local training (``dp_epsilon``: this call's DP-SGD epsilon, if any)."""

    loss: float
    steps: int
    num_samples: int
    dp_epsilon: float | None = None


def _batches(
    data: ArrayDataset | TextDataset, batch_size: int | None, generator: torch.Generator, device: torch.device
) -> Iterator[tuple[object, torch.Tensor]]:
    perm = torch.randperm(len(data), generator=generator)
    batch_size = len(data) if batch_size is None else batch_size  # None: one full batch
    for start in range(0, len(data), batch_size):
        idx = perm[start : start + batch_size]
        if isinstance(data, TextDataset):
            yield [data.texts[int(i)] for i in idx], data.y[idx].to(device)
        else:
            yield data.x[idx].to(device), data.y[idx].to(device)


def local_train(
    model: nn.Module,
    data: ArrayDataset | TextDataset,
    *,
    config: LocalTrainingConfig,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
    hooks: Sequence[TrainingHook] = (),
) -> LocalResult:
    """Train ``model`` in place on ``data`` with mini-batch SGD and cross-entropy.

    Parameters
    ----------
    model : nn.Module
        Already on ``device``; trained in place.
    data : ArrayDataset or TextDataset
        The client's data (kept on CPU; batches move to ``device``).
    config : LocalTrainingConfig
        Epochs, batch size, learning rate, ...
    generator : torch.Generator
        CPU generator for the batch order (and for hooks).
    device : torch.device or str
        Where the batches go.
    hooks : sequence of TrainingHook
        Applied in order at each point of the loop.

    Returns
    -------
    LocalResult
        Mean training loss over the steps, number of steps and of samples.
    """
    if len(data) == 0:
        raise ConfigError("cannot train on an empty client dataset")
    device = torch.device(device)
    opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    model.train()
    engine, train_model, batches = None, model, None
    if config.dp_sgd is not None:
        engine, train_model, opt, batches = _make_private(model, opt, data, config, generator, device)
    # dropout and other layers draw from torch's global RNG: fork it, seeded by this client's generator
    # (its initial seed: the batch order's stream is not consumed), and restore it afterwards
    forked = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=forked):
        torch.manual_seed(generator.initial_seed())
        return _train_loop(model, train_model, opt, data, config, generator, device, hooks, engine, batches)


def _train_loop(model: nn.Module, train_model: nn.Module, opt: torch.optim.Optimizer, data: ArrayDataset | TextDataset,
                config: LocalTrainingConfig, generator: torch.Generator, device: torch.device,
                hooks: Sequence[TrainingHook], engine: object, batches: object) -> LocalResult:
    step, total = 0, 0.0
    try:
        for _ in range(config.epochs):
            epoch = batches if batches is not None else _batches(data, config.batch_size, generator, device)
            for x, y in epoch:
                if batches is not None:  # Opacus' loader yields CPU tensors
                    x, y = x.to(device), y.to(device)
                for h in hooks:
                    x, y = h.on_batch(x, y, step=step, generator=generator)
                opt.zero_grad(set_to_none=True)
                logits = train_model(x)
                loss = F.cross_entropy(logits, y)
                for h in hooks:
                    extra = h.extra_loss(model, x, y, logits)
                    if extra is not None:
                        loss = loss + extra
                loss.backward()
                for h in hooks:
                    h.after_backward(model, step=step)
                opt.step()
                for h in hooks:
                    h.after_step(model, step=step)
                total += float(loss.detach()) if len(y) else 0.0
                step += 1
                if config.max_steps is not None and step >= config.max_steps:
                    return _result(total, step, len(data), engine, config)
        return _result(total, step, len(data), engine, config)
    finally:
        if engine is not None:
            train_model._close()  # remove Opacus' hooks and per-sample gradients from the caller's model


def _result(total: float, step: int, n: int, engine: object, config: LocalTrainingConfig) -> LocalResult:
    eps = None
    if engine is not None and config.dp_sgd is not None and config.dp_sgd.noise_multiplier > 0:
        eps = float(engine.get_epsilon(config.dp_sgd.delta))  # type: ignore[attr-defined]
    return LocalResult(loss=total / max(step, 1), steps=step, num_samples=n, dp_epsilon=eps)


def _make_private(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    data: ArrayDataset | TextDataset,
    config: LocalTrainingConfig,
    generator: torch.Generator,
    device: torch.device,
) -> tuple[object, nn.Module, torch.optim.Optimizer, Iterable[tuple[torch.Tensor, torch.Tensor]]]:
    """Wrap model, optimiser and a Poisson-sampled loader with Opacus' PrivacyEngine (explicit generators)."""
    from opacus import PrivacyEngine
    from opacus.data_loader import DPDataLoader
    from torch.utils.data import DataLoader, TensorDataset

    if not isinstance(data, ArrayDataset):
        raise ConfigError("DP-SGD local training supports image (ArrayDataset) clients only")
    dp = config.dp_sgd
    assert dp is not None and config.batch_size is not None  # LocalTrainingConfig refuses DP-SGD with full batch
    base = DataLoader(TensorDataset(data.x, data.y), batch_size=min(config.batch_size, len(data)))
    sample_gen = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
    noise_gen = torch.Generator(device=device).manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
    loader = DPDataLoader.from_data_loader(base, generator=sample_gen)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "secure RNG turned off": we pass explicit generators
        engine = PrivacyEngine(accountant=dp.accountant, secure_mode=False)
    train_model, opt, loader = engine.make_private(
        module=model,
        optimizer=opt,
        data_loader=loader,
        noise_multiplier=dp.noise_multiplier,
        max_grad_norm=dp.max_grad_norm,
        poisson_sampling=False,  # the loader above already samples, from our generator
        noise_generator=noise_gen,
    )
    return engine, train_model, opt, loader


@dataclass(frozen=True)
class EvalResult:
    """Mean cross-entropy loss and accuracy on a dataset."""

    loss: float
    accuracy: float


@torch.no_grad()
def evaluate(
    model: nn.Module, data: ArrayDataset | TextDataset, *, device: torch.device | str = "cpu", batch_size: int = 1000
) -> EvalResult:
    """Evaluate ``model`` on ``data`` (no gradient, eval mode).

    Examples
    --------
    >>> import torch
    >>> from fl_core.data.dataset import ArrayDataset
    >>> m = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    >>> _ = torch.nn.init.zeros_(m[1].weight); _ = torch.nn.init.zeros_(m[1].bias)
    >>> evaluate(m, ArrayDataset(x=torch.zeros(2, 4), y=torch.tensor([0, 1]), num_classes=2, name="t")).accuracy
    0.5
    """
    if len(data) == 0:
        raise ConfigError("cannot evaluate on an empty dataset")
    device = torch.device(device)
    was_training = model.training
    model.eval()
    loss_sum, correct = 0.0, 0
    for start in range(0, len(data), batch_size):
        if isinstance(data, TextDataset):
            x: object = list(data.texts[start : start + batch_size])
        else:
            x = data.x[start : start + batch_size].to(device)
        y = data.y[start : start + batch_size].to(device)
        logits = model(x)
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(dim=1) == y).sum())
    model.train(was_training)
    return EvalResult(loss=loss_sum / len(data), accuracy=correct / len(data))
