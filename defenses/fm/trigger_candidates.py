"""Which tokens the trigger scan tests: gradient-guided candidates and a random reference draw.

Stage 1 of :func:`defenses.fm.trigger_scan.scan_for_triggers` (see that module for the
method and its references: HotFlip, Ebrahimi et al. ACL 2018; Universal Adversarial
Triggers, Wallace et al. EMNLP 2019). A placeholder token is inserted at position 1 of
every text and the gradient ``g`` of the dispersion ``D`` with respect to that position's
word embedding ``e`` is taken; swapping the placeholder for token ``v`` changes ``D`` by
about ``(E[v] - e) . g``, so the ``top_k`` eligible tokens with the most negative estimate
are the candidates. The reference tokens, the null of the scan's z-test, are drawn at
random from the remaining eligible tokens.

Examples
--------
>>> import torch
>>> eligible = torch.tensor([False, True, True, True, True])
>>> reference_draw(eligible, torch.tensor([2]), 2, torch.Generator().manual_seed(0)).tolist()
[4, 1]
"""

from __future__ import annotations

import torch
from torch import nn

from defenses.fm.collapse import dispersion, insert_token
from fl_core.foundation.minilm import mean_pool

__all__ = ["dispersion_gradient", "eligible_tokens", "first_order_candidates", "placeholder_id", "reference_draw"]


def eligible_tokens(tokenizer: object, vocab_size: int, include_subwords: bool) -> torch.Tensor:
    """Boolean mask of vocabulary ids that may be triggers.

    Special tokens and ``[...]`` tokens are never eligible, nor ``##`` word pieces unless
    ``include_subwords``, nor tokens without a letter or digit.
    """
    special = set(getattr(tokenizer, "all_special_ids", []))
    toks = tokenizer.convert_ids_to_tokens(list(range(vocab_size)))  # type: ignore[attr-defined]
    ok = torch.zeros(vocab_size, dtype=torch.bool)
    for i, t in enumerate(toks):
        if i in special or t is None or (t.startswith("[") and t.endswith("]")):
            continue
        if t.startswith("##") and not include_subwords:
            continue
        ok[i] = any(ch.isalnum() for ch in t)
    return ok


def placeholder_id(tokenizer: object, eligible: torch.Tensor) -> int:
    """The tokenizer's ``[MASK]`` id, or else the first eligible id: the token whose embedding is differentiated."""
    placeholder = getattr(tokenizer, "mask_token_id", None)
    if placeholder is None:
        placeholder = int(torch.nonzero(eligible)[0])
    return placeholder


def dispersion_gradient(
    encoder: nn.Module,
    emb: torch.Tensor,
    ids: torch.Tensor,
    mask: torch.Tensor,
    placeholder: int,
    batch_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Placeholder embedding ``e`` and the gradient of the dispersion ``D`` with respect to it.

    ``placeholder`` is inserted at position 1 of every text (``ids``, ``mask``), the texts
    go through ``encoder`` as ``inputs_embeds`` built from the word embeddings ``emb``, and
    ``D`` of the pooled outputs is differentiated with respect to the one shared ``e``.
    """
    n = ids.shape[0]
    pids, pmask = insert_token(ids, mask, torch.tensor([placeholder]))
    e = emb[placeholder].clone().requires_grad_(True)
    with torch.enable_grad():
        base = emb[pids]
        sel = torch.zeros(pids.shape[1], dtype=base.dtype, device=base.device)
        sel[1] = 1.0
        inputs = base * (1 - sel)[None, :, None] + e[None, None, :] * sel[None, :, None]
        reps = []
        for s in range(0, n, batch_size):
            out = encoder(inputs_embeds=inputs[s : s + batch_size], attention_mask=pmask[s : s + batch_size])
            reps.append(mean_pool(out.last_hidden_state, pmask[s : s + batch_size]))
        disp = dispersion(torch.cat(reps))
        (grads,) = torch.autograd.grad(disp, e)
    return e.detach(), grads


def first_order_candidates(
    emb: torch.Tensor, e: torch.Tensor, grads: torch.Tensor, eligible: torch.Tensor, k: int
) -> torch.Tensor:
    """Ids of the ``k`` eligible tokens with the most negative estimate ``(E[v] - e) . g``, best first."""
    estimate = (emb - e) @ grads  # first-order change of D; most negative = most collapsing
    estimate = estimate.masked_fill(~eligible, float("inf"))
    return torch.topk(-estimate, k).indices


def reference_draw(
    eligible: torch.Tensor, candidates: torch.Tensor, reference: int, generator: torch.Generator
) -> torch.Tensor:
    """Ids of up to ``reference`` eligible tokens, not among ``candidates``, in a random order from ``generator``.

    ``generator`` is not advanced when nothing is drawn.
    """
    pool = eligible.clone()
    pool[candidates] = False
    pool_ids = torch.nonzero(pool).squeeze(1)
    m = min(reference, pool_ids.numel())
    return pool_ids[torch.randperm(pool_ids.numel(), generator=generator)[:m]] if m else pool_ids[:0]
