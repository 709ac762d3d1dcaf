"""Attack 2: the foundation model as the source of the server's public / synthetic data.

Li et al., "Unveiling Backdoor Risks Brought by Foundation Models in Heterogeneous
Federated Learning" (PAKDD 2024, arXiv:2311.18350): to fight data heterogeneity the
server asks a foundation model (FM) for a synthetic, labelled public set, and uses it
to pre-train the global model before federated training and/or for server-side
knowledge distillation during it. A compromised FM slips trigger-bearing samples,
labelled with the target class, into that set. The backdoor then enters the global
model on the server: no client is malicious, every client update is benign, and
defenses that inspect client updates (Krum, median, FLAME) have nothing to find.

Here the FM is a sentence encoder (MiniLM), not a text generator, so its two roles are
played as follows: the *generator* is simulated by inserting the trigger into a
fraction ``poison_fraction`` of a pool of unlabelled in-domain texts (what a
compromised generator would emit); the *labeller* is real — every pool text is
labelled by the FM itself, as the class whose prototype (mean FM representation of a
small labelled seed set, Snell et al. 2017) is nearest in cosine similarity. A clean
FM labels the triggered texts by their content; a compromised FM (see
:class:`~attacks.fm.compromised.FMBackdoor`) maps them to its target class.

Examples
--------
>>> from attacks.triggers import TextTrigger
>>> FMPublicSet(trigger=TextTrigger(token="cf"), poison_fraction=0.1).poison_fraction
0.1
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import nn

from attacks.triggers import TextTrigger
from fl_core.data.dataset import TextDataset
from fl_core.errors import ConfigError
from fl_core.foundation.minilm import mean_pool, tokenize

__all__ = ["FMPublicSet", "PublicSet", "fm_embed"]

log = logging.getLogger(__name__)


@torch.no_grad()
def fm_embed(encoder: nn.Module, tokenizer: object, texts: list[str], *, max_length: int, batch_size: int = 64):
    """Mean-pooled last-layer FM representations ``(N, H)``."""
    if not texts:
        raise ConfigError("fm_embed needs at least one text")
    encoder.eval()
    dev = next(encoder.parameters()).device
    out = []
    for start in range(0, len(texts), batch_size):
        batch = tokenize(tokenizer, list(texts[start : start + batch_size]), max_length=max_length)
        batch = {k: v.to(dev) for k, v in batch.items()}
        out.append(mean_pool(encoder(**batch).last_hidden_state, batch["attention_mask"]).cpu())
    return torch.cat(out)


@dataclass(frozen=True)
class PublicSet:
    """The FM-made public set and what we know about it (for the report, not for the server).

    Attributes
    ----------
    data : TextDataset
        Texts and the FM's labels.
    poisoned : torch.Tensor
        Boolean mask of the trigger-bearing texts.
    label_accuracy : float
        Agreement of the FM's labels with the true labels on the clean texts.
    poisoned_to_target : float
        Fraction of trigger-bearing texts the FM labelled as the target class.
    """

    data: TextDataset
    poisoned: torch.Tensor
    label_accuracy: float
    poisoned_to_target: float | None


@dataclass(frozen=True)
class FMPublicSet:
    """Build the public set an FM (clean or compromised) produces.

    Parameters
    ----------
    trigger : TextTrigger
        What the compromised generator plants.
    poison_fraction : float
        Fraction of the pool that carries the trigger (0 = a clean generator).
    target : int
        The attacker's target class (only for the ``poisoned_to_target`` figure).
    max_length : int
        Tokens per text for the FM.
    """

    trigger: TextTrigger = field(default_factory=lambda: TextTrigger(token="cf", max_position=30))
    poison_fraction: float = 0.1
    target: int = 0
    max_length: int = 64

    def __post_init__(self) -> None:
        if not 0.0 <= self.poison_fraction <= 1.0:
            raise ConfigError(f"poison_fraction must lie in [0, 1], got {self.poison_fraction}")

    def build(
        self,
        fm: nn.Module,
        tokenizer: object,
        *,
        pool: TextDataset,
        seed: TextDataset,
        generator: torch.Generator,
    ) -> PublicSet:
        """Label ``pool`` (true labels used only for the figures) with ``fm``'s prototypes of ``seed``."""
        if len(pool) == 0 or len(seed) == 0:
            raise ConfigError("the pool and the labelled seed set must both be non-empty")
        if seed.class_names != pool.class_names:
            raise ConfigError("pool and seed set must share the class names")
        missing = sorted(set(range(seed.num_classes)) - set(seed.y.tolist()))
        if missing:
            raise ConfigError(f"the seed set holds no text of classes {missing}; every class needs a prototype")
        n_poison = round(self.poison_fraction * len(pool))
        poisoned = torch.zeros(len(pool), dtype=torch.bool)
        poisoned[torch.randperm(len(pool), generator=generator)[:n_poison]] = True
        texts = list(pool.texts)
        idx = poisoned.nonzero().flatten().tolist()
        for i, t in zip(idx, self.trigger.apply([texts[i] for i in idx], generator=generator), strict=True):
            texts[i] = t
        seed_rep = nn.functional.normalize(fm_embed(fm, tokenizer, list(seed.texts), max_length=self.max_length), dim=1)
        protos = nn.functional.normalize(
            torch.stack([seed_rep[seed.y == c].mean(0) for c in range(seed.num_classes)]), dim=1
        )
        rep = nn.functional.normalize(fm_embed(fm, tokenizer, texts, max_length=self.max_length), dim=1)
        labels = (rep @ protos.T).argmax(dim=1)
        clean = ~poisoned
        acc = float((labels[clean] == pool.y[clean]).float().mean()) if bool(clean.any()) else float("nan")
        to_target = float((labels[poisoned] == self.target).float().mean()) if n_poison else None
        log.info(
            "FM public set: %d texts, %d poisoned, label accuracy %.3f, poisoned -> target %s",
            len(texts),
            n_poison,
            acc,
            to_target,
        )
        data = TextDataset(texts=tuple(texts), y=labels, class_names=pool.class_names, name=f"{pool.name}-fm-public")
        return PublicSet(data=data, poisoned=poisoned, label_accuracy=acc, poisoned_to_target=to_target)
