"""Partition a labelled dataset across ``n`` clients: IID, Dirichlet(alpha), label shards.

Each partitioner takes the label array and an explicit NumPy generator and
returns one sorted index array per client; the arrays are disjoint and cover
every sample exactly once.

* IID: a random permutation cut into ``n`` near-equal parts.
* Dirichlet(alpha) (Hsu, Qi & Brown, 2019, "Measuring the effects of non-identical
  data distribution for federated visual classification"): for every class c,
  client shares ``p_c ~ Dir(alpha * 1_n)``; class c's samples are cut in those
  proportions. Small alpha gives strong label skew, large alpha approaches IID.
* Shards (McMahan et al., AISTATS 2017): sort by label, cut into
  ``n * shards_per_client`` equal shards, give each client ``shards_per_client``
  random shards, so each client sees at most that many classes (up to shard
  boundaries).
* Gamma-similarity (the ByzFL library's ``DataDistributor`` scheme ``gamma_similarity_niid``,
  EPFL LPD, used by its benchmark heatmaps; Allouah et al., AISTATS 2023): a fraction ``gamma``
  of the samples is dealt IID, the other ``1 - gamma`` is sorted by label and cut into
  ``n`` contiguous blocks, one per client. ``gamma = 1`` is IID, ``gamma = 0`` sorted labels
  (each client holds one or two neighbouring classes).

Examples
--------
>>> import numpy as np
>>> parts = partition(np.repeat(np.arange(4), 25), scheme="shards", n_clients=4,
...                   shards_per_client=1, generator=np.random.default_rng(0))
>>> sorted(len(set(np.repeat(np.arange(4), 25)[p])) for p in parts)
[1, 1, 1, 1]
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fl_core.errors import PartitionError
from fl_core.registry import Registry

__all__ = [
    "PARTITIONS",
    "dirichlet_partition",
    "gamma_similarity_partition",
    "iid_partition",
    "partition",
    "shard_partition",
]

#: The partition schemes, by name; ``labels``, ``n_clients`` and ``generator`` come
#: from the caller, the scheme's own parameters (with their defaults) from the user.
PARTITIONS = Registry("partition scheme", context=("labels", "n_clients", "generator"))


def _check_common(labels: np.ndarray, n_clients: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise PartitionError(f"labels must be 1-D, got shape {labels.shape}")
    if isinstance(n_clients, bool) or not isinstance(n_clients, (int, np.integer)) or n_clients < 1:
        raise PartitionError(f"n_clients must be a positive integer, got {n_clients!r}")
    if n_clients > len(labels):
        raise PartitionError(f"n_clients={n_clients} is more than the {len(labels)} samples to partition")
    return labels


@PARTITIONS.register("iid", description="uniformly random, near-equal client sizes")
def iid_partition(labels: np.ndarray, *, n_clients: int, generator: np.random.Generator) -> list[np.ndarray]:
    """IID partition into ``n_clients`` near-equal parts."""
    labels = _check_common(labels, n_clients)
    perm = generator.permutation(len(labels))
    return [np.sort(p) for p in np.array_split(perm, n_clients)]


@PARTITIONS.register(
    "dirichlet", description="per-class client shares ~ Dir(alpha) (Hsu et al. 2019); small alpha = strong label skew"
)
def dirichlet_partition(
    labels: np.ndarray,
    *,
    n_clients: int,
    alpha: float = 0.5,
    generator: np.random.Generator,
    min_samples: int = 1,
    max_tries: int = 100,
) -> list[np.ndarray]:
    """Dirichlet(alpha) label-skew partition (Hsu et al., 2019).

    Redraws the whole partition (up to ``max_tries`` times) until every client
    holds at least ``min_samples`` samples.

    Raises
    ------
    PartitionError
        If ``alpha <= 0`` or not finite, ``min_samples < 0``, ``n_clients *
        min_samples`` exceeds the data, or no draw satisfies ``min_samples``.
    """
    labels = _check_common(labels, n_clients)
    if not np.isfinite(alpha) or alpha <= 0:
        raise PartitionError(f"Dirichlet alpha must be a positive finite number, got alpha={alpha}")
    if min_samples < 0 or n_clients * min_samples > len(labels):
        raise PartitionError(
            f"min_samples={min_samples} per client is impossible with {len(labels)} samples and n_clients={n_clients}"
        )
    classes = np.unique(labels)
    by_class = [np.flatnonzero(labels == c) for c in classes]
    for _ in range(max_tries):
        parts: list[list[np.ndarray]] = [[] for _ in range(n_clients)]
        for idx in by_class:
            idx = generator.permutation(idx)
            p = generator.dirichlet(np.full(n_clients, alpha))
            cuts = (np.cumsum(p)[:-1] * len(idx)).astype(np.int64)
            for k, chunk in enumerate(np.split(idx, cuts)):
                parts[k].append(chunk)
        out = [np.sort(np.concatenate(p)) for p in parts]
        if min(len(p) for p in out) >= min_samples:
            return out
    raise PartitionError(
        f"no Dirichlet(alpha={alpha}) draw gave every one of n_clients={n_clients} clients "
        f"at least min_samples={min_samples} samples in {max_tries} tries; raise alpha or lower min_samples"
    )


@PARTITIONS.register("shards", description="sorted-label shards, shards_per_client per client (McMahan et al. 2017)")
def shard_partition(
    labels: np.ndarray, *, n_clients: int, generator: np.random.Generator, shards_per_client: int = 2
) -> list[np.ndarray]:
    """Label-shard partition (McMahan et al., 2017).

    Raises
    ------
    PartitionError
        If ``shards_per_client < 1`` or there are fewer samples than shards.
    """
    labels = _check_common(labels, n_clients)
    if shards_per_client < 1:
        raise PartitionError(f"shards_per_client must be >= 1, got {shards_per_client}")
    n_shards = n_clients * shards_per_client
    if n_shards > len(labels):
        raise PartitionError(
            f"n_clients * shards_per_client = {n_shards} shards is more than the {len(labels)} samples"
        )
    order = np.argsort(labels, kind="stable")
    shards = np.array_split(order, n_shards)
    assignment = generator.permutation(n_shards).reshape(n_clients, shards_per_client)
    return [np.sort(np.concatenate([shards[s] for s in row])) for row in assignment]


@PARTITIONS.register(
    "gamma", description="ByzFL's gamma-similarity: a gamma share dealt IID, the rest sorted (1 = IID, 0 = sorted)"
)
def gamma_similarity_partition(
    labels: np.ndarray, *, n_clients: int, generator: np.random.Generator, gamma: float = 0.5
) -> list[np.ndarray]:
    """Gamma-similarity partition (ByzFL's ``gamma_similarity_niid``, as in its ``DataDistributor``).

    The samples are shuffled; the first ``floor(gamma * N)`` are split IID into ``n_clients``
    near-equal parts, the rest are sorted by label (stable) and cut into ``n_clients``
    contiguous near-equal blocks; client ``i`` gets the ``i``-th part of each.

    Parameters
    ----------
    labels : numpy.ndarray
        One label per sample (1-D).
    n_clients : int
        Number of clients ``n``.
    generator : numpy.random.Generator
        Draws the shuffle.
    gamma : float
        Similarity in ``[0, 1]``: 1 = IID, 0 = sorted labels.

    Raises
    ------
    PartitionError
        If ``gamma`` is not a number in ``[0, 1]``.

    Examples
    --------
    >>> y = np.repeat(np.arange(4), 10)
    >>> parts = gamma_similarity_partition(y, n_clients=4, gamma=0.0, generator=np.random.default_rng(0))
    >>> [sorted(set(y[p].tolist())) for p in parts]
    [[0], [1], [2], [3]]
    """
    labels = _check_common(labels, n_clients)
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float, np.floating, np.integer)) or not (
        0.0 <= float(gamma) <= 1.0
    ):
        raise PartitionError(f"gamma-similarity gamma must be a number in [0, 1] (1 = IID, 0 = sorted), got {gamma!r}")
    perm = generator.permutation(len(labels))
    k = int(len(labels) * float(gamma))
    iid = np.array_split(perm[:k], n_clients)
    rest = perm[k:]
    sorted_rest = rest[np.argsort(labels[rest], kind="stable")]
    niid = np.array_split(sorted_rest, n_clients)
    return [np.sort(np.concatenate([a, b])) for a, b in zip(iid, niid, strict=True)]


def partition(
    labels: np.ndarray,
    *,
    scheme: str,
    n_clients: int,
    generator: np.random.Generator,
    alpha: float | None = None,
    shards_per_client: int | None = None,
    gamma: float | None = None,
    **params: Any,
) -> list[np.ndarray]:
    """Partition by scheme name (one of :data:`PARTITIONS`).

    ``alpha`` (``dirichlet``), ``shards_per_client`` (``shards``) and ``gamma`` (``gamma``) may be given
    for any scheme, so a caller can pass its settings through; a scheme that does
    not take one ignores it, and ``None`` keeps the scheme's default. Any other
    ``params`` are the scheme's own and are validated against its signature.

    Raises
    ------
    UnknownNameError
        If ``scheme`` is not registered.
    ConfigError
        If a parameter in ``params`` is not one the scheme takes.
    PartitionError
        If the parameters are out of range.
    """
    takes = {p.name for p in PARTITIONS.parameters(scheme)}
    shared = {"alpha": alpha, "shards_per_client": shards_per_client, "gamma": gamma}
    params.update({k: v for k, v in shared.items() if v is not None and k in takes})
    return PARTITIONS.make(scheme, labels=labels, n_clients=n_clients, generator=generator, **params)
