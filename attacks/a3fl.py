"""A3FL: adversarially adaptive backdoor (Zhang, Jia, Wang & Gong, "A3FL: Adversarially Adaptive
Backdoor Attacks to Federated Learning", NeurIPS 2023).

A static trigger is unlearned by the global training once the attackers stop (or
is removed by a defense). A3FL instead optimises the trigger pattern every round,
*before* local training, against the global model **and** against an adversarially
"unlearned" copy of it: the paper's min-max,

* inner max (the defender simulated): a copy ``theta'`` of the global model
  ``theta`` is trained for ``adv_epochs`` to *remove* the current trigger: SGD on
  the attacker's trigger-stamped inputs with their **true** labels;
* outer min (the attacker): the pattern ``delta`` takes ``outer_epochs`` passes of
  signed-gradient steps ``delta <- clip(delta - alpha sign(grad))`` on
  ``L(theta; x + delta, y_t) + lambda * sim(theta', theta) * L(theta'; x + delta, y_t)``,
  the target-class cross-entropy on stamped inputs, with ``sim`` the cosine
  similarity of the two models' parameters (an unlearned model far from the global
  one counts less; the authors' code takes the cosine of the two models' conv-layer
  gradients instead, which our MLPs do not have); ``theta'`` is re-crafted against the
  current pattern every ``adv_every`` passes, from the second pass on, as in the authors' code.

Then each malicious client trains on its data with a ``poison_fraction`` of every
batch stamped with the new pattern and labelled ``y_t``. The pattern lives in a
:class:`~attacks.triggers.PatternTrigger` shared by every malicious client's hook
and by the plan's :class:`~attacks.metrics.Backdoor`, so attack success is measured
with the latest adapted trigger, and ``state_dict``/``load_state_dict`` of that
trigger carry it across a checkpoint.

Hyper-parameters (the authors' CIFAR-10 code -> ours, for 8x8 digits / 28x28
Fashion-MNIST on CPUs): trigger ``5 x 5`` at offset 2 on ``32 x 32`` -> ``round(5 H / 32)``
(at least 2) at offset ``round(2 H / 32)``: ``2 x 2`` at 0 on digits, ``4 x 4`` at 2 on
Fashion-MNIST; initial pattern a constant (0.5 there) -> the middle of the value range;
values clamped to ``[-2, 2]`` (CIFAR-10's normalised range) -> ``[low, high]`` intersected
with the attacker's own data range; 200 outer epochs of sign steps ``alpha = 0.01`` over a
client's ~500 images -> ``outer_epochs = 10`` over at most ``search_size = 512`` of its
samples with ``alpha = 0.05`` (the pattern can still cross its whole range in one search);
``dm_adv_epochs = 5``, ``dm_adv_K = 1``, one adversarial model, ``noise_loss_lambda = 0.01``,
and the adversarial model's SGD (lr 0.01, momentum 0.9, weight decay 5e-4) unchanged.

The training-hook interface gives a hook the model and data only during training,
while the search must run before it: a malicious client's hook records its clean
data and the model's architecture the first time it trains, and searches at the start
of every later round it is active in. In a malicious client's first training it
poisons with the initial pattern. With a Ray cohort (:mod:`fl_core.cohort_ray`) the
training, and so the recording, happens on a worker and never reaches the driver's
hook: the trigger then stays at its initial pattern (logged as a warning); run A3FL
with the sequential executor.

Examples
--------
>>> import torch
>>> from attacks.triggers import PatternTrigger
>>> g = torch.Generator().manual_seed(0)
>>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
>>> x, y = torch.randn(32, 1, 4, 4, generator=g), torch.randint(0, 3, (32,), generator=g)
>>> trig = PatternTrigger.square(channels=1, height=4, width=4, size=2, low=-1.0, high=1.0)
>>> before = float(backdoor_loss(model, x, trig, trig.pattern, target=2).detach())
>>> new = search_trigger(model, x, y, trig, target=2, params=A3FLParams(outer_epochs=3), generator=g)
>>> float(backdoor_loss(model, x, trig, new, target=2).detach()) < before
True
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from attacks.data_poisoning import ScheduledHook
from attacks.threat import AttackSchedule
from attacks.triggers import PatternTrigger
from fl_core.errors import ConfigError
from fl_core.params import flatten_params, unflatten_into
from fl_core.rng import Stream, torch_generator

__all__ = ["A3FLBackdoor", "A3FLParams", "a3fl_trigger", "backdoor_loss", "search_trigger", "unlearn_trigger",
           "with_a3fl_parameters"]

log = logging.getLogger(__name__)

F_ = TypeVar("F_", bound=Callable[..., Any])


@dataclass(frozen=True)
class A3FLParams:
    """A3FL's hyper-parameters: the one place they and their defaults are written (see the module docstring).

    :func:`search_trigger` reads the search's fields, :class:`A3FLBackdoor` all of them, and the
    registry's ``a3fl`` builder takes them as keyword parameters through :func:`with_a3fl_parameters`.

    Attributes
    ----------
    poison_fraction : float
        Share of each batch of a malicious client stamped with the trigger and relabelled, in (0, 1].
    outer_epochs : int
        Passes of the trigger search over the client's samples (the authors' ``trigger_outter_epochs``).
    trigger_lr : float
        Size of the search's sign steps (``trigger_lr``).
    adv_epochs : int
        Epochs of the adversarial model's unlearning (``dm_adv_epochs``).
    adv_every : int
        The adversarial model is re-crafted every ``adv_every`` passes, from the second on (``dm_adv_K``).
    adv_models : int
        Number of adversarial models (``dm_adv_model_count``).
    adv_lambda : float
        Weight ``lambda`` of the adversarial models' loss (``noise_loss_lambda``).
    adv_lr : float
        The adversarial model's SGD learning rate.
    search_size : int
        At most this many of the client's samples (a seeded subset) enter the search.
    batch_size : int
        Batch size of the search and of the adversarial model's training.

    Raises
    ------
    ConfigError
        For a value out of range; the message names the parameter and the value.

    Examples
    --------
    >>> A3FLParams(outer_epochs=3).outer_epochs, A3FLParams().adv_lambda
    (3, 0.01)
    >>> A3FLParams(adv_every=0)
    Traceback (most recent call last):
    ...
    fl_core.errors.ConfigError: A3FL adv_every must be an integer >= 1, got 0
    """

    poison_fraction: float = 0.2
    outer_epochs: int = 10
    trigger_lr: float = 0.05
    adv_epochs: int = 5
    adv_every: int = 1
    adv_models: int = 1
    adv_lambda: float = 0.01
    adv_lr: float = 0.01
    search_size: int = 512
    batch_size: int = 32

    def __post_init__(self) -> None:
        pf = self.poison_fraction
        if not (isinstance(pf, int | float) and not isinstance(pf, bool) and 0 < pf <= 1):
            raise ConfigError(f"A3FL poison_fraction must be in (0, 1], got {pf!r}")
        for name, least in (("outer_epochs", 0), ("adv_epochs", 0), ("adv_every", 1), ("adv_models", 1),
                            ("search_size", 1), ("batch_size", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ConfigError(f"A3FL {name} must be an integer >= {least}, got {value!r}")
        for name in ("trigger_lr", "adv_lr"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ConfigError(f"A3FL {name} must be a positive finite number, got {value!r}")
        lam = self.adv_lambda
        if not (isinstance(lam, int | float) and math.isfinite(lam) and lam >= 0):
            raise ConfigError(f"A3FL adv_lambda must be a finite number >= 0, got {lam!r}")


def with_a3fl_parameters(builder: F_) -> F_:
    """Give a builder that takes ``**params`` the :class:`A3FLParams` fields as keyword-only parameters.

    Its signature and annotations then list every field with the dataclass's default and type,
    so a registry validates the names (and a suite file their types) from the one source;
    the builder forwards ``**params`` to :class:`A3FLParams`.

    Examples
    --------
    >>> @with_a3fl_parameters
    ... def build(*, target: int = 0, **params: Any) -> A3FLParams:
    ...     return A3FLParams(**params)
    >>> list(inspect.signature(build).parameters)[:3], inspect.signature(build).parameters["adv_lr"].default
    (['target', 'poison_fraction', 'outer_epochs'], 0.01)
    >>> build(outer_epochs=2).outer_epochs
    2
    """
    sig = inspect.signature(builder)
    var = [p.name for p in sig.parameters.values() if p.kind is inspect.Parameter.VAR_KEYWORD]
    if len(var) != 1:
        raise ConfigError(f"{builder.__qualname__} must take **params to receive the A3FL parameters")
    fields = dataclasses.fields(A3FLParams)
    kept = [p for p in sig.parameters.values() if p.name != var[0]]
    clash = sorted({p.name for p in kept} & {f.name for f in fields})
    if clash:
        raise ConfigError(f"{builder.__qualname__} names A3FL parameters itself: {clash}")
    extra = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=f.type)
             for f in fields]
    builder.__signature__ = sig.replace(parameters=[*kept, *extra])  # type: ignore[attr-defined]
    notes = {k: v for k, v in builder.__annotations__.items() if k != var[0]}
    builder.__annotations__ = {**notes, **{f.name: f.type for f in fields}}
    return builder


def a3fl_trigger(*, image_shape: tuple[int, ...], low: float, high: float, size: int | None = None) -> PatternTrigger:
    """A3FL's initial trigger scaled to ``image_shape`` (see the module docstring).

    Examples
    --------
    >>> t = a3fl_trigger(image_shape=(1, 28, 28), low=-1.0, high=2.0)
    >>> int(t.mask.sum()), bool(t.mask[2, 2]), float(t.pattern[0, 2, 2])
    (16, True, 0.5)
    """
    c, h, w = image_shape
    side = min(h, w)
    size = max(2, round(5 * side / 32)) if size is None else size
    return PatternTrigger.square(channels=c, height=h, width=w, size=size, gap=round(2 * side / 32), low=low, high=high)


def backdoor_loss(
    model: nn.Module, x: torch.Tensor, trigger: PatternTrigger, pattern: torch.Tensor, *, target: int
) -> torch.Tensor:
    """Mean cross-entropy of ``model`` on ``x`` stamped with ``pattern``, all labelled ``target``."""
    out = model(trigger.stamp(x, pattern.to(device=x.device, dtype=x.dtype)))
    return F.cross_entropy(out, torch.full((len(x),), target, dtype=torch.long, device=x.device))


def _batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    perm = torch.randperm(n, generator=generator)
    return [perm[i : i + batch_size] for i in range(0, n, batch_size)]


def unlearn_trigger(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    trigger: PatternTrigger,
    pattern: torch.Tensor,
    *,
    epochs: int = 5,
    lr: float = 0.01,
    batch_size: int = 32,
    generator: torch.Generator,
) -> nn.Module:
    """A3FL's adversarial model: a copy of ``model`` trained to remove the trigger.

    SGD (``lr``, momentum 0.9, weight decay 5e-4, the authors' settings) for ``epochs``
    passes on ``x`` stamped with ``pattern`` and labelled with the **true** ``y``.
    """
    adv = copy.deepcopy(model)
    adv.train()
    for p in adv.parameters():
        p.requires_grad_(True)
    opt = torch.optim.SGD(adv.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    stamped = trigger.stamp(x, pattern.to(device=x.device, dtype=x.dtype)).detach()
    for _ in range(epochs):
        for idx in _batches(len(x), batch_size, generator):
            idx = idx.to(x.device)
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(adv(stamped[idx]), y[idx]).backward()
            opt.step()
    adv.eval()
    return adv


def _similarity(a: nn.Module, b: nn.Module) -> float:
    return float(F.cosine_similarity(flatten_params(a), flatten_params(b), dim=0))


def search_trigger(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    trigger: PatternTrigger,
    *,
    target: int,
    params: A3FLParams | None = None,
    low: float | None = None,
    high: float | None = None,
    generator: torch.Generator,
) -> torch.Tensor:
    """A3FL's trigger search from ``trigger.pattern``; returns the new pattern (``trigger`` is not changed).

    ``model`` is the global model (not changed). The pattern stays within
    ``[low, high]`` (default: the trigger's range) on the mask and is 0 off it.
    ``params`` (default ``A3FLParams()``) gives the search's hyper-parameters; all of
    ``x`` enters the search (:class:`A3FLBackdoor` draws its ``search_size`` subset first).
    See the module docstring for the objective.
    """
    p = A3FLParams() if params is None else params
    if not isinstance(p, A3FLParams):
        raise ConfigError(f"A3FL search params must be A3FLParams, got {type(p).__name__}")
    lo = trigger.low if low is None else max(trigger.low, low)
    hi = trigger.high if high is None else min(trigger.high, high)
    if not lo < hi:
        raise ConfigError(f"A3FL trigger range [{lo}, {hi}] is empty")
    device = next(model.parameters()).device
    x, y = x.to(device), y.to(device)
    was_training = model.training
    model.eval()
    mask = trigger.mask.to(device)
    t = trigger.pattern.to(device).clamp(lo, hi) * mask
    advs: list[tuple[nn.Module, float]] = []
    try:
        for it in range(p.outer_epochs):
            if it % p.adv_every == 0 and it != 0:
                advs = []
                for _ in range(p.adv_models):
                    adv = unlearn_trigger(model, x, y, trigger, t, epochs=p.adv_epochs, lr=p.adv_lr,
                                          batch_size=p.batch_size, generator=generator)
                    advs.append((adv, _similarity(adv, model)))
            for idx in _batches(len(x), p.batch_size, generator):
                xb = x[idx.to(device)]
                t.requires_grad_(True)
                loss = backdoor_loss(model, xb, trigger, t, target=target)
                for adv, w in advs:
                    loss = loss + p.adv_lambda * w * backdoor_loss(adv, xb, trigger, t, target=target) / len(advs)
                (grad,) = torch.autograd.grad(loss, t)
                t = ((t.detach() - p.trigger_lr * grad.sign()).clamp(lo, hi)) * mask
    finally:
        model.train(was_training)
    return t.detach().cpu()


class A3FLBackdoor(ScheduledHook):
    """A malicious client of A3FL: searches the shared trigger at each active round's start, then poisons.

    Parameters
    ----------
    trigger : PatternTrigger
        The pattern shared by every malicious client and the scored backdoor (changed in place).
    target : int
        The target class ``y_t``.
    params : A3FLParams, optional
        The poisoned share of each batch and the search's hyper-parameters (default ``A3FLParams()``).
    seed : int
        Seed of the search's batch order and subset (with the round index).
    schedule : AttackSchedule, optional
        The attack's rounds.

    Examples
    --------
    >>> import torch
    >>> trig = PatternTrigger.square(channels=1, height=4, width=4, size=2, low=-1.0, high=1.0, init=1.0)
    >>> hook = A3FLBackdoor(trigger=trig, target=1, params=A3FLParams(poison_fraction=0.5))
    >>> hook.on_round_start(round_idx=0, global_params=torch.zeros(1))
    >>> x, y = hook.on_batch(torch.zeros(4, 1, 4, 4), torch.zeros(4, dtype=torch.long), step=0,
    ...                      generator=torch.Generator().manual_seed(0))
    >>> int((y == 1).sum()), int((x == 1.0).sum())  # 2 samples x 4 trigger pixels
    (2, 8)
    """

    def __init__(
        self,
        *,
        trigger: PatternTrigger,
        target: int,
        params: A3FLParams | None = None,
        seed: int = 0,
        schedule: AttackSchedule | None = None,
    ) -> None:
        super().__init__(schedule=schedule)
        if not isinstance(trigger, PatternTrigger):
            raise ConfigError(f"A3FL needs a PatternTrigger, got {type(trigger).__name__}")
        if not isinstance(target, int) or isinstance(target, bool) or target < 0:
            raise ConfigError(f"A3FL target class must be >= 0, got {target!r}")
        if params is not None and not isinstance(params, A3FLParams):
            raise ConfigError(f"A3FL params must be A3FLParams, got {type(params).__name__}")
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ConfigError(f"A3FL seed must be an integer >= 0, got {seed!r}")
        self.trigger, self.target = trigger, target
        self.params = A3FLParams() if params is None else params
        self.seed = seed
        self._template: nn.Module | None = None
        self._data: tuple[torch.Tensor, torch.Tensor] | None = None
        self._seen: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._recording = False
        self._starts, self._warned = 0, False

    def on_round_start(self, *, round_idx: int, global_params: torch.Tensor) -> None:
        super().on_round_start(round_idx=round_idx, global_params=global_params)
        if self._seen:  # what the last training showed: the client's data
            self._data = (torch.cat([x for x, _ in self._seen]), torch.cat([y for _, y in self._seen]))
            self._seen = []
        self._recording = self._data is None
        if self.active and self._template is not None and self._data is not None:
            self._search(round_idx, global_params)
        elif self._starts and not self._warned and (self._data is None or self._template is None):
            self._warned = True
            log.warning("A3FL: client training was not seen by this hook (a Ray cohort?); the trigger is not adapted")
        self._starts += 1

    def _search(self, round_idx: int, global_params: torch.Tensor) -> None:
        assert self._template is not None and self._data is not None
        model = self._template
        unflatten_into(model, global_params.to(next(model.parameters()).device))
        g = torch_generator(self.seed, Stream.USER, 3, round_idx)
        x, y = self._data
        if len(x) > self.params.search_size:
            keep = torch.randperm(len(x), generator=g)[: self.params.search_size]
            x, y = x[keep], y[keep]
        before = self.trigger.pattern
        new = search_trigger(model, x, y, self.trigger, target=self.target, low=float(x.min()), high=float(x.max()),
                             generator=g, params=self.params)
        self.trigger.set_pattern(new)
        log.debug("A3FL round %d: trigger moved by %.4f (L2)", round_idx, float((new - before).norm()))

    def on_batch(self, x, y: torch.Tensor, *, step: int, generator: torch.Generator):
        if self._recording:
            self._seen.append((x.detach().cpu().clone(), y.detach().cpu().clone()))
        if not self.active:
            return x, y
        k = max(1, round(self.params.poison_fraction * len(y)))
        idx = torch.randperm(len(y), generator=generator)[:k].to(y.device)
        x, y = x.clone(), y.clone()
        x[idx] = self.trigger.apply(x[idx])
        y[idx] = self.target
        return x, y

    def after_step(self, model: nn.Module, *, step: int) -> None:
        if self._template is None:  # the architecture, once; its parameters are overwritten before each search
            self._template = copy.deepcopy(model)
