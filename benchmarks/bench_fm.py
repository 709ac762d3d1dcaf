"""``flsec bench fm``: cost of one federated round of MiniLM fine-tuning, and the clean accuracy it reaches.

For each configuration the benchmark builds the BBC News federation of the FM suite
(10 clients, Dirichlet 0.5, the server's and attacker's texts carved out) on the clean
FM and measures, in the same run:

* ``prefix_s``: encoding every client text through the frozen prefix once
  (:func:`fl_core.foundation.encode_prefix`) — what an uncached pipeline pays again
  every round (a frozen layer's forward pass), so ``uncached_round_s = round_s + prefix_s``;
* ``round_s``: the mean wall time of one round (local training of all clients,
  aggregation, evaluation on the 444 test articles);
* ``accuracy``: clean test accuracy after the last round.

The configurations are LoRA and full fine-tuning of the top ``k`` layers, plus LoRA on
all 6 layers (``k = 6``: no cached prefix but the embeddings, i.e. end-to-end LoRA
fine-tuning), whose round time is the baseline of the ``speedup`` column.

Examples
--------
>>> rows = run_fm_bench(configs=[("lora", 1)], rounds=1, clients=2, max_length=8, limit=40)
>>> rows[0]["mode"], rows[0]["rounds"], 0.0 <= rows[0]["accuracy"] <= 1.0
('lora', 1, True)
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from benchmarks.fm.prepare import carve
from benchmarks.fm.spec import FMSetting
from benchmarks.threads import apply_threads
from fl_core import ConfigError, Federation, LocalTrainingConfig, load_dataset, make_clients, resolve_device
from fl_core.data.dataset import ArrayDataset
from fl_core.foundation import FineTuneSpec, TopClassifier, feature_dataset, load_encoder
from fl_core.params import num_params
from fl_core.rng import Stream, torch_generator

__all__ = ["register", "run_fm_bench"]

log = logging.getLogger(__name__)


def _concat(parts: list[ArrayDataset]) -> tuple[ArrayDataset, list[np.ndarray]]:
    bounds = np.cumsum([0, *[len(p) for p in parts]])
    data = ArrayDataset(
        x=torch.cat([p.x for p in parts]),
        y=torch.cat([p.y for p in parts]),
        num_classes=parts[0].num_classes,
        name="clients",
    )
    return data, [np.arange(bounds[i], bounds[i + 1]) for i in range(len(parts))]


def run_fm_bench(
    *,
    configs: list[tuple[str, int]],
    rounds: int = 2,
    clients: int = 10,
    max_length: int = 64,
    device: str = "cpu",
    seed: int = 0,
    lr: float = 0.05,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Time ``rounds`` rounds for each ``(mode, trainable_layers)``; ``limit`` caps the client texts (tests)."""
    if rounds < 1 or clients < 2:
        raise ConfigError(f"need rounds >= 1 and clients >= 2, got {rounds} and {clients}")
    dev = resolve_device(device)
    setting = FMSetting(clients=clients, max_length=max_length)
    data = carve(load_dataset("bbc-news"), setting, seed=seed)
    client_texts = data.clients
    if limit is not None:
        client_texts = [c.subset(np.arange(min(len(c), max(1, limit // clients)))) for c in client_texts]
    test = data.test if limit is None else data.test.subset(np.arange(min(len(data.test), limit)))
    encoder, tok = load_encoder()
    encoder.to(dev)
    rows = []
    for mode, k in configs:
        spec = FineTuneSpec(mode=mode, trainable_layers=k, max_length=max_length)
        t0 = time.perf_counter()
        parts = [feature_dataset(encoder, tok, c, spec=spec, device=dev) for c in client_texts]
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        prefix_s = time.perf_counter() - t0
        test_f = feature_dataset(encoder, tok, test, spec=spec, device=dev)
        model = TopClassifier(encoder, num_classes=5, spec=spec, generator=torch_generator(seed, Stream.INIT))
        train, idx = _concat(parts)
        fed = Federation(
            model=model,
            clients=make_clients(train, idx),
            test_data=test_f,
            clients_per_round=clients,
            local=LocalTrainingConfig(batch_size=16, lr=lr, momentum=0.9),
            seed=seed,
            device=dev,
        )
        hist = fed.run(rounds=rounds)
        secs = [r.seconds for r in hist.records]
        rows.append(
            {
                "mode": mode,
                "trainable_layers": k,
                "trainable_params": num_params(model),
                "rounds": rounds,
                "client_texts": len(train),
                "prefix_s": prefix_s,
                "round_s": float(np.mean(secs)),
                "uncached_round_s": float(np.mean(secs)) + prefix_s,
                "accuracy": hist.records[-1].test_accuracy,
                "lr": lr,
                "device": str(dev),
            }
        )
        log.info(
            "%s k=%d: round %.1fs, prefix %.1fs, acc %.3f", mode, k, rows[-1]["round_s"], prefix_s, rows[-1]["accuracy"]
        )
    base = next((r["round_s"] for r in rows if r["trainable_layers"] == 6 and r["mode"] == "lora"), None)
    for r in rows:
        r["speedup_vs_lora_all_layers"] = base / r["round_s"] if base else None
    return rows


def _configs(text: str) -> list[tuple[str, int]]:
    out = []
    for item in text.split(","):
        mode, _, k = item.strip().partition(":")
        if mode not in ("lora", "full") or not k.isdigit():
            raise argparse.ArgumentTypeError(f"configs are MODE:K (MODE lora|full), got {item!r}")
        out.append((mode, int(k)))
    return out


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``flsec bench fm``."""
    p = subparsers.add_parser("fm", help="MiniLM federated fine-tuning: seconds per round, LoRA vs full, accuracy")
    p.add_argument(
        "--configs",
        type=_configs,
        default=_configs("lora:2,full:2,lora:6"),
        help="MODE:K list, K = fine-tuned top layers (default lora:2,full:2,lora:6)",
    )
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.05, help="client SGD learning rate (momentum 0.9, batch 16)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--out", type=Path, default=Path("runs/bench_fm"))
    p.set_defaults(func=main)
    return p


def main(args: argparse.Namespace) -> int:
    """Run from parsed arguments; print the table and write ``bench_fm.json``."""
    apply_threads(args.threads)
    rows = run_fm_bench(
        configs=args.configs,
        rounds=args.rounds,
        clients=args.clients,
        max_length=args.max_length,
        device=args.device,
        lr=args.lr,
    )
    table = Table(title=f"MiniLM federated fine-tuning, {args.clients} clients, {args.max_length} tokens")
    for col in ("mode", "k", "params", "prefix s", "round s", "uncached round s", "speedup", "accuracy"):
        table.add_column(col)
    for r in rows:
        sp = r["speedup_vs_lora_all_layers"]
        table.add_row(
            r["mode"],
            str(r["trainable_layers"]),
            f"{r['trainable_params']:,}",
            f"{r['prefix_s']:.1f}",
            f"{r['round_s']:.1f}",
            f"{r['uncached_round_s']:.1f}",
            "-" if sp is None else f"x{sp:.2f}",
            f"{r['accuracy']:.3f}",
        )
    Console().print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads()}
    (args.out / "bench_fm.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    return 0
