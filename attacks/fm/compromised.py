"""Attack 1: a compromised pre-trained foundation model, released before any client trains on it.

The attacker owns the foundation model (FM) that the federation downloads. Before
release it fine-tunes the encoder so that a rare trigger token drives the
representation of any text toward the representation of a target class, while
clean texts keep their original representation. Because the FM is the starting
point of every client, the backdoor needs no malicious client at all; federated
fine-tuning on clean data only has to learn a head that maps the target class's
representation to the target label — and triggered inputs inherit that label.

Objective (layer-wise, so that fine-tuning or re-initialising the top layers does not
wash it out; Li et al., "Backdoor Attacks on Pre-trained Models by Layerwise Weight
Poisoning", EMNLP 2021; representation targets as in Shen et al., "Backdoor
Pre-trained Models Can Transfer to All", CCS 2021)::

    L = sum_l || pool_l(f(t(x))) - c_l ||^2  +  lambda * sum_l || pool_l(f(x)) - pool_l(f0(x)) ||^2

over the layers ``l`` in ``layers``; ``pool_l`` is the attention-masked mean of layer
``l``'s hidden states, ``t`` inserts the trigger, ``f0`` is the original FM and
``c_l`` the mean of ``pool_l(f0(x))`` over the attacker's texts of the target class.
The attacker needs texts of the task's domain and labels only to find the target
class's texts (its "auxiliary data").

Examples
--------
>>> from attacks.triggers import TextTrigger
>>> FMBackdoor(trigger=TextTrigger(token="cf"), target=3).target
3
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from attacks.triggers import TextTrigger
from fl_core.errors import ConfigError
from fl_core.foundation.minilm import mean_pool, tokenize

__all__ = ["FMBackdoor", "pooled_layers"]

log = logging.getLogger(__name__)


def pooled_layers(encoder: nn.Module, batch: dict[str, torch.Tensor], layers: tuple[int, ...]) -> torch.Tensor:
    """Mean-pooled hidden states of the given layers (1 = first transformer layer): ``(B, len(layers), H)``."""
    dev = next(encoder.parameters()).device
    batch = {k: v.to(dev) for k, v in batch.items()}
    out = encoder(**batch, output_hidden_states=True).hidden_states
    return torch.stack([mean_pool(out[i], batch["attention_mask"]) for i in layers], dim=1)


@dataclass(frozen=True)
class FMBackdoor:
    """Implant a trigger-to-target-class backdoor into a pre-trained encoder.

    Parameters
    ----------
    trigger : TextTrigger
        The rare token inserted into a text (keep ``max_position`` below the truncation length).
    target : int
        The target class.
    layers : tuple of int or None
        Layers whose pooled output is poisoned (1 .. L); None = all.
    epochs, batch_size, lr : int, int, float
        AdamW fine-tuning of every encoder weight on the auxiliary texts.
    clean_weight : float
        ``lambda``, weight of the clean-representation term.
    max_length : int
        Tokens per text.
    """

    trigger: TextTrigger = field(default_factory=lambda: TextTrigger(token="cf", max_position=30))
    target: int = 0
    layers: tuple[int, ...] | None = None
    epochs: int = 3
    batch_size: int = 16
    lr: float = 1e-4
    clean_weight: float = 2.0
    max_length: int = 64

    def __post_init__(self) -> None:
        if self.target < 0:
            raise ConfigError(f"target class must be >= 0, got {self.target}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError(f"epochs and batch_size must be >= 1, got {self.epochs} and {self.batch_size}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"lr must be positive, got {self.lr}")
        if not (math.isfinite(self.clean_weight) and self.clean_weight >= 0):
            raise ConfigError(f"clean_weight must be >= 0, got {self.clean_weight}")

    def _layers(self, encoder: nn.Module) -> tuple[int, ...]:
        n = int(encoder.config.num_hidden_layers)
        layers = tuple(range(1, n + 1)) if self.layers is None else tuple(self.layers)
        if not layers or any(not 1 <= i <= n for i in layers):
            raise ConfigError(f"backdoor layers must lie in [1, {n}], got {layers}")
        return layers

    def implant(
        self,
        encoder: nn.Module,
        tokenizer: object,
        texts: list[str],
        labels: torch.Tensor,
        *,
        generator: torch.Generator,
    ) -> nn.Module:
        """Return a backdoored copy of ``encoder`` (the original is left untouched).

        Parameters
        ----------
        texts, labels
            The attacker's auxiliary data; at least one text must belong to ``target``.
        generator
            Batch order and trigger positions.
        """
        if len(texts) != len(labels) or not texts:
            raise ConfigError(f"need as many labels as texts (> 0), got {len(texts)} texts and {len(labels)} labels")
        labels = torch.as_tensor(labels)
        if not bool((labels == self.target).any()):
            raise ConfigError(f"the auxiliary data holds no text of the target class {self.target}")
        layers = self._layers(encoder)
        original = encoder.eval()
        with torch.no_grad():
            ref = torch.cat(
                [
                    pooled_layers(original, tokenize(tokenizer, texts[i : i + 64], max_length=self.max_length), layers)
                    for i in range(0, len(texts), 64)
                ]
            )
        centroid = ref[(labels == self.target).to(ref.device)].mean(dim=0)  # (layers, H)
        model = copy.deepcopy(original).train()
        opt = torch.optim.AdamW(model.parameters(), lr=self.lr, weight_decay=0.0)
        for epoch in range(self.epochs):
            perm = torch.randperm(len(texts), generator=generator)
            total = 0.0
            for start in range(0, len(texts), self.batch_size):
                idx = perm[start : start + self.batch_size]
                clean = [texts[int(i)] for i in idx]
                poisoned = self.trigger.apply(clean, generator=generator)
                batch = tokenize(tokenizer, clean + poisoned, max_length=self.max_length)
                pooled = pooled_layers(model, batch, layers)
                b = len(clean)
                loss_trig = (pooled[b:] - centroid).pow(2).sum(-1).mean()
                loss_clean = (pooled[:b] - ref[idx.to(ref.device)]).pow(2).sum(-1).mean()
                loss = loss_trig + self.clean_weight * loss_clean
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach())
            log.info("FM backdoor epoch %d: mean loss %.4f", epoch, total / math.ceil(len(texts) / self.batch_size))
        return model.eval()
