"""fl_core aggregators that run SecAgg / SecAgg+ on the cohort each round.

:class:`SecAggPlusAggregator` (Bell et al., CCS 2020) and :class:`SecAggAggregator`
(Bonawitz et al., CCS 2017) plug into :class:`fl_core.aggregation.Aggregator`:
each round they quantise every client's update with its example count into the
ring (:class:`~secure_agg.quantize.FixedPointEncoder`, stochastic rounding from the
round's explicit generator), run the protocol in memory over real wire messages
(:func:`~secure_agg.runner.run_secagg`), and decode the weighted mean of the
survivors. The result equals plaintext FedAvg of the clipped updates within the
quantisation bound ``n / (s * sum w)``; ``metrics`` hold the bytes per direction,
the upload per client and parameter (all stages, and the masked input alone),
survivors, ``k``, ``t`` and the error bound.

Integer mode (``integer_input=True``): the rows must already be integer-valued
(e.g. a distributed-DP encoding such as ``defenses.dp.DDGEncode``); they are reduced
mod ``2^b``, summed exactly by the protocol, and the aggregate is that modular sum of
the survivors, as float64 integers in ``[0, 2^b)`` (``b <= 52``); weights are not used.

Client weights must be integer example counts (``None`` means 1 each): they are
multiplied into the fixed-point values and their sum over the survivors is
aggregated securely as an extra coordinate.

Examples
--------
>>> import torch
>>> agg = SecAggPlusAggregator(clip=1.0, gamma=0.0, delta=0.0)
>>> U = torch.tensor([[0.5, -0.5], [0.25, 0.0], [0.0, 1.0]])
>>> res = agg.aggregate(U, torch.tensor([1.0, 2.0, 1.0]))
>>> bool(torch.allclose(res.aggregate, torch.tensor([0.25, 0.125]), atol=1e-6))
True
>>> res.metrics["n_survivors"]
3.0
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch

from fl_core.aggregation import AggregationResult, Aggregator, RoundContext
from fl_core.contracts import StageContract
from fl_core.rng import numpy_generator
from fl_core.state import RoundCounterState
from secure_agg.errors import SecAggConfigError
from secure_agg.graph import CommunicationGraph, choose_k_t, secure_threshold
from secure_agg.messages import Stage
from secure_agg.params import SecAggParams
from secure_agg.quantize import FixedPointEncoder, ring_dtype
from secure_agg.runner import Direction, _stage, run_secagg
from secure_agg.validation import ExactWeights, flag_param, int_param, real_param

__all__ = ["SecAggAggregator", "SecAggPlusAggregator"]

logger = logging.getLogger(__name__)


class SecAggPlusAggregator(RoundCounterState, ExactWeights, Aggregator):
    """Weighted mean through SecAgg+ (Bell, Bonawitz, Gascon, Lepoint, Raykova, CCS 2020).

    Parameters
    ----------
    clip : float
        ``c``: updates are clipped to ``[-c, c]`` per coordinate before encoding
        (counted in ``metrics["n_clipped"]`` and logged).
    ring_bits : int
        ``b``: ring ``Z_{2^b}``; 32 gives 4 bytes per parameter.
    gamma, delta : float
        Tolerated fractions of corrupt and dropped clients (choose ``k`` and ``t``).
    sigma, eta : float
        Security and correctness parameters (``2^-sigma``, ``2^-eta``).
    active : bool
        Actively-malicious setting: signatures and the consistency check.
    dropout_rate : float
        Simulated fraction of clients that go silent at ``dropout_stage`` (picked
        with the round's generator); 0 for none.
    dropout_stage : Stage
        Stage at which simulated dropouts happen.
    seed : int
        Seed for rounds run without a :class:`RoundContext`.
    integer_input : bool
        Integer mode: sum integer-valued rows mod ``2^ring_bits`` exactly (no fixed-point
        encoding, no weights, no clipping); ``ring_bits <= 52``.

    Notes
    -----
    The only state is the round counter of rounds run without a context (their
    seeds and round ids derive from ``seed`` and it): ``state_dict()`` /
    ``load_state_dict()`` (:class:`fl_core.state.RoundCounterState`) save and
    restore it with the configuration, as JSON types.

    Examples
    --------
    >>> import torch
    >>> agg = SecAggPlusAggregator(clip=1.0, gamma=0.0, delta=0.0)
    >>> _ = agg(torch.tensor([[0.5], [0.25], [0.0]]))
    >>> resumed = SecAggPlusAggregator(clip=1.0, gamma=0.0, delta=0.0)
    >>> resumed.load_state_dict(agg.state_dict())
    >>> resumed.state_dict()["calls"]
    1
    """


    def __init__(
        self,
        *,
        clip: float,
        ring_bits: int = 32,
        gamma: float = 0.05,
        delta: float = 0.1,
        sigma: float = 40.0,
        eta: float = 30.0,
        active: bool = False,
        dropout_rate: float = 0.0,
        dropout_stage: Stage | str | int = Stage.MASKED_INPUT,
        seed: int = 0,
        integer_input: bool = False,
    ) -> None:
        self.clip = real_param(clip, "clip", low=0.0, low_open=True)
        self.ring_bits = int_param(ring_bits, "ring_bits", low=2, high=64)
        self.gamma = real_param(gamma, "gamma", low=0.0, high=1.0)
        self.delta = real_param(delta, "delta", low=0.0, high=1.0)
        if self.gamma + self.delta >= 1.0:
            raise SecAggConfigError(
                f"need gamma + delta < 1 (corrupt plus dropped clients), got gamma={gamma!r} + "
                f"delta={delta!r} = {self.gamma + self.delta:g}"
            )
        self.sigma = real_param(sigma, "sigma", low=0.0, low_open=True)
        self.eta = real_param(eta, "eta", low=0.0, low_open=True)
        self.active = flag_param(active, "active")
        self.dropout_rate = real_param(dropout_rate, "dropout_rate", low=0.0, high=1.0)
        self.dropout_stage = _stage(dropout_stage, what="(dropout_stage)", active=self.active)
        self.seed = int_param(seed, "seed", low=0)
        self.integer_input = flag_param(integer_input, "integer_input")
        if self.integer_input and not 2 <= self.ring_bits <= 52:
            raise SecAggConfigError(
                f"integer_input needs ring_bits in [2, 52] (exact in float64), got {ring_bits!r}"
            )
        if not self.integer_input:  # fails now, not at the first round, if b cannot hold 1 level
            FixedPointEncoder(clip=self.clip, ring_bits=self.ring_bits, weight_bound=1)
        self._calls = 0

    def reset(self) -> None:
        """Restart the round counter used without a context."""
        self._calls = 0

    def _config(self) -> dict[str, Any]:
        return {
            "clip": self.clip,
            "ring_bits": self.ring_bits,
            "gamma": self.gamma,
            "delta": self.delta,
            "sigma": self.sigma,
            "eta": self.eta,
            "active": self.active,
            "dropout_rate": self.dropout_rate,
            "dropout_stage": self.dropout_stage.name,
            "seed": self.seed,
            "integer_input": self.integer_input,
        }

    def _wants_exact_weights(self) -> bool:
        return not self.integer_input  # integer inputs carry their own weighting

    def contract(self) -> StageContract:
        """Hides the rows from the server; a mean of real rows, or the modular sum of ``integer_input`` rows."""
        if self.integer_input:
            return StageContract(accepts=("modular",), output="modular_sum", hides_rows=True)
        return StageContract(output="mean", hides_rows=True, bounded=True)

    def sensitivity(self, bound: float, n: int) -> float | None:
        """``2 C`` for the weighted mean of rows of L2 norm at most ``C`` (``None`` in integer mode).

        The per-coordinate clip to ``[-c, c]`` only shrinks a row; unbiased stochastic
        rounding moves the decoded mean by at most ``n / (s W)`` per coordinate
        (``quantization_error_bound`` in the metrics), below ``1e-4`` of ``c`` for any
        ``W`` the ring allows at 32 bits, and is not counted here.
        """
        return None if self.integer_input else 2.0 * float(bound)

    def check_tolerance(self, n: int) -> None:
        """Raise :class:`SecAggConfigError` unless rounds of ``n`` clients have a secure ``(k, t)``.

        ``Federation`` calls it at construction, so an impossible cohort fails before
        any local training.

        Examples
        --------
        >>> SecAggAggregator(clip=1.0, gamma=0.3, delta=0.3).check_tolerance(4)
        Traceback (most recent call last):
        ...
        secure_agg.errors.SecAggConfigError: threshold t=4 leaves no room for delta=0.3 dropouts among n=4
        """
        n = int_param(n, "n", low=0)
        if n < 2:
            raise SecAggConfigError(f"secure aggregation needs at least 2 clients, got n={n}")
        self._graph(list(range(1, n + 1)), np.random.default_rng(0))

    def _graph(self, ids: list[int], rng: np.random.Generator) -> tuple[CommunicationGraph, int]:
        k, t = choose_k_t(
            len(ids), gamma=self.gamma, delta=self.delta, sigma=self.sigma, eta=self.eta
        )
        if k >= len(ids) - 1:
            return CommunicationGraph.complete(ids), t
        return CommunicationGraph.harary(ids, k=k, rng=rng), t

    def _aggregate(
        self, updates: torch.Tensor, weights: torch.Tensor, ctx: RoundContext | None
    ) -> AggregationResult:
        n, d = updates.shape
        if n < 2:
            raise SecAggConfigError(f"secure aggregation needs at least 2 clients, got n={n}")
        if ctx is not None:
            seed = int(torch.randint(0, 2**62, (1,), generator=ctx.generator))
            rng = np.random.default_rng(seed)
            round_id = int(ctx.round_idx)
        else:
            rng = numpy_generator(self.seed, self._calls)
            round_id = self._calls
        self._calls += 1
        if self.integer_input:
            return self._aggregate_integers(updates, rng, round_id)
        w_int = self.integer_weights(weights, n)
        enc = FixedPointEncoder(
            clip=self.clip, ring_bits=self.ring_bits, weight_bound=max(1, sum(w_int))
        )
        X = updates.detach().cpu().double().numpy()
        n_clipped = int(np.count_nonzero(np.abs(X) > self.clip))
        ids = list(range(1, n + 1))
        inputs = {u: enc.encode(X[u - 1], weight=w_int[u - 1], rng=rng) for u in ids}
        graph, t = self._graph(ids, rng)
        n_drop = math.floor(self.dropout_rate * n)
        dropped = rng.choice(n, size=n_drop, replace=False) + 1 if n_drop else []
        params = SecAggParams(
            round_id=round_id, t=t, d=d + 1, ring_bits=self.ring_bits, active=self.active
        )
        res = run_secagg(
            inputs,
            params=params,
            graph=graph,
            dropouts={int(u): self.dropout_stage for u in dropped},
        )
        mean, wsum = enc.decode_mean(res.sum)
        kept = torch.zeros(n, dtype=torch.bool, device=updates.device)
        kept[[u - 1 for u in res.survivors]] = True
        up, down = res.total_bytes(Direction.UP), res.total_bytes(Direction.DOWN)
        metrics = {
            "n_survivors": float(len(res.survivors)),
            "n_dropped": float(n - len(res.survivors)),
            "bytes_client_to_server": float(up),
            "bytes_server_to_client": float(down),
            "upload_bytes_per_param": float(up) / (n * d),
            "masked_input_bytes_per_param": float(res.bytes_sent["masked_input"][Direction.UP])
            / (len(res.survivors) * d),
            "k": float(graph.k),
            "t": float(t),
            "n_clipped": float(n_clipped),
            "quantization_error_bound": enc.mean_error_bound(len(res.survivors), wsum),
            "server_seconds": res.server_seconds,
        }
        agg = torch.from_numpy(mean).to(dtype=updates.dtype, device=updates.device)
        return AggregationResult(aggregate=agg, kept=kept, metrics=metrics)


    def _aggregate_integers(
        self, updates: torch.Tensor, rng: np.random.Generator, round_id: int
    ) -> AggregationResult:
        """Integer mode: the exact sum of the survivors' rows mod ``2^ring_bits``."""
        n, d = updates.shape
        X = updates.detach().cpu().double().numpy()
        if not np.array_equal(X, np.round(X)) or float(np.abs(X).max()) >= 2.0**53:
            raise SecAggConfigError("integer_input needs integer-valued rows below 2^53 in magnitude")
        words = np.mod(X.astype(np.int64), np.int64(1) << self.ring_bits).astype(ring_dtype(self.ring_bits))
        ids = list(range(1, n + 1))
        graph, t = self._graph(ids, rng)
        n_drop = math.floor(self.dropout_rate * n)
        dropped = rng.choice(n, size=n_drop, replace=False) + 1 if n_drop else []
        params = SecAggParams(round_id=round_id, t=t, d=d, ring_bits=self.ring_bits, active=self.active)
        res = run_secagg(
            {u: words[u - 1] for u in ids},
            params=params,
            graph=graph,
            dropouts={int(u): self.dropout_stage for u in dropped},
        )
        kept = torch.zeros(n, dtype=torch.bool, device=updates.device)
        kept[[u - 1 for u in res.survivors]] = True
        up, down = res.total_bytes(Direction.UP), res.total_bytes(Direction.DOWN)
        metrics = {
            "n_survivors": float(len(res.survivors)),
            "n_dropped": float(n - len(res.survivors)),
            "bytes_client_to_server": float(up),
            "bytes_server_to_client": float(down),
            "upload_bytes_per_param": float(up) / (n * d),
            "k": float(graph.k),
            "t": float(t),
            "server_seconds": res.server_seconds,
        }
        total = np.asarray(res.sum).astype(np.uint64) & np.uint64((1 << self.ring_bits) - 1)
        agg = torch.from_numpy(total.astype(np.float64)).to(device=updates.device)
        return AggregationResult(aggregate=agg, kept=kept, metrics=metrics)


class SecAggAggregator(SecAggPlusAggregator):
    """Weighted mean through SecAgg (Bonawitz et al., CCS 2017): the complete graph.

    The threshold is the smallest ``t`` secure against ``gamma n`` corrupt clients
    and a server that lies about dropouts (``t > (n + c) / 2``; SecAgg's ``t > 2n/3``
    for ``c = n/3``). Same parameters as :class:`SecAggPlusAggregator`.

    Examples
    --------
    >>> import torch
    >>> SecAggAggregator(clip=2.0, gamma=0.0, delta=0.0)(torch.tensor([[1.0], [0.0], [2.0]]))
    tensor([1.])
    """


    def _graph(self, ids: list[int], rng: np.random.Generator) -> tuple[CommunicationGraph, int]:
        n = len(ids)
        t = max(2, secure_threshold(n, n - 1, gamma=self.gamma, sigma=self.sigma))
        if t > n:
            raise SecAggConfigError(f"no secure threshold for n={n} with gamma={self.gamma}")
        if n - math.floor(self.delta * n) < t:
            raise SecAggConfigError(
                f"threshold t={t} leaves no room for delta={self.delta} dropouts among n={n}"
            )
        return CommunicationGraph.complete(ids), t
