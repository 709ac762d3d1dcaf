"""Re-initialise the top layers of a foundation model before fine-tuning.

A backdoor implanted in a pre-trained model can sit in any layer; discarding the top
``r`` layers' pre-trained weights and training them from scratch removes whatever lives
there (the "re-initialisation" baseline of backdoor-removal studies, e.g. Kurita et al.,
"Weight Poisoning Attacks on Pre-trained Models", ACL 2020, §6; Zhang et al. "Revisiting
Few-sample BERT Fine-tuning", ICLR 2021 for re-initialising top layers in general).
Linear weights are drawn as BERT initialises them, ``N(0, 0.02^2)`` with zero biases,
from an explicit generator. LayerNorm affine parameters keep their pre-trained values by
default (``keep_layernorm=True``): reset to ``(1, 0)`` they inflate the pooled features
the head sees (norm about 11 instead of 4.6 on MiniLM's last layer), and plain SGD at
the learning rate that fine-tunes the pre-trained layers then diverged in our runs (a
constant prediction). ``keep_layernorm=False`` resets them too.

Examples
--------
>>> import torch
>>> from fl_core.foundation import load_encoder, FineTuneSpec, TopClassifier
>>> enc, _ = load_encoder()
>>> model = TopClassifier(enc, num_classes=2, spec=FineTuneSpec(mode="full", trainable_layers=2),
...                       generator=torch.Generator().manual_seed(0))
>>> before = model.layers[1].output.dense.weight.clone()
>>> reinit_top_layers(model, r=1, generator=torch.Generator().manual_seed(0))
>>> top = model.layers[1]
>>> bool((top.output.dense.weight != before).all()), bool(top.output.dense.bias.eq(0).all())
(True, True)
"""

from __future__ import annotations

import torch
from torch import nn

from fl_core.errors import ConfigError
from fl_core.foundation.split import TopClassifier

__all__ = ["reinit_top_layers"]


@torch.no_grad()
def reinit_top_layers(
    model: TopClassifier, *, r: int, generator: torch.Generator, std: float = 0.02, keep_layernorm: bool = True
) -> None:
    """Re-draw the linear weights of the last ``r`` layers of ``model`` (which must all be fully trainable)."""
    if not isinstance(model, TopClassifier):
        raise ConfigError(f"reinit_top_layers needs a TopClassifier, got {type(model).__name__}")
    if not 1 <= r <= len(model.layers):
        raise ConfigError(f"r must be in [1, {len(model.layers)}] (the trained layers), got {r}")
    if model.spec.mode != "full":
        raise ConfigError("re-initialised layers must be trained in full: use FineTuneSpec(mode='full')")
    for layer in model.layers[-r:]:
        for mod in layer.modules():
            if isinstance(mod, nn.Linear):
                mod.weight.copy_(torch.empty(mod.weight.shape).normal_(0.0, std, generator=generator))
                if mod.bias is not None:
                    mod.bias.zero_()
            elif isinstance(mod, nn.LayerNorm) and not keep_layernorm:
                mod.weight.fill_(1.0)
                mod.bias.zero_()
