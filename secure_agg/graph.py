"""Communication graphs for SecAgg+ and the choice of the degree k and threshold t.

SecAgg+ (Bell, Bonawitz, Gascon, Lepoint, Raykova, "Secure Single-Server
Aggregation with (Poly)Logarithmic Overhead", CCS 2020) replaces the complete graph
of SecAgg (Bonawitz et al., CCS 2017) with a sparse random graph: each client
agrees keys, masks and secret-shares only with its ``k = O(log n)`` neighbours.
We use the Harary graph ``H(n, k)`` (even ``k``: ring position ``i`` is joined to
positions ``i +- 1 .. i +- k/2``) under a uniformly random relabelling of the
clients, the practical instantiation of the paper's random ``k``-regular graph.

Parameters ``(k, t)`` follow the paper's three requirements, for a fraction
``gamma`` of corrupt clients, a fraction ``delta`` of dropouts, statistical
security ``sigma`` and correctness ``eta`` (failure probability ``2^-sigma``,
``2^-eta``). Under the random relabelling, the neighbourhood of any fixed client
is a uniform ``k``-subset of the other ``n - 1``, so the counts of corrupt and
dropped neighbours are hypergeometric (with ``ceil(gamma n)`` corrupt and
``ceil(delta n)`` dropped clients); union bounds over the ``n`` clients give:

1. *Security* -- the adversary (server + ``gamma n`` clients) never collects ``t``
   shares of both secrets of an honest client. With ``c`` corrupt neighbours and a
   server that may lie about dropouts to split the ``k - c`` honest neighbours (and
   the client's own share), this needs ``t > (k + 1 + c) / 2`` (for ``k = n - 1``
   and ``c = n / 3`` this is SecAgg's ``t > 2n/3``); against a server that follows
   the protocol it needs ``t > c`` (``server_may_lie=False``).
2. *Correctness* -- every secret keeps ``>= t`` surviving share holders: a dropped
   client needs ``k - (dropped neighbours) >= t``, a survivor ``k + 1 - (dropped
   neighbours) >= t``.
3. *Connectivity* -- honest survivors stay connected, so the server learns only
   their whole sum. In a relabelled ``H(n, k)`` they are connected unless some
   ``k/2`` consecutive ring positions all hold corrupt-or-dropped clients; with
   ``m = ceil(gamma n) + ceil(delta n)`` such clients the union bound is
   ``n * C(n - k/2, m - k/2) / C(n, m)``.

:func:`choose_k_t` returns the smallest even ``k`` (or the complete graph,
``k = n - 1``) with the smallest ``t`` meeting (1) and (2) with probability at least
``1 - 2^-sigma`` and ``1 - 2^-eta`` and (3) with ``1 - 2^-sigma``.

Examples
--------
>>> import numpy as np
>>> g = CommunicationGraph.harary(range(1, 11), k=4, rng=np.random.default_rng(0))
>>> sorted(len(g.neighbours[u]) for u in g.ids) == [4] * 10
True
>>> choose_k_t(100, gamma=0.05, delta=0.1)
(28, 18)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from secure_agg.errors import SecAggConfigError

__all__ = ["CommunicationGraph", "choose_k_t", "hypergeom_tail", "secure_threshold"]


def hypergeom_tail(population: int, marked: int, draws: int, at_least: int) -> float:
    """``P[X >= at_least]`` for ``X ~ Hypergeometric(population, marked, draws)`` (exact).

    Examples
    --------
    >>> hypergeom_tail(10, 3, 10, 3), hypergeom_tail(10, 3, 10, 4)
    (1.0, 0.0)
    """
    lo = max(at_least, 0, draws - (population - marked))
    hi = min(marked, draws)
    if lo > hi:
        return 0.0
    num = sum(
        math.comb(marked, i) * math.comb(population - marked, draws - i) for i in range(lo, hi + 1)
    )
    return num / math.comb(population, draws)


@dataclass(frozen=True)
class CommunicationGraph:
    """An undirected graph over client ids: who agrees keys and shares with whom.

    Attributes
    ----------
    ids : tuple of int
        The clients (positive ids, also their Shamir evaluation points).
    neighbours : Mapping[int, frozenset[int]]
        ``neighbours[u]``: the clients ``u`` masks with (never ``u`` itself).
    k : int
        The degree (``n - 1`` for the complete graph of SecAgg).
    """

    ids: tuple[int, ...]
    neighbours: Mapping[int, frozenset[int]]
    k: int

    def __post_init__(self) -> None:
        ids = self.ids
        if len(set(ids)) != len(ids):
            raise SecAggConfigError(f"client ids must be distinct, got {list(ids)}")
        for u in ids:
            if not isinstance(u, int) or not 1 <= u < 2**31 - 1:
                raise SecAggConfigError(f"client ids must be ints in [1, 2^31 - 2], got {u!r}")
        if set(self.neighbours) != set(ids):
            raise SecAggConfigError("neighbours must have exactly one entry per client id")
        for u, nb in self.neighbours.items():
            if u in nb:
                raise SecAggConfigError(f"client {u} is listed as its own neighbour")
            for v in nb:
                if u not in self.neighbours.get(v, frozenset()):
                    raise SecAggConfigError(f"graph is not symmetric: {u}->{v} without {v}->{u}")

    @property
    def n(self) -> int:
        """Number of clients."""
        return len(self.ids)

    @classmethod
    def complete(cls, ids: Iterable[int]) -> CommunicationGraph:
        """The complete graph of SecAgg (Bonawitz et al., CCS 2017)."""
        ids_t = tuple(int(u) for u in ids)
        if len(ids_t) < 2:
            raise SecAggConfigError(f"need at least 2 clients, got {len(ids_t)}")
        full = frozenset(ids_t)
        return cls(ids_t, {u: full - {u} for u in ids_t}, len(ids_t) - 1)

    @classmethod
    def harary(cls, ids: Iterable[int], *, k: int, rng: np.random.Generator) -> CommunicationGraph:
        """Harary graph ``H(n, k)`` (even ``k``) with clients placed by a random permutation.

        ``k >= n - 1`` gives the complete graph.
        """
        ids_t = tuple(int(u) for u in ids)
        n = len(ids_t)
        if n < 2:
            raise SecAggConfigError(f"need at least 2 clients, got {n}")
        if isinstance(k, np.integer):
            k = int(k)
        if not isinstance(k, int) or k < 2:
            raise SecAggConfigError(f"degree k must be an int >= 2, got {k!r}")
        if k >= n - 1:
            return cls.complete(ids_t)
        if k % 2:
            raise SecAggConfigError(
                f"Harary degree k must be even (or >= n - 1 = {n - 1}), got {k}"
            )
        order = [ids_t[i] for i in rng.permutation(n)]
        nb: dict[int, set[int]] = {u: set() for u in ids_t}
        for pos, u in enumerate(order):
            for off in range(1, k // 2 + 1):
                v = order[(pos + off) % n]
                nb[u].add(v)
                nb[v].add(u)
        return cls(ids_t, {u: frozenset(s) for u, s in nb.items()}, k)


def secure_threshold(
    n: int, k: int, *, gamma: float, sigma: float = 40.0, server_may_lie: bool = True
) -> int:
    """Smallest ``t`` meeting requirement (1) for degree ``k`` (``k + 2`` if none does).

    Examples
    --------
    >>> secure_threshold(9, 8, gamma=1 / 3)  # complete graph: SecAgg's t > 2n/3
    7
    """
    n_corrupt = math.ceil(gamma * n)
    budget = 2.0**-sigma / n
    for t in range(1, k + 2):
        # corrupt neighbours c must satisfy c < 2t - k - 1 (lying server) or c < t
        c_fail = 2 * t - k - 1 if server_may_lie else t
        if hypergeom_tail(n - 1, n_corrupt, k, c_fail) <= budget:
            return t
    return k + 2


def choose_k_t(
    n: int,
    *,
    gamma: float = 0.05,
    delta: float = 0.1,
    sigma: float = 40.0,
    eta: float = 30.0,
    server_may_lie: bool = True,
) -> tuple[int, int]:
    """SecAgg+ degree ``k`` and threshold ``t`` for ``n`` clients (Bell et al., CCS 2020).

    Parameters
    ----------
    n : int
        Number of clients.
    gamma : float
        Fraction of corrupt clients tolerated.
    delta : float
        Fraction of dropouts tolerated.
    sigma, eta : float
        Security and correctness parameters (failure probabilities ``2^-sigma``,
        ``2^-eta``).
    server_may_lie : bool
        Threshold against a server that lies about dropouts (``True``) or one that
        follows the protocol (``False``).

    Returns
    -------
    (k, t) : tuple of int
        ``k = n - 1`` means the complete graph (SecAgg). Shares of a client go to its
        ``k`` neighbours and itself; ``t`` of them reconstruct.

    Raises
    ------
    SecAggConfigError
        If even the complete graph cannot meet the requirements.

    Examples
    --------
    >>> k, t = choose_k_t(1000, gamma=0.05, delta=0.05)
    >>> k < 999 and k % 2 == 0
    True
    """
    if isinstance(n, np.integer):
        n = int(n)
    if not isinstance(n, int) or n < 2:
        raise SecAggConfigError(f"n must be an int >= 2, got {n!r}")
    if not (0.0 <= gamma < 1.0 and 0.0 <= delta < 1.0 and gamma + delta < 1.0):
        raise SecAggConfigError(
            f"need 0 <= gamma, delta and gamma + delta < 1, got {gamma}, {delta}"
        )
    if sigma <= 0 or eta <= 0:
        raise SecAggConfigError(f"sigma and eta must be > 0, got {sigma}, {eta}")
    n_corrupt = math.ceil(gamma * n)
    n_drop = math.ceil(delta * n)
    m_bad = min(n, n_corrupt + n_drop)
    candidates = [k for k in range(2, n - 1, 2)] + [n - 1]
    for k in candidates:
        t = max(2, secure_threshold(n, k, gamma=gamma, sigma=sigma, server_may_lie=server_may_lie))
        if t > k + 1:
            continue
        # correctness: a dropped client needs t shares from its surviving neighbours,
        # a survivor t from its surviving neighbours and itself
        if n_drop:
            fail = hypergeom_tail(n - 1, n_drop - 1, k, k - t + 1) + hypergeom_tail(
                n - 1, n_drop, k, k - t + 2
            )
            if fail > 2.0**-eta / n:
                continue
        if k < n - 1:
            h = k // 2
            conn = 0.0 if m_bad < h else n * math.comb(n - h, m_bad - h) / math.comb(n, m_bad)
            if conn > 2.0**-sigma:
                continue
        return k, t
    raise SecAggConfigError(
        f"no (k, t) meets gamma={gamma}, delta={delta}, sigma={sigma}, eta={eta} for n={n}: "
        f"{n_corrupt} corrupt and {n_drop} dropped clients are too many; lower gamma or delta"
    )
