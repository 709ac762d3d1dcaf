"""The edge-case backdoor (Wang et al., "Attack of the Tails: Yes, You Really Can Backdoor
Federated Learning", NeurIPS 2020).

The malicious clients train on their clean data mixed with an *edge-case* set
``D_edge``: inputs from the tail of the input distribution, all labelled with the
target class (the paper: ARDIS 7s labelled 1 for EMNIST, Southwest airplanes
labelled truck for CIFAR-10). Because honest clients almost never hold such
inputs, nothing in their updates pushes back, and the backdoor needs no trigger:
the edge-case inputs are the backdoor. Optionally the attacker keeps its model in
an L2 ball of radius ``eps`` around the global model by projected gradient descent
(the paper's "PGD without model replacement"), or in a ball of radius
``eps / gamma`` and then boosts its update by ``gamma`` ("PGD with model
replacement": the sent update is still within ``eps``). Attack success is the
share of held-out edge-case test inputs classified as the target (the paper's metric).

How the tail set is chosen (nothing downloads, so no ARDIS): the paper's definition
(Def. 1) calls ``x`` a *p-edge-case* example if ``P_X(x) <= p``, a point of low
probability under the data distribution. We model the source class ``c`` as the
isotropic Gaussian ``N(mu_c, sigma^2 I)`` in the (normalised) pixel space, with
``mu_c`` the mean of class ``c`` in the *training* split. Its density is a
decreasing function of ``||x - mu_c||``, so the ``k`` inputs farthest from ``mu_c``
are exactly the ``k`` lowest-density ones: the p-edge-case inputs for ``p`` the
density at the ``k``-th largest distance (:func:`tail_indices`; ties go to the lower
index). The candidates are the source-class inputs of the dataset's *test* split,
which the federation never hands to a client, so the tail set is held out from every
client's training data, as ARDIS is from EMNIST's. The ``k = ceil(tail_fraction *
n_c)`` tail inputs are split, by a seeded permutation, into the attacker's ``D_edge``
and the held-out edge-case test set (``test_share`` of them; the authors split
Southwest 70/30). They stay in the test split the clean accuracy is measured on
(at most ``tail_fraction`` of one class: 1% of Fashion-MNIST's test set at the defaults).

The training split holds inputs of the same low-density region (the class's own tail),
correctly labelled: left with the honest clients they contradict the backdoor, which
ARDIS 7s never meet in EMNIST. :meth:`EdgeCaseSet.holdout` names them (the source-class
training inputs at least as far from ``mu_c`` as the nearest tail input, i.e. of density
at most the tail's ``p``) and the plan carries it as ``AttackPlan.exclude_train``, for
the federation builder to drop before partitioning. Measured on Fashion-MNIST (7 -> 1,
2 attackers of 10, plain mean, 12 rounds, 1 seed): final attack success 0.23 (max 0.27)
with those 596 inputs left to the clients, 0.23 (max 0.37) without them; at that scale
the number of attackers matters more (1 attacker of 10: 0.0).

What this tail does not give (measured, ``flsec reproduce edge-case``: 30 clients, 10 per round,
4 clean then 8 attack rounds, 3 seeds): the paper's *durable* backdoor. The attack gets through
the defenses in the rounds its clients take part in (round maxima of 0.5-0.63 under norm
clipping, RFA and Multi-Krum), but the next rounds erase it (final 0.00-0.13), while a 4x4 pixel
trigger accumulates (final 0.69 under norm clipping, 0.44 under RFA). With no defense at all (plain
mean, seed 0) the same holds: round maxima 0.77, final 0.13, against the trigger's 0.87. The reason is the tail, not
the training: an attacker's local model scores 0.90 on the held-out tail (it generalises from its
70 inputs), and a global model moved 0.3 of the way to it scores 0.57, but a single honest client's
epoch on 2,000 clean inputs (none from the held-out region) brings that to 0.00. The pixel-space tail
of a class is not a separate sub-population the way ARDIS 7s are for EMNIST: a clean model calls only
40% of it the source class, and mapping it to the target also moves 9% of the class's other inputs
(lr 0.05) or 35% (lr 0.01), which the honest clients' own data then restores. With the
cross-domain set below (``edge_source="digits"``) the same reproduction gives final attack success
0.99 / 0.99 / 1.00 under norm clipping, Multi-Krum and RFA against the trigger's 0.69 / 0.03 / 0.44
(3 seeds, separated 95% intervals): the paper's result.

A cross-domain edge set, ``edge_source="digits"`` (:func:`digits_edge_set`): the paper's own
edge cases are not the tail of a training class but inputs *from another collection* that
the federation's clients never hold (ARDIS is a separate corpus of handwritten digits).
The analog that ships is scikit-learn's 8x8 handwritten digits: the images of digit
``source`` are scaled to a 20x20 box and centred in 28x28 (MNIST's layout), mapped to
Fashion-MNIST's pixel standardisation, and split ``1 - test_share`` / ``test_share`` (seeded)
into the attacker's ``D_edge`` and the held-out test set. Their density under Fashion-MNIST's
input distribution is about zero and no client holds one, so nothing is held out of the
training split.

Mixing ratio: ``edge_fraction`` of every batch of a malicious client's local
training is replaced by edge-case inputs (drawn uniformly from ``D_edge``) labelled
with the target. The authors' EMNIST set mixes 66 ARDIS 7s with 100 clean EMNIST
images (``generating_poisoned_DA.py``, fraction 0.1 of the 660 ARDIS training 7s),
so the default is ``66 / 166 = 0.4``.

Examples
--------
>>> import torch
>>> x = torch.tensor([[0.0], [3.0], [1.0], [-3.0], [2.0]])
>>> tail_indices(x, center=torch.zeros(1), k=3).tolist()  # farthest first, ties to the lower index
[1, 3, 4]
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass

import numpy as np
import torch

from attacks.data_poisoning import ScheduledHook
from attacks.threat import AttackSchedule
from fl_core.errors import ConfigError

__all__ = ["EdgeCaseMix", "EdgeCaseSet", "dataset_for_shape", "digits_edge_set", "load_edge_case_set",
           "tail_indices"]

log = logging.getLogger(__name__)

#: The datasets that ship, by image shape (used when the attack is not told which dataset the federation uses).
_DATASET_BY_SHAPE = {(1, 8, 8): "digits", (1, 28, 28): "fashion-mnist"}


def tail_indices(x: torch.Tensor, *, center: torch.Tensor, k: int) -> np.ndarray:
    """Indices of the ``k`` rows of ``x`` farthest (Euclidean, flattened) from ``center``, farthest first.

    Ties are broken by the lower index (a stable sort), so the choice is deterministic.

    Raises
    ------
    ConfigError
        If ``k`` is not in ``[1, len(x)]`` or ``center`` does not match a row's size.
    """
    n = len(x)
    if not 1 <= k <= n:
        raise ConfigError(f"tail size k must be in [1, {n}], got {k}")
    flat = x.reshape(n, -1).to(torch.float64)
    c = center.reshape(-1).to(torch.float64)
    if c.numel() != flat.shape[1]:
        raise ConfigError(f"center has {c.numel()} values but the inputs have {flat.shape[1]}")
    dist = (flat - c).norm(dim=1).numpy()
    order = np.argsort(-dist, kind="stable")
    return order[:k]


@dataclass(frozen=True)
class EdgeCaseSet:
    """The attacker's edge-case inputs ``train_x`` and the held-out edge-case test inputs ``test_x``.

    ``train_idx`` and ``test_idx`` index the dataset's test split (the pool the tail is
    drawn from); ``tail`` lists all tail indices, farthest first.
    """

    train_x: torch.Tensor
    test_x: torch.Tensor
    train_idx: np.ndarray
    test_idx: np.ndarray
    tail: np.ndarray
    source: int
    target: int
    center: torch.Tensor
    radius: float

    def holdout(self, train: object) -> np.ndarray:
        """Indices of ``train``'s class-``source`` inputs in the edge-case region: at least ``radius`` from ``center``.

        ``radius`` is the distance of the nearest tail input, so under the Gaussian class
        model these are the training inputs with density at most the tail's ``p``: the
        p-edge-case examples the honest clients would hold. Removing them from the
        clients' data makes the region as rare in the federation as ARDIS 7s are in EMNIST.

        Examples
        --------
        >>> from fl_core.data.dataset import ArrayDataset
        >>> pool = torch.tensor([[1.0], [4.0], [3.0]]).reshape(3, 1, 1, 1)
        >>> e = EdgeCaseSet.from_split(train_x=torch.zeros(1, 1, 1, 1), train_y=torch.tensor([0]), pool_x=pool,
        ...                            pool_y=torch.tensor([0, 0, 0]), source=0, target=1, tail_fraction=0.6,
        ...                            test_share=0.5, seed=0)
        >>> e.radius
        3.0
        >>> tr = ArrayDataset(x=torch.tensor([2.0, 3.0, -5.0, 9.0]).reshape(4, 1, 1, 1), y=torch.tensor([0, 0, 0, 1]),
        ...                   num_classes=2, name="t")
        >>> e.holdout(tr).tolist()  # class 1 is never held out
        [1, 2]
        """
        x, y = getattr(train, "x", None), getattr(train, "y", None)
        if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
            raise ConfigError(f"edge-case holdout needs an image dataset, got {type(train).__name__}")
        cand = torch.nonzero(y == self.source).flatten()
        flat = x[cand].reshape(len(cand), -1).to(torch.float64)
        if flat.shape[1] != self.center.numel():
            raise ConfigError(f"edge-case holdout: inputs of size {flat.shape[1]}, center of {self.center.numel()}")
        far = (flat - self.center.to(torch.float64)).norm(dim=1) >= self.radius
        return cand[far].numpy()

    @classmethod
    def from_split(
        cls,
        *,
        train_x: torch.Tensor,
        train_y: torch.Tensor,
        pool_x: torch.Tensor,
        pool_y: torch.Tensor,
        source: int,
        target: int,
        tail_fraction: float,
        test_share: float,
        seed: int,
    ) -> EdgeCaseSet:
        """The tail of class ``source`` in the pool (``pool_x``, never a client's), split into attacker/test parts.

        ``mu_source`` is the mean of ``train_x[train_y == source]``; the tail is the
        ``ceil(tail_fraction * n)`` pool inputs of class ``source`` farthest from it; a
        permutation seeded by ``seed`` puts ``max(1, round(test_share * k))`` of them in the test part.

        Raises
        ------
        ConfigError
            A class with no samples, or a tail too small for one input in each part.
        """
        _check_fraction("tail_fraction", tail_fraction)
        _check_fraction("test_share", test_share, high_open=True)
        if source == target:
            raise ConfigError(f"edge-case source class must differ from the target, both are {source}")
        in_train = train_y == source
        cand = torch.nonzero(pool_y == source).flatten().numpy()
        if not bool(in_train.any()) or len(cand) == 0:
            raise ConfigError(f"edge-case source class {source} has no samples in the data")
        k = math.ceil(tail_fraction * len(cand))
        if k < 2:
            raise ConfigError(
                f"edge-case tail of class {source}: tail_fraction={tail_fraction} of {len(cand)} inputs gives "
                f"{k}; need >= 2 (one for the attacker, one to test)"
            )
        center = train_x[in_train].reshape(int(in_train.sum()), -1).mean(dim=0)
        tail = cand[tail_indices(pool_x[cand], center=center, k=k)]
        n_test = min(k - 1, max(1, round(test_share * k)))
        perm = np.random.default_rng(seed).permutation(k)
        test_idx, train_idx = np.sort(tail[perm[:n_test]]), np.sort(tail[perm[n_test:]])
        radius = float((pool_x[tail].reshape(k, -1).to(torch.float64) - center.to(torch.float64)).norm(dim=1).min())
        return cls(train_x=pool_x[train_idx].clone(), test_x=pool_x[test_idx].clone(), train_idx=train_idx,
                   test_idx=test_idx, tail=tail, source=source, target=target,
                   center=center.to(torch.float64), radius=radius)


#: The edge sets an attack can draw from: the tail of a class of the federation's own dataset,
#: or another collection's images (scikit-learn's digits, for a 28x28 federation).
EDGE_SOURCES = ("tail", "digits")
#: Fashion-MNIST's pixel standardisation (``fl_core.data.loaders``): the digits are mapped into it.
_FMNIST_MEAN, _FMNIST_STD = 0.2860, 0.3530


def digits_edge_set(*, source: int, target: int, test_share: float, seed: int) -> EdgeCaseSet:
    """Cross-domain edge cases for a Fashion-MNIST federation: scikit-learn's handwritten ``source`` digits.

    Each 8x8 digit (intensities ``0..16``) is scaled to ``[0, 1]``, resized bilinearly to
    20x20, centred in a 28x28 canvas and standardised as Fashion-MNIST's inputs are; a
    permutation seeded by ``seed`` puts ``max(1, round(test_share * k))`` of the ``k`` digits
    in the held-out test part. ``train_idx``/``test_idx``/``tail`` index scikit-learn's
    digits; ``radius`` is infinite (no Fashion-MNIST input lies in the region).

    Examples
    --------
    >>> e = digits_edge_set(source=7, target=1, test_share=0.3, seed=0)
    >>> tuple(e.train_x.shape[1:]), len(e.train_x) + len(e.test_x) == len(e.tail), len(e.test_x)
    ((1, 28, 28), True, 54)
    >>> round(float(e.train_x.min()), 3) == round(-_FMNIST_MEAN / _FMNIST_STD, 3)  # the background is black
    True
    """
    from sklearn.datasets import load_digits

    _check_fraction("test_share", test_share, high_open=True)
    if not (0 <= source < 10 and 0 <= target < 10) or source == target:
        raise ConfigError(f"digits edge set: source and target must be distinct classes in [0, 10), got "
                          f"source={source}, target={target}")
    bunch = load_digits()
    tail = np.flatnonzero(bunch.target == source)
    img = torch.from_numpy(bunch.images[tail].astype(np.float32) / 16.0).unsqueeze(1)
    img = torch.nn.functional.interpolate(img, size=(20, 20), mode="bilinear", align_corners=False).clamp(0, 1)
    x = (torch.nn.functional.pad(img, (4, 4, 4, 4)) - _FMNIST_MEAN) / _FMNIST_STD
    k = len(tail)
    n_test = min(k - 1, max(1, round(test_share * k)))
    perm = np.random.default_rng(seed).permutation(k)
    test_pos, train_pos = np.sort(perm[:n_test]), np.sort(perm[n_test:])
    return EdgeCaseSet(train_x=x[train_pos].clone(), test_x=x[test_pos].clone(), train_idx=tail[train_pos],
                       test_idx=tail[test_pos], tail=tail, source=source, target=target,
                       center=torch.zeros(28 * 28, dtype=torch.float64), radius=math.inf)


def _check_fraction(name: str, value: float, *, high_open: bool = False) -> None:
    ok = isinstance(value, int | float) and 0 < value and (value < 1 if high_open else value <= 1)
    if not ok:
        raise ConfigError(f"{name} must be in (0, 1{')' if high_open else ']'}, got {value}")


def dataset_for_shape(image_shape: tuple[int, ...] | None) -> str:
    """The shipped dataset with images of ``image_shape`` (``digits``: 1x8x8, ``fashion-mnist``: 1x28x28)."""
    name = _DATASET_BY_SHAPE.get(tuple(image_shape) if image_shape is not None else ())
    if name is None:
        raise ConfigError(
            f"edge-case backdoor: no shipped dataset has images of shape {image_shape}; "
            f"pass dataset= (one of {sorted(set(_DATASET_BY_SHAPE.values()))})"
        )
    return name


@functools.lru_cache(maxsize=8)
def load_edge_case_set(
    dataset: str,
    *,
    data_path: str | None = None,
    source: int,
    target: int,
    tail_fraction: float,
    test_share: float,
    seed: int,
    edge_source: str = "tail",
) -> EdgeCaseSet:
    """Load ``dataset`` through :func:`fl_core.load_dataset` and build its :class:`EdgeCaseSet` (cached).

    ``edge_source="digits"`` draws the edge cases from another collection instead
    (:func:`digits_edge_set`; for ``fashion-mnist`` only, ``tail_fraction`` unused).

    The class mean comes from the training split; the tail is drawn from the test split.
    ``fashion-mnist`` is loaded without the digits fallback: an attack on 28x28 images
    must not silently draw its edge cases from 8x8 digits.
    """
    from fl_core import load_dataset

    if edge_source not in EDGE_SOURCES:
        raise ConfigError(f"edge_source must be one of {EDGE_SOURCES}, got {edge_source!r}")
    if edge_source == "digits":
        if dataset != "fashion-mnist":
            raise ConfigError(f"edge_source='digits' maps 8x8 digits into a 28x28 Fashion-MNIST federation; the "
                              f"federation's dataset is {dataset!r}")
        return digits_edge_set(source=source, target=target, test_share=test_share, seed=seed)
    split = load_dataset(dataset, path=data_path, fallback=False)
    train, test = split.train, split.test
    if not hasattr(train, "x"):
        raise ConfigError(f"the edge-case backdoor needs image data; {dataset!r} is not")
    for c, role in ((source, "source"), (target, "target")):
        if not 0 <= c < train.num_classes:
            raise ConfigError(f"edge-case {role} class must be in [0, {train.num_classes}), got {c}")
    edge = EdgeCaseSet.from_split(train_x=train.x, train_y=train.y, pool_x=test.x, pool_y=test.y, source=source,
                                  target=target, tail_fraction=tail_fraction, test_share=test_share, seed=seed)
    log.info("edge-case set of %s: %d tail inputs of class %d (%d attack, %d test), labelled %d", dataset,
             len(edge.tail), source, len(edge.train_idx), len(edge.test_idx), target)
    return edge


class EdgeCaseMix(ScheduledHook):
    """Replace ``edge_fraction`` of each batch with edge-case inputs labelled ``target`` (in the attack's rounds).

    ``max(1, round(edge_fraction * B))`` rows of a batch of ``B``, chosen uniformly
    without replacement, are replaced by inputs drawn uniformly (with replacement)
    from ``edge_x``, all from the client's training generator.

    Examples
    --------
    >>> hook = EdgeCaseMix(edge_x=torch.full((3, 1, 2, 2), 7.0), target=1, edge_fraction=0.5)
    >>> hook.on_round_start(round_idx=0, global_params=torch.zeros(1))
    >>> x, y = hook.on_batch(torch.zeros(4, 1, 2, 2), torch.zeros(4, dtype=torch.long), step=0,
    ...                      generator=torch.Generator().manual_seed(0))
    >>> int((y == 1).sum()), int((x == 7.0).all(dim=(1, 2, 3)).sum())
    (2, 2)
    """

    def __init__(
        self,
        *,
        edge_x: torch.Tensor,
        target: int,
        edge_fraction: float = 0.4,
        schedule: AttackSchedule | None = None,
    ) -> None:
        super().__init__(schedule=schedule)
        _check_fraction("edge_fraction", edge_fraction)
        if not isinstance(edge_x, torch.Tensor) or edge_x.ndim < 2 or len(edge_x) == 0:
            raise ConfigError(f"edge_x must be a non-empty batch of inputs, got {getattr(edge_x, 'shape', edge_x)}")
        if not bool(torch.isfinite(edge_x).all()):
            raise ConfigError("edge_x contains NaN or Inf")
        if target < 0:
            raise ConfigError(f"edge-case target class must be >= 0, got {target}")
        self.edge_x, self.target, self.edge_fraction = edge_x, target, edge_fraction

    def on_batch(self, x, y: torch.Tensor, *, step: int, generator: torch.Generator):
        if not self.active:
            return x, y
        if tuple(x.shape[1:]) != tuple(self.edge_x.shape[1:]):
            raise ConfigError(f"edge-case inputs {tuple(self.edge_x.shape[1:])} do not fit the batch "
                              f"{tuple(x.shape[1:])}")
        b = len(y)
        k = min(b, max(1, round(self.edge_fraction * b)))
        rows = torch.randperm(b, generator=generator)[:k]
        pick = torch.randint(0, len(self.edge_x), (k,), generator=generator)
        x, y = x.clone(), y.clone()
        x[rows.to(x.device)] = self.edge_x[pick].to(device=x.device, dtype=x.dtype)
        y[rows.to(y.device)] = self.target
        return x, y
