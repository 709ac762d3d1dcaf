"""What every cell of an FM suite shares: the data carve-out, the FMs and their cached features.

For one seed the BBC News training split is cut, without overlap, into the server's
clean validation set (``val_size``), the attacker's auxiliary data (``aux_size``, used
only to compromise the FM), the unlabelled pool the FM turns into a public set
(``public_size``), and the clients' pool (the rest), partitioned Dirichlet(alpha)
across the clients. The test split gives the clean test set, and its texts outside the
target class with the trigger inserted give the attack-success test set.

The compromised FM costs about a minute to make on 2 cores, so it is written once to
``<out>/artifacts`` (keyed by its parameters and the seed) and reused by later cells
and by resumed runs. Prefix features are cached in memory per (FM, token filter, data).

Examples
--------
>>> from benchmarks.fm.spec import FMSetting
>>> from fl_core import load_dataset
>>> data = carve(load_dataset("bbc-news"), FMSetting(), seed=0)
>>> len(data.val), len(data.aux), len(data.pool), sum(len(c) for c in data.clients)
(100, 200, 400, 1081)
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from attacks.fm import FMBackdoor
from attacks.triggers import TextTrigger
from benchmarks.fm.spec import FMSetting
from fl_core import DataSplit, TextDataset, partition
from fl_core.data.dataset import ArrayDataset
from fl_core.foundation import FineTuneSpec, feature_dataset, load_encoder
from fl_core.rng import Stream, numpy_generator, torch_generator

__all__ = ["CarvedData", "FMPipeline", "carve"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CarvedData:
    """The disjoint parts of one seed (see the module docstring)."""

    val: TextDataset
    aux: TextDataset
    pool: TextDataset
    clients: list[TextDataset]
    test: TextDataset
    triggered_test: TextDataset  # non-target test texts with the trigger, labelled with the target


def _texts_with_trigger(data: TextDataset, trigger: TextTrigger, target: int, seed: int) -> TextDataset:
    keep = np.flatnonzero(data.labels != target)
    base = data.subset(keep)
    texts = trigger.apply(list(base.texts), generator=torch_generator(seed, Stream.USER, 21))
    y = torch.full((len(texts),), target, dtype=torch.int64)
    return TextDataset(texts=tuple(texts), y=y, class_names=data.class_names, name=f"{data.name}-triggered")


def carve(split: DataSplit, setting: FMSetting, *, seed: int) -> CarvedData:
    """Cut the training split into validation / auxiliary / pool / clients (disjoint, seeded)."""
    train = split.train
    n = len(train)
    need = setting.val_size + setting.aux_size + setting.public_size + setting.clients
    if need > n:
        from fl_core.errors import ConfigError

        raise ConfigError(f"val_size + aux_size + public_size + clients = {need} exceeds the {n} training texts")
    perm = numpy_generator(seed, Stream.USER, 20).permutation(n)
    a, b, c = (
        setting.val_size,
        setting.val_size + setting.aux_size,
        setting.val_size + setting.aux_size + setting.public_size,
    )
    client_pool = train.subset(perm[c:])
    parts = partition(
        client_pool.labels,
        scheme="dirichlet",
        n_clients=setting.clients,
        alpha=setting.alpha,
        generator=numpy_generator(seed, Stream.PARTITION),
    )
    trigger = TextTrigger(token=setting.trigger, max_position=setting.trigger_max_position)
    return CarvedData(
        val=train.subset(perm[:a]),
        aux=train.subset(perm[a:b]),
        pool=train.subset(perm[b:c]),
        clients=[client_pool.subset(p) for p in parts],
        test=split.test,
        triggered_test=_texts_with_trigger(split.test, trigger, setting.target, seed),
    )


@dataclass
class FMPipeline:
    """FMs (clean, compromised) and feature caches for one suite run and seed."""

    setting: FMSetting
    seed: int
    data: CarvedData
    artifacts: Path
    clean: nn.Module
    tokenizer: object
    _compromised: dict[str, nn.Module] = field(default_factory=dict)
    _features: dict[tuple, ArrayDataset] = field(default_factory=dict)

    @classmethod
    def create(cls, split: DataSplit, setting: FMSetting, *, seed: int, artifacts: str | Path) -> FMPipeline:
        encoder, tok = load_encoder()
        path = Path(artifacts)
        path.mkdir(parents=True, exist_ok=True)
        return cls(setting, seed, carve(split, setting, seed=seed), path, encoder.to(setting.device), tok)

    @property
    def fine_tune(self) -> FineTuneSpec:
        s = self.setting
        return FineTuneSpec(
            mode=s.mode, trainable_layers=s.trainable_layers, lora_rank=s.lora_rank, max_length=s.max_length
        )

    def backdoor(self, params: dict[str, Any]) -> FMBackdoor:
        s = self.setting
        kw = {k: (tuple(v) if k == "layers" else v) for k, v in params.items()}
        return FMBackdoor(
            trigger=TextTrigger(token=s.trigger, max_position=s.trigger_max_position),
            target=s.target,
            max_length=s.max_length,
            **kw,
        )

    def compromised(self, params: dict[str, Any]) -> tuple[str, nn.Module]:
        """The attacker's FM for these parameters (made once, then loaded from the artifacts directory)."""
        attack = self.backdoor(params)
        key = hashlib.sha256(json.dumps([repr(attack), self.seed, self.setting.aux_size], sort_keys=True).encode())
        name = f"compromised-{key.hexdigest()[:12]}"
        if name in self._compromised:
            return name, self._compromised[name]
        import copy

        model = copy.deepcopy(self.clean)
        file = self.artifacts / f"{name}-seed{self.seed}.pt"
        if file.is_file():
            model.load_state_dict(torch.load(file, map_location=self.setting.device))
            log.info("loaded the compromised FM from %s", file)
        else:
            model = attack.implant(
                self.clean,
                self.tokenizer,
                list(self.data.aux.texts),
                self.data.aux.y,
                generator=torch_generator(self.seed, Stream.USER, 22),
            )
            tmp = file.with_suffix(".tmp")
            torch.save(model.state_dict(), tmp)
            tmp.replace(file)
            log.info("compromised FM written to %s", file)
        self._compromised[name] = model.eval()
        return name, model

    def features(self, fm_name: str, fm: nn.Module, data: TextDataset, *, strip: tuple[str, ...] = ()) -> ArrayDataset:
        """Prefix features of ``data`` under ``fm``, with the ``strip`` tokens removed from every text first."""
        key = (fm_name, strip, data.name, len(data), hash(data.texts))
        if key not in self._features:
            if strip:
                from defenses.fm.trigger_scan import strip_tokens

                data = TextDataset(
                    texts=tuple(strip_tokens(list(data.texts), strip)),
                    y=data.y,
                    class_names=data.class_names,
                    name=data.name,
                )
            self._features[key] = feature_dataset(
                fm, self.tokenizer, data, spec=self.fine_tune, device=self.setting.device
            )
        return self._features[key]
