"""Fine-pruning (Liu, Dolan-Gavitt & Garg, "Fine-Pruning: Defending Against Backdooring Attacks
on Deep Neural Networks", RAID 2018), for the top transformer layer of a fine-tuned FM.

Backdoor behaviour often lives in neurons that clean inputs leave dormant. Liu et al.
prune the last convolutional layer's channels in increasing order of their mean
activation on clean validation data until clean accuracy falls by more than a budget,
then fine-tune on the clean data. Here the pruned units are the feed-forward
(intermediate) neurons of the last transformer layer of a
:class:`~fl_core.foundation.split.TopClassifier` (``d_ff = 1536`` for MiniLM); a
pruned neuron's activation is multiplied by 0 through a forward hook, so later
fine-tuning cannot revive it.

Examples
--------
>>> import torch
>>> from fl_core.foundation import load_encoder, FineTuneSpec, TopClassifier, encode_prefix
>>> enc, tok = load_encoder()
>>> spec = FineTuneSpec(mode="full", trainable_layers=1, max_length=8)
>>> model = TopClassifier(enc, num_classes=2, spec=spec, generator=torch.Generator().manual_seed(0))
>>> acts = mean_activations(model, encode_prefix(enc, tok, ["a", "b"], spec=spec))
>>> acts.shape
torch.Size([1536])
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

from fl_core.data.dataset import ArrayDataset
from fl_core.errors import ConfigError
from fl_core.foundation.split import TopClassifier
from fl_core.training import LocalTrainingConfig, evaluate, local_train

__all__ = ["FinePruning", "PruneResult", "mean_activations", "set_pruned"]

log = logging.getLogger(__name__)


def _ffn(model: TopClassifier) -> torch.nn.Module:
    return model.layers[-1].intermediate


@torch.no_grad()
def mean_activations(model: TopClassifier, features: torch.Tensor, *, batch_size: int = 64) -> torch.Tensor:
    """Mean activation (over texts and non-padding tokens) of each FFN neuron of the last layer."""
    if not isinstance(model, TopClassifier):
        raise ConfigError(f"fine-pruning needs a TopClassifier, got {type(model).__name__}")
    if len(features) == 0:
        raise ConfigError("mean_activations needs at least one input")
    sums: list[torch.Tensor] = []
    counts: list[torch.Tensor] = []

    def hook(_mod, _inp, out):
        mask = current_mask.unsqueeze(-1).to(out.dtype)
        sums.append((out * mask).sum(dim=(0, 1)))
        counts.append(mask.sum())

    handle = _ffn(model).register_forward_hook(hook)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(features), batch_size):
            batch = features[start : start + batch_size]
            current_mask = batch[..., -1]
            model(batch)
    finally:
        handle.remove()
        model.train(was_training)
    return torch.stack(sums).sum(0) / torch.stack(counts).sum()


def set_pruned(model: TopClassifier, pruned: torch.Tensor) -> None:
    """Zero the last layer's FFN neurons where ``pruned`` is True (replaces an earlier mask)."""
    ffn = _ffn(model)
    if pruned.shape != (ffn.dense.out_features,):
        raise ConfigError(f"prune mask must have shape ({ffn.dense.out_features},), got {tuple(pruned.shape)}")
    old = getattr(ffn, "_flsec_prune_handle", None)
    if old is not None:
        old.remove()
    keep = (~pruned).to(torch.float32)
    ffn._flsec_prune_handle = ffn.register_forward_hook(lambda _m, _i, out: out * keep.to(out.device, out.dtype))


@dataclass(frozen=True)
class PruneResult:
    """Fraction pruned, and clean validation accuracy before pruning, after pruning and after fine-tuning."""

    fraction: float
    acc_before: float
    acc_pruned: float
    acc_final: float


@dataclass(frozen=True)
class FinePruning:
    """Prune dormant neurons until validation accuracy drops by more than ``max_drop``, then fine-tune.

    Parameters
    ----------
    max_drop : float
        Largest tolerated drop of clean validation accuracy (Liu et al. use 4 points).
    step : float
        Fraction of the neurons pruned per step.
    max_fraction : float
        Never prune more than this fraction.
    finetune : LocalTrainingConfig or None
        Fine-tuning on the validation data after pruning (None = prune only).
    """

    max_drop: float = 0.04
    step: float = 0.05
    max_fraction: float = 0.95
    finetune: LocalTrainingConfig | None = None

    def __post_init__(self) -> None:
        for name in ("max_drop", "step", "max_fraction"):
            v = getattr(self, name)
            if not (math.isfinite(v) and 0 < v <= 1):
                raise ConfigError(f"{name} must lie in (0, 1], got {v}")

    def apply(self, model: TopClassifier, validation: ArrayDataset, *, generator: torch.Generator) -> PruneResult:
        """Prune (and fine-tune) ``model`` in place on the clean ``validation`` features."""
        acts = mean_activations(model, validation.x)
        order = torch.argsort(acts)  # most dormant first
        n = acts.numel()
        before = evaluate(model, validation).accuracy
        k_best, acc_best = 0, before
        k = 0
        while True:
            k_next = min(n, k + max(1, round(self.step * n)))
            if k_next > round(self.max_fraction * n) or k_next == k:
                break
            mask = torch.zeros(n, dtype=torch.bool)
            mask[order[:k_next]] = True
            set_pruned(model, mask)
            acc = evaluate(model, validation).accuracy
            if before - acc > self.max_drop:
                break
            k, k_best, acc_best = k_next, k_next, acc
        mask = torch.zeros(n, dtype=torch.bool)
        mask[order[:k_best]] = True
        set_pruned(model, mask)
        final = acc_best
        if self.finetune is not None:
            local_train(model, validation, config=self.finetune, generator=generator)
            final = evaluate(model, validation).accuracy
        log.info("fine-pruning: pruned %d/%d neurons, val acc %.3f -> %.3f -> %.3f", k_best, n, before, acc_best, final)
        return PruneResult(fraction=k_best / n, acc_before=before, acc_pruned=acc_best, acc_final=final)
