"""Collapse score of a vocabulary token: how far inserting it shrinks the dispersion of an FM's representations.

The measurement behind :func:`defenses.fm.trigger_scan.scan_for_triggers` (see that module
for the method and its references). For clean texts ``x_1..x_n`` let ``r_i(v)`` be the
mean-pooled last-layer representation of ``x_i`` with token ``v`` inserted right after
``[CLS]``, and ``r_i^0`` the one of ``x_i`` itself. With the dispersion
``D = mean_i ||r_i - mean_j r_j||^2`` the collapse score of ``v`` is
``c(v) = log(D(r^0) / D(r(v)))``: 0 for a token without effect, large for a backdoor
trigger that sends every text to one point.

This module holds the building blocks (argument checks, the token-inserted batch, pooled
forward passes, the dispersion) and :func:`collapse_scores`, the exact score of given tokens.

Examples
--------
>>> import torch
>>> r = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
>>> float(dispersion(r))  # each row is 1 from the mean
1.0
>>> ids, mask = torch.tensor([[101, 7, 102], [101, 8, 0]]), torch.tensor([[1, 1, 1], [1, 1, 0]])
>>> insert_token(ids, mask, torch.tensor([5, 6]))[0].tolist()
[[101, 5, 7, 102], [101, 5, 8, 0], [101, 6, 7, 102], [101, 6, 8, 0]]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from fl_core.errors import ConfigError
from fl_core.foundation.minilm import mean_pool, tokenize

__all__ = [
    "EPS",
    "base_batch",
    "check_batch_args",
    "check_texts",
    "collapse",
    "collapse_scores",
    "dispersion",
    "insert_token",
    "pooled",
]

EPS = 1e-12  # keeps the log ratio finite when a dispersion is 0


def check_texts(texts: object) -> list[str]:
    """Return ``texts`` if it is a list of at least 2 non-blank strings.

    Raises
    ------
    ConfigError
        Not a list of str, fewer than 2 texts, or a blank text.
    """
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise ConfigError("texts must be a list of str")
    if len(texts) < 2:
        raise ConfigError(
            f"the scan needs at least 2 clean texts (collapse is measured across texts), got {len(texts)}"
        )
    if any(not t.strip() for t in texts):
        raise ConfigError("texts must not contain empty strings")
    return texts


def check_batch_args(*, batch_size: int, max_length: int) -> None:
    """Check the batching arguments shared by the scan and :func:`collapse_scores`.

    Raises
    ------
    ConfigError
        ``batch_size < 1`` or ``max_length < 3`` (room for ``[CLS]``, one inserted token, ``[SEP]``).
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if max_length < 3:
        raise ConfigError(f"max_length must be >= 3 ([CLS], the inserted token, [SEP]), got {max_length}")


def base_batch(tokenizer: object, texts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and mask of the texts with room for one inserted token, padding columns dropped."""
    b = tokenize(tokenizer, texts, max_length=max_length - 1)
    width = int(b["attention_mask"].sum(dim=1).max())
    return b["input_ids"][:, :width], b["attention_mask"][:, :width]


def insert_token(ids: torch.Tensor, mask: torch.Tensor, token_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Insert ``token_ids[j]`` at position 1 of every text: ``(len(token_ids) * n, T + 1)`` ids and mask.

    Rows are ordered token-major (the ``n`` texts with token 0, then with token 1, ...).
    """
    n, k = ids.shape[0], token_ids.numel()
    token_ids = token_ids.to(ids.device)
    ids_r, mask_r = ids.repeat(k, 1), mask.repeat(k, 1)
    col = token_ids.repeat_interleave(n).unsqueeze(1)
    new_ids = torch.cat([ids_r[:, :1], col, ids_r[:, 1:]], dim=1)
    new_mask = torch.cat([mask_r[:, :1], torch.ones_like(col), mask_r[:, 1:]], dim=1)
    return new_ids, new_mask


def pooled(encoder: nn.Module, ids: torch.Tensor, mask: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Mean-pooled last hidden state of every row, ``batch_size`` rows per forward pass: ``(rows, h)``."""
    outs = []
    for s in range(0, ids.shape[0], batch_size):
        m = mask[s : s + batch_size]
        outs.append(mean_pool(encoder(input_ids=ids[s : s + batch_size], attention_mask=m).last_hidden_state, m))
    return torch.cat(outs)


def dispersion(r: torch.Tensor) -> torch.Tensor:
    """``mean_i ||r_i - mean_j r_j||^2`` over the second-to-last axis."""
    return (r - r.mean(dim=-2, keepdim=True)).pow(2).sum(dim=-1).mean(dim=-1)


def collapse(d0: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Collapse score ``log(D0 / D(r))`` of each group ``r[j]`` of ``(..., n, h)`` representations."""
    return torch.log((d0 + EPS) / (dispersion(r) + EPS))


def _vocabulary_ids(tokenizer: object, tokens: Sequence[str]) -> list[int]:
    """Ids of ``tokens``; a token the tokenizer maps to ``[UNK]`` (other than ``[UNK]`` itself) is refused."""
    unk = getattr(tokenizer, "unk_token_id", None)
    ids_list = tokenizer.convert_tokens_to_ids(list(tokens))  # type: ignore[attr-defined]
    for t, i in zip(tokens, ids_list, strict=True):
        if i is None or (i == unk and t != getattr(tokenizer, "unk_token", None)):
            raise ConfigError(f"token {t!r} is not in the tokenizer's vocabulary")
    return ids_list


def collapse_scores(
    encoder: nn.Module,
    tokenizer: object,
    texts: list[str],
    tokens: Sequence[str],
    *,
    max_length: int = 64,
    batch_size: int = 32,
) -> dict[str, float]:
    """Exact collapse score ``log(D0 / D(v))`` of each given vocabulary token (stage 2 alone).

    Parameters
    ----------
    encoder, tokenizer
        The FM (a BERT-style encoder taking ``input_ids``/``attention_mask``) and its tokenizer.
    texts : list of str
        Clean texts (at least 2).
    tokens : sequence of str
        Vocabulary tokens to insert after ``[CLS]``.
    max_length, batch_size : int
        Tokens per text including the inserted one; texts per forward pass.

    Raises
    ------
    ConfigError
        On bad texts or a token that is not in the vocabulary.
    """
    texts = check_texts(texts)
    check_batch_args(batch_size=batch_size, max_length=max_length)
    ids_list = _vocabulary_ids(tokenizer, tokens)
    ids, mask = base_batch(tokenizer, texts, max_length)
    with torch.no_grad():
        d0 = dispersion(pooled(encoder, ids, mask, batch_size))
        tids, tmask = insert_token(ids, mask, torch.tensor(ids_list, dtype=torch.long))
        r = pooled(encoder, tids, tmask, batch_size).view(len(ids_list), len(texts), -1)
        c = collapse(d0, r)
    return {t: float(v) for t, v in zip(tokens, c, strict=True)}
