"""Mitigation of a backdoor trigger: delete the flagged tokens from every text that enters the pipeline.

:func:`strip_tokens` takes the tokens :func:`defenses.fm.trigger_scan.scan_for_triggers`
flagged (``ScanResult.flagged``) and removes them as whole words, case-insensitively, the
way the uncased BERT tokenizer would see them.

Examples
--------
>>> strip_tokens(["Buy CF now, cf!"], ["cf"])
['Buy now,!']
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from fl_core.errors import ConfigError

__all__ = ["strip_tokens"]


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
