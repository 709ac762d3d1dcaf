"""Fine-tuning the top of a frozen foundation model on cached prefix features.

Federated fine-tuning of a foundation model (FM) usually trains only the top of the
network — the last ``k`` transformer layers in full, or LoRA adapters on them (Hu et
al., "LoRA: Low-Rank Adaptation of Large Language Models", ICLR 2022) — plus a task
head. Everything below layer ``L - k`` is frozen, so its output for a given text never
changes during training: :func:`encode_prefix` computes it once per text, and the
federation trains a :class:`TopClassifier` (layers ``L-k .. L-1`` + mean pooling +
linear head) on those features. The result is exactly the model a client would train
end to end with the prefix frozen, at a fraction of the cost; on 2 CPU cores this is
what makes rounds of MiniLM fine-tuning take seconds instead of minutes.

Features are stored as one tensor ``(N, T, H + 1)``: the hidden states of the
prefix, with the attention mask appended as the last channel, so that they fit the
one training loop of :mod:`fl_core.training` as an :class:`ArrayDataset`.

Examples
--------
>>> import torch
>>> from fl_core.foundation.minilm import load_encoder
>>> enc, tok = load_encoder()
>>> spec = FineTuneSpec(mode="lora", trainable_layers=1, max_length=16)
>>> feats = encode_prefix(enc, tok, ["markets rallied", "the striker scored"], spec=spec)
>>> feats.shape
torch.Size([2, 16, 385])
>>> model = TopClassifier(enc, num_classes=5, spec=spec, generator=torch.Generator().manual_seed(0))
>>> model(feats).shape
torch.Size([2, 5])
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from fl_core.data.dataset import ArrayDataset, TextDataset
from fl_core.errors import ConfigError
from fl_core.foundation.minilm import init_head, mean_pool, tokenize

__all__ = ["FINE_TUNE_MODES", "FineTuneSpec", "TopClassifier", "encode_prefix", "feature_dataset", "run_layers"]

FINE_TUNE_MODES = ("full", "lora")


@dataclass(frozen=True)
class FineTuneSpec:
    """What federated fine-tuning trains.

    Attributes
    ----------
    mode : str
        ``"full"``: every weight of the top ``trainable_layers`` layers; ``"lora"``: rank-``r``
        LoRA adapters on the attention query and value projections of those layers (through ``peft``).
        The head is trained in both.
    trainable_layers : int
        ``k``, the number of top transformer layers fine-tuned; the rest is frozen and cached.
    lora_rank, lora_alpha : int, float
        LoRA's ``r`` and ``alpha`` (the update is scaled by ``alpha / r``).
    max_length : int
        Tokens per text (truncation and padding).
    """

    mode: str = "lora"
    trainable_layers: int = 2
    lora_rank: int = 8
    lora_alpha: float = 16.0
    max_length: int = 64

    def __post_init__(self) -> None:
        if self.mode not in FINE_TUNE_MODES:
            raise ConfigError(f"fine-tuning mode must be one of {FINE_TUNE_MODES}, got {self.mode!r}")
        if self.trainable_layers < 1:
            raise ConfigError(f"trainable_layers must be >= 1, got {self.trainable_layers}")
        if self.lora_rank < 1:
            raise ConfigError(f"lora_rank must be >= 1, got {self.lora_rank}")
        if not (math.isfinite(self.lora_alpha) and self.lora_alpha > 0):
            raise ConfigError(f"lora_alpha must be positive, got {self.lora_alpha}")
        if self.max_length < 2:
            raise ConfigError(f"max_length must be >= 2, got {self.max_length}")

    def cut(self, encoder: nn.Module) -> int:
        """Index of the first trained layer, ``L - k``; checks ``k <= L``."""
        n_layers = len(encoder.encoder.layer)
        if self.trainable_layers > n_layers:
            raise ConfigError(f"trainable_layers={self.trainable_layers} exceeds the encoder's {n_layers} layers")
        return n_layers - self.trainable_layers


def _additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor | None:
    """BERT's additive attention mask ``(B, 1, 1, T)``, or None when nothing is padded."""
    if bool(mask.all()):
        return None
    return (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


def run_layers(layers: nn.ModuleList | list[nn.Module], hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Apply BERT layers to ``hidden`` ``(B, T, H)`` with attention ``mask`` ``(B, T)``."""
    add = _additive_mask(mask, hidden.dtype)
    for layer in layers:
        out = layer(hidden, attention_mask=add)
        hidden = out[0] if isinstance(out, tuple) else out
    return hidden


@torch.no_grad()
def encode_prefix(
    encoder: nn.Module,
    tokenizer: object,
    texts: list[str],
    *,
    spec: FineTuneSpec,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Output of the frozen prefix (embeddings + layers ``0 .. L-k-1``) with the mask channel: ``(N, T, H+1)``."""
    if not texts:
        raise ConfigError("encode_prefix needs at least one text")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    cut = spec.cut(encoder)
    device = torch.device(device)
    was_training = encoder.training
    encoder.eval()
    encoder.to(device)
    out = []
    for start in range(0, len(texts), batch_size):
        tok = tokenize(tokenizer, list(texts[start : start + batch_size]), max_length=spec.max_length)
        ids, mask = tok["input_ids"].to(device), tok["attention_mask"].to(device)
        hidden = encoder.embeddings(input_ids=ids)
        hidden = run_layers(encoder.encoder.layer[:cut], hidden, mask)
        out.append(torch.cat([hidden, mask.unsqueeze(-1).to(hidden.dtype)], dim=-1).cpu())
    encoder.train(was_training)
    return torch.cat(out)


def feature_dataset(
    encoder: nn.Module,
    tokenizer: object,
    data: TextDataset,
    *,
    spec: FineTuneSpec,
    name: str | None = None,
    device: torch.device | str = "cpu",
) -> ArrayDataset:
    """A :class:`TextDataset` turned into prefix features with the same labels."""
    x = encode_prefix(encoder, tokenizer, list(data.texts), spec=spec, device=device)
    return ArrayDataset(x=x, y=data.y.clone(), num_classes=data.num_classes, name=name or f"{data.name}-features")


class TopClassifier(nn.Module):
    """The trained top of a foundation model: layers ``L-k .. L-1`` (copied), mean pooling, a linear head.

    Input: prefix features ``(B, T, H + 1)`` from :func:`encode_prefix`. With ``mode="lora"``
    the copied layers are frozen and LoRA adapters (``lora_A`` drawn from ``generator``,
    ``lora_B = 0``) are injected into their ``query`` and ``value`` projections; only the
    adapters and the head are trainable (and flattened into FL updates).
    """

    def __init__(self, encoder: nn.Module, *, num_classes: int, spec: FineTuneSpec, generator: torch.Generator) -> None:
        super().__init__()
        if num_classes < 2:
            raise ConfigError(f"num_classes must be >= 2, got {num_classes}")
        cut = spec.cut(encoder)
        self.spec = spec
        self.layers = nn.ModuleList(copy.deepcopy(list(encoder.encoder.layer[cut:])))
        self.hidden_size = int(encoder.config.hidden_size)
        with torch.random.fork_rng(devices=[]):  # module constructors draw from the global RNG: restore it
            self.head = nn.Linear(self.hidden_size, num_classes)
        init_head(self.head, generator)
        if spec.mode == "lora":
            with torch.random.fork_rng(devices=[]):
                self._inject_lora(generator)
        self.train(False)

    def _inject_lora(self, generator: torch.Generator) -> None:
        from peft import LoraConfig, inject_adapter_in_model

        for p in self.layers.parameters():
            p.requires_grad_(False)
        config = LoraConfig(
            r=self.spec.lora_rank, lora_alpha=self.spec.lora_alpha, lora_dropout=0.0, target_modules=["query", "value"]
        )
        self.layers = inject_adapter_in_model(config, self.layers)
        for name, p in self.layers.named_parameters():
            p.requires_grad_("lora_" in name)
            if "lora_A" in name:  # redraw from our generator: peft initialises from the global RNG
                bound = 1 / math.sqrt(p.shape[1])
                with torch.no_grad():  # drawn on the CPU (the generator's device), then copied to p's device
                    p.copy_(torch.empty(p.shape).uniform_(-bound, bound, generator=generator))

    def pooled(self, features: torch.Tensor) -> torch.Tensor:
        """The mean-pooled representation ``(B, H)`` of the last layer."""
        if features.ndim != 3 or features.shape[-1] != self.hidden_size + 1:
            want = f"(B, T, {self.hidden_size + 1})"
            raise ConfigError(f"expected prefix features {want} from encode_prefix, got {tuple(features.shape)}")
        hidden, mask = features[..., :-1], features[..., -1]
        return mean_pool(run_layers(self.layers, hidden, mask), mask)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.pooled(features))
