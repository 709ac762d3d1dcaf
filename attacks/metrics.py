"""Attack metrics: backdoor attack success rate and detection rates of rules that flag clients.

Examples
--------
>>> detection_rates(client_ids=(0, 1, 2, 3), kept=(0, 1), malicious={2, 3})
DetectionRates(tpr=1.0, fpr=0.0, n_malicious=2, n_benign=2)
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from attacks.triggers import PatternTrigger, PixelTrigger, TextTrigger
from fl_core.data.dataset import ArrayDataset, TextDataset
from fl_core.errors import ConfigError

__all__ = ["Backdoor", "DetectionRates", "attack_success_rate", "detection_rates"]


@dataclass(frozen=True)
class Backdoor:
    """The trigger a backdoor attack plants and its target class (for scoring).

    A semantic backdoor has no trigger: its backdoored inputs are themselves the
    test (the edge-case backdoor of Wang et al., NeurIPS 2020, scores the share of
    held-out edge-case inputs classified as the target). Give those as ``inputs``
    and ``trigger=None``; :func:`attack_success_rate` then ignores the test set.
    """

    trigger: PixelTrigger | PatternTrigger | TextTrigger | None
    target: int
    inputs: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if (self.trigger is None) == (self.inputs is None):
            raise ConfigError("a backdoor has either a trigger or edge-case test inputs (exactly one)")
        if self.inputs is not None and (self.inputs.ndim < 2 or len(self.inputs) == 0):
            raise ConfigError(f"backdoor test inputs must be a non-empty batch, got shape {tuple(self.inputs.shape)}")


@torch.no_grad()
def attack_success_rate(
    model: nn.Module,
    test: ArrayDataset | TextDataset,
    backdoor: Backdoor,
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 1000,
    generator: torch.Generator | None = None,
) -> float:
    """Share of triggered test samples, excluding those of the target class, classified as the target.

    For a backdoor with edge-case ``inputs`` (no trigger): the share of those inputs
    classified as the target (Wang et al. 2020's metric); ``test`` is not used.

    Raises
    ------
    ConfigError
        If the test set has no sample outside the target class.
    """
    if backdoor.inputs is not None:
        was_training = model.training
        model.eval()
        hits = 0
        for start in range(0, len(backdoor.inputs), batch_size):
            x = backdoor.inputs[start : start + batch_size].to(device)
            hits += int((model(x).argmax(dim=1) == backdoor.target).sum())
        model.train(was_training)
        return hits / len(backdoor.inputs)
    keep = (test.y != backdoor.target).nonzero().flatten()
    if len(keep) == 0:
        raise ConfigError(f"test set has no sample outside the target class {backdoor.target}")
    was_training = model.training
    model.eval()
    hits = 0
    for start in range(0, len(keep), batch_size):
        idx = keep[start : start + batch_size]
        if isinstance(test, TextDataset):
            if not isinstance(backdoor.trigger, TextTrigger):
                raise ConfigError("a text dataset needs a text trigger")
            x: object = backdoor.trigger.apply([test.texts[int(i)] for i in idx], generator=generator)
        else:
            if not isinstance(backdoor.trigger, PixelTrigger | PatternTrigger):
                raise ConfigError("an image dataset needs a pixel trigger")
            x = backdoor.trigger.apply(test.x[idx]).to(device)
        hits += int((model(x).argmax(dim=1) == backdoor.target).sum())
    model.train(was_training)
    return hits / len(keep)


@dataclass(frozen=True)
class DetectionRates:
    """True-positive rate (malicious flagged) and false-positive rate (benign flagged) of one round."""

    tpr: float | None
    fpr: float | None
    n_malicious: int
    n_benign: int


def detection_rates(*, client_ids: Sequence[int], kept: Collection[int], malicious: Collection[int]) -> DetectionRates:
    """Detection rates of an aggregator that kept ``kept`` out of ``client_ids``.

    ``tpr`` is ``None`` when no malicious client was sampled, ``fpr`` when no benign one was.
    """
    kept_set, mal_set = set(kept), set(malicious)
    mal = [c for c in client_ids if c in mal_set]
    ben = [c for c in client_ids if c not in mal_set]
    tpr = sum(c not in kept_set for c in mal) / len(mal) if mal else None
    fpr = sum(c not in kept_set for c in ben) / len(ben) if ben else None
    return DetectionRates(tpr=tpr, fpr=fpr, n_malicious=len(mal), n_benign=len(ben))
