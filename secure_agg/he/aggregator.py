"""fl_core aggregators that sum the cohort under homomorphic encryption (TenSEAL).

:class:`BFVAggregator` (Fan and Vercauteren, IACR ePrint 2012/144; exact sums of
quantised updates) and :class:`CKKSAggregator` (Cheon, Kim, Kim and Song,
ASIACRYPT 2017; approximate sums of floats) plug into
:class:`fl_core.aggregation.Aggregator` like the SecAgg aggregators: each round they
choose addition-only parameters at 128-bit security for the cohort
(:func:`~secure_agg.he.params.select_params`, ``W`` = the cohort's total example
count), keep one :class:`~secure_agg.he.keys.KeyHolder` while the parameters do not
change, run :func:`~secure_agg.he.runner.run_he` over real wire messages and
return the weighted mean of the survivors. It equals plaintext FedAvg of the
clipped updates within ``metrics["error_bound"]``. Clients that drop out are simply
not in the sum.

Examples
--------
>>> import torch
>>> agg = BFVAggregator(clip=1.0, precision_bits=16)
>>> res = agg.aggregate(torch.tensor([[0.5, -0.5], [0.25, 0.0], [0.0, 1.0]]), torch.tensor([1.0, 2.0, 1.0]))
>>> bool(torch.allclose(res.aggregate, torch.tensor([0.25, 0.125]), atol=res.metrics["error_bound"] + 1e-7))
True
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
from secure_agg.he.errors import HEConfigError, InsecureParametersError
from secure_agg.he.keys import KeyHolder
from secure_agg.he.messages import HEStage
from secure_agg.he.params import SECURITY_TABLE, select_params
from secure_agg.he.runner import run_he
from secure_agg.runner import Direction
from secure_agg.validation import ExactWeights, flag_param, int_param, real_param

__all__ = ["BFVAggregator", "CKKSAggregator", "HEAggregator"]

logger = logging.getLogger(__name__)


class HEAggregator(RoundCounterState, ExactWeights, Aggregator):
    """Weighted mean by homomorphic encryption; use :class:`BFVAggregator` or :class:`CKKSAggregator`.

    Parameters
    ----------
    clip : float
        ``c``: coordinates are clipped to ``[-c, c]`` (counted in ``metrics["n_clipped"]``).
    precision_bits : int
        ``p``: at full participation the mean is within ``c 2^-p`` of plaintext FedAvg.
    security_bits : {128, 192, 256}
        Required security level.
    dropout_rate : float
        Simulated fraction of clients that go silent before sending (the round's generator picks them).
    authenticate : bool
        Clients sign their ciphertexts (Ed25519, simulated PKI) and the server
        signs the aggregate; each side verifies (default). ``False`` leaves inputs
        unauthenticated: anyone on the network can then replace, replay or inject
        a client's input (see the threat model in :mod:`secure_agg.he.server`).
    min_clients : int
        Fewest contributors for which the sum is released.
    seed : int
        Seed for rounds run without a :class:`RoundContext`.

    Notes
    -----
    ``state_dict()`` / ``load_state_dict()`` (:class:`fl_core.state.RoundCounterState`)
    save and restore the round counter of rounds run without a context, with the
    configuration, as JSON types. The state deliberately **excludes the key
    holder**: it holds the TenSEAL secret key, and a state dict is meant to be
    written to checkpoints and logs, where a secret key must never go. Loading
    a state leaves the current keys as they are; a restored aggregator without
    keys makes fresh ones at its next round (the mean does not depend on which
    keys encrypted it).
    """

    scheme = ""

    weights_error = HEConfigError

    def __init__(
        self,
        *,
        clip: float,
        precision_bits: int = 20,
        security_bits: int = 128,
        dropout_rate: float = 0.0,
        authenticate: bool = True,
        min_clients: int = 2,
        seed: int = 0,
    ) -> None:
        self.clip = real_param(clip, "clip", low=0.0, low_open=True, error=HEConfigError)
        self.precision_bits = int_param(precision_bits, "precision_bits", low=1, high=50, error=HEConfigError)
        self.security_bits = int_param(security_bits, "security_bits", low=0, error=HEConfigError)
        if self.security_bits not in SECURITY_TABLE:
            raise InsecureParametersError(
                f"security_bits must be one of {sorted(SECURITY_TABLE)}, got {security_bits!r}"
            )
        self.dropout_rate = real_param(dropout_rate, "dropout_rate", low=0.0, high=1.0, error=HEConfigError)
        self.authenticate = flag_param(authenticate, "authenticate", error=HEConfigError)
        self.min_clients = int_param(min_clients, "min_clients", low=1, error=HEConfigError)
        self.seed = int_param(seed, "seed", low=0, error=HEConfigError)
        self._calls = 0
        self._key_holder: KeyHolder | None = None

    def contract(self) -> StageContract:
        """Hides the rows from the server (only their encrypted weighted mean is formed)."""
        return StageContract(output="mean", hides_rows=True)

    def reset(self) -> None:
        """Forget the keys and the round counter."""
        self._calls = 0
        self._key_holder = None

    def _config(self) -> dict[str, Any]:
        return {
            "scheme": self.scheme,
            "clip": self.clip,
            "precision_bits": self.precision_bits,
            "security_bits": self.security_bits,
            "dropout_rate": self.dropout_rate,
            "authenticate": self.authenticate,
            "min_clients": self.min_clients,
            "seed": self.seed,
        }

    def _aggregate(self, updates: torch.Tensor, weights: torch.Tensor, ctx: RoundContext | None) -> AggregationResult:
        n, d = updates.shape
        if ctx is not None:
            rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=ctx.generator)))
            round_id = int(ctx.round_idx)
        else:
            rng = numpy_generator(self.seed, self._calls)
            round_id = self._calls
        self._calls += 1
        exact = self.integer_weights(weights, n)
        w_int = {u: exact[u - 1] for u in range(1, n + 1)}
        params = select_params(d=d, n=n, clip=self.clip, weight_bound=max(1, sum(w_int.values())),
                               precision_bits=self.precision_bits, scheme=self.scheme,
                               security_bits=self.security_bits)
        if self._key_holder is None or not self._key_holder.compatible(params):
            self._key_holder = KeyHolder(params)
        X = updates.detach().cpu().double().numpy()
        n_clipped = int(np.count_nonzero(np.abs(X) > self.clip))
        n_drop = math.floor(self.dropout_rate * n)
        dropped = rng.choice(n, size=n_drop, replace=False) + 1 if n_drop else []
        res = run_he({u: X[u - 1] for u in w_int}, weights=w_int, params=params, key_holder=self._key_holder,
                     round_id=round_id, dropouts={int(u): HEStage.ENCRYPTED_INPUT for u in dropped},
                     authenticate=self.authenticate, min_clients=min(self.min_clients, n))
        kept = torch.zeros(n, dtype=torch.bool, device=updates.device)
        kept[[u - 1 for u in res.survivors]] = True
        up, down = res.total_bytes(Direction.UP), res.total_bytes(Direction.DOWN)
        n_s = len(res.survivors)
        metrics = {
            "n_survivors": float(n_s),
            "n_dropped": float(n - n_s),
            "bytes_client_to_server": float(up),
            "bytes_server_to_client": float(down),
            "upload_bytes_per_param": float(res.bytes_sent["encrypted_input"][Direction.UP]) / (n_s * d),
            "download_bytes_per_client": float(down) / max(1, n_s),
            "poly_modulus_degree": float(params.poly_modulus_degree),
            "n_ciphertexts": float(params.n_ciphertexts),
            "security_bits": float(params.security_bits),
            "n_clipped": float(n_clipped),
            "error_bound": res.error_bound,
            "server_seconds": res.server_seconds,
            "client_seconds_mean": float(np.mean(list(res.client_seconds.values()))),
        }
        agg = torch.from_numpy(res.mean).to(dtype=updates.dtype, device=updates.device)
        return AggregationResult(aggregate=agg, kept=kept, metrics=metrics)


class BFVAggregator(HEAggregator):
    """Weighted mean through BFV (exact integer sums of quantised updates; all ``N`` slots).

    Examples
    --------
    >>> import torch
    >>> out = BFVAggregator(clip=2.0, precision_bits=12)(torch.tensor([[1.0], [0.0], [2.0]]))
    >>> abs(out.item() - 1.0) <= 2.0 * 2**-12
    True
    """

    scheme = "bfv"


class CKKSAggregator(HEAggregator):
    """Weighted mean through CKKS (approximate float sums; ``N/2`` slots).

    Examples
    --------
    >>> import torch
    >>> out = CKKSAggregator(clip=2.0, precision_bits=16)(torch.tensor([[1.0], [0.0], [2.0]]))
    >>> abs(out.item() - 1.0) < 1e-4
    True
    """

    scheme = "ckks"
