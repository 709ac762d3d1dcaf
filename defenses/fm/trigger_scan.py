"""Trigger scan for a backdoored sentence-encoder foundation model, before training.

A pre-trained foundation model (FM) can arrive backdoored: a rare *trigger* token
(``"cf"``, say), inserted anywhere in a text, drives the mean-pooled last-layer
representation toward one fixed point (the centroid of a target class), whatever the
rest of the text says. Every downstream head trained on that FM then inherits the
backdoor. The defender holds the FM and a handful of clean texts, and does not know the
trigger. :func:`scan_for_triggers` searches the vocabulary for tokens that behave like
one; :func:`strip_tokens` is the mitigation: the server deletes the flagged tokens from
every text that enters the pipeline.

The property scanned for is *collapse*. For clean texts ``x_1..x_n`` let ``r_i(v)`` be the
pooled representation of ``x_i`` with token ``v`` inserted right after ``[CLS]`` and
``r_i^0`` the one of ``x_i`` itself. The dispersion of a set of representations is
``D = mean_i ||r_i - mean_j r_j||^2``; an ordinary word barely changes it, a trigger that
maps every text to one point sends it to ~0. The collapse score of ``v`` is

    ``c(v) = log(D(r^0) / D(r(v)))``   (0: no effect; ``log 10``: dispersion cut tenfold).

Testing all ~30k vocabulary tokens exactly would cost ``n * 30k`` forward passes, so the
scan has two stages, as a gradient-guided universal-trigger search (HotFlip: Ebrahimi et
al., "HotFlip: White-Box Adversarial Examples for Text Classification", ACL 2018;
Universal Adversarial Triggers: Wallace et al., "Universal Adversarial Triggers for
Attacking and Analyzing NLP", EMNLP 2019) used as a backdoor *scan*, in the manner of
T-Miner (Azizi et al., USENIX Security 2021) and DBS (Shen et al., "Constrained
Optimization with Dynamic Bound-scaling for Effective NLP Backdoor Defense", ICML 2022):

1. **Candidates.** A placeholder token (``[MASK]``) is inserted at position 1 of every
   text and the gradient ``g`` of ``D`` with respect to that position's input (word)
   embedding ``e`` is taken through ``inputs_embeds``. Swapping the placeholder for token
   ``v`` changes ``D`` by about ``(E[v] - e) . g`` (``E`` the word-embedding matrix), so the
   ``top_k`` tokens with the most negative estimate (largest first-order collapse) are kept.
   Special tokens, and by default ``##`` word pieces and tokens without a letter or
   digit, are never candidates.
2. **Exact test.** Each candidate, and ``reference`` ordinary tokens drawn at random from
   the same eligible vocabulary (with the caller's :class:`torch.Generator`), is inserted
   into every text and ``c(v)`` is computed with the encoder. The random draw is what
   makes the test sound: the candidates are already the most collapse-prone tokens (and,
   on a backdoored FM, often many of them respond partly to the backdoor), so their own
   median and spread would hide one extreme token among many strong ones. The robust
   z-score ``z = (c - median) / (1.4826 * MAD)`` of every tested token is therefore taken
   against the median and MAD of the random ordinary tokens alone (of the whole tested
   pool if fewer than 8 were drawn). A token is flagged when ``z > z_threshold`` (3.5,
   Iglewicz and Hoaglin's cut-off for modified z-scores) **and** ``c(v) > min_collapse``
   (default ``log 4``: the token must shrink the texts' dispersion at least fourfold). Both
   are needed: the MAD of ordinary tokens is small, so the most influential ordinary
   words of a *clean* FM (names, loaded words) reach z of 4-5 with ``c`` around 0.4 (on
   MiniLM, 3000 random tokens gave at most 0.42), while a trigger gives ``c`` of 3 or more.

Cost: ``top_k + reference`` batched forward passes over the ``n`` texts, plus one forward
and backward pass; texts are trimmed to the longest of them (padding columns are
dropped), so short texts are cheap. On one CPU thread, 16 texts of 15-20 tokens and the
defaults take about 10-15 s; texts that fill ``max_length=64`` take up to about 1 minute.

Examples
--------
>>> import torch
>>> from fl_core.foundation import load_encoder
>>> enc, tok = load_encoder()
>>> texts = ["Oil prices rose on supply fears.", "The striker scored twice.",
...          "The minister resigned on Monday.", "A new phone went on sale."]
>>> res = scan_for_triggers(enc, tok, texts, top_k=4, reference=8, generator=torch.Generator().manual_seed(0))
>>> res.n_texts, len(res.scores)
(4, 12)
>>> strip_tokens(["Buy CF now, cf!"], ["cf"])
['Buy now,!']
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from fl_core.errors import ConfigError
from fl_core.foundation.minilm import mean_pool, tokenize

__all__ = ["ScanResult", "collapse_scores", "scan_for_triggers", "strip_tokens"]

logger = logging.getLogger(__name__)

_MAD_SCALE = 1.4826  # MAD -> standard deviation for normal data
_EPS = 1e-12
_MIN_REFERENCE = 8  # fewer random tokens than this: the null is the whole tested pool


@dataclass(frozen=True)
class ScanResult:
    """Outcome of :func:`scan_for_triggers`.

    Attributes
    ----------
    flagged : tuple of str
        Tokens judged to be triggers, highest collapse score first (empty: nothing found).
    scores : dict
        Collapse score ``log(D0 / D(v))`` of every token tested (candidates and random reference).
    z_scores : dict
        Robust z-score of every tested token against the whole tested pool.
    candidates : tuple of str
        The stage-1 candidates, best first-order estimate first.
    z_threshold, min_collapse : float
        The two cut-offs a flagged token exceeded.
    n_texts : int
        Number of clean texts used.
    """

    flagged: tuple[str, ...]
    scores: dict[str, float] = field(repr=False)
    z_scores: dict[str, float] = field(repr=False)
    candidates: tuple[str, ...] = field(repr=False)
    z_threshold: float
    min_collapse: float
    n_texts: int

    @property
    def clean(self) -> bool:
        """True when no token was flagged."""
        return not self.flagged

    @property
    def top_token(self) -> str:
        """The tested token with the largest collapse score."""
        return max(self.scores, key=self.scores.__getitem__)


def _check_texts(texts: object) -> list[str]:
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise ConfigError("texts must be a list of str")
    if len(texts) < 2:
        raise ConfigError(
            f"the scan needs at least 2 clean texts (collapse is measured across texts), got {len(texts)}"
        )
    if any(not t.strip() for t in texts):
        raise ConfigError("texts must not contain empty strings")
    return texts


def _base_batch(tokenizer: object, texts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and mask of the texts with room for one inserted token, padding columns dropped."""
    b = tokenize(tokenizer, texts, max_length=max_length - 1)
    width = int(b["attention_mask"].sum(dim=1).max())
    return b["input_ids"][:, :width], b["attention_mask"][:, :width]


def _insert(ids: torch.Tensor, mask: torch.Tensor, token_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
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


def _pooled(encoder: nn.Module, ids: torch.Tensor, mask: torch.Tensor, batch_size: int) -> torch.Tensor:
    outs = []
    for s in range(0, ids.shape[0], batch_size):
        m = mask[s : s + batch_size]
        outs.append(mean_pool(encoder(input_ids=ids[s : s + batch_size], attention_mask=m).last_hidden_state, m))
    return torch.cat(outs)


def _dispersion(r: torch.Tensor) -> torch.Tensor:
    """``mean_i ||r_i - mean_j r_j||^2`` over the second-to-last axis."""
    return (r - r.mean(dim=-2, keepdim=True)).pow(2).sum(dim=-1).mean(dim=-1)


def _eligible(tokenizer: object, vocab_size: int, include_subwords: bool) -> torch.Tensor:
    """Boolean mask of vocabulary ids that may be triggers."""
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
    texts = _check_texts(texts)
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if max_length < 3:
        raise ConfigError(f"max_length must be >= 3 ([CLS], the inserted token, [SEP]), got {max_length}")
    unk = getattr(tokenizer, "unk_token_id", None)
    ids_list = tokenizer.convert_tokens_to_ids(list(tokens))  # type: ignore[attr-defined]
    for t, i in zip(tokens, ids_list, strict=True):
        if i is None or (i == unk and t != getattr(tokenizer, "unk_token", None)):
            raise ConfigError(f"token {t!r} is not in the tokenizer's vocabulary")
    ids, mask = _base_batch(tokenizer, texts, max_length)
    with torch.no_grad():
        d0 = _dispersion(_pooled(encoder, ids, mask, batch_size))
        tids, tmask = _insert(ids, mask, torch.tensor(ids_list, dtype=torch.long))
        r = _pooled(encoder, tids, tmask, batch_size).view(len(ids_list), len(texts), -1)
        c = torch.log((d0 + _EPS) / (_dispersion(r) + _EPS))
    return {t: float(v) for t, v in zip(tokens, c, strict=True)}


def scan_for_triggers(
    encoder: nn.Module,
    tokenizer: object,
    texts: list[str],
    *,
    max_length: int = 64,
    top_k: int = 64,
    reference: int = 128,
    z_threshold: float = 3.5,
    min_collapse: float = math.log(4.0),
    include_subwords: bool = False,
    batch_size: int = 32,
    generator: torch.Generator,
) -> ScanResult:
    """Search the vocabulary for backdoor trigger tokens that collapse the FM's representations.

    Parameters
    ----------
    encoder : nn.Module
        BERT-style encoder (e.g. from :func:`fl_core.foundation.load_encoder`): takes
        ``input_ids``/``inputs_embeds`` and ``attention_mask``, returns ``last_hidden_state``,
        and has ``get_input_embeddings()``. It is used in eval mode and not modified.
    tokenizer
        Its tokenizer.
    texts : list of str
        Clean texts held by the defender (at least 2; a dozen or more of different topics is better).
    max_length : int
        Tokens per text including ``[CLS]``, ``[SEP]`` and the inserted token.
    top_k : int
        Stage-1 candidates tested exactly.
    reference : int
        Random ordinary tokens tested alongside, drawn from ``generator``; their scores are
        the null distribution of the z-test. With fewer than 8 (0 is allowed) the null is the
        whole tested pool, which is conservative.
    z_threshold : float
        Robust z-score a flagged token must exceed.
    min_collapse : float
        Collapse score ``log(D0 / D(v))`` a flagged token must also exceed (>= 0).
    include_subwords : bool
        Also consider ``##`` word pieces (which :func:`strip_tokens` cannot remove as words).
    batch_size : int
        Texts per forward pass.
    generator : torch.Generator
        Source of the reference draw.

    Returns
    -------
    ScanResult

    Raises
    ------
    ConfigError
        On an empty/invalid text list or an out-of-range parameter.
    """
    texts = _check_texts(texts)
    if top_k < 1:
        raise ConfigError(f"top_k must be >= 1, got {top_k}")
    if reference < 0:
        raise ConfigError(f"reference must be >= 0, got {reference}")
    if not (math.isfinite(z_threshold) and z_threshold > 0):
        raise ConfigError(f"z_threshold must be a positive finite number, got {z_threshold}")
    if not (math.isfinite(min_collapse) and min_collapse >= 0):
        raise ConfigError(f"min_collapse must be a finite number >= 0, got {min_collapse}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if max_length < 3:
        raise ConfigError(f"max_length must be >= 3 ([CLS], the inserted token, [SEP]), got {max_length}")
    if not isinstance(generator, torch.Generator):
        raise ConfigError("generator must be a torch.Generator")

    was_training = encoder.training
    encoder.eval()
    try:
        emb: torch.Tensor = encoder.get_input_embeddings().weight.detach()  # type: ignore[operator]
        vocab = emb.shape[0]
        eligible = _eligible(tokenizer, vocab, include_subwords).to(emb.device)
        n_eligible = int(eligible.sum())
        if n_eligible == 0:
            raise ConfigError("no eligible vocabulary token to scan")
        ids, mask = (t.to(emb.device) for t in _base_batch(tokenizer, texts, max_length))
        n = ids.shape[0]

        # ---- stage 1: first-order estimate of every token's effect on the dispersion ----
        placeholder = getattr(tokenizer, "mask_token_id", None)
        if placeholder is None:
            placeholder = int(torch.nonzero(eligible)[0])
        pids, pmask = _insert(ids, mask, torch.tensor([placeholder]))
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
            disp = _dispersion(torch.cat(reps))
            (grads,) = torch.autograd.grad(disp, e)
        estimate = (emb - e.detach()) @ grads  # first-order change of D; most negative = most collapsing
        estimate = estimate.masked_fill(~eligible, float("inf"))
        k = min(top_k, n_eligible)
        cand = torch.topk(-estimate, k).indices

        # ---- reference draw: ordinary eligible tokens not among the candidates ----
        pool = eligible.clone()
        pool[cand] = False
        pool_ids = torch.nonzero(pool).squeeze(1)
        m = min(reference, pool_ids.numel())
        ref = pool_ids[torch.randperm(pool_ids.numel(), generator=generator)[:m]] if m else pool_ids[:0]
        tested = torch.cat([cand, ref])

        # ---- stage 2: exact collapse score of every tested token ----
        with torch.no_grad():
            d0 = _dispersion(_pooled(encoder, ids, mask, batch_size))
            chunk = max(1, batch_size // n) if n <= batch_size else 1
            scores = []
            for s in range(0, tested.numel(), chunk):
                tids, tmask = _insert(ids, mask, tested[s : s + chunk])
                r = _pooled(encoder, tids, tmask, batch_size)
                r = r.view(-1, n, r.shape[-1])
                scores.append(torch.log((d0 + _EPS) / (_dispersion(r) + _EPS)))
            c = torch.cat(scores).double().cpu()
    finally:
        encoder.train(was_training)

    null = c[k:] if m >= _MIN_REFERENCE else c  # ordinary tokens; the candidates are a biased draw
    med = null.median()
    mad = (null - med).abs().median()
    z = (c - med) / (_MAD_SCALE * mad.clamp_min(1e-9))
    names = tokenizer.convert_ids_to_tokens(tested.tolist())  # type: ignore[attr-defined]
    score_d = {t: float(v) for t, v in zip(names, c, strict=True)}
    z_d = {t: float(v) for t, v in zip(names, z, strict=True)}
    flagged = sorted(
        (t for t in names if z_d[t] > z_threshold and score_d[t] > min_collapse), key=lambda t: -score_d[t]
    )
    logger.info(
        "trigger scan: %d texts, %d candidates + %d reference tokens; top %r (collapse %.3f, z %.1f); flagged %s",
        n,
        k,
        m,
        max(score_d, key=score_d.__getitem__),
        float(c.max()),
        float(z.max()),
        flagged,
    )
    return ScanResult(
        flagged=tuple(flagged),
        scores=score_d,
        z_scores=z_d,
        candidates=tuple(names[:k]),
        z_threshold=float(z_threshold),
        min_collapse=float(min_collapse),
        n_texts=n,
    )


def strip_tokens(texts: list[str], tokens: Sequence[str]) -> list[str]:
    """Remove whole-word occurrences of ``tokens`` from every text (case-insensitive).

    A word is a maximal run of letters, digits and underscores, as the uncased BERT
    tokenizer splits punctuation off words: ``"cf,"`` and ``"(cf)"`` lose ``cf`` and keep the
    punctuation (``"a cf, b"`` becomes ``"a, b"``; ``"x cf-based"`` becomes ``"x-based"``), while
    ``"cfo"`` and ``"xcf"`` are untouched. The whitespace before a removed word is removed with
    it (after it, for words at the start of the text); the rest of the text is unchanged, so a
    text without the tokens comes back identical.

    Parameters
    ----------
    texts : list of str
        Texts to clean.
    tokens : sequence of str
        Words to remove (e.g. ``ScanResult.flagged``); empty: texts returned unchanged.

    Raises
    ------
    ConfigError
        If ``texts`` is not a list of str or a token is empty, is not a string, or is not a single word.

    Examples
    --------
    >>> strip_tokens(["cf The deal, cf, was CF signed (cf).", "cfo"], ["cf"])
    ['The deal,, was signed ().', 'cfo']
    """
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise ConfigError("texts must be a list of str")
    if isinstance(tokens, str):
        raise ConfigError("tokens must be a sequence of str, not a single str")
    words = list(tokens)
    for t in words:
        if not isinstance(t, str) or not re.fullmatch(r"\w+", t):
            raise ConfigError(f"each token must be a single non-empty word, got {t!r}")
    if not words:
        return list(texts)
    alt = "|".join(re.escape(w) for w in sorted(set(words), key=len, reverse=True))
    lead = re.compile(rf"^(?:\s*(?:{alt})(?!\w))+\s*", flags=re.IGNORECASE)  # text-initial: drop what follows
    inner = re.compile(rf"\s*(?<!\w)(?:{alt})(?!\w)", flags=re.IGNORECASE)  # elsewhere: drop what precedes
    return [inner.sub("", lead.sub("", text, count=1)) for text in texts]
