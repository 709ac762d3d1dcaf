import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fl_core.data.partition import partition
from fl_core.errors import PartitionError, UnknownNameError

LABELS = np.repeat(np.arange(10), 500)  # 5,000 samples, 10 balanced classes


def _label_dists(labels, parts, k=10):
    return np.stack([np.bincount(labels[p], minlength=k) / len(p) for p in parts])


def _mean_tv_to_global(labels, parts):
    glob = np.bincount(labels, minlength=10) / len(labels)
    return float(np.mean(0.5 * np.abs(_label_dists(labels, parts) - glob).sum(axis=1)))


@settings(max_examples=40, deadline=None)
@given(
    scheme=st.sampled_from(["iid", "dirichlet", "shards"]),
    n_clients=st.integers(1, 30),
    alpha=st.floats(0.05, 100.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_partition_is_a_disjoint_cover(scheme, n_clients, alpha, seed):
    parts = partition(LABELS, scheme=scheme, n_clients=n_clients, alpha=alpha, generator=np.random.default_rng(seed))
    assert len(parts) == n_clients
    allidx = np.concatenate(parts)
    assert len(allidx) == len(LABELS)
    assert np.array_equal(np.sort(allidx), np.arange(len(LABELS)))
    assert all(len(p) >= 1 for p in parts)


def test_dirichlet_skew_decreases_with_alpha():
    """Mean total-variation distance of client label distributions to the global one.

    Small alpha: clients dominated by few classes (TV near 1); large alpha: close to IID.
    Averaged over 5 seeds; the ordering must hold for every adjacent pair of alphas.
    """
    alphas = [0.05, 0.3, 1.0, 10.0, 1000.0]
    tv = [
        np.mean(
            [
                _mean_tv_to_global(
                    LABELS,
                    partition(LABELS, scheme="dirichlet", n_clients=10, alpha=a, generator=np.random.default_rng(s)),
                )
                for s in range(5)
            ]
        )
        for a in alphas
    ]
    assert all(tv[i] > tv[i + 1] for i in range(len(tv) - 1)), tv
    assert tv[0] > 0.6  # strongly skewed
    iid = np.mean(
        [
            _mean_tv_to_global(
                LABELS, partition(LABELS, scheme="iid", n_clients=10, generator=np.random.default_rng(s))
            )
            for s in range(5)
        ]
    )
    # IID clients of m=500 samples differ from the global distribution only by sampling noise:
    # E[TV] ~ 0.5 * k * sqrt(2/pi) * sqrt(p(1-p)/m) = 0.053 for k=10, p=0.1.
    assert abs(iid - 0.053) < 0.01
    # Dirichlet(1000) cuts each class in shares 1/n +- 0.003: even more balanced than a random IID split
    assert tv[-1] < iid


def test_dirichlet_expected_client_share_matches_theory():
    """E[p_ck] = 1/n for Dir(alpha * 1_n): each client's expected share of a class is 1/n.

    Var[p_ck] = (n-1) / (n^2 (n alpha + 1)); check the empirical variance over draws.
    """
    n, alpha = 5, 0.5
    labels = np.repeat(np.arange(2), 2000)
    shares = []
    for s in range(200):
        parts = partition(labels, scheme="dirichlet", n_clients=n, alpha=alpha, generator=np.random.default_rng(s))
        shares.append([np.sum(labels[p] == 0) / 2000 for p in parts])
    shares = np.asarray(shares)
    assert np.allclose(shares.mean(axis=0), 1 / n, atol=0.03)
    var_theory = (n - 1) / (n**2 * (n * alpha + 1))
    assert abs(shares.var() - var_theory) / var_theory < 0.15


def test_shards_limit_classes_per_client():
    for spc in (1, 2):  # shards of 500 or 250 samples align with the 500-sample classes
        parts = partition(
            LABELS, scheme="shards", n_clients=10, shards_per_client=spc, generator=np.random.default_rng(0)
        )
        assert [len(np.unique(LABELS[p])) for p in parts] == [spc] * 10
        assert all(len(p) == 500 for p in parts)
    # 30 shards of ~167 samples: a shard straddles at most 2 classes, so a client has <= 2 * spc
    parts = partition(LABELS, scheme="shards", n_clients=10, shards_per_client=3, generator=np.random.default_rng(0))
    n_classes = [len(np.unique(LABELS[p])) for p in parts]
    assert max(n_classes) <= 6 and min(n_classes) >= 1
    assert np.mean(n_classes) < 5  # far from the 10 classes of an IID client


def test_iid_sizes_balanced():
    parts = partition(LABELS, scheme="iid", n_clients=7, generator=np.random.default_rng(0))
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1


def test_same_generator_seed_same_partition():
    a = partition(LABELS, scheme="dirichlet", n_clients=10, generator=np.random.default_rng(3))
    b = partition(LABELS, scheme="dirichlet", n_clients=10, generator=np.random.default_rng(3))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"scheme": "dirichlet", "n_clients": 10, "alpha": 0.0}, "alpha=0.0"),
        ({"scheme": "dirichlet", "n_clients": 10, "alpha": -1.0}, "alpha=-1.0"),
        ({"scheme": "dirichlet", "n_clients": 10, "alpha": float("nan")}, "alpha=nan"),
        ({"scheme": "iid", "n_clients": 5001}, "n_clients=5001 is more than the 5000 samples"),
        ({"scheme": "iid", "n_clients": 0}, "positive integer, got 0"),
        ({"scheme": "shards", "n_clients": 10, "shards_per_client": 0}, "shards_per_client must be >= 1"),
        ({"scheme": "shards", "n_clients": 3000, "shards_per_client": 2}, "6000 shards"),
    ],
)
def test_invalid_parameters(kwargs, match):
    with pytest.raises(PartitionError, match=match):
        partition(LABELS, generator=np.random.default_rng(0), **kwargs)


def test_unknown_scheme():
    with pytest.raises(UnknownNameError, match="Did you mean 'dirichlet'"):
        partition(LABELS, scheme="dirichlett", n_clients=2, generator=np.random.default_rng(0))


def test_dirichlet_min_samples_unreachable():
    with pytest.raises(PartitionError, match="min_samples"):
        from fl_core.data.partition import dirichlet_partition

        dirichlet_partition(
            np.zeros(30, dtype=int),
            n_clients=10,
            alpha=0.01,
            min_samples=3,
            generator=np.random.default_rng(0),
            max_tries=3,
        )


# --- gamma-similarity (ByzFL's gamma_similarity_niid) ---


@settings(max_examples=30, deadline=None)
@given(n_clients=st.integers(1, 30), gamma=st.floats(0.0, 1.0), seed=st.integers(0, 2**32 - 1))
def test_gamma_partition_is_a_disjoint_cover(n_clients, gamma, seed):
    parts = partition(LABELS, scheme="gamma", n_clients=n_clients, gamma=gamma, generator=np.random.default_rng(seed))
    assert len(parts) == n_clients
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(len(LABELS)))
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 2  # an IID share and a sorted block, each split near-equally


def test_gamma_zero_is_sorted_labels():
    """gamma = 0: client i holds the i-th block of the label-sorted data (10 clients, 10 classes: one each)."""
    parts = partition(LABELS, scheme="gamma", n_clients=10, gamma=0.0, generator=np.random.default_rng(0))
    assert [sorted(set(LABELS[p].tolist())) for p in parts] == [[c] for c in range(10)]
    parts = partition(LABELS, scheme="gamma", n_clients=4, gamma=0.0, generator=np.random.default_rng(0))
    # 1250-sample blocks of 500-sample classes: {0, 1, 2}, {2, 3, 4}, {5, 6, 7}, {7, 8, 9}
    assert [sorted(set(LABELS[p].tolist())) for p in parts] == [[0, 1, 2], [2, 3, 4], [5, 6, 7], [7, 8, 9]]


def test_gamma_share_is_iid_and_skew_falls_with_gamma():
    """gamma = 0.5: exactly half of each client's 500 samples come from the IID share; TV distance to the global
    label distribution falls from near 1 (gamma 0) to near 0 (gamma 1)."""
    g = np.random.default_rng(1)
    tv = [_mean_tv_to_global(LABELS, partition(LABELS, scheme="gamma", n_clients=10, gamma=gm, generator=g))
          for gm in (0.0, 0.5, 1.0)]
    assert tv[0] == pytest.approx(0.9) and 0.4 < tv[1] < 0.5 and tv[2] < 0.06
    parts = partition(LABELS, scheme="gamma", n_clients=10, gamma=0.5, generator=np.random.default_rng(2))
    # client 0's sorted block is class 0 only (250 samples); its other 250 are IID, about 25 of them class 0
    counts = np.bincount(LABELS[parts[0]], minlength=10)
    assert len(parts[0]) == 500 and counts[0] > 250 and counts[1:].sum() < 250 and counts[1:].min() > 5


@pytest.mark.parametrize("gamma", [-0.1, 1.5, float("nan"), "0.5", True])
def test_gamma_out_of_range_is_refused(gamma):
    with pytest.raises(PartitionError, match="gamma-similarity gamma must be a number in \\[0, 1\\]"):
        partition(LABELS, scheme="gamma", n_clients=10, gamma=gamma, generator=np.random.default_rng(0))
