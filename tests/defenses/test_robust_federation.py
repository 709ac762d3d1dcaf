"""The robust rules plug into the fl_core federation loop unchanged."""

from __future__ import annotations

import pytest
import torch

from defenses.robust import FLAME, Bucketing, Compose, DeepSight, FoolsGold, FreqFed, Krum, Median, make
from fl_core import Federation, LocalTrainingConfig, build_model, load_dataset, make_clients, partition
from fl_core.rng import numpy_generator


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def federation(split, aggregator) -> Federation:
    parts = partition(split.train.labels, scheme="iid", n_clients=8, generator=numpy_generator(0, 1))
    return Federation(
        model_name="mlp",
        clients=make_clients(split.train, parts),
        test_data=split.test,
        clients_per_round=7,
        seed=0,
        local=LocalTrainingConfig(epochs=1, batch_size=32, lr=0.05, momentum=0.9),
        aggregator=aggregator,
    )


@pytest.mark.parametrize(
    "aggregator",
    [
        Krum(f=2),
        Compose(Bucketing(s=2), Median(f=1)),
        FLAME(f=2),
        FoolsGold(f=1),
        make("trimmed_mean", f=2),
        FreqFed(f=2),
        # DeepSight reads the model's structure: the federation's MLP on digits, the global model from ctx
        DeepSight(f=2, model=build_model("mlp", input_shape=(1, 8, 8), num_classes=10, generator=torch.Generator()),
                  input_shape=(1, 8, 8), samples=2000),
    ],
    ids=lambda a: repr(a),
)
def test_rules_run_inside_the_federation_loop(digits, aggregator) -> None:
    fed = federation(digits, aggregator)
    history = fed.run(rounds=3)
    assert len(history.records) == 3
    assert all(len(r.kept) >= 1 for r in history.records)
    assert torch.isfinite(fed.global_params).all()
    assert history.records[-1].test_accuracy is None or history.records[-1].test_accuracy > 0.3
