"""Server optimisers: how the aggregated update moves the global model.

The aggregate ``delta`` is the (robust, secure, noised) mean of the clients'
``local - global`` differences, i.e. a negative pseudo-gradient.

* FedAvg (McMahan et al., AISTATS 2017): ``x <- x + eta * delta``.
* FedAvgM (Hsu, Qi & Brown, 2019): ``v <- beta * v + delta``; ``x <- x + eta * v``.
* FedAdam (Reddi et al., ICLR 2021, "Adaptive Federated Optimization", Alg. 2):
  ``m <- b1 m + (1 - b1) delta``; ``v <- b2 v + (1 - b2) delta^2``;
  ``x <- x + eta * m / (sqrt(v) + tau)`` (no bias correction, as in the paper).

Every optimiser has ``state_dict()`` / ``load_state_dict()`` (momentum, moments,
step count), so a run resumed after a restart takes the same next step.

Examples
--------
>>> import torch
>>> FedAvg(lr=1.0).step(torch.zeros(2), torch.tensor([1.0, -1.0]))
tensor([ 1., -1.])
"""

from __future__ import annotations

import abc
import math
from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from fl_core.errors import ConfigError
from fl_core.registry import Registry
from fl_core.state import StateError, check_state, state_int, state_tensor

__all__ = ["SERVER_OPTIMIZERS", "FedAdam", "FedAvg", "FedAvgM", "ServerOptimizer", "build_server_optimizer"]

#: The server optimisers, by name; parameters and defaults are the constructors'.
SERVER_OPTIMIZERS = Registry("server optimizer")


def _check_lr(lr: float) -> None:
    if not (math.isfinite(lr) and lr > 0):
        raise ConfigError(f"server lr must be a positive finite number, got {lr}")


class ServerOptimizer(abc.ABC):
    """Turns the global parameters ``x`` and the aggregate ``delta`` into the next ``x``."""

    @abc.abstractmethod
    def step(self, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """Return the new global parameters (``x`` is not modified)."""

    #: Layout version of :meth:`state_dict`.
    STATE_VERSION: ClassVar[int] = 1

    #: The keys of :meth:`state_dict` besides ``kind``, ``version`` and ``config``.
    STATE_KEYS: ClassVar[tuple[str, ...]] = ()

    def reset(self) -> None:
        """Forget the optimiser state (momentum, moments)."""

    def _config(self) -> dict[str, Any]:
        """Hyperparameters a state only fits with; a subclass with state overrides ``_state`` and ``_load`` too.

        The default refuses, so that an optimiser that never declared its state
        cannot save an empty one and lose it silently.
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement state_dict() / load_state_dict()")

    def _state(self) -> dict[str, Any]:
        """The mutable state (tensors cloned)."""
        return {}

    def _load(self, state: Mapping[str, Any]) -> None:
        """Assign a state :meth:`load_state_dict` has checked the header of; validate every value first."""

    def state_dict(self) -> dict[str, Any]:
        """The optimiser's state: ``kind``, ``version``, ``config`` (JSON types) and the class's state keys.

        Momentum and moments are tensor clones (``None`` before the first step);
        ``steps`` counts the steps taken since construction or :meth:`reset`.

        Examples
        --------
        >>> import torch
        >>> opt = FedAvgM(lr=1.0, momentum=0.5)
        >>> x = opt.step(torch.zeros(1), torch.ones(1))
        >>> resumed = FedAvgM(lr=1.0, momentum=0.5)
        >>> resumed.load_state_dict(opt.state_dict())
        >>> resumed.step(x, torch.ones(1)), resumed.steps
        (tensor([2.5000]), 2)
        """
        return {"kind": type(self).__name__, "version": self.STATE_VERSION, "config": self._config(), **self._state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state saved by :meth:`state_dict` of the same class with the same hyperparameters.

        Raises
        ------
        fl_core.state.StateError
            Another kind, version or configuration, missing or unexpected keys, or
            a value of the wrong type, shape, or with NaN/Inf.
        """
        state = check_state(
            state, kind=type(self).__name__, version=self.STATE_VERSION, keys=self.STATE_KEYS, config=self._config()
        )
        self._load(state)


@SERVER_OPTIMIZERS.register("fedavg", description="x += eta * delta (McMahan et al. 2017)")
class FedAvg(ServerOptimizer):
    """``x + eta * delta``; ``eta = 1`` is McMahan et al.'s FedAvg."""

    def __init__(self, *, lr: float = 1.0) -> None:
        _check_lr(lr)
        self.lr = lr

    def step(self, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        return x + self.lr * delta

    def _config(self) -> dict[str, Any]:
        return {"lr": self.lr}


@SERVER_OPTIMIZERS.register("fedavgm", description="server momentum: v = beta v + delta; x += eta v (Hsu et al. 2019)")
class FedAvgM(ServerOptimizer):
    """Server momentum (Hsu et al., 2019).

    Examples
    --------
    >>> import torch
    >>> opt = FedAvgM(lr=1.0, momentum=0.5)
    >>> x = opt.step(torch.zeros(1), torch.ones(1)); opt.step(x, torch.ones(1))
    tensor([2.5000])
    """

    STATE_KEYS = ("steps", "v")

    def __init__(self, *, lr: float = 1.0, momentum: float = 0.9) -> None:
        _check_lr(lr)
        if not 0 <= momentum < 1:
            raise ConfigError(f"server momentum must be in [0, 1), got {momentum}")
        self.lr, self.momentum = lr, momentum
        self._v: torch.Tensor | None = None
        self.steps = 0

    def step(self, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        self._v = delta.clone() if self._v is None else self.momentum * self._v + delta
        self.steps += 1
        return x + self.lr * self._v

    def reset(self) -> None:
        self._v = None
        self.steps = 0

    def _config(self) -> dict[str, Any]:
        return {"lr": self.lr, "momentum": self.momentum}

    def _state(self) -> dict[str, Any]:
        return {"steps": self.steps, "v": None if self._v is None else self._v.detach().clone()}

    def _load(self, state: Mapping[str, Any]) -> None:
        kind = type(self).__name__
        steps = state_int(state, "steps", kind=kind)
        v = state_tensor(state, "v", kind=kind, ndim=1, allow_none=True)
        _check_started(kind, steps, v is not None)
        self.steps, self._v = steps, v


@SERVER_OPTIMIZERS.register("fedadam", description="Adam on the pseudo-gradient, tau-smoothed (Reddi et al. 2021)")
class FedAdam(ServerOptimizer):
    """FedAdam (Reddi et al., ICLR 2021), adaptivity ``tau``.

    Examples
    --------
    >>> import torch
    >>> FedAdam(lr=0.1, beta1=0.0, beta2=0.0, tau=0.0).step(torch.zeros(2), torch.tensor([2.0, -3.0]))
    tensor([ 0.1000, -0.1000])
    """

    STATE_KEYS = ("steps", "m", "v")

    def __init__(self, *, lr: float = 0.01, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3) -> None:
        _check_lr(lr)
        for name, b in (("beta1", beta1), ("beta2", beta2)):
            if not 0 <= b < 1:
                raise ConfigError(f"{name} must be in [0, 1), got {b}")
        if tau < 0:
            raise ConfigError(f"tau must be >= 0, got {tau}")
        self.lr, self.beta1, self.beta2, self.tau = lr, beta1, beta2, tau
        self._m: torch.Tensor | None = None
        self._v: torch.Tensor | None = None
        self.steps = 0

    def step(self, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        if self._m is None or self._v is None:
            self._m = torch.zeros_like(delta)
            self._v = torch.full_like(delta, self.tau**2)
        self._m = self.beta1 * self._m + (1 - self.beta1) * delta
        self._v = self.beta2 * self._v + (1 - self.beta2) * delta * delta
        self.steps += 1
        return x + self.lr * self._m / (self._v.sqrt() + self.tau)

    def reset(self) -> None:
        self._m = self._v = None
        self.steps = 0

    def _config(self) -> dict[str, Any]:
        return {"lr": self.lr, "beta1": self.beta1, "beta2": self.beta2, "tau": self.tau}

    def _state(self) -> dict[str, Any]:
        m, v = self._m, self._v
        return {
            "steps": self.steps,
            "m": None if m is None else m.detach().clone(),
            "v": None if v is None else v.detach().clone(),
        }

    def _load(self, state: Mapping[str, Any]) -> None:
        kind = type(self).__name__
        steps = state_int(state, "steps", kind=kind)
        m = state_tensor(state, "m", kind=kind, ndim=1, allow_none=True)
        v = state_tensor(state, "v", kind=kind, ndim=1, allow_none=True)
        if (m is None) != (v is None):
            raise StateError(f"{kind} state: m and v must both be tensors or both None")
        _check_started(kind, steps, m is not None)
        if m is not None and v is not None:
            if m.shape != v.shape or m.dtype != v.dtype:
                raise StateError(f"{kind} state: m {tuple(m.shape)} {m.dtype} and v {tuple(v.shape)} {v.dtype} differ")
            if bool((v < 0).any()):
                raise StateError(f"{kind} state: the second moment v must be >= 0")
        self.steps, self._m, self._v = steps, m, v


def _check_started(kind: str, steps: int, has_state: bool) -> None:
    if (steps > 0) != has_state:
        raise StateError(f"{kind} state: steps={steps} but the momentum is {'set' if has_state else 'None'}")


def build_server_optimizer(name: str, *, lr: float | None = None, **params: Any) -> ServerOptimizer:
    """Build a registered server optimiser; ``lr=None`` takes the optimiser's default.

    Raises
    ------
    UnknownNameError
        If ``name`` is not registered.
    ConfigError
        If a parameter is not one the optimiser takes, or out of range.

    Examples
    --------
    >>> build_server_optimizer("fedadam").lr, build_server_optimizer("fedavgm", lr=0.5, momentum=0.5).momentum
    (0.01, 0.5)
    """
    if lr is not None:
        params["lr"] = lr
    return SERVER_OPTIMIZERS.make(name, **params)
