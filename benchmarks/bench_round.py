"""``flsec bench round``: a ``Federation`` round against a minimal hand-written PyTorch FedAvg round.

Both do the same work on the same data: ``n`` clients (IID shards of the training
set), each a copy of the global MLP trained for ``E`` epochs of SGD with batch
``B`` in a shuffled order, then the example-weighted mean of the updates is added
to the global model. The floor is the loop a user would write by hand (no hooks,
no validation, no history); the ratio is ``Federation`` seconds per round over the
floor's, measured alternately in the same run (best of ``--repeats``).
Evaluation is left out of both. The last row is what the round's
:class:`~fl_core.pipeline.Pipeline` call adds over the floor's aggregation, as a
fraction of the floor's round (goal: at most 5 %).

Examples
--------
>>> rows = run_round_bench(dataset="digits", clients=4, rounds=1, repeats=1, epochs=1, batch_size=32)
>>> [r["loop"] for r in rows], rows[1]["ratio"] > 0
(['hand-written', 'federation', 'pipeline overhead'], True)
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from benchmarks.threads import apply_threads
from fl_core import Federation, LocalTrainingConfig, build_model, load_dataset, make_clients, partition
from fl_core.data.dataset import ArrayDataset
from fl_core.params import flatten_params
from fl_core.pipeline import Round
from fl_core.rng import Stream, numpy_generator, torch_generator

__all__ = ["hand_written_round", "register", "run_round_bench"]

log = logging.getLogger(__name__)


def hand_written_round(
    model: torch.nn.Module, clients: list[ArrayDataset], *, epochs: int, batch_size: int, lr: float, seed: int
) -> None:
    """One FedAvg round as a user writes it in plain PyTorch (the floor): train copies, average, apply."""
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
    total = torch.zeros_like(x)
    worker = copy.deepcopy(model)
    count = 0
    for data in clients:
        torch.nn.utils.vector_to_parameters(x, worker.parameters())
        opt = torch.optim.SGD(worker.parameters(), lr=lr)
        for _ in range(epochs):
            perm = torch.randperm(len(data), generator=g)
            for start in range(0, len(data), batch_size):
                idx = perm[start : start + batch_size]
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(worker(data.x[idx]), data.y[idx]).backward()
                opt.step()
        total += len(data) * (torch.nn.utils.parameters_to_vector(worker.parameters()).detach() - x)
        count += len(data)
    torch.nn.utils.vector_to_parameters(x + total / count, model.parameters())


def run_round_bench(
    *,
    dataset: str = "fashion-mnist",
    clients: int = 10,
    rounds: int = 3,
    repeats: int = 3,
    epochs: int = 1,
    batch_size: int = 32,
    lr: float = 0.05,
    seed: int = 0,
) -> list[dict[str, object]]:
    """Seconds per round of the hand-written loop and of ``Federation`` (best of ``repeats``), and their ratio."""
    split = load_dataset(dataset)
    parts = partition(split.train.labels, scheme="iid", n_clients=clients, generator=numpy_generator(seed))
    data = [split.train.subset(p) for p in parts]
    shape, k = tuple(split.train.x.shape[1:]), split.train.num_classes
    fed = Federation(
        model=build_model("mlp", input_shape=shape, num_classes=k, generator=torch_generator(seed, Stream.INIT)),
        clients=make_clients(split.train, parts),
        test_data=split.test,
        clients_per_round=clients,
        local=LocalTrainingConfig(epochs=epochs, batch_size=batch_size, lr=lr),
        seed=seed,
    )
    plain = build_model("mlp", input_shape=shape, num_classes=k, generator=torch_generator(seed, Stream.INIT))
    best = {"hand-written": np.inf, "federation": np.inf}
    for rep in range(repeats):
        t0 = time.perf_counter()
        for r in range(rounds):
            hand_written_round(plain, data, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed + r)
        best["hand-written"] = min(best["hand-written"], (time.perf_counter() - t0) / rounds)
        t0 = time.perf_counter()
        for r in range(rounds):
            fed.run_round(rep * rounds + r)
        best["federation"] = min(best["federation"], (time.perf_counter() - t0) / rounds)
    floor = best["hand-written"]
    d = flatten_params(plain).numel()
    rows = [
        {"loop": name, "seconds_per_round": s, "ratio": s / floor, "clients": clients, "d": d,
         "dataset": split.train.name}
        for name, s in best.items()
    ]
    added = pipeline_seconds(fed, clients=clients, d=d, repeats=50 * repeats, seed=seed)
    rows.append({"loop": "pipeline overhead", "seconds_per_round": added, "ratio": added / floor,
                 "clients": clients, "d": d, "dataset": split.train.name})
    return rows


def pipeline_seconds(fed: Federation, *, clients: int, d: int, repeats: int, seed: int) -> float:
    """What the pipeline adds to a round: its call (stages, checks, per-stage generators, metrics, the
    optimiser step) minus the hand-written loop's aggregation (a weighted mean added to ``x``), best of
    ``repeats`` on the same cohort."""
    g = torch_generator(seed, Stream.USER, 1)
    U, w, x = torch.randn(clients, d, generator=g) * 1e-2, torch.full((clients,), 100.0), torch.zeros(d)
    info = Round(index=0, client_ids=tuple(range(clients)), global_params=x)
    best = {"pipeline": np.inf, "floor": np.inf}
    for _ in range(repeats):
        t0 = time.perf_counter()
        fed.pipeline(U, w, info)
        best["pipeline"] = min(best["pipeline"], time.perf_counter() - t0)
        t0 = time.perf_counter()
        _ = x + (w @ U) / w.sum()
        best["floor"] = min(best["floor"], time.perf_counter() - t0)
    return best["pipeline"] - best["floor"]


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``flsec bench round``."""
    p = subparsers.add_parser(
        "round", help="a Federation round vs a hand-written PyTorch FedAvg round: seconds and ratio (goal <= 1.10)"
    )
    p.add_argument("--dataset", default="fashion-mnist", help="fashion-mnist (default) or digits")
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3, help="rounds per timing")
    p.add_argument("--repeats", type=int, default=3, help="timings of each loop, alternated; the best counts")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--out", type=Path, default=Path("runs/bench_round.json"))
    p.set_defaults(func=main)
    return p


def main(args: argparse.Namespace) -> int:
    """Run from parsed arguments, print the table and write the JSON rows."""
    apply_threads(args.threads)
    rows = run_round_bench(
        dataset=args.dataset,
        clients=args.clients,
        rounds=args.rounds,
        repeats=args.repeats,
        epochs=args.epochs,
        batch_size=args.batch_size,
    )
    table = Table(title=f"seconds per round, {rows[0]['clients']} clients, d={rows[0]['d']}, {rows[0]['dataset']}")
    for col in ("loop", "s / round", "ratio to hand-written"):
        table.add_column(col)
    for r in rows:
        ratio = f"{100 * r['ratio']:.2f} % of a round" if r["loop"] == "pipeline overhead" else f"{r['ratio']:.2f}x"
        table.add_row(str(r["loop"]), f"{r['seconds_per_round']:.4f}", ratio)
    Console().print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1))
    return 0
