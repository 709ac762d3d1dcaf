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

The collapse measurement lives in :mod:`defenses.fm.collapse`, stage 1 and the reference draw
in :mod:`defenses.fm.trigger_candidates`, the mitigation in :mod:`defenses.fm.strip`; this module
holds the scan itself and re-exports :func:`collapse_scores` and :func:`strip_tokens`.

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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from defenses.fm.collapse import (
    base_batch,
    check_batch_args,
    check_texts,
    collapse,
    collapse_scores,
    dispersion,
    insert_token,
    pooled,
)
from defenses.fm.strip import strip_tokens
from defenses.fm.trigger_candidates import (
    dispersion_gradient,
    eligible_tokens,
    first_order_candidates,
    placeholder_id,
    reference_draw,
)
from fl_core.errors import ConfigError

__all__ = ["ScanResult", "collapse_scores", "scan_for_triggers", "strip_tokens"]

logger = logging.getLogger(__name__)

_MAD_SCALE = 1.4826  # MAD -> standard deviation for normal data
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
        Robust z-score of every tested token against the random reference tokens (against the
        whole tested pool when fewer than 8 were drawn).
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
    texts = check_texts(texts)
    _check_scan_args(
        top_k=top_k,
        reference=reference,
        z_threshold=z_threshold,
        min_collapse=min_collapse,
        batch_size=batch_size,
        max_length=max_length,
        generator=generator,
    )
    with _eval_mode(encoder):
        emb: torch.Tensor = encoder.get_input_embeddings().weight.detach()  # type: ignore[operator]
        eligible, n_eligible = _eligible_or_raise(tokenizer, emb, include_subwords)
        ids, mask = (t.to(emb.device) for t in base_batch(tokenizer, texts, max_length))
        e, grads = dispersion_gradient(encoder, emb, ids, mask, placeholder_id(tokenizer, eligible), batch_size)
        candidates = first_order_candidates(emb, e, grads, eligible, min(top_k, n_eligible))
        ref = reference_draw(eligible, candidates, reference, generator)
        tested = torch.cat([candidates, ref])
        c = _exact_scores(encoder, ids, mask, tested, batch_size)
    z = _robust_z(c, n_candidates=candidates.numel(), n_reference=ref.numel())
    names = tokenizer.convert_ids_to_tokens(tested.tolist())  # type: ignore[attr-defined]
    return _result(
        names,
        c,
        z,
        n_candidates=candidates.numel(),
        n_reference=ref.numel(),
        n_texts=ids.shape[0],
        z_threshold=z_threshold,
        min_collapse=min_collapse,
    )


def _check_scan_args(
    *,
    top_k: int,
    reference: int,
    z_threshold: float,
    min_collapse: float,
    batch_size: int,
    max_length: int,
    generator: object,
) -> None:
    """Refuse an out-of-range scan parameter, in the order of the signature (texts are checked before).

    Raises
    ------
    ConfigError
        Naming the first bad parameter and its value.
    """
    if top_k < 1:
        raise ConfigError(f"top_k must be >= 1, got {top_k}")
    if reference < 0:
        raise ConfigError(f"reference must be >= 0, got {reference}")
    if not (math.isfinite(z_threshold) and z_threshold > 0):
        raise ConfigError(f"z_threshold must be a positive finite number, got {z_threshold}")
    if not (math.isfinite(min_collapse) and min_collapse >= 0):
        raise ConfigError(f"min_collapse must be a finite number >= 0, got {min_collapse}")
    check_batch_args(batch_size=batch_size, max_length=max_length)
    if not isinstance(generator, torch.Generator):
        raise ConfigError("generator must be a torch.Generator")


def _eligible_or_raise(tokenizer: object, emb: torch.Tensor, include_subwords: bool) -> tuple[torch.Tensor, int]:
    """Mask of the eligible vocabulary ids on ``emb``'s device, and their number.

    Raises
    ------
    ConfigError
        If no token is eligible.
    """
    eligible = eligible_tokens(tokenizer, emb.shape[0], include_subwords).to(emb.device)
    n_eligible = int(eligible.sum())
    if n_eligible == 0:
        raise ConfigError("no eligible vocabulary token to scan")
    return eligible, n_eligible


@contextmanager
def _eval_mode(encoder: nn.Module) -> Iterator[None]:
    """Put ``encoder`` in eval mode for the block and restore its training flag afterwards, even on error."""
    was_training = encoder.training
    encoder.eval()
    try:
        yield
    finally:
        encoder.train(was_training)


def _exact_scores(
    encoder: nn.Module, ids: torch.Tensor, mask: torch.Tensor, tested: torch.Tensor, batch_size: int
) -> torch.Tensor:
    """Stage 2: collapse score of every tested token id, as a float64 CPU tensor in the order of ``tested``.

    As many tokens go through one forward pass as ``batch_size`` rows allow (``n`` rows per
    token; one token per pass when ``n > batch_size``).
    """
    n = ids.shape[0]
    with torch.no_grad():
        d0 = dispersion(pooled(encoder, ids, mask, batch_size))
        chunk = max(1, batch_size // n) if n <= batch_size else 1
        scores = []
        for s in range(0, tested.numel(), chunk):
            tids, tmask = insert_token(ids, mask, tested[s : s + chunk])
            r = pooled(encoder, tids, tmask, batch_size)
            scores.append(collapse(d0, r.view(-1, n, r.shape[-1])))
        return torch.cat(scores).double().cpu()


def _robust_z(c: torch.Tensor, *, n_candidates: int, n_reference: int) -> torch.Tensor:
    """Modified z-score ``(c - median) / (1.4826 MAD)`` of every score against the reference tokens' scores.

    ``c`` holds the candidates' scores, then the reference tokens'. With fewer than 8
    reference tokens the null is the whole tested pool (the candidates are a biased draw,
    so using them is conservative).
    """
    null = c[n_candidates:] if n_reference >= _MIN_REFERENCE else c
    med = null.median()
    mad = (null - med).abs().median()
    return (c - med) / (_MAD_SCALE * mad.clamp_min(1e-9))


def _flagged(
    scores: dict[str, float], z_scores: dict[str, float], *, z_threshold: float, min_collapse: float
) -> list[str]:
    """Tokens over both cut-offs, highest collapse score first (ties keep the tested order)."""
    return sorted(
        (t for t in scores if z_scores[t] > z_threshold and scores[t] > min_collapse), key=lambda t: -scores[t]
    )


def _result(
    names: list[str],
    c: torch.Tensor,
    z: torch.Tensor,
    *,
    n_candidates: int,
    n_reference: int,
    n_texts: int,
    z_threshold: float,
    min_collapse: float,
) -> ScanResult:
    """Name the scores, flag the triggers, log a one-line summary and build the :class:`ScanResult`."""
    score_d = {t: float(v) for t, v in zip(names, c, strict=True)}
    z_d = {t: float(v) for t, v in zip(names, z, strict=True)}
    flagged = _flagged(score_d, z_d, z_threshold=z_threshold, min_collapse=min_collapse)
    logger.info(
        "trigger scan: %d texts, %d candidates + %d reference tokens; top %r (collapse %.3f, z %.1f); flagged %s",
        n_texts,
        n_candidates,
        n_reference,
        max(score_d, key=score_d.__getitem__),
        float(c.max()),
        float(z.max()),
        flagged,
    )
    return ScanResult(
        flagged=tuple(flagged),
        scores=score_d,
        z_scores=z_d,
        candidates=tuple(names[:n_candidates]),
        z_threshold=float(z_threshold),
        min_collapse=float(min_collapse),
        n_texts=n_texts,
    )
