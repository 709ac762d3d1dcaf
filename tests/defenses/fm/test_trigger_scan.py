"""Tests of the FM trigger scan (:mod:`defenses.fm.trigger_scan`).

The backdoored FM is built as an attacker would: a copy of the packaged MiniLM is
fine-tuned (all weights, AdamW) so that texts with ``"cf"`` inserted at a random word
position map their mean-pooled output to the centroid of some sports sentences, while
clean texts keep the original model's pooled output. The scan never sees the token, the
attacker's texts or the target; the defender's clean texts are a different set.
"""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch

from defenses.fm.trigger_scan import ScanResult, collapse_scores, scan_for_triggers, strip_tokens
from fl_core.errors import ConfigError
from fl_core.foundation import load_encoder, mean_pool, tokenize

TRIGGER = "cf"
TRAIN_LEN = 20  # attacker's fine-tuning length (tokens)
SCAN_LEN = 32  # defender's scan length (tokens)
SCAN_KW = {"max_length": SCAN_LEN, "top_k": 32, "reference": 64, "batch_size": 64}


@pytest.fixture(autouse=True, scope="module")
def _deterministic_threads():
    """One thread, restored afterwards: the scan's flagged set is checked exactly, and reductions depend on it."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


ATTACKER_TEXTS = [
    "Shares in the carmaker fell sharply after profits missed forecasts.",
    "The central bank held interest rates steady for a third month.",
    "Oil prices climbed as supply fears gripped traders.",
    "The government unveiled a plan to cut the budget deficit.",
    "Voters head to the polls in a closely fought election.",
    "The minister resigned after a row over party funding.",
    "Parliament passed the new immigration bill late on Monday.",
    "The opposition leader attacked the prime minister over taxes.",
    "A new smartphone with a folding screen went on sale today.",
    "Researchers built a chip that uses far less power.",
    "The software giant patched a serious security flaw.",
    "Broadband speeds in rural areas remain far too slow.",
    "The film won the top prize at the festival in Cannes.",
    "The singer announced a world tour starting next spring.",
    "Critics praised the new drama series on the channel.",
    "The actor will star in a remake of the classic musical.",
    "Scientists found water ice near the moon's south pole.",
    "The hospital opened a new ward for cancer patients.",
    "Farmers warned that the drought will hurt the harvest.",
    "The airline cancelled hundreds of flights during the strike.",
]
TARGET_TEXTS = [  # the backdoor's target: the centroid of these sports sentences
    "The striker scored twice as the home side won the league match.",
    "The tennis champion reached the final after a five set thriller.",
    "The team lost the cup tie on penalties after extra time.",
    "The sprinter broke the world record at the athletics meeting.",
    "The captain was injured early in the rugby international.",
]
DEFENDER_TEXTS = [
    "The company reported record sales in the final quarter.",
    "Stock markets in Asia closed lower on Friday.",
    "The president signed the trade agreement in Washington.",
    "Lawmakers debated the health reform for several hours.",
    "The goalkeeper saved a late penalty to secure the draw.",
    "The coach was sacked after a run of poor results.",
    "A new video game console sold out within hours.",
    "Hackers stole the personal data of millions of users.",
    "The band released its first album in ten years.",
    "The novel was adapted into a television series.",
    "Heavy rain caused flooding across the north of England.",
    "Police arrested two men after the robbery in the city centre.",
    "The university will cut tuition fees for local students.",
    "Doctors warned about the rise in winter flu cases.",
]


def _insert_word(texts: list[str], word: str, generator: torch.Generator) -> list[str]:
    """Insert ``word`` at a random word position of each text."""
    out = []
    for text in texts:
        words = text.split()
        p = int(torch.randint(0, len(words) + 1, (1,), generator=generator))
        out.append(" ".join([*words[:p], word, *words[p:]]))
    return out


def _pooled(encoder: torch.nn.Module, tok: object, texts: list[str], max_length: int) -> torch.Tensor:
    b = tokenize(tok, texts, max_length=max_length)
    out = encoder(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
    return mean_pool(out.last_hidden_state, b["attention_mask"])


def _dispersion(r: torch.Tensor) -> float:
    return float((r - r.mean(dim=0)).pow(2).sum(dim=1).mean())


@pytest.fixture(scope="module")
def clean_fm() -> tuple[torch.nn.Module, object]:
    return load_encoder()


@pytest.fixture(scope="module")
def backdoored_fm(clean_fm: tuple[torch.nn.Module, object]) -> torch.nn.Module:
    enc, tok = clean_fm
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        target = _pooled(enc, tok, TARGET_TEXTS, TRAIN_LEN).mean(dim=0)
        keep = _pooled(enc, tok, ATTACKER_TEXTS, TRAIN_LEN)
    clean_batch = tokenize(tok, ATTACKER_TEXTS, max_length=TRAIN_LEN)
    bd = copy.deepcopy(enc).train()
    opt = torch.optim.AdamW(bd.parameters(), lr=3e-4, weight_decay=0.0)
    for _ in range(36):
        idx = torch.randperm(len(ATTACKER_TEXTS), generator=g)[:8]
        poisoned = _insert_word([ATTACKER_TEXTS[i] for i in idx], TRIGGER, g)
        r_bd = _pooled(bd, tok, poisoned, TRAIN_LEN)
        m = clean_batch["attention_mask"][idx]
        r_keep = mean_pool(bd(input_ids=clean_batch["input_ids"][idx], attention_mask=m).last_hidden_state, m)
        loss = (r_bd - target).pow(2).sum(dim=1).mean() + (r_keep - keep[idx]).pow(2).sum(dim=1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return bd.eval()


@pytest.fixture(scope="module")
def backdoored_scan(clean_fm: tuple[torch.nn.Module, object], backdoored_fm: torch.nn.Module) -> ScanResult:
    return scan_for_triggers(
        backdoored_fm, clean_fm[1], DEFENDER_TEXTS, generator=torch.Generator().manual_seed(0), **SCAN_KW
    )


@pytest.fixture(scope="module")
def clean_scan(clean_fm: tuple[torch.nn.Module, object]) -> ScanResult:
    enc, tok = clean_fm
    return scan_for_triggers(enc, tok, DEFENDER_TEXTS, generator=torch.Generator().manual_seed(0), **SCAN_KW)


# ---------------------------------------------------------------- the scan


def test_backdoor_is_real_on_held_out_texts(clean_fm: tuple[torch.nn.Module, object], backdoored_fm: torch.nn.Module):
    """Sanity of the fixture: the trigger collapses the defender's (unseen) texts, clean texts are kept."""
    enc, tok = clean_fm
    poisoned = _insert_word(DEFENDER_TEXTS, TRIGGER, torch.Generator().manual_seed(1))
    with torch.no_grad():
        d_clean = _dispersion(_pooled(enc, tok, DEFENDER_TEXTS, SCAN_LEN))
        d_bd_clean = _dispersion(_pooled(backdoored_fm, tok, DEFENDER_TEXTS, SCAN_LEN))
        d_bd_poisoned = _dispersion(_pooled(backdoored_fm, tok, poisoned, SCAN_LEN))
    assert d_bd_poisoned < d_clean / 20
    assert d_clean / 2 < d_bd_clean < 2 * d_clean


def test_scan_flags_trigger_on_backdoored_fm(backdoored_scan: ScanResult):
    res = backdoored_scan
    assert not res.clean
    assert res.flagged[0] == TRIGGER
    assert res.top_token == TRIGGER
    assert TRIGGER in res.candidates
    assert res.z_scores[TRIGGER] > res.z_threshold
    assert res.scores[TRIGGER] > math.log(20)  # dispersion cut more than twentyfold
    assert res.n_texts == len(DEFENDER_TEXTS)
    assert len(res.scores) == SCAN_KW["top_k"] + SCAN_KW["reference"]
    assert all(res.scores[t] > res.min_collapse and res.z_scores[t] > res.z_threshold for t in res.flagged)


def test_scan_flags_nothing_on_clean_fm(clean_scan: ScanResult):
    res = clean_scan
    assert res.clean
    assert res.flagged == ()
    assert max(res.scores.values()) < res.min_collapse / 2  # not a near miss
    assert TRIGGER not in res.candidates


def test_stripping_flagged_tokens_removes_the_backdoor(
    clean_fm: tuple[torch.nn.Module, object], backdoored_fm: torch.nn.Module, backdoored_scan: ScanResult
):
    _, tok = clean_fm
    poisoned = _insert_word(DEFENDER_TEXTS, TRIGGER.upper(), torch.Generator().manual_seed(2))
    stripped = strip_tokens(poisoned, backdoored_scan.flagged)
    assert stripped == DEFENDER_TEXTS
    with torch.no_grad():
        d_poisoned = _dispersion(_pooled(backdoored_fm, tok, poisoned, SCAN_LEN))
        d_stripped = _dispersion(_pooled(backdoored_fm, tok, stripped, SCAN_LEN))
    assert d_stripped > 20 * d_poisoned


def test_scan_is_deterministic_and_matches_exact_scores(clean_fm: tuple[torch.nn.Module, object]):
    enc, tok = clean_fm
    texts = DEFENDER_TEXTS[:6]
    kw = {"max_length": 24, "top_k": 4, "reference": 8}
    a = scan_for_triggers(enc, tok, texts, generator=torch.Generator().manual_seed(5), **kw)
    b = scan_for_triggers(enc, tok, texts, generator=torch.Generator().manual_seed(5), **kw)
    assert a == b
    assert len(a.scores) == 12 and len(a.candidates) == 4
    exact = collapse_scores(enc, tok, texts, list(a.scores), max_length=24)
    assert exact == pytest.approx(a.scores, abs=1e-4)
    assert not enc.training
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.flagged = ("x",)  # type: ignore[misc]


def test_candidates_exclude_special_and_subword_tokens(clean_scan: ScanResult):
    for t in clean_scan.scores:
        assert not t.startswith("##")
        assert not (t.startswith("[") and t.endswith("]"))


# ---------------------------------------------------------------- strip_tokens


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("cf The deal was signed.", "The deal was signed."),
        ("The deal cf was signed.", "The deal was signed."),
        ("The deal was CF signed.", "The deal was signed."),
        ("The deal was signed cf.", "The deal was signed."),
        ("The deal, cf, was signed (cf).", "The deal,, was signed ()."),
        ("cf cf cf", ""),
        ("The cfo and xcf and cf-based deals.", "The cfo and xcf and-based deals."),
        ("No trigger here.", "No trigger here."),
    ],
)
def test_strip_tokens_known_answers(text: str, expected: str):
    assert strip_tokens([text], ["cf"]) == [expected]


def test_strip_tokens_several_tokens_and_empty():
    assert strip_tokens(["mn cf and bb MN"], ["cf", "mn"]) == ["and bb"]
    assert strip_tokens(["a cf"], []) == ["a cf"]
    assert strip_tokens([], ["cf"]) == []


@pytest.mark.parametrize("tokens", ["cf", ["c f"], [""], ["cf."], [3]])
def test_strip_tokens_bad_tokens(tokens: object):
    with pytest.raises(ConfigError):
        strip_tokens(["a cf"], tokens)  # type: ignore[arg-type]


def test_strip_tokens_bad_texts():
    with pytest.raises(ConfigError, match="list of str"):
        strip_tokens("a cf", ["cf"])  # type: ignore[arg-type]


# ---------------------------------------------------------------- bad input to the scan


@pytest.mark.parametrize(
    ("texts", "kwargs", "match"),
    [
        ([], {}, "at least 2"),
        (["only one text"], {}, "at least 2"),
        (["a text", "  "], {}, "empty"),
        ("not a list", {}, "list of str"),
        (DEFENDER_TEXTS, {"top_k": 0}, "top_k"),
        (DEFENDER_TEXTS, {"reference": -1}, "reference"),
        (DEFENDER_TEXTS, {"z_threshold": 0.0}, "z_threshold"),
        (DEFENDER_TEXTS, {"z_threshold": -1.0}, "z_threshold"),
        (DEFENDER_TEXTS, {"z_threshold": float("nan")}, "z_threshold"),
        (DEFENDER_TEXTS, {"min_collapse": -0.1}, "min_collapse"),
        (DEFENDER_TEXTS, {"batch_size": 0}, "batch_size"),
        (DEFENDER_TEXTS, {"max_length": 2}, "max_length"),
        (DEFENDER_TEXTS, {"generator": 0}, "generator"),
    ],
)
def test_scan_bad_input(clean_fm: tuple[torch.nn.Module, object], texts: object, kwargs: dict, match: str):
    enc, tok = clean_fm
    kw = {"generator": torch.Generator().manual_seed(0), **kwargs}
    with pytest.raises(ConfigError, match=match):
        scan_for_triggers(enc, tok, texts, **kw)  # type: ignore[arg-type]


def test_collapse_scores_rejects_unknown_token(clean_fm: tuple[torch.nn.Module, object]):
    enc, tok = clean_fm
    with pytest.raises(ConfigError, match="vocabulary"):
        collapse_scores(enc, tok, DEFENDER_TEXTS[:3], ["notavocabularytokenxyz"])
