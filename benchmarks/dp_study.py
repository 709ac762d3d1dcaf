"""`flsec dp-study`: DP-FedAvg accuracy versus epsilon, central versus distributed DP.

The scientific check of the differential-privacy issue. Client-level DP-FedAvg
(McMahan, Ramage, Talwar, Zhang, ICLR 2018) on Fashion-MNIST with K = 100 clients
(IID partition, about 600 examples each), m = 10 sampled per round (q = 0.1), the
``mlp`` model, for target epsilons (default 1, 4, 8 and infinity) at delta = 1e-5 over
the planned number of rounds. Three modes:

* ``central``: the server clips each update to ``C``, takes the fixed-denominator mean
  and adds ``N(0, (z C / m)^2)``; ``z`` calibrated with Opacus' RDP accountant
  (:func:`defenses.dp.calibrate_noise_multiplier`).
* ``distributed``: the distributed discrete Gaussian (Kairouz, Liu, Steinke, ICML 2021)
  through SecAgg+ (Bell et al., CCS 2020) in integer mode with a ring of ``--bits``
  bits per value (default 16). ``z`` is chosen by bisection so that the ledger's
  epsilon for the mechanism's Gaussian-equivalent multiplier ``z~`` (which accounts
  for rounding and the discrete-Gaussian sum) meets the target. Integer-noise events
  are amplified by client sampling as if Gaussian (``amplify_integer_noise=True``): an
  approximation, stated in the ledger's notes and in every JSON file; it is the
  regime in which distributed and central DP are compared at equal epsilon.
* ``distributed-conservative``: the same mechanism accounted the ledger's default,
  provable way: no amplification by sampling for integer noise (``q`` taken as 1),
  so far more noise for the same epsilon.

At infinity, ``central`` is FedAvg of the clipped updates (``z = 0``) and
``distributed`` uses a negligible ``z = 1e-3``: quantisation to ``--bits`` bits and
SecAgg+ only (its ledger epsilon is huge but finite and is reported as such).

Each run writes ``<out>/<mode>_eps<target>.json`` atomically (history, config, the
ledger's epsilon, bits) and the study writes ``<out>/dp_study.md``.

Examples
--------
>>> import argparse
>>> parser = argparse.ArgumentParser(); sub = parser.add_subparsers()
>>> register(sub)
>>> args = parser.parse_args(["dp-study", "--quick", "--epsilons", "1,inf"])
>>> args.epsilons, _config(args).rounds, _config(args).dataset
([1.0, inf], 2, 'digits')
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from rich.console import Console

from defenses.dp import (
    CentralDPFedAvg,
    DistributedDiscreteGaussian,
    GaussianEvent,
    PrivacyLedger,
    calibrate_ddg_noise_multiplier,
    calibrate_noise_multiplier,
)
from fl_core import Federation, History, LocalTrainingConfig, load_dataset, make_clients, partition
from fl_core.errors import ConfigError, InvalidUpdateError
from fl_core.pipeline import Pipeline
from fl_core.rng import Stream, numpy_generator
from fl_core.server_opt import FedAvg
from secure_agg.aggregator import SecAggPlusAggregator

log = logging.getLogger(__name__)

MODES = ("central", "distributed", "distributed-conservative")
DELTA = 1e-5
#: ``z`` of the distributed "infinity" run: quantisation and SecAgg+ only.
NEGLIGIBLE_Z = 1e-3


@dataclass(frozen=True)
class StudyConfig:
    """Everything a study run depends on (recorded in every JSON file)."""

    dataset: str
    clients: int
    clients_per_round: int
    rounds: int
    clip_norm: float
    server_lr: float
    local_epochs: int
    local_lr: float
    batch_size: int
    bits: int
    seed: int
    eval_every: int
    secagg_gamma: float = 0.05
    secagg_delta: float = 0.1
    partition: str = "iid"
    model: str = "mlp"
    delta: float = DELTA

    @property
    def sample_rate(self) -> float:
        return self.clients_per_round / self.clients


def _parse_epsilons(text: str) -> list[float]:
    out = []
    for tok in text.split(","):
        tok = tok.strip().lower()
        try:
            eps = math.inf if tok in ("inf", "infinity") else float(tok)
        except ValueError:
            raise argparse.ArgumentTypeError(f"epsilon {tok!r} is not a number or 'inf'") from None
        if not eps > 0:
            raise argparse.ArgumentTypeError(f"epsilon must be > 0, got {tok!r}")
        out.append(eps)
    if not out:
        raise argparse.ArgumentTypeError("give at least one epsilon")
    return out


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``dp-study`` sub-command."""
    p = subparsers.add_parser(
        "dp-study",
        help="DP-FedAvg accuracy vs epsilon, central vs distributed DP (Fashion-MNIST, 100 clients)",
        description=(
            "DP-FedAvg on Fashion-MNIST, 100 IID clients, 10 per round (q=0.1), MLP, delta=1e-5: "
            "accuracy vs target epsilon for central DP and for the distributed discrete Gaussian "
            "through SecAgg+ (16 bits per value). About 10-15 minutes on one core with the defaults."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--rounds", type=int, default=None, help="planned rounds (default 100; 2 with --quick)")
    p.add_argument(
        "--epsilons", type=_parse_epsilons, default=[1.0, 4.0, 8.0, math.inf], help="targets, e.g. 1,4,8,inf"
    )
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of: {', '.join(MODES)}")
    p.add_argument("--out", type=Path, default=Path("runs/dp_study"), help="output directory")
    p.add_argument("--quick", action="store_true", help="smoke run: digits, 30 clients, 2 rounds")
    p.add_argument("--dataset", default=None, help="dataset (default fashion-mnist; digits with --quick)")
    p.add_argument("--clip-norm", type=float, default=0.05, help="L2 clip C of every client update")
    p.add_argument("--server-lr", type=float, default=1.0, help="server learning rate (FedAvg)")
    p.add_argument("--bits", type=int, default=16, help="bits per value of the SecAgg+ ring (distributed DP)")
    p.add_argument("--seed", type=int, default=0, help="the one seed of every run")
    p.set_defaults(func=main)


def _config(args: argparse.Namespace) -> StudyConfig:
    rounds = args.rounds if args.rounds is not None else (2 if args.quick else 100)
    if rounds < 1:
        raise ConfigError(f"--rounds must be >= 1, got {rounds}")
    if not (math.isfinite(args.clip_norm) and args.clip_norm > 0):
        raise ConfigError(f"--clip-norm must be > 0, got {args.clip_norm}")
    if not 2 <= args.bits <= 52:
        raise ConfigError(f"--bits must be in [2, 52], got {args.bits}")
    clients = 30 if args.quick else 100
    return StudyConfig(
        dataset=args.dataset or ("digits" if args.quick else "fashion-mnist"),
        clients=clients,
        clients_per_round=clients // 10,
        rounds=rounds,
        clip_norm=float(args.clip_norm),
        server_lr=float(args.server_lr),
        local_epochs=1,
        local_lr=0.05,
        batch_size=32,
        bits=args.bits,
        seed=args.seed,
        eval_every=1 if args.quick else 5,
        # SecAgg+ tolerances (corrupt, dropped fractions): none for the tiny smoke cohort of 3
        secagg_gamma=0.0 if args.quick else 0.05,
        secagg_delta=0.0 if args.quick else 0.1,
    )


def _modes(text: str) -> list[str]:
    modes = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise ConfigError(f"--modes must be a comma-separated subset of {MODES}, got {text!r}")
    return modes


def _ledger_epsilon(z_eq: float, cfg: StudyConfig, *, amplify: bool) -> float:
    led = PrivacyLedger(delta=cfg.delta, amplify_integer_noise=amplify)
    led.record(
        GaussianEvent(noise_multiplier=z_eq, sample_rate=cfg.sample_rate, steps=cfg.rounds, gaussian_exact=False)
    )
    return led.epsilon()


def calibrate_distributed(target: float, cfg: StudyConfig, d: int, *, amplify: bool) -> float:
    """Smallest ``z`` (to 0.1 %) whose distributed discrete Gaussian keeps the ledger's epsilon <= ``target``
    (:func:`defenses.dp.calibrate_ddg_noise_multiplier` with the study's configuration)."""
    return calibrate_ddg_noise_multiplier(
        target_epsilon=target, d=d, rounds=cfg.rounds, clip_norm=cfg.clip_norm,
        expected_clients=cfg.clients_per_round, bits=cfg.bits, sample_rate=cfg.sample_rate, delta=cfg.delta,
        amplify_integer_noise=amplify,
    )


def _finite_json(obj: object) -> object:
    """Strict JSON: infinities become the strings ``"inf"`` / ``"-inf"``."""
    if isinstance(obj, float) and math.isinf(obj):
        return "inf" if obj > 0 else "-inf"
    if isinstance(obj, dict):
        return {k: _finite_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite_json(v) for v in obj]
    return obj


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _eps_tag(eps: float) -> str:
    return "inf" if math.isinf(eps) else f"{eps:g}"


@dataclass
class _Arm:
    """One arm of the study, built: its pipeline, its ledger and the facts reported with its result."""

    pipeline: Pipeline
    ledger: PrivacyLedger
    z: float
    z_eq: float
    info: dict


def _central_arm(target: float, cfg: StudyConfig) -> _Arm:
    """Central DP-FedAvg calibrated to ``target`` (no noise for an infinite target)."""
    q = cfg.sample_rate
    z = 0.0 if math.isinf(target) else calibrate_noise_multiplier(
        target_epsilon=target, delta=cfg.delta, sample_rate=q, rounds=cfg.rounds
    )
    dp = CentralDPFedAvg(clip_norm=cfg.clip_norm, noise_multiplier=z, expected_clients=cfg.clients_per_round,
                         sample_rate=q, delta=cfg.delta)
    return _Arm(dp.pipeline(optimizer=FedAvg(lr=cfg.server_lr), seed=cfg.seed), dp.ledger, z, z, {})


def _distributed_arm(mode: str, target: float, cfg: StudyConfig, d: int) -> _Arm:
    """Local or distributed discrete Gaussian under SecAgg+ (integer input), calibrated to ``target``.

    Raises
    ------
    ConfigError
        ``target`` cannot be reached at ``cfg.bits`` (rounding noise bounds ``z~``).
    """
    amplify = mode == "distributed"
    z = NEGLIGIBLE_Z if math.isinf(target) else calibrate_distributed(target, cfg, d, amplify=amplify)
    ledger = PrivacyLedger(delta=cfg.delta, amplify_integer_noise=amplify)
    ddg = DistributedDiscreteGaussian(clip_norm=cfg.clip_norm, noise_multiplier=z,
                                      expected_clients=cfg.clients_per_round, bits=cfg.bits,
                                      sample_rate=cfg.sample_rate, delta=cfg.delta, seed=cfg.seed + 1, ledger=ledger)
    secagg = SecAggPlusAggregator(clip=1.0, ring_bits=cfg.bits, integer_input=True, gamma=cfg.secagg_gamma,
                                  delta=cfg.secagg_delta, seed=cfg.seed)
    pipe = ddg.pipeline(secure=secagg, optimizer=FedAvg(lr=cfg.server_lr), seed=cfg.seed)
    info = {"ring_bits": cfg.bits, "ddg_local_std": ddg.local_std}
    return _Arm(pipe, ledger, z, ddg.event(d).noise_multiplier, info)


def _unreachable(info: dict, cfg: StudyConfig, exc: Exception) -> dict:
    """The result of an arm whose target epsilon cannot be reached."""
    return {**info, "unreachable": str(exc), "ring_bits": cfg.bits, "noise_multiplier": None,
            "gaussian_equivalent_z": None, "ledger_epsilon": None, "delta": cfg.delta,
            "upload_bits_per_param": None, "final_accuracy": None, "best_accuracy": None, "seconds": 0.0,
            "config": asdict(cfg)}


def _train(fed: Federation, cfg: StudyConfig, info: dict) -> tuple[History, float]:
    """Run the rounds; a diverged model (NaN/Inf) ends the run early and is noted in ``info``."""
    t0 = time.perf_counter()
    try:
        history = fed.run(rounds=cfg.rounds)
    except InvalidUpdateError as exc:  # the noise drove the model to NaN/Inf
        log.warning("%s eps %s diverged after %d rounds: %s", info["mode"], info["target_epsilon"],
                    len(fed.history), exc)
        info["diverged"] = f"after {len(fed.history)} rounds: {exc}"
        history = fed.history
    return history, time.perf_counter() - t0


def _result(arm: _Arm, fed: Federation, history: History, seconds: float, cfg: StudyConfig, info: dict) -> dict:
    """The JSON-ready result of a finished arm."""
    accs = [r.test_accuracy for r in history.records if r.test_accuracy is not None]
    last_acc = None if "diverged" in info or not history.records else history.records[-1].test_accuracy
    upload = history.records[-1].metrics.get("upload_bytes_per_param") if history.records else None
    return {
        **info,
        "noise_multiplier": arm.z,
        "gaussian_equivalent_z": arm.z_eq,
        "ledger_epsilon": arm.ledger.epsilon() if arm.ledger.events else math.inf,
        "delta": cfg.delta,
        "ledger_notes": list(arm.ledger.notes),
        "upload_bits_per_param": None if upload is None else 8 * upload,
        "final_accuracy": last_acc,
        "best_accuracy": max(accs, default=None),
        "seconds": seconds,
        "num_params": fed.global_params.numel(),
        "config": asdict(cfg),
        "history": history.to_dict(),
    }


def run_one(mode: str, target: float, cfg: StudyConfig, split, parts) -> dict:
    """Build and run one federation; returns the JSON-ready result."""
    common = {
        "model_name": cfg.model,
        "clients": make_clients(split.train, parts),
        "test_data": split.test,
        "clients_per_round": cfg.clients_per_round,
        "local": LocalTrainingConfig(epochs=cfg.local_epochs, batch_size=cfg.batch_size, lr=cfg.local_lr),
        "seed": cfg.seed,
        "eval_every": cfg.eval_every,
    }
    info: dict = {"mode": mode, "target_epsilon": target, "ring_bits": None}
    if mode == "central":
        arm = _central_arm(target, cfg)
    else:
        d = Federation(**common).global_params.numel()
        try:
            arm = _distributed_arm(mode, target, cfg, d)
        except ConfigError as exc:  # z~ saturates: rounding noise bounds it at a given number of bits
            log.warning("%s: %s", mode, exc)
            return _unreachable(info, cfg, exc)
    info.update(arm.info)
    fed = Federation(**common, pipeline=arm.pipeline)
    history, seconds = _train(fed, cfg, info)
    return _result(arm, fed, history, seconds, cfg, info)


def _fmt(x: float | None, spec: str) -> str:
    if x is None:
        return "-"
    if isinstance(x, str):
        x = float(x)
    return "inf" if math.isinf(x) else format(x, spec)


def _num(x: float | str) -> float:
    return float(x)


def load_results(out: Path, cfg: StudyConfig) -> dict[tuple[str, float], dict]:
    """Earlier runs in ``out`` with the same configuration, keyed by ``(mode, target)``."""
    found = {}
    for path in sorted(out.glob("*_eps*.json")):
        try:
            res = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if res.get("config") == _finite_json(asdict(cfg)) and res.get("mode") in MODES:
            found[(res["mode"], float(res["target_epsilon"]))] = res
    return found


def render_table(results: list[dict], cfg: StudyConfig) -> str:
    """The Markdown report: per-run table and accuracy pivot (central vs distributed)."""
    lines = [
        f"# DP-FedAvg study: {cfg.dataset}, {cfg.clients} clients ({cfg.partition}), "
        f"{cfg.clients_per_round}/round (q={cfg.sample_rate:g}), {cfg.model}, {cfg.rounds} rounds, "
        f"delta={cfg.delta:g}",
        "",
        f"Clip C={cfg.clip_norm:g}, server FedAvg lr={cfg.server_lr:g}, local SGD lr={cfg.local_lr:g}, "
        f"E={cfg.local_epochs}, B={cfg.batch_size}, seed={cfg.seed}. Epsilon from the privacy ledger (Opacus RDP) "
        "after the last round. `distributed` amplifies integer-noise events by sampling (approximation); "
        "`distributed-conservative` does not (q taken as 1).",
        "",
        "| mode | target eps | z | z~ (Gauss.-equiv.) | ledger eps | ring bits/value | upload bits/param "
        "| final acc | best acc | time (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['mode']} | {_fmt(r['target_epsilon'], 'g')} | {_fmt(r['noise_multiplier'], '.4g')} "
            f"| {_fmt(r['gaussian_equivalent_z'], '.4g')} | {_fmt(r['ledger_epsilon'], '.3f')} "
            f"| {r['ring_bits'] if r['ring_bits'] else '32 (float)'} | {_fmt(r['upload_bits_per_param'], '.2f')} "
            f"| {_fmt(r['final_accuracy'], '.4f')} | {_fmt(r['best_accuracy'], '.4f')} | {r['seconds']:.1f} |"
            + (" unreachable |" if r.get("unreachable") else "")
            + (" diverged (NaN) |" if r.get("diverged") else "")
        )
    modes = [m for m in MODES if any(r["mode"] == m for r in results)]
    targets = sorted({_num(r["target_epsilon"]) for r in results})
    lines += [
        "",
        "Final test accuracy:",
        "",
        "| target eps | " + " | ".join(modes) + " |",
        "|---" * (len(modes) + 1) + "|",
    ]
    for t in targets:
        cells = []
        for m in modes:
            hit = [r for r in results if r["mode"] == m and _num(r["target_epsilon"]) == t]
            cells.append(_fmt(hit[0]["final_accuracy"], ".4f") if hit else "-")
        lines.append(f"| {_fmt(t, 'g')} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(args: argparse.Namespace) -> int:
    """Run the study; write one JSON per run and ``dp_study.md`` under ``--out``."""
    torch.set_num_threads(1)
    cfg = _config(args)
    modes = _modes(args.modes)
    console = Console(stderr=True)
    split = load_dataset(cfg.dataset)
    parts = partition(
        split.train.labels,
        scheme=cfg.partition,
        n_clients=cfg.clients,
        generator=numpy_generator(cfg.seed, Stream.PARTITION),
    )
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    merged = load_results(out, cfg)
    results = []
    t0 = time.perf_counter()
    for mode in modes:
        for target in args.epsilons:
            if mode == "distributed-conservative" and math.isinf(target):
                continue  # same run as distributed at infinity
            res = run_one(mode, target, cfg, split, parts)
            _atomic_write(
                out / f"{mode}_eps{_eps_tag(target)}.json", json.dumps(_finite_json(res), indent=1, allow_nan=False)
            )
            results.append(res)
            merged[(mode, target)] = res
            console.print(
                f"{mode:>25} eps target {_eps_tag(target):>4}: z={_fmt(res['noise_multiplier'], '.4g')}, "
                f"ledger eps={_fmt(res['ledger_epsilon'], '.3f')}, acc={_fmt(res['final_accuracy'], '.4f')}, "
                f"{res['seconds']:.1f}s",
                soft_wrap=True,
            )
    order = {m: i for i, m in enumerate(MODES)}
    table = render_table([merged[k] for k in sorted(merged, key=lambda k: (order[k[0]], k[1]))], cfg)
    _atomic_write(out / "dp_study.md", table + f"\nTotal wall time: {time.perf_counter() - t0:.1f} s\n")
    console.print(table, soft_wrap=True)
    return 0
