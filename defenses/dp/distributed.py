"""Distributed DP-FedAvg with the distributed discrete Gaussian (Kairouz, Liu, Steinke, ICML 2021).

Each client adds its share of integer noise *before* secure aggregation, so the
server only ever sees the noisy sum. Client side (:class:`DDGEncode`, an
``UpdateTransform``), for update ``x`` in ``R^d``:

1. clip: ``x <- x min(1, c / ||x||_2)``;
2. flatten: ``x <- H D x``, a randomized Hadamard rotation with random signs ``D``
   from a seed shared by all clients and fresh every round. ``d`` need not be a
   power of two: the rotation is the product of two Walsh-Hadamard blocks of
   size ``L = 2^floor(log2 d)`` on coordinates ``[0, L)`` and ``[d - L, d)``
   (both orthogonal, together covering every coordinate, ``L > d / 2``);
3. scale: ``x <- x / gamma`` (granularity ``gamma``);
4. conditional randomized rounding: round each coordinate up with probability
   its fractional part, and retry until ``||x~||_2 <= Delta_2`` where
   ``Delta_2 = min(c/gamma + sqrt(d), sqrt((c/gamma)^2 + d/4 + sqrt(2 ln(1/beta)) (c/gamma + sqrt(d)/2)))``;
5. perturb: ``y = x~ + N_Z(0, sigma^2 / gamma^2)^d`` (discrete Gaussian);
6. modular clipping: ``y mod m`` with ``m = 2^bits``.

Server side (:class:`DDGDecode`, an ``AggregateTransform``) takes the secure sum
mod ``m``, maps it to ``[-m/2, m/2)``, multiplies by ``gamma``, undoes the
rotation and divides by the fixed denominator ``n`` (the expected cohort size).
In between, any aggregator that returns the exact sum of the rows mod ``m`` will
do: :class:`ModularSum` in the clear, or secure aggregation in its
integer-input mode (``secure_agg``'s ``SecAggPlusAggregator(integer_input=True, ring_bits=bits)``).

Privacy (Kairouz et al. 2021, Theorem 1 / Proposition 14): the sum of ``n``
clients' ``N_Z(0, s^2)`` noise (``s = sigma / gamma``) makes the sum
``eps^2 / 2``-concentrated DP with
``eps = Delta_2 / (sqrt(n) s) + tau sqrt(d)``, ``tau = 10 sum_{k=1}^{n-1} exp(-2 pi^2 s^2 k / (k + 1))``,
i.e. Renyi curve ``alpha / (2 z~^2)`` with ``z~ = 1 / eps``: each round records a
Gaussian-equivalent event with ``z~`` (RDP only; see :mod:`defenses.dp.ledger`).

Dropouts: every client adds the noise share of ``n_min`` clients (``min_survivors``),
so the survivors' noise is at least the target whenever at least ``n_min`` survive;
the event is computed for ``n_min`` and the ledger says so.

Examples
--------
>>> import torch
>>> from fl_core.aggregation import RoundContext
>>> ddg = DistributedDiscreteGaussian(clip_norm=1.0, noise_multiplier=0.5, expected_clients=3, bits=20,
...                                   sample_rate=1.0, delta=1e-5, seed=7)
>>> U = 0.1 * torch.ones(3, 6)
>>> ctx = RoundContext(0, (0, 1, 2), torch.ones(3), torch.zeros(6), torch.Generator().manual_seed(0))
>>> enc = ddg.encoder(U, ctx)
>>> bool((enc >= 0).all() and (enc < 2**20).all() and torch.equal(enc, enc.round()))
True
>>> out = ddg.decoder(ModularSum(modulus=2**20)(enc), ctx)
>>> out.shape
torch.Size([6])
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import torch

from defenses.dp.clipping import clip_rows
from defenses.dp.errors import PrivacyConfigError, check_positive
from defenses.dp.events import GaussianEvent
from defenses.dp.ledger import PrivacyLedger
from defenses.dp.mechanisms import sample_discrete_gaussian
from fl_core.aggregation import AggregationResult, Aggregator, RoundContext, StageOutput
from fl_core.contracts import StageContract
from fl_core.pipeline import Pipeline
from fl_core.rng import torch_generator
from fl_core.server_opt import ServerOptimizer
from fl_core.state import DelegatedState
from fl_core.updates import check_cohort

__all__ = [
    "DDGDecode",
    "DDGEncode",
    "DistributedDiscreteGaussian",
    "ModularSum",
    "calibrate_ddg_noise_multiplier",
    "ddg_gaussian_equivalent_multiplier",
    "hadamard_transform",
    "rounded_l2_bound",
]

log = logging.getLogger(__name__)


def hadamard_transform(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal Walsh-Hadamard transform along the last dimension (a power of two); its own inverse.

    Examples
    --------
    >>> import torch
    >>> hadamard_transform(torch.tensor([1.0, 0.0, 0.0, 0.0])).tolist()
    [0.5, 0.5, 0.5, 0.5]
    """
    L = x.shape[-1]
    if L & (L - 1):
        raise PrivacyConfigError(f"Hadamard transform needs a power-of-two length, got {L}")
    lead = x.shape[:-1]
    y = x.reshape(-1, L)
    h = 1
    while h < L:
        y = y.reshape(-1, L // (2 * h), 2, h)
        a, b = y[:, :, 0, :], y[:, :, 1, :]
        y = torch.stack((a + b, a - b), dim=2)
        h *= 2
    return (y.reshape(*lead, L) / math.sqrt(L)).to(x.dtype)


class _Rotation:
    """The randomized Hadamard rotation of one round (two overlapping power-of-two blocks)."""

    def __init__(self, d: int, generator: torch.Generator) -> None:
        self.d = d
        self.L = 1 << (d.bit_length() - 1)
        self.s1 = torch.randint(0, 2, (self.L,), generator=generator).to(torch.float64) * 2 - 1
        self.s2 = torch.randint(0, 2, (self.L,), generator=generator).to(torch.float64) * 2 - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.clone()
        L, d = self.L, self.d
        y[..., :L] = hadamard_transform(self.s1 * y[..., :L])
        if L != d:
            y[..., d - L :] = hadamard_transform(self.s2 * y[..., d - L :])
        return y

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        x = y.clone()
        L, d = self.L, self.d
        if L != d:
            x[..., d - L :] = self.s2 * hadamard_transform(x[..., d - L :])
        x[..., :L] = self.s1 * hadamard_transform(x[..., :L])
        return x


def rounded_l2_bound(scaled_clip: float, *, d: int, beta: float) -> float:
    """``Delta_2`` after conditional randomized rounding (Kairouz et al. 2021, Section 4.1).

    ``beta = 0`` gives the unconditional bound ``c/gamma + sqrt(d)``.

    Examples
    --------
    >>> round(rounded_l2_bound(100.0, d=64, beta=0.0), 3)
    108.0
    """
    b1 = scaled_clip + math.sqrt(d)
    if beta == 0:
        return b1
    b2 = math.sqrt(scaled_clip**2 + d / 4 + math.sqrt(2 * math.log(1 / beta)) * (scaled_clip + math.sqrt(d) / 2))
    return min(b1, b2)


def ddg_gaussian_equivalent_multiplier(*, l2_bound: float, local_scaled_std: float, n: int, d: int) -> float:
    """``z~ = 1 / eps`` of the distributed discrete Gaussian's ``eps^2/2``-CDP (Kairouz et al. 2021, Theorem 1).

    Parameters are in the scaled (integer) domain: ``l2_bound`` is ``Delta_2``,
    ``local_scaled_std`` the per-client ``sigma / gamma``, ``n`` the number of summed clients.

    Examples
    --------
    >>> round(ddg_gaussian_equivalent_multiplier(l2_bound=10.0, local_scaled_std=10.0, n=4, d=16), 6)
    2.0
    """
    s = local_scaled_std
    tau = 10.0 * sum(math.exp(-2 * math.pi**2 * s**2 * k / (k + 1)) for k in range(1, n))
    eps = l2_bound / (math.sqrt(n) * s) + tau * math.sqrt(d)
    return 1.0 / eps


class ModularSum(Aggregator):
    """The exact sum of integer-valued rows mod ``m``, in the clear: what secure aggregation computes.

    Rows must hold integers (any sign); the result lies in ``[0, m)`` as float64.

    Examples
    --------
    >>> import torch
    >>> ModularSum(modulus=16)(torch.tensor([[15.0, 3.0], [2.0, -5.0]], dtype=torch.float64))
    tensor([ 1., 14.], dtype=torch.float64)
    """


    def contract(self) -> StageContract:
        """Takes integers modulo ``m`` and outputs their exact modular sum."""
        return StageContract(accepts=("modular",), output="modular_sum")

    def __init__(self, *, modulus: int) -> None:
        if not isinstance(modulus, int) or not 2 <= modulus <= 2**52:
            raise PrivacyConfigError(f"modulus must be an int in [2, 2^52], got {modulus!r}")
        self.modulus = modulus

    def _aggregate(self, updates: torch.Tensor, weights: torch.Tensor, ctx: RoundContext | None) -> AggregationResult:
        if not torch.equal(updates, updates.round()):
            raise PrivacyConfigError("ModularSum needs integer-valued rows (encode them with DDGEncode first)")
        s = torch.remainder(updates.to(torch.int64), self.modulus).sum(dim=0) % self.modulus
        kept = torch.ones(updates.shape[0], dtype=torch.bool, device=updates.device)
        return AggregationResult(aggregate=s.to(torch.float64), kept=kept)


class DistributedDiscreteGaussian(DelegatedState):
    """Configuration and state of distributed DP-FedAvg with the distributed discrete Gaussian.

    Parameters
    ----------
    clip_norm : float
        ``c > 0``: L2 clip of every client update.
    noise_multiplier : float
        ``z > 0``: the noise on the sum has standard deviation ``z c`` (as central DP-FedAvg's)
        once ``min_survivors`` clients took part.
    expected_clients : int
        ``n``: clients per round; the fixed denominator of the decoded mean.
    bits : int
        ``m = 2^bits`` (2 to 52): modulus, equal to the secure aggregation ring.
    sample_rate : float
        ``q`` of client sampling, recorded with every event.
    delta : float
        ``delta`` of the ledger.
    seed : int
        Shared seed of the rotations (public randomness).
    beta : float
        Conditional-rounding parameter in [0, 1) (Kairouz et al. use ``exp(-0.5)``).
    k_stddevs : float
        Headroom: ``gamma`` is chosen so that ``k_stddevs`` standard deviations of the
        sum's coordinates (signal bound plus noise) fit in ``[-m/2, m/2)``.
    min_survivors : int, optional
        ``n_min <= n`` clients whose noise shares suffice (tolerated dropouts ``n - n_min``).
    ledger : PrivacyLedger, optional
        Default: a new RDP ledger at ``delta``.

    Examples
    --------
    Its state is its ledger's, so a privacy budget survives a restart:

    >>> ddg = DistributedDiscreteGaussian(clip_norm=1.0, noise_multiplier=1.0, expected_clients=4,
    ...                                   sample_rate=0.5, delta=1e-5)
    >>> ddg.ledger.record(ddg.event(8))
    >>> resumed = DistributedDiscreteGaussian(clip_norm=1.0, noise_multiplier=1.0, expected_clients=4,
    ...                                       sample_rate=0.5, delta=1e-5)
    >>> resumed.load_state_dict(ddg.state_dict())
    >>> resumed.ledger.epsilon() == ddg.ledger.epsilon()
    True
    """

    def __init__(
        self,
        *,
        clip_norm: float,
        noise_multiplier: float,
        expected_clients: int,
        bits: int = 16,
        sample_rate: float,
        delta: float,
        seed: int = 0,
        beta: float = math.exp(-0.5),
        k_stddevs: float = 4.0,
        min_survivors: int | None = None,
        ledger: PrivacyLedger | None = None,
    ) -> None:
        self.clip_norm = check_positive(clip_norm, name="clip_norm")
        self.noise_multiplier = check_positive(noise_multiplier, name="noise_multiplier")
        if not isinstance(expected_clients, int) or expected_clients < 1:
            raise PrivacyConfigError(f"expected_clients must be an int >= 1, got {expected_clients!r}")
        if not isinstance(bits, int) or not 2 <= bits <= 52:
            raise PrivacyConfigError(f"bits must be an int in [2, 52] (float64 carries the sum exactly), got {bits!r}")
        if not 0.0 <= beta < 1.0:
            raise PrivacyConfigError(f"beta must lie in [0, 1), got {beta!r}")
        n_min = expected_clients if min_survivors is None else min_survivors
        if not isinstance(n_min, int) or not 1 <= n_min <= expected_clients:
            raise PrivacyConfigError(f"min_survivors must be an int in [1, {expected_clients}], got {min_survivors!r}")
        if not 0.0 < sample_rate <= 1.0:
            raise PrivacyConfigError(f"sample_rate must lie in (0, 1], got {sample_rate!r}")
        self.n, self.n_min, self.bits, self.modulus = expected_clients, n_min, bits, 2**bits
        self.sample_rate, self.seed, self.beta = float(sample_rate), int(seed), float(beta)
        self.k_stddevs = check_positive(k_stddevs, name="k_stddevs")
        self.ledger = ledger if ledger is not None else PrivacyLedger(delta=delta)
        if n_min < expected_clients:
            self.ledger.note(
                f"distributed noise sized for {n_min} of {expected_clients} clients: privacy holds while at least "
                f"{n_min} survive; accounted for {n_min} (conservative)",
                dropouts=True,
            )
        self.encoder = DDGEncode(self)
        self.decoder = DDGDecode(self)

    def pipeline(
        self,
        *,
        secure: Aggregator | None = None,
        attack: object = None,
        optimizer: ServerOptimizer | None = None,
        seed: int = 0,
    ) -> Pipeline:
        """The distributed DP round: ``[attack] -> encode -> exact modular sum -> decode -> optimizer``.

        ``secure`` is the secure sum of the encoded rows (SecAgg or SecAgg+ with
        ``integer_input=True`` and ``ring_bits == bits``); without it a plain
        :class:`ModularSum` stands in (the server then sees the encoded, noised rows).
        """
        rule = ModularSum(modulus=self.modulus) if secure is None else None
        return Pipeline(attack=attack, client=[self.encoder], secure=secure, rule=rule, server=[self.decoder],
                        optimizer=optimizer, seed=seed)

    #: Its state is its ledger's (:class:`~fl_core.state.DelegatedState`); the rest is configuration:
    #: the rotations derive from ``seed`` and the round index.
    STATE_PARTS = ("ledger",)

    def _config(self) -> dict[str, Any]:
        return {
            "clip_norm": self.clip_norm,
            "noise_multiplier": self.noise_multiplier,
            "expected_clients": self.n,
            "min_survivors": self.n_min,
            "bits": self.bits,
            "sample_rate": self.sample_rate,
            "seed": self.seed,
            "beta": self.beta,
            "k_stddevs": self.k_stddevs,
        }

    @property
    def local_std(self) -> float:
        """Per-client noise standard deviation ``sigma = z c / sqrt(n_min)`` (unscaled)."""
        return self.noise_multiplier * self.clip_norm / math.sqrt(self.n_min)

    def gamma(self, d: int) -> float:
        """Granularity: ``k (n c / sqrt(d) + sqrt(n) sigma) / (m/2 - k sqrt(n) / 2)``.

        Bounds the sum's coordinates in the scaled domain by ``k`` standard deviations of
        the noise and rounding plus the worst-case signal ``n c / sqrt(d)`` after flattening.
        """
        half = self.modulus / 2 - self.k_stddevs * math.sqrt(self.n) / 2
        if half <= 0:
            raise PrivacyConfigError(f"bits={self.bits} leave no room for {self.n} clients' rounding noise")
        spread = self.k_stddevs * (self.n * self.clip_norm / math.sqrt(d) + math.sqrt(self.n) * self.local_std)
        return spread / half

    def rotation(self, round_idx: int, d: int) -> _Rotation:
        """The shared rotation of round ``round_idx``."""
        return _Rotation(d, torch_generator(self.seed, round_idx))

    def event(self, d: int) -> GaussianEvent:
        """The round's privacy event: Gaussian-equivalent ``z~`` for ``n_min`` summed clients."""
        g = self.gamma(d)
        z_eq = ddg_gaussian_equivalent_multiplier(
            l2_bound=rounded_l2_bound(self.clip_norm / g, d=d, beta=self.beta),
            local_scaled_std=self.local_std / g,
            n=self.n_min,
            d=d,
        )
        return GaussianEvent(
            noise_multiplier=z_eq,
            sample_rate=self.sample_rate,
            gaussian_exact=False,
            mechanism="distributed discrete gaussian",
        )


class DDGEncode:
    """Client side of the distributed discrete Gaussian: clip, rotate, scale, round, noise, mod ``m``.

    Returns float64 rows of integers in ``[0, m)``.
    """

    def contract(self) -> StageContract:
        """Its rows are integers modulo ``2^bits``, for an exact modular sum only."""
        return StageContract(rows="modular")

    def __init__(self, config: DistributedDiscreteGaussian) -> None:
        self.config = config

    @staticmethod
    def _round(x: torch.Tensor, bound: float, generator: torch.Generator) -> tuple[torch.Tensor, int]:
        """Conditional randomized rounding of each row to L2 norm ``<= bound``: the rows and the retries."""
        fl = torch.floor(x)
        out = torch.empty_like(x)
        todo = torch.ones(x.shape[0], dtype=torch.bool)
        for retries in range(1000):
            idx = todo.nonzero().flatten()
            r = fl[idx] + (torch.rand(fl[idx].shape, dtype=torch.float64, generator=generator) < x[idx] - fl[idx])
            ok = torch.linalg.vector_norm(r, dim=1) <= bound
            out[idx[ok]] = r[ok]
            todo[idx[ok]] = False
            if not bool(todo.any()):
                return out, retries
        raise PrivacyConfigError(f"conditional randomized rounding failed 1000 times for bound {bound:.6g}")

    def __call__(self, updates: torch.Tensor, ctx: RoundContext) -> torch.Tensor:
        return self.apply(updates, ctx).value

    def apply(self, updates: torch.Tensor, ctx: RoundContext) -> StageOutput:
        """The encoded rows, and the rounding retries of the round as the metric ``ddg_rounding_retries``."""
        check_cohort(updates)
        cfg = self.config
        n, d = updates.shape
        g = cfg.gamma(d)
        x, _ = clip_rows(updates.to(torch.float64), cfg.clip_norm)
        x = cfg.rotation(ctx.round_idx, d).forward(x) / g
        bound = rounded_l2_bound(cfg.clip_norm / g, d=d, beta=cfg.beta)
        y, retries = self._round(x, bound, ctx.generator)
        y = y.to(torch.int64) + sample_discrete_gaussian(cfg.local_std / g, (n, d), generator=ctx.generator)
        return StageOutput(torch.remainder(y, cfg.modulus).to(torch.float64),
                           metrics={"ddg_rounding_retries": float(retries)})


class DDGDecode:
    """Server side: centre the modular sum, unscale, unrotate, divide by ``n``; records the round's event."""

    def contract(self) -> StageContract:
        """Decodes an exact modular sum; anything else (a robust rule's output) is refused."""
        return StageContract(needs_output=("modular_sum",))

    def __init__(self, config: DistributedDiscreteGaussian) -> None:
        self.config = config

    def __call__(self, aggregate: torch.Tensor, ctx: RoundContext) -> torch.Tensor:
        cfg = self.config
        d = aggregate.shape[0]
        if not torch.equal(aggregate, aggregate.round()):
            raise PrivacyConfigError("DDGDecode expects the exact integer sum mod m (use an integer secure aggregator)")
        s = torch.remainder(aggregate.to(torch.int64), cfg.modulus)
        s = torch.where(s >= cfg.modulus // 2, s - cfg.modulus, s).to(torch.float64)
        out = cfg.rotation(ctx.round_idx, d).inverse(s * cfg.gamma(d)) / cfg.n
        cfg.ledger.record(cfg.event(d))
        return out.to(device=ctx.global_params.device, dtype=ctx.global_params.dtype)

    def state_dict(self) -> dict[str, Any]:
        """The configuration's state (its ledger): :meth:`DistributedDiscreteGaussian.state_dict`."""
        return self.config.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` (:meth:`DistributedDiscreteGaussian.load_state_dict`)."""
        self.config.load_state_dict(state)

    def round_metrics(self) -> dict[str, float]:
        return {"dp_ddg_local_std": self.config.local_std, **self.config.ledger.round_metrics()}


def calibrate_ddg_noise_multiplier(
    *,
    target_epsilon: float,
    d: int,
    rounds: int,
    clip_norm: float,
    expected_clients: int,
    sample_rate: float,
    delta: float,
    amplify_integer_noise: bool = False,
    **ddg: Any,
) -> float:
    """Smallest ``z`` (to 0.1 %) whose distributed discrete Gaussian keeps epsilon after ``rounds`` <= the target.

    The ledger composes the Gaussian-equivalent ``z~(z)`` of Kairouz et al. (2021), Theorem 1,
    which depends on the granularity and rounding of ``bits``-bit values and on ``d``; ``ddg``
    are further :class:`DistributedDiscreteGaussian` parameters (``bits``, ``beta``, ``k_stddevs``, ...).

    Raises
    ------
    PrivacyConfigError
        No noise multiplier reaches the target at ``bits`` (rounding noise bounds ``z~``).

    Examples
    --------
    >>> z = calibrate_ddg_noise_multiplier(target_epsilon=4.0, d=1000, rounds=10, clip_norm=1.0,
    ...                                    expected_clients=10, bits=20, sample_rate=1.0, delta=1e-5)
    >>> 0.5 < z < 5.0
    True
    """
    target = check_positive(target_epsilon, name="target_epsilon")

    def eps_of(z: float) -> float:
        cfg = DistributedDiscreteGaussian(clip_norm=clip_norm, noise_multiplier=z, expected_clients=expected_clients,
                                          sample_rate=sample_rate, delta=delta, **ddg)
        ledger = PrivacyLedger(delta=delta, amplify_integer_noise=amplify_integer_noise)
        event = cfg.event(d)
        ledger.record(GaussianEvent(noise_multiplier=event.noise_multiplier, sample_rate=sample_rate, steps=rounds,
                                    gaussian_exact=False))
        return ledger.epsilon()

    lo, hi = 1e-3, 1.0
    while eps_of(hi) > target:
        lo, hi = hi, hi * 2
        if hi > 1e5:
            raise PrivacyConfigError(f"no noise multiplier reaches epsilon {target} with these bits ({ddg})")
    while hi - lo > 1e-3 * hi:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if eps_of(mid) > target else (lo, mid)
    return hi
