"""The server round and the federation loop.

One round (McMahan et al., AISTATS 2017, generalised as in Reddi et al., ICLR 2021)::

    sample m of K clients -> broadcast x -> local training (fl_core.training)
    -> cohort of updates U (n, d) -> the round's Pipeline (attack, client transforms,
    secure protocol or robust rule, server transforms, server optimiser) -> new x

Everything after local training is one :class:`~fl_core.pipeline.Pipeline`, the same
value a user can call in their own loop. Every random choice draws from a generator
derived from ``seed`` and the round and client ids (:mod:`fl_core.rng`), so the same
seed gives the same history; each stage of the pipeline has its own stream
(:class:`~fl_core.pipeline.StageKind`). Clients train one after the other on ``device``,
or on Ray workers with ``executor=`` :class:`fl_core.cohort_ray.RayCohortExecutor` (same history).

Examples
--------
>>> import torch
>>> from fl_core.data.loaders import load_dataset
>>> from fl_core.data.partition import partition
>>> from fl_core.rng import numpy_generator
>>> split = load_dataset("digits")
>>> parts = partition(split.train.labels, scheme="iid", n_clients=4, generator=numpy_generator(0))
>>> fed = Federation(model_name="mlp", clients=make_clients(split.train, parts), test_data=split.test,
...                  clients_per_round=2, seed=0)
>>> len(fed.run(rounds=2))
2
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from fl_core.aggregation import AggregateTransform, Aggregator, UpdateTransform
from fl_core.checks import as_int
from fl_core.contracts import contract_of
from fl_core.data.dataset import ArrayDataset, TextDataset
from fl_core.device import resolve_device
from fl_core.errors import ConfigError
from fl_core.history import History, RoundRecord
from fl_core.models import build_model
from fl_core.params import flatten_params, unflatten_into
from fl_core.pipeline import Pipeline, Round, StageKind
from fl_core.rng import Stream, numpy_generator, torch_generator
from fl_core.server_opt import ServerOptimizer
from fl_core.training import LocalTrainingConfig, TrainingHook, evaluate, local_train

__all__ = ["Client", "CohortExecutor", "Federation", "StageKind", "make_clients"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Client:
    """A client: its id, its local data and the hooks of its local training."""

    id: int
    data: ArrayDataset | TextDataset
    hooks: tuple[TrainingHook, ...] = field(default=())


def make_clients(
    train: ArrayDataset | TextDataset,
    parts: Sequence[np.ndarray],
    *,
    hooks: Callable[[int], Sequence[TrainingHook]] | None = None,
) -> list[Client]:
    """One :class:`Client` per index array of ``parts`` (ids ``0..len(parts)-1``).

    ``hooks(client_id)`` gives the training hooks of each client (e.g. data
    poisoning for the malicious ones).
    """
    return [Client(id=k, data=train.subset(idx), hooks=tuple(hooks(k)) if hooks else ()) for k, idx in enumerate(parts)]


@runtime_checkable
class CohortExecutor(Protocol):
    """Trains a round's cohort somewhere else than in this process (e.g. :class:`fl_core.cohort_ray.RayCohortExecutor`).

    It must return what :meth:`Federation.train_cohort` returns sequentially: the ``(n, d)``
    updates on the federation's device (rows in cohort order), the losses and the example
    counts; each client trains from ``x`` with ``torch_generator(seed, Stream.CLIENT, round_idx, id)``.
    """

    def train_cohort(
        self, federation: Federation, cohort: Sequence[Client], x: torch.Tensor, round_idx: int
    ) -> tuple[torch.Tensor, list[float], list[int]]: ...


class Federation:
    """A simulated federation: a global model, K clients, and the round pipeline.

    Parameters
    ----------
    model_name : str, optional
        Registered model to build (:data:`fl_core.models.MODELS`); or give ``model``.
    model : nn.Module, optional
        A ready model (its current parameters are the initial global model).
    clients : sequence of Client
        The K clients; ids must be unique.
    test_data : ArrayDataset or TextDataset
        Held-out data for the global model.
    clients_per_round : int
        m, clients sampled each round without replacement (``m <= K``).
    local : LocalTrainingConfig
        Client training hyper-parameters.
    pipeline : Pipeline, optional
        The round's aggregation (:class:`~fl_core.pipeline.Pipeline`); its own ``seed``
        keys the stages' randomness. Or give the stages below, which build one with ``seed``.
    aggregator : Aggregator
        Shorthand: a secure protocol (it hides the rows) goes to the pipeline's ``secure``
        slot, anything else to ``rule``; default weighted mean (FedAvg).
    update_transforms, aggregate_transforms : sequences
        Shorthand for the pipeline's ``client`` and ``server`` transforms.
    server_optimizer : ServerOptimizer
        Shorthand for the pipeline's optimiser; default FedAvg with server learning rate 1.
    seed : int
        The one seed every random choice derives from.
    device : str
        ``"cpu"`` (default), ``"cuda"``, ``"cuda:N"`` or ``"auto"``.
    eval_every : int
        Evaluate the global model every this many rounds (and after the last).
    executor : CohortExecutor, optional
        Where the cohort trains: ``None`` (default) one client after the other in this
        process; :class:`fl_core.cohort_ray.RayCohortExecutor` on Ray workers.
    """

    def __init__(
        self,
        *,
        clients: Sequence[Client],
        test_data: ArrayDataset | TextDataset,
        clients_per_round: int,
        model_name: str | None = None,
        model: nn.Module | None = None,
        local: LocalTrainingConfig | None = None,
        pipeline: Pipeline | None = None,
        aggregator: Aggregator | None = None,
        update_transforms: Sequence[UpdateTransform] = (),
        aggregate_transforms: Sequence[AggregateTransform] = (),
        server_optimizer: ServerOptimizer | None = None,
        seed: int = 0,
        device: str | torch.device = "cpu",
        eval_every: int = 1,
        executor: CohortExecutor | None = None,
    ) -> None:
        if not clients:
            raise ConfigError("a federation needs at least one client")
        ids = [c.id for c in clients]
        if len(set(ids)) != len(ids):
            dup = sorted({i for i in ids if ids.count(i) > 1})
            raise ConfigError(f"duplicate client ids: {dup}")
        clients_per_round = as_int("clients_per_round", clients_per_round, minimum=1, maximum=len(clients))
        eval_every = as_int("eval_every", eval_every, minimum=1)
        seed = as_int("seed", seed, minimum=0)
        if (model is None) == (model_name is None):
            raise ConfigError("give exactly one of model_name and model")
        if local is not None and not isinstance(local, LocalTrainingConfig):
            raise ConfigError(f"local must be a LocalTrainingConfig, got {type(local).__name__}")
        if executor is not None and not isinstance(executor, CohortExecutor):
            raise ConfigError(f"executor must have a train_cohort method, got {type(executor).__name__}")
        self.executor = executor
        self.pipeline = _pipeline(
            pipeline,
            aggregator=aggregator,
            update_transforms=update_transforms,
            aggregate_transforms=aggregate_transforms,
            server_optimizer=server_optimizer,
            seed=seed,
        )
        # a rule that cannot tolerate the cohort size fails now, not after a round of local training
        self.pipeline.check_cohort_size(clients_per_round)
        self.device = resolve_device(device)
        self.clients = list(clients)
        self.test_data = test_data
        self.clients_per_round = clients_per_round
        self.local = local or LocalTrainingConfig()
        self.seed = seed
        self.eval_every = eval_every
        if model is None:
            sample = clients[0].data
            if not isinstance(sample, ArrayDataset):
                raise ConfigError("model_name builds image models; pass model= for text data")
            model = build_model(
                model_name,  # type: ignore[arg-type]
                input_shape=tuple(sample.x.shape[1:]),
                num_classes=sample.num_classes,
                generator=torch_generator(seed, Stream.INIT),
            )
        self.model = model.to(self.device)
        self._worker = copy.deepcopy(self.model)
        self.history = History()

    @property
    def global_params(self) -> torch.Tensor:
        """The flat global parameters ``x`` (a copy)."""
        return flatten_params(self.model)

    def sample_clients(self, round_idx: int) -> list[Client]:
        """The round's cohort: m clients without replacement, sorted by id."""
        rng = numpy_generator(self.seed, Stream.SAMPLE, round_idx)
        pick = rng.choice(len(self.clients), size=self.clients_per_round, replace=False)
        return [self.clients[i] for i in sorted(pick.tolist())]

    def train_cohort(
        self, cohort: Sequence[Client], x: torch.Tensor, round_idx: int
    ) -> tuple[torch.Tensor, list[float], list[int]]:
        """Local training of each client from ``x``: the ``(n, d)`` updates, the losses and the example counts."""
        if self.executor is not None:
            return self.executor.train_cohort(self, cohort, x, round_idx)
        rows, losses, counts = [], [], []
        for client in cohort:
            unflatten_into(self._worker, x)
            for hook in client.hooks:
                hook.on_round_start(round_idx=round_idx, global_params=x)
            res = local_train(
                self._worker,
                client.data,
                config=self.local,
                generator=torch_generator(self.seed, Stream.CLIENT, round_idx, client.id),
                device=self.device,
                hooks=client.hooks,
            )
            rows.append(flatten_params(self._worker) - x)
            losses.append(res.loss)
            counts.append(res.num_samples)
        return torch.stack(rows), losses, counts

    def run_round(self, round_idx: int, *, force_eval: bool = False) -> RoundRecord:
        """Run one round, update the global model, append and return its record.

        The global model is evaluated every ``eval_every`` rounds, or when ``force_eval``.
        """
        t0 = time.perf_counter()
        cohort = self.sample_clients(round_idx)
        x = flatten_params(self.model)
        updates, losses, counts = self.train_cohort(cohort, x, round_idx)
        weights = torch.tensor(counts, dtype=torch.float32, device=self.device)
        ids = tuple(c.id for c in cohort)
        out = self.pipeline(updates, weights, Round(index=round_idx, client_ids=ids, global_params=x))
        unflatten_into(self.model, out.params)
        evaluated = force_eval or (round_idx + 1) % self.eval_every == 0
        ev = evaluate(self.model, self.test_data, device=self.device) if evaluated else None
        w = np.asarray(counts, dtype=np.float64)
        kept_mask = out.result.kept.tolist()
        record = RoundRecord(
            round_idx=round_idx,
            client_ids=ids,
            train_loss=float(np.dot(w, losses) / w.sum()),
            test_loss=ev.loss if ev else None,
            test_accuracy=ev.accuracy if ev else None,
            kept=tuple(cid for cid, k in zip(ids, kept_mask, strict=True) if k),
            seconds=time.perf_counter() - t0,
            metrics=out.metrics,
        )
        self.history.append(record)
        log.info(
            "round %d: train loss %.4f, test acc %s, %.2fs",
            round_idx,
            record.train_loss,
            "-" if ev is None else f"{ev.accuracy:.4f}",
            record.seconds,
        )
        return record

    def run(self, *, rounds: int, on_round: Callable[[RoundRecord], None] | None = None) -> History:
        """Run ``rounds`` more rounds; the last one is always evaluated."""
        if rounds < 1:
            raise ConfigError(f"rounds must be >= 1, got {rounds}")
        start = len(self.history)
        for r in range(start, start + rounds):
            record = self.run_round(r, force_eval=r == start + rounds - 1)
            if on_round is not None:
                on_round(record)
        return self.history


def _pipeline(
    pipeline: Pipeline | None,
    *,
    aggregator: Aggregator | None,
    update_transforms: Sequence[UpdateTransform],
    aggregate_transforms: Sequence[AggregateTransform],
    server_optimizer: ServerOptimizer | None,
    seed: int,
) -> Pipeline:
    """The federation's pipeline: the one given, or one built from the shorthand stages."""
    if pipeline is not None:
        if not isinstance(pipeline, Pipeline):
            raise ConfigError(f"pipeline must be a fl_core.pipeline.Pipeline, got {type(pipeline).__name__}")
        given = [k for k, v in (("aggregator", aggregator), ("update_transforms", update_transforms),
                                ("aggregate_transforms", aggregate_transforms),
                                ("server_optimizer", server_optimizer)) if v]
        if given:
            raise ConfigError(f"give either pipeline or the stages {given}, not both")
        return pipeline
    if aggregator is not None and not isinstance(aggregator, Aggregator):
        raise ConfigError(f"aggregator must be an fl_core Aggregator, got {type(aggregator).__name__}")
    secure = aggregator is not None and contract_of(aggregator).hides_rows
    return Pipeline(
        client=tuple(update_transforms),
        secure=aggregator if secure else None,
        rule=None if secure else aggregator,
        server=tuple(aggregate_transforms),
        optimizer=server_optimizer,
        seed=seed,
    )
