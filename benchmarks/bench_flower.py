"""``flsec bench flower``: what one pipeline costs per round in a plain PyTorch loop and in a Flower app.

The same round runs twice on the same clients: ``nodes`` clients, each with ``examples``
synthetic 28x28 images (seeded per client: nothing is downloaded) and the suite's MLP
(200, 200) (199,210 parameters), one local epoch of SGD, then the pipeline (default
``Median(f=2)``) aggregates.

* **plain loop**: the clients train one after another in this process and
  ``pipeline(updates, weights, Round(...))`` aggregates: seconds of local training and of
  the pipeline per round; no bytes (nothing leaves the process).
* **Flower**: ``flwr.simulation.run_simulation`` with ``nodes`` SuperNodes on a local Ray
  cluster this command starts and stops (127.0.0.1 only), a ``ClientApp`` running the same
  local training and :class:`fl_core.flower.PipelineStrategy` with the same pipeline:
  seconds per round (wall time of the strategy's round, after the first), and bytes per
  round: the global model's ``ArrayRecord`` to every sampled node and every reply's.

Examples
--------
>>> plain = run_plain(nodes=5, rounds=1, examples=32, hidden=(8,))
>>> plain["params"], plain["rounds"], plain["pipeline_s"] > 0
(6370, 1, True)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from benchmarks.threads import apply_threads
from defenses.robust import Krum, Median
from fl_core.data.dataset import ArrayDataset
from fl_core.models import build_model
from fl_core.params import flatten_params
from fl_core.pipeline import Pipeline, Round
from fl_core.rng import Stream, torch_generator
from fl_core.training import LocalTrainingConfig, local_train

__all__ = ["main", "register", "run_flower", "run_plain"]

logger = logging.getLogger(__name__)
SHAPE, CLASSES, SEED = (1, 28, 28), 10, 0


#: Largest update norm the two-server row's servers accept (far above one epoch's update here).
TWO_SERVER_BOUND = 50.0

def _model(hidden: tuple[int, ...]) -> torch.nn.Module:
    return build_model("mlp", input_shape=SHAPE, num_classes=CLASSES, hidden=hidden,
                       generator=torch_generator(SEED, Stream.INIT))


def _data(partition: int, examples: int) -> ArrayDataset:
    g = torch_generator(SEED, Stream.PARTITION, partition)
    return ArrayDataset(torch.rand(examples, *SHAPE, generator=g),
                        torch.randint(0, CLASSES, (examples,), generator=g), CLASSES, f"synthetic-{partition}")


def client_round(arrays: list[np.ndarray], partition: int, round_idx: int, *, examples: int,
                 hidden: tuple[int, ...]) -> list[np.ndarray]:
    """One client's local epoch from the global ``arrays`` (state-dict order); its new arrays."""
    model = _model(hidden)
    keys = list(model.state_dict())
    model.load_state_dict({k: torch.from_numpy(np.array(a)) for k, a in zip(keys, arrays, strict=True)})
    local_train(model, _data(partition, examples), config=LocalTrainingConfig(epochs=1, batch_size=32, lr=0.05),
                generator=torch_generator(SEED, Stream.CLIENT, round_idx, partition))
    return [v.detach().numpy().copy() for v in model.state_dict().values()]


def _pipeline(secure: bool | str = False) -> Pipeline:
    if secure == "two-server":
        from secure_agg.twoserver import TwoServerAggregator

        return Pipeline(secure=TwoServerAggregator(bound=TWO_SERVER_BOUND), rule=Krum(f=2))
    if not secure:
        return Pipeline(rule=Median(f=2))
    from secure_agg.grouped import GroupedSecAggPlus

    return Pipeline(secure=GroupedSecAggPlus(group_size=2, clip=1.0, gamma=0.0, delta=0.0), rule=Median(f=2))


def run_plain(*, nodes: int = 10, rounds: int = 3, examples: int = 256,
              hidden: tuple[int, ...] = (200, 200)) -> dict[str, Any]:
    """The plain loop: mean seconds per round of local training (all clients) and of the pipeline."""
    model = _model(hidden)
    arrays = [v.detach().numpy().copy() for v in model.state_dict().values()]
    pipe, train_s, pipe_s = _pipeline(), [], []
    for r in range(rounds):
        start = time.perf_counter()
        news = [client_round(arrays, p, r, examples=examples, hidden=hidden) for p in range(nodes)]
        mid = time.perf_counter()
        x = torch.from_numpy(np.concatenate([a.ravel() for a in arrays]))
        updates = torch.stack([torch.from_numpy(np.concatenate([a.ravel() for a in n])) - x for n in news])
        out = pipe(updates, torch.full((nodes,), float(examples)), Round(r, tuple(range(nodes)), x))
        flat, pos = out.params.numpy(), 0
        for k, a in enumerate(arrays):
            arrays[k] = flat[pos : pos + a.size].reshape(a.shape).astype(a.dtype)
            pos += a.size
        pipe_s.append(time.perf_counter() - mid)
        train_s.append(mid - start)
    return {"params": int(flatten_params(model).numel()), "rounds": rounds, "nodes": nodes,
            "train_s": float(np.mean(train_s)), "pipeline_s": float(np.mean(pipe_s))}


def run_flower(*, nodes: int = 10, rounds: int = 3, examples: int = 256, hidden: tuple[int, ...] = (200, 200),
               cpus: int = 2, secure: bool | str = False) -> dict[str, Any]:
    """The same rounds in ``run_simulation``: seconds per round after the first, bytes per round each way.

    ``secure=True``: Median over grouped SecAgg+ (groups of 2) run between the ClientApps and
    the ServerApp (:class:`~secure_agg.flower_server.SecureAggregationStrategy`); the bytes then
    are the global model down plus the protocol's payloads both ways. ``secure="two-server"``:
    Krum(f=2) under two-server sharing (:class:`~secure_agg.flower_twoserver.TwoServerStrategy`),
    S1 and the dealer as processes on 127.0.0.1; ``s2s_B`` is the traffic between the servers.
    """
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # read when ray is imported: 127.0.0.1 only
    import ray
    from flwr.app import ArrayRecord, Context, Message
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    from fl_core.flower import PipelineStrategy
    from secure_agg.flower_client import add_secagg, train_reply
    from secure_agg.flower_server import SecureAggregationStrategy
    from secure_agg.flower_twoserver import TwoServerStrategy

    procs: list = []
    extra: dict[str, Any] = {}
    if secure == "two-server":
        from benchmarks.twoserver_serve import spawn

        procs = [spawn("s1", "--rule", "krum", "--param", "f=2", "--bound", str(TWO_SERVER_BOUND)), spawn("dealer")]
        extra = {"s1": procs[0].address, "dealer": procs[1].address, "s1_public": procs[0].public,
                 "dealer_public": procs[1].public}
    base = TwoServerStrategy if secure == "two-server" else SecureAggregationStrategy if secure else PipelineStrategy

    class _Timed(base):  # type: ignore[valid-type,misc]
        def __init__(self) -> None:
            super().__init__(_pipeline(secure), min_train_nodes=nodes, min_available_nodes=nodes, **extra)
            self.marks: list[float] = []
            self.up: list[int] = []
            self.down: list[int] = []
            self.s2s: list[int] = []

        def configure_train(self, server_round, arrays, config, grid):
            self.marks.append(time.perf_counter())
            msgs = list(super().configure_train(server_round, arrays, config, grid))
            self.down.append(sum(m.content["arrays"].count_bytes() for m in msgs))
            return msgs

        def aggregate_train(self, server_round, replies):
            replies = list(replies)
            self.up.append(sum(m.content["arrays"].count_bytes() for m in replies
                               if not m.has_error() and "arrays" in m.content))
            out = super().aggregate_train(server_round, replies)
            self.marks.append(time.perf_counter())
            self.up[-1] += int(out[1].get("secure-bytes-up", 0))
            self.down[-1] += int(out[1].get("secure-bytes-down", 0))
            self.up[-1] += int(out[1].get("node-upload-bytes", 0) * out[1].get("nodes-trained", 0))
            self.s2s.append(int(out[1].get("s0-to-s1-bytes", 0) + out[1].get("s1-to-s0-bytes", 0)))
            return out

    client = ClientApp()
    add_secagg(client)

    @client.train()
    def _train(msg: Message, context: Context) -> Message:
        torch.set_num_threads(1)
        arrays = msg.content["arrays"].to_numpy_ndarrays()
        new = client_round(arrays, int(context.node_config["partition-id"]), int(msg.content["config"]["server-round"]),
                           examples=examples, hidden=hidden)
        return train_reply(msg, context, new, examples)  # the arrays, or (secure round) the weight only

    server, got = ServerApp(), {}

    @server.main()
    def _main(grid: Grid, context: Context) -> None:
        strategy = _Timed()
        init = [v.detach().numpy().copy() for v in _model(hidden).state_dict().values()]
        strategy.start(grid=grid, initial_arrays=ArrayRecord(init), num_rounds=rounds, timeout=600)
        got["strategy"] = strategy

    ray.init(num_cpus=cpus, include_dashboard=False, logging_level="ERROR")
    try:
        run_simulation(server_app=server, client_app=client, num_supernodes=nodes,
                       backend_config={"client_resources": {"num_cpus": 1}})
    finally:
        ray.shutdown()
        for p in procs:
            p.kill()
    s = got["strategy"]
    per_round = [s.marks[2 * k + 1] - s.marks[2 * k] for k in range(rounds)]
    steady = per_round[1:] or per_round
    return {"rounds": rounds, "nodes": nodes, "round_s": float(np.mean(steady)), "first_round_s": per_round[0],
            "down_B": float(np.mean(s.down)), "up_B": float(np.mean(s.up)), "s2s_B": float(np.mean(s.s2s))}


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``flsec bench flower``."""
    p = subparsers.add_parser("flower", help="one pipeline per round: plain PyTorch loop vs a Flower simulation")
    p.add_argument("--nodes", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--examples", type=int, default=256, help="synthetic examples per client")
    p.add_argument("--threads", type=int, default=1, help="torch threads in this process (clients use 1)")
    p.add_argument("--out", type=Path, default=Path("runs/bench_flower"))
    p.set_defaults(func=main)
    return p


def main(args: argparse.Namespace) -> int:
    """Run both, print one table, write ``bench_flower.json``."""
    if args.nodes < 5 or args.rounds < 1 or args.examples < 1:
        from fl_core.errors import ConfigError

        raise ConfigError(f"need nodes >= 5 (Median(f=2)), rounds >= 1, examples >= 1; got {args.nodes}, "
                          f"{args.rounds}, {args.examples}")
    apply_threads(args.threads)
    plain = run_plain(nodes=args.nodes, rounds=args.rounds, examples=args.examples)
    flower = run_flower(nodes=args.nodes, rounds=args.rounds, examples=args.examples)
    secure = run_flower(nodes=args.nodes, rounds=args.rounds, examples=args.examples, secure=True)
    two = run_flower(nodes=args.nodes, rounds=args.rounds, examples=args.examples, secure="two-server")
    table = Table(title=f"Median(f=2) pipeline, {args.nodes} clients, MLP with {plain['params']:,} parameters, "
                        f"one local epoch of {args.examples} examples", title_justify="left")
    for col in ("", "seconds per round", "of which the pipeline", "bytes down per round", "bytes up per round"):
        table.add_column(col, justify="left" if not col else "right")
    table.add_row("plain PyTorch loop", f"{plain['train_s'] + plain['pipeline_s']:.2f}", f"{plain['pipeline_s']:.3f}",
                  "0", "0")
    table.add_row("Flower simulation", f"{flower['round_s']:.2f}", "", f"{flower['down_B']:,.0f}",
                  f"{flower['up_B']:,.0f}")
    table.add_row("Flower + grouped SecAgg+ (groups of 2)", f"{secure['round_s']:.2f}", "",
                  f"{secure['down_B']:,.0f}", f"{secure['up_B']:,.0f}")
    table.add_row("Flower + two-server sharing, Krum(f=2), S1 and dealer processes", f"{two['round_s']:.2f}", "",
                  f"{two['down_B']:,.0f}", f"{two['up_B']:,.0f}")
    Console().print(table)
    Console().print(f"two-server: {two['s2s_B']:,.0f} bytes per round between S0 and S1 (both ways)")
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"plain": plain, "flower": flower, "flower_secagg": secure, "flower_two_server": two}
    (args.out / "bench_flower.json").write_text(json.dumps(report, indent=2))
    return 0
