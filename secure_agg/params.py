"""Public parameters of one secure aggregation round, agreed by the server and the clients.

Examples
--------
>>> p = SecAggParams(round_id=0, t=3, d=10)
>>> p.ring_bits, p.authenticated
(32, True)
>>> p.check_threshold(holders=5)  # t=3 > 5/2: secure
>>> p.check_threshold(holders=6)  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
secure_agg.errors.SecAggConfigError: threshold t=3 is below the secure bound ... t >= 4 ...
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import numpy as np

from secure_agg.errors import SecAggConfigError
from secure_agg.quantize import ring_dtype

__all__ = ["SecAggParams", "as_int", "min_secure_threshold"]


def as_int(value: object, name: str) -> int:
    """``value`` as a Python ``int`` (NumPy integers included, ``bool`` excluded).

    Raises
    ------
    SecAggConfigError
        Naming ``name`` and the value when it is not an integer.

    Examples
    --------
    >>> import numpy as np
    >>> as_int(np.int64(3), "t")
    3
    """
    if isinstance(value, bool | np.bool_):
        raise SecAggConfigError(f"{name} must be an int, got {value!r}")
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise SecAggConfigError(f"{name} must be an int, got {value!r}") from None


def min_secure_threshold(holders: int) -> int:
    """Smallest ``t`` with ``t > holders / 2`` (``holders = k + 1``: the neighbours and the owner).

    Below it, a server that tells some share holders "``v`` survived" and the others
    "``v`` dropped" collects ``t`` shares of both ``b_v`` and ``s_v^SK`` and unmasks
    ``x_v``. This is the case ``c = 0`` of the counting argument behind the
    thresholds of Bonawitz et al., CCS 2017 (security against an active server:
    ``t > 2n/3`` with up to ``n/3`` corrupt clients, ``t > (n + c) / 2`` in
    general) and of Bell et al., CCS 2020 (the same argument on the ``k + 1``
    share holders of SecAgg+); :func:`secure_agg.graph.secure_threshold` adds the
    corrupt neighbours.

    Examples
    --------
    >>> min_secure_threshold(5), min_secure_threshold(6)
    (3, 4)
    """
    return holders // 2 + 1


@dataclass(frozen=True, kw_only=True)
class SecAggParams:
    """Round parameters of SecAgg (Bonawitz et al., CCS 2017) / SecAgg+ (Bell et al., CCS 2020).

    Attributes
    ----------
    round_id : int
        Unique id of the round, bound into every message, key derivation and
        associated data (replay protection across rounds).
    t : int
        Shamir threshold: ``t`` shares reconstruct a client's secret; also the
        minimum number of clients alive at every stage. Must exceed half the
        share holders, ``t > (k + 1) / 2`` (checked by the server against the graph
        and by each client against the neighbours it is shown, see
        :meth:`check_threshold`).
    d : int
        Length of the ring vectors (model size plus the weight coordinate).
    ring_bits : int
        ``b``: arithmetic modulo ``2^b``.
    active : bool
        Actively-malicious setting: Ed25519 signatures on the advertised keys and
        on every client message, and the consistency check round.
    authenticated : bool
        Authenticated channels (default): every message that is not signed carries
        an HMAC-SHA256 tag under a key its client shares with the server, so a
        network attacker cannot alter, inject, redirect or replay (across rounds)
        any message. ``False`` only when the transport already authenticates each
        message (e.g. mutual TLS); without it a flipped byte gives a wrong sum.
    allow_insecure_threshold : bool
        Accept ``t <= (k + 1) / 2`` (tests and benchmarks only: a lying server can
        then unmask an individual input).
    """

    round_id: int
    t: int
    d: int
    ring_bits: int = 32
    active: bool = False
    authenticated: bool = True
    allow_insecure_threshold: bool = False

    def __post_init__(self) -> None:
        for name in ("round_id", "t", "d", "ring_bits"):
            object.__setattr__(self, name, as_int(getattr(self, name), name))
        for name in ("active", "authenticated", "allow_insecure_threshold"):
            v = getattr(self, name)
            if not isinstance(v, bool | np.bool_):
                raise SecAggConfigError(f"{name} must be a bool, got {v!r}")
            object.__setattr__(self, name, bool(v))
        if not 0 <= self.round_id < 2**64:
            raise SecAggConfigError(f"round_id must be an int in [0, 2^64), got {self.round_id!r}")
        if self.t < 2:
            raise SecAggConfigError(f"threshold t must be an int >= 2, got {self.t!r}")
        if self.d < 1:
            raise SecAggConfigError(f"d must be an int >= 1, got {self.d!r}")
        ring_dtype(self.ring_bits)

    def check_threshold(self, *, holders: int) -> None:
        """Refuse ``t`` for ``holders`` share holders unless ``t > holders / 2`` (and ``t <= holders``).

        Raises
        ------
        SecAggConfigError
            With the bound, unless :attr:`allow_insecure_threshold` (the upper
            bound ``t <= holders`` always applies).
        """
        if self.t > holders:
            raise SecAggConfigError(
                f"threshold t={self.t} exceeds the {holders} share holders (k={holders - 1} "
                f"neighbours + the owner)"
            )
        t_min = min_secure_threshold(holders)
        if self.t < t_min and not self.allow_insecure_threshold:
            raise SecAggConfigError(
                f"threshold t={self.t} is below the secure bound for {holders} share holders "
                f"(k={holders - 1} neighbours + the owner): a server that lies about dropouts can "
                f"collect t shares of both secrets of a client unless t > (k + 1) / 2, i.e. "
                f"t >= {t_min} (Bonawitz et al. CCS 2017; Bell et al. CCS 2020); "
                f"with c corrupt neighbours t > (k + 1 + c) / 2 (see "
                f"secure_agg.graph.secure_threshold). Pass allow_insecure_threshold=True only for "
                f"tests or benchmarks."
            )

    @property
    def dtype(self) -> np.dtype:
        """Unsigned dtype storing ring words."""
        return ring_dtype(self.ring_bits)

    def reduce(self, y: np.ndarray) -> np.ndarray:
        """Reduce ring words modulo ``2^b`` in place when ``b`` is narrower than the dtype."""
        if self.ring_bits < 8 * self.dtype.itemsize:
            np.bitwise_and(y, self.dtype.type((1 << self.ring_bits) - 1), out=y)
        return y
