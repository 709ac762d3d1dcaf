"""Server-side training on a public set, after every aggregation.

Several heterogeneity remedies let the server train the global model on a public or
synthetic labelled set each round, e.g. server-side knowledge distillation on
FM-produced data (the setting of Li et al. 2024, "Unveiling Backdoor Risks Brought by
Foundation Models in Heterogeneous FL"; FedDF, Lin et al. NeurIPS 2020, distils on
unlabelled public data). :class:`PublicSetTraining` wraps a server optimiser: it
applies the aggregate as usual, then runs the one local-training loop of
:mod:`fl_core.training` on the public set, starting from the new global model.

Its state across rounds is the round counter (which derives each round's batch order
from ``seed``) and the inner optimiser's state; :meth:`PublicSetTraining.state_dict`
saves both, so a run resumed after a restart takes the same next step.

Examples
--------
>>> import torch
>>> from fl_core.data.dataset import ArrayDataset
>>> model = torch.nn.Linear(2, 2)
>>> data = ArrayDataset(x=torch.randn(8, 2, generator=torch.Generator().manual_seed(0)),
...                     y=torch.tensor([0, 1] * 4), num_classes=2, name="public")
>>> opt = PublicSetTraining(model=model, data=data, config=LocalTrainingConfig(max_steps=2), seed=0)
>>> x = torch.zeros(6)
>>> bool((opt.step(x, torch.zeros(6)) != x).any())  # the public set moved the model
True
>>> opt.state_dict()["rounds"], opt.state_dict()["inner"]["kind"]
(1, 'FedAvg')
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from fl_core.data.dataset import ArrayDataset, TextDataset
from fl_core.errors import ConfigError
from fl_core.params import flatten_params, num_params, unflatten_into
from fl_core.rng import Stream, torch_generator
from fl_core.server_opt import FedAvg, ServerOptimizer
from fl_core.state import state_int
from fl_core.training import LocalTrainingConfig, local_train

__all__ = ["PublicSetTraining"]


class PublicSetTraining(ServerOptimizer):
    """Apply ``inner`` (default FedAvg), then train on ``data`` with ``config`` (batch order from ``seed``).

    Parameters
    ----------
    model : nn.Module
        A model of the federation's architecture (copied; used as the work buffer).
    data : ArrayDataset or TextDataset
        The server's public labelled set.
    config : LocalTrainingConfig
        Epochs / steps, batch size and learning rate of the server's training.
    seed : int
        Seed of the batch order (derived per round).
    inner : ServerOptimizer
        How the aggregate is applied first.
    device : str or torch.device
        Where the server trains.

    Notes
    -----
    State (:meth:`state_dict`): ``rounds``, the steps taken since construction or
    :meth:`reset` (round ``r`` trains with the batch order of ``(seed, SERVER, r)``), and
    ``inner``, the inner optimiser's own state dict (JSON types when the inner one's are,
    e.g. FedAvg; FedAvgM/FedAdam hold tensors). ``config`` records ``seed``, the training
    configuration, the public set's name and size and the model's number of trainable
    parameters; ``device`` is not part of it, so a state saved on one device loads on
    another. Nothing else carries over between rounds: the work model's trainable
    parameters are overwritten with the new global model every step, each round builds
    a fresh torch optimiser, and buffers (e.g. batch-norm running statistics) are neither
    returned nor read by training-mode forward passes. Dropout draws from torch's global
    RNG, which no optimiser state holds.
    """

    STATE_KEYS = ("rounds", "inner")

    def __init__(
        self,
        *,
        model: nn.Module,
        data: ArrayDataset | TextDataset,
        config: LocalTrainingConfig,
        seed: int = 0,
        inner: ServerOptimizer | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        if len(data) == 0:
            raise ConfigError("the server's public set is empty")
        self.model = copy.deepcopy(model).to(device)
        self.data = data
        self.config = config
        self.seed = seed
        self.inner = inner or FedAvg()
        self.device = torch.device(device)
        self.rounds = 0

    def step(self, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != num_params(self.model):
            raise ConfigError(f"global parameters have {x.shape[0]} entries, the model {num_params(self.model)}")
        new = self.inner.step(x, delta)
        unflatten_into(self.model, new)
        local_train(
            self.model,
            self.data,
            config=self.config,
            generator=torch_generator(self.seed, Stream.SERVER, self.rounds),
            device=self.device,
        )
        self.rounds += 1
        return flatten_params(self.model).to(x.device)

    def reset(self) -> None:
        self.inner.reset()
        self.rounds = 0

    def _config(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "training": dataclasses.asdict(self.config),
            "public_set": {"name": self.data.name, "size": len(self.data)},
            "num_params": num_params(self.model),
        }

    def _state(self) -> dict[str, Any]:
        return {"rounds": self.rounds, "inner": self.inner.state_dict()}

    def _load(self, state: Mapping[str, Any]) -> None:
        rounds = state_int(state, "rounds", kind=type(self).__name__)
        self.inner.load_state_dict(state["inner"])  # checks everything before it assigns (all-or-nothing)
        self.rounds = rounds
