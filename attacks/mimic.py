"""Mimic: every Byzantine client sends a copy of one chosen honest client's update.

Karimireddy, He & Jaggi, "Byzantine-Robust Learning on Heterogeneous Datasets
via Bucketing", ICLR 2022 (the *mimic* attack; reference code
epfml/byzantine-robust-noniid-optimizer, ``MimicVariantAttacker``). Under
heterogeneous data a robust rule that outvotes outliers can be steered without
sending a single outlier: the ``f`` attackers all send the update of one honest
client ``i*``, so that client's data is over-represented and the others' under-
represented, every round, in the same direction. The paper picks ``i*`` as the
honest client whose update lies furthest along the top principal direction
``z`` of the honest updates,

    z = argmax_{||z|| = 1} sum_{i in G} <z, x_i - mu>^2 ,   i* = argmax_{i in G} <z, x_i> ,

with ``z`` estimated online, by one power-iteration step per round, over a
warm-up of ``T_0`` rounds; after the warm-up ``i*`` stays fixed. See
:class:`Mimic`.

Examples
--------
>>> import torch
>>> from attacks.byzantine import AttackView
>>> from fl_core.aggregation import RoundContext
>>> H = torch.tensor([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0]])
>>> ctx = RoundContext(0, (0, 1, 2, 3), torch.ones(4), torch.zeros(2), torch.Generator())
>>> Mimic().craft(AttackView(own=H[:1], benign=H, n=4, f=1, ctx=ctx, aggregator=None)).tolist()
[[3.0, 0.0]]
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from attacks.byzantine import AttackView, ModelPoisoning
from attacks.threat import ThreatModel
from fl_core.errors import ConfigError
from fl_core.state import StateError, check_state, state_int, state_tensor

__all__ = ["Mimic"]

log = logging.getLogger(__name__)


def _power_step(rows: torch.Tensor, mu: torch.Tensor, z: torch.Tensor) -> torch.Tensor | None:
    """One power-iteration step ``sum_i <x_i - mu, z> (x_i - mu)``, normalised; ``None`` if it is 0."""
    dev = rows - mu
    c = (dev @ z) @ dev
    norm = c.norm()
    if not bool(norm > 0) or not bool(torch.isfinite(norm)):
        return None
    return c / norm


class Mimic(ModelPoisoning):
    """The mimic attack with the paper's choice of the mimicked client (Karimireddy et al., ICLR 2022).

    Each active round the attack sees the honest updates ``x_i`` (the reference
    rows of :class:`~attacks.byzantine.AttackView`, with their client ids) and,
    counting its active rounds ``t = 0, 1, ...``:

    * ``t = 0``: ``mu`` is the honest mean; ``z`` starts from a standard normal
      vector drawn from a generator seeded with ``seed`` and takes one power step
      ``z <- sum_i <x_i - mu, z> (x_i - mu)``, normalised;
    * ``0 < t < warmup``: ``mu <- t/(t+1) mu + 1/(t+1) mean_i x_i`` and
      ``z <- t/(t+1) z + 1/(t+1) step(z)`` (the normalised power step above), normalised;
    * ``t < warmup``: the target ``i*`` is the client maximising ``<z, x_i>`` this round;
    * ``t >= warmup``: ``i*`` is fixed (and ``z``, ``mu`` are no longer updated).

    Every attacker sends ``x_{i*}``, a bit-exact copy. ``warmup = 1`` is the
    default of the authors' code (``--mimic-warmup``).

    The state (the round count, ``mu``, ``z`` and the target's *client id*)
    persists across rounds; :meth:`state_dict` / :meth:`load_state_dict` save and
    restore it, :meth:`reset` forgets it.

    Parameters
    ----------
    warmup : int
        ``T_0 >= 1``, the number of active rounds in which ``z`` is estimated and
        the target re-chosen.
    seed : int
        Seed of the random start of the power iteration (deterministic on any device:
        drawn on the CPU, then moved).
    threat : ThreatModel or None
        Gives the reference rows their client ids (the honest clients of the round
        when omniscient, the attackers' own ids otherwise). Without it, reference
        row ``i`` is client ``i`` in every round (a fixed, fully participating cohort).

    Notes
    -----
    The paper has every client in every round. With client sampling, a fixed
    target that is not in this round's cohort cannot be copied; the attack then
    mimics, for this round only, the sampled client maximising ``<z, x_i>``
    (the stored target is kept). A round where the power step is zero (all
    honest updates equal, or orthogonal to ``z``) leaves ``z`` unchanged.
    Computations are float64 on the updates' device; the copy is in the updates' dtype.

    Examples
    --------
    The target is chosen in the warm-up and then kept by client id:

    >>> import torch
    >>> from attacks.byzantine import AttackView
    >>> from fl_core.aggregation import RoundContext
    >>> threat = ThreatModel(malicious=frozenset({9}))
    >>> attack = Mimic(threat=threat)
    >>> def view(H, ids):
    ...     ctx = RoundContext(0, ids, torch.ones(len(ids)), torch.zeros(2), torch.Generator())
    ...     return AttackView(own=H[:1], benign=H, n=len(ids), f=1, ctx=ctx, aggregator=None)
    >>> attack.craft(view(torch.tensor([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0]]), (4, 5, 6, 9))).tolist()
    [[3.0, 0.0]]
    >>> attack.target
    6
    >>> attack.craft(view(torch.tensor([[7.0, 1.0], [0.5, 2.0], [0.0, 0.0]]), (4, 5, 6, 9))).tolist()
    [[0.0, 0.0]]
    """

    #: Layout version of :meth:`state_dict`.
    STATE_VERSION: ClassVar[int] = 1

    def __init__(self, *, warmup: int = 1, seed: int = 0, threat: ThreatModel | None = None) -> None:
        if type(warmup) is not int or warmup < 1:
            raise ConfigError(f"warmup must be an int >= 1, got {warmup!r}")
        if type(seed) is not int or seed < 0:
            raise ConfigError(f"seed must be an int >= 0, got {seed!r}")
        if threat is not None and not isinstance(threat, ThreatModel):
            raise ConfigError(f"threat must be a ThreatModel or None, got {type(threat).__name__}")
        self.warmup, self.seed, self.threat = warmup, seed, threat
        self.reset()

    def reset(self) -> None:
        """Forget the estimated direction, the mean and the target."""
        self._t = 0
        self._mu: torch.Tensor | None = None
        self._z: torch.Tensor | None = None
        self._target: int | None = None

    @property
    def target(self) -> int | None:
        """Client id of the mimicked client (``None`` before the first active round)."""
        return self._target

    @property
    def direction(self) -> torch.Tensor | None:
        """The current unit estimate ``z`` of the top principal direction (float64), or ``None``."""
        return None if self._z is None else self._z.clone()

    def reference_ids(self, view: AttackView) -> tuple[int, ...]:
        """Client ids of ``view.benign``'s rows, in row order."""
        h = view.benign.shape[0]
        if self.threat is None:
            return tuple(range(h))
        mal = self.threat.malicious
        if self.threat.omniscient:
            ids = tuple(c for c in view.ctx.client_ids if c not in mal)
        else:
            ids = tuple(c for c in view.ctx.client_ids if c in mal)
        if len(ids) != h:
            raise ConfigError(
                f"Mimic: the threat model names {len(ids)} reference clients among {view.ctx.client_ids}, "
                f"but the view has {h} reference rows"
            )
        return ids

    def _update_direction(self, X: torch.Tensor) -> None:
        t = self._t
        mean = X.mean(dim=0)
        if t == 0 or self._mu is None or self._z is None:
            g = torch.Generator().manual_seed(self.seed)
            z0 = torch.randn(X.shape[1], generator=g, dtype=torch.float64).to(X.device)
            self._mu = mean
            step = _power_step(X, self._mu, z0)
            self._z = step if step is not None else z0 / z0.norm()
            return
        mu = self._mu.to(X.device)
        z = self._z.to(X.device)
        self._mu = t / (t + 1) * mu + mean / (t + 1)
        step = _power_step(X, self._mu, z)
        if step is not None:
            z = t / (t + 1) * z + step / (t + 1)
            norm = z.norm()
            z = z / norm if bool(norm > 0) else step
        self._z = z

    def craft(self, view: AttackView) -> torch.Tensor:
        rows = view.benign
        if rows.shape[0] == 0:
            raise ConfigError("Mimic needs at least one reference update to copy, got none")
        ids = self.reference_ids(view)
        X = rows.detach().to(torch.float64)
        choosing = self._t < self.warmup
        if choosing:
            self._update_direction(X)
        assert self._z is not None
        if choosing or self._target not in ids:
            best = int(torch.argmax(X @ self._z.to(X.device)))
            if choosing:
                self._target = ids[best]
            else:
                log.debug("Mimic: target %s not sampled; mimicking %s this round", self._target, ids[best])
        else:
            best = ids.index(self._target)  # type: ignore[arg-type]
        self._t += 1
        return rows[best].expand(view.f, -1).clone()

    def _config(self) -> dict[str, Any]:
        return {"warmup": self.warmup, "seed": self.seed}

    def state_dict(self) -> dict[str, Any]:
        """``rounds`` (active rounds seen), ``target`` (a client id or ``None``), ``mu`` and ``z``.

        ``mu`` and ``z`` are clones of the float64 ``(d,)`` tensors (``None`` before the
        first active round); the rest is JSON-serialisable.
        """
        return {
            "kind": type(self).__name__,
            "version": self.STATE_VERSION,
            "config": self._config(),
            "rounds": self._t,
            "target": self._target,
            "mu": None if self._mu is None else self._mu.detach().clone(),
            "z": None if self._z is None else self._z.detach().clone(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state saved by :meth:`state_dict` of a Mimic with the same ``warmup`` and ``seed``.

        Raises
        ------
        fl_core.state.StateError
            Another kind, version or configuration, missing or unexpected keys, a target
            that is not an int, tensors of the wrong shape or with NaN/Inf, or a state whose
            parts disagree (a round count without a direction, or the reverse).
        """
        kind = type(self).__name__
        state = check_state(state, kind=kind, version=self.STATE_VERSION, keys=("rounds", "target", "mu", "z"),
                            config=self._config())
        rounds = state_int(state, "rounds", kind=kind)
        target = state["target"]
        if target is not None and type(target) is not int:
            raise StateError(f"{kind} state: target must be a client id (int) or None, got {target!r}")
        mu = state_tensor(state, "mu", kind=kind, ndim=1, allow_none=True)
        z = state_tensor(state, "z", kind=kind, ndim=1, allow_none=True)
        seen = rounds > 0
        if seen != (mu is not None) or seen != (z is not None) or seen != (target is not None):
            raise StateError(f"{kind} state: rounds={rounds} disagrees with target={target!r}, mu and z "
                             "(all set after the first round, all None before)")
        if mu is not None and z is not None and mu.shape != z.shape:
            raise StateError(f"{kind} state: mu has shape {tuple(mu.shape)} but z {tuple(z.shape)}")
        self._t, self._target = rounds, target
        self._mu = None if mu is None else mu.to(torch.float64)
        self._z = None if z is None else z.to(torch.float64)
