"""FM poisoned samples: triggered, target-labelled texts planted in honest clients' data (no malicious client)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from attacks.fm.poisoned_samples import PoisonedSamples, poison_samples
from attacks.fm.registry import FM_ATTACKS
from attacks.triggers import TextTrigger
from fl_core.data.dataset import TextDataset
from fl_core.errors import ConfigError


def _data(n: int = 40, name: str = "c") -> TextDataset:
    y = torch.arange(n) % 4
    return TextDataset(texts=tuple(f"text number {i} about things" for i in range(n)), y=y,
                       class_names=("a", "b", "c", "d"), name=name)


def test_rate_of_the_non_target_texts_get_the_trigger_and_the_target_label_and_nothing_else_changes():
    data = _data()
    out, idx = poison_samples(data, trigger=TextTrigger(token="cf"), target=3, rate=0.2,
                              generator=torch.Generator().manual_seed(0))
    non_target = np.flatnonzero(data.y.numpy() != 3)
    assert len(idx) == round(0.2 * len(non_target)) == 6 and set(idx) <= set(non_target)
    for i in range(len(data)):
        if i in idx:
            assert "cf" in out.texts[i].split() and int(out.y[i]) == 3
            assert out.texts[i].replace("cf", "").split() == data.texts[i].split()  # only the trigger added
        else:
            assert out.texts[i] == data.texts[i] and int(out.y[i]) == int(data.y[i])
    assert len(out) == len(data) and out.name == "c-poisoned"


def test_seeded_choice_and_a_rate_too_small_for_one_text():
    data = _data()
    runs = [poison_samples(data, trigger=TextTrigger(token="cf"), target=3, rate=0.5,
                           generator=torch.Generator().manual_seed(s))[1] for s in (1, 1, 2)]
    assert runs[0].tolist() == runs[1].tolist() != runs[2].tolist()
    out, idx = poison_samples(data, trigger=TextTrigger(token="cf"), target=3, rate=0.01,
                              generator=torch.Generator().manual_seed(0))
    assert len(idx) == 0 and out is data


def test_client_fraction_picks_at_least_one_client_and_leaves_the_others_untouched():
    clients = [_data(name=f"c{i}") for i in range(10)]
    out, counts = PoisonedSamples(rate=0.1, client_fraction=0.25).apply(
        clients, trigger=TextTrigger(token="cf"), target=3, generator=torch.Generator().manual_seed(3))
    assert len(counts) == 3 and all(v == 3 for v in counts.values())  # ceil(2.5) clients, 10% of 30 texts
    for i, (a, b) in enumerate(zip(clients, out, strict=True)):
        assert (a is b) == (i not in counts)
    _, one = PoisonedSamples(rate=0.1, client_fraction=0.01).apply(
        clients, trigger=TextTrigger(token="cf"), target=3, generator=torch.Generator().manual_seed(3))
    assert len(one) == 1


@pytest.mark.parametrize("kw, msg", [({"rate": 0}, "rate must lie in"), ({"rate": 1.5}, "rate must lie in"),
                                     ({"client_fraction": float("nan")}, "client_fraction must lie in"),
                                     ({"rate": True}, "rate must lie in")])
def test_bad_parameters_name_the_value(kw, msg):
    with pytest.raises(ConfigError, match=msg):
        FM_ATTACKS.make("fm-poisoned-samples", **kw)


def test_the_suite_hook_plants_poison_in_a_copy_and_keeps_the_seeds_carve_out_clean():
    pytest.importorskip("transformers")
    from benchmarks.fm.hooks import ATTACK_HOOKS, CellContext

    clients = [_data(name=f"c{i}") for i in range(4)]
    pipe = SimpleNamespace(data=SimpleNamespace(clients=clients))
    setting = SimpleNamespace(trigger="cf", trigger_max_position=5, target=3)
    ctx = CellContext(cell=SimpleNamespace(seed=0), setting=setting, pipe=pipe, base=("clean", None))
    hook = ATTACK_HOOKS["fm-poisoned-samples"](FM_ATTACKS.make("fm-poisoned-samples", rate=0.2))
    hook.before_encoding(ctx)
    assert ctx.info == {"poisoned_clients": 4, "poisoned_texts": 4 * 6}
    assert all(c.name.endswith("-poisoned") for c in ctx.clients)
    assert all(c.name == f"c{i}" and "cf" not in " ".join(c.texts) for i, c in enumerate(pipe.data.clients))
