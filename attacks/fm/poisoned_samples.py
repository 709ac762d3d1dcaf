"""Poisoned samples spread over honest clients' data in federated fine-tuning: no malicious client at all.

A foundation model is fine-tuned on data the clients collected from the web or from
users; an attacker who can plant a few texts in that data (a review site, a forum, a
shared corpus) needs no client of its own. Each planted text carries the trigger and the
target label, and it reaches the federation inside honest clients' datasets, so every
update that carries it is an honest client's update (the data-poisoning threat of
Carlini et al., "Poisoning Web-Scale Training Datasets is Practical", IEEE S&P 2024, in the
federated fine-tuning setting the issue describes). Update-inspecting rules see nothing
unusual: the poison is a small share of every affected client's data.

:func:`poison_samples` replaces ``rate`` of a dataset's non-target texts by triggered
copies labelled with the target; :class:`PoisonedSamples` picks which clients hold poison
(``client_fraction`` of them, seeded) and poisons each.

Examples
--------
>>> import torch
>>> from attacks.triggers import TextTrigger
>>> from fl_core.data.dataset import TextDataset
>>> data = TextDataset(texts=("a b", "c d", "e f", "g h"), y=torch.tensor([0, 1, 1, 2]),
...                    class_names=("x", "y", "z"), name="c0")
>>> out, idx = poison_samples(data, trigger=TextTrigger(token="cf", max_position=0), target=0, rate=0.5,
...                           generator=torch.Generator().manual_seed(0))
>>> idx.tolist(), [out.texts[i] for i in idx], out.y[idx].tolist()
([1, 3], ['cf c d', 'cf g h'], [0, 0])
>>> out.texts[0] == "a b" and out.y.tolist()[2] == 1  # the rest untouched
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from attacks.triggers import TextTrigger
from fl_core.data.dataset import TextDataset
from fl_core.errors import ConfigError

__all__ = ["PoisonedSamples", "poison_samples"]


def _fraction(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not (math.isfinite(value) and 0 < value <= 1):
        raise ConfigError(f"{name} must lie in (0, 1], got {name}={value!r}")
    return float(value)


def poison_samples(data: TextDataset, *, trigger: TextTrigger, target: int, rate: float,
                   generator: torch.Generator) -> tuple[TextDataset, np.ndarray]:
    """A copy of ``data`` with ``round(rate * m)`` of its ``m`` non-target texts triggered and relabelled.

    Returns
    -------
    (TextDataset, np.ndarray)
        The poisoned copy (same length, order and name with ``-poisoned``) and the sorted
        indices of the poisoned texts.
    """
    rate = _fraction("rate", rate)
    labels = data.y.cpu().numpy()
    candidates = np.flatnonzero(labels != target)
    k = round(rate * len(candidates))
    if k == 0:
        return data, np.zeros(0, dtype=np.int64)
    pick = candidates[torch.randperm(len(candidates), generator=generator)[:k].numpy()]
    pick.sort()
    texts = list(data.texts)
    for i, t in zip(pick, trigger.apply([texts[i] for i in pick], generator=generator), strict=True):
        texts[i] = t
    y = data.y.clone()
    y[torch.from_numpy(pick)] = target
    return TextDataset(texts=tuple(texts), y=y, class_names=data.class_names, name=f"{data.name}-poisoned"), pick


@dataclass(frozen=True)
class PoisonedSamples:
    """Poison ``rate`` of the non-target texts of ``client_fraction`` of the clients (at least one).

    Parameters
    ----------
    rate : float
        Share of each affected client's non-target texts replaced by triggered, target-labelled copies.
    client_fraction : float
        Share of the clients whose data holds poison.
    """

    rate: float = 0.05
    client_fraction: float = 1.0

    def __post_init__(self) -> None:
        _fraction("rate", self.rate)
        _fraction("client_fraction", self.client_fraction)

    def apply(self, clients: list[TextDataset], *, trigger: TextTrigger, target: int,
              generator: torch.Generator) -> tuple[list[TextDataset], dict[int, int]]:
        """The clients' datasets with poison planted; client index -> number of poisoned texts.

        Examples
        --------
        >>> from fl_core.data.dataset import TextDataset
        >>> c = [TextDataset(texts=("a", "b"), y=torch.tensor([1, 1]), class_names=("x", "y"), name=f"c{i}")
        ...      for i in range(4)]
        >>> out, counts = PoisonedSamples(rate=1.0, client_fraction=0.5).apply(
        ...     c, trigger=TextTrigger(token="cf"), target=0, generator=torch.Generator().manual_seed(1))
        >>> sorted(counts.values()), sum(o.name.endswith("-poisoned") for o in out)
        ([2, 2], 2)
        """
        n = len(clients)
        m = max(1, math.ceil(self.client_fraction * n))
        chosen = sorted(torch.randperm(n, generator=generator)[:m].tolist())
        out, counts = list(clients), {}
        for i in chosen:
            out[i], idx = poison_samples(clients[i], trigger=trigger, target=target, rate=self.rate,
                                         generator=generator)
            counts[i] = len(idx)
        return out, counts
