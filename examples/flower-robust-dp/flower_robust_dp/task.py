"""The learning task: softmax regression on synthetic, linearly labelled Gaussian data.

Every partition draws its own examples from one fixed linear teacher, so the honest
nodes agree on the direction to move in; a malicious partition reverses and boosts
its update (``global - boost * (local - global)``).
"""

from __future__ import annotations

import numpy as np

FEATURES = 20
CLASSES = 3
EXAMPLES_PER_PARTITION = 200
MALICIOUS_PARTITIONS = (0, 1)
TEACHER = np.random.default_rng(2024).normal(size=(CLASSES, FEATURES))


def initial_arrays() -> list[np.ndarray]:
    """The all-zero model: weight ``(CLASSES, FEATURES)`` and bias ``(CLASSES,)``."""
    return [np.zeros((CLASSES, FEATURES), np.float32), np.zeros(CLASSES, np.float32)]


def load_partition(partition_id: int, n: int = EXAMPLES_PER_PARTITION) -> tuple[np.ndarray, np.ndarray]:
    """The examples of one partition (its own seed), labelled by the teacher."""
    rng = np.random.default_rng(50_000 + partition_id)
    x = rng.normal(size=(n, FEATURES))
    return x, (x @ TEACHER.T).argmax(axis=1)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def train(arrays: list[np.ndarray], partition_id: int, *, lr: float, steps: int) -> list[np.ndarray]:
    """Full-batch gradient descent on the partition's cross-entropy, from the global model."""
    w, b = (a.astype(np.float64) for a in arrays)
    x, y = load_partition(partition_id)
    onehot = np.eye(CLASSES)[y]
    for _ in range(steps):
        g = _softmax(x @ w.T + b) - onehot
        w = w - lr * g.T @ x / len(x)
        b = b - lr * g.mean(axis=0)
    return [w.astype(np.float32), b.astype(np.float32)]


def sign_flip(global_arrays: list[np.ndarray], local: list[np.ndarray], boost: float) -> list[np.ndarray]:
    """The attack: the honest update reversed and scaled by ``boost``."""
    return [(g - boost * (n - g)).astype(np.float32) for g, n in zip(global_arrays, local, strict=True)]


def accuracy(arrays: list[np.ndarray], n: int = 3000) -> float:
    """Accuracy on a held-out test set (a partition id no node uses)."""
    x, y = load_partition(10**6, n)
    return float(((x @ arrays[0].T + arrays[1]).argmax(axis=1) == y).mean())
