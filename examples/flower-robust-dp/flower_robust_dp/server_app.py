"""The ServerApp: a flsec pipeline -- robust rule, central DP, SecAgg+ -- as a Flower strategy.

With ``secure`` (the default) the nodes' updates reach the ServerApp only through
flsec's SecAgg+ (``SecureAggregationStrategy``): grouped SecAgg+ in random groups of
``group-size`` nodes with the robust rule over the group means, or plain SecAgg+ for
``rule="mean"``. With ``protocol="two-server"`` the ServerApp is server S0 of flsec's
two-server protocol (``TwoServerStrategy``): S1 and the dealer are processes of their own
(``deploy.sh`` with ``TWO_SERVER=1`` starts them), the nodes send two sealed shares, and
Krum (or the mean) runs on norms and inner products computed from the shares. Without
``secure``, ``PipelineStrategy`` runs the rule on the plaintext replies.

Per round it logs the global model's test accuracy and the privacy ledger's
``dp_epsilon``; with ``result-path`` set it writes the final accuracy, the per-round
history and the final arrays there (``<result-path>`` JSON, ``<result-path>.npz``).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from defenses.dp import CentralDPFedAvg
from defenses.robust import Krum, Median
from fl_core.aggregation import WeightedMean
from fl_core.flower import PipelineStrategy
from fl_core.pipeline import Pipeline
from flower_robust_dp import task
from secure_agg.aggregator import SecAggPlusAggregator
from secure_agg.flower_server import SecureAggregationStrategy
from secure_agg.flower_twoserver import TwoServerStrategy
from secure_agg.grouped import GroupedSecAggPlus
from secure_agg.twoserver import TwoServerAggregator

log = logging.getLogger("flwr")  # Flower's own logger: its records reach `flwr run --stream` and `flwr log`
app = ServerApp()


def build_pipeline(cfg: dict[str, Any], nodes: int) -> Pipeline:
    """The run config's pipeline: ``rule`` (median, krum; mean as the baseline), with ``dp`` central DP, with
    ``secure`` under SecAgg+ (grouped for a robust rule)."""
    f = int(cfg["byzantine-f"])
    rules = {"median": lambda: Median(f=f), "krum": lambda: Krum(f=f), "mean": WeightedMean}
    if cfg["rule"] not in rules:
        raise ValueError(f"rule must be one of {sorted(rules)}, got {cfg['rule']!r}")
    rule, seed = rules[str(cfg["rule"])](), int(cfg["seed"])
    dp = CentralDPFedAvg(noise_multiplier=float(cfg["noise-multiplier"]), expected_clients=nodes, sample_rate=1.0,
                         delta=float(cfg["delta"]), clip_norm=float(cfg["clip-norm"])) if cfg["dp"] else None
    if not cfg["secure"]:
        return dp.pipeline(rule=rule, seed=seed) if dp else Pipeline(rule=rule, seed=seed)
    client, server = ([dp.clip], [dp.noise]) if dp else ([], [])
    if cfg["protocol"] == "two-server":  # Krum, or the mean, on inner products computed from the shares
        if cfg["rule"] == "median":
            raise ValueError("the two-server protocol runs rules on norms and inner products: rule krum or mean, "
                             "not median (coordinate-wise rules need secure comparison)")
        secure = TwoServerAggregator(bound=float(cfg["two-server-bound"]))
        return Pipeline(client=client, secure=secure, rule=rule if cfg["rule"] == "krum" else None, server=server,
                        seed=seed)
    if cfg["protocol"] != "secagg+":
        raise ValueError(f"protocol must be 'secagg+' or 'two-server', got {cfg['protocol']!r}")
    clip = float(cfg["secure-clip"])  # SecAgg+'s per-coordinate range [-clip, clip]
    if cfg["rule"] == "mean":
        secure, rule = SecAggPlusAggregator(clip=clip, gamma=0.0, delta=0.2), None
    else:
        secure = GroupedSecAggPlus(group_size=int(cfg["group-size"]), clip=clip, gamma=0.0, delta=0.0)
    return Pipeline(client=client, secure=secure, rule=rule, server=server, seed=seed)


def _address(text: str) -> tuple[str, int]:
    host, sep, port = str(text).rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"a two-server address is host:port, got {text!r} (deploy.sh TWO_SERVER=1 sets it)")
    return host, int(port)


def build_strategy(cfg: dict[str, Any], nodes: int) -> PipelineStrategy:
    """``TwoServerStrategy`` or ``SecureAggregationStrategy`` with ``secure``, else ``PipelineStrategy``."""
    common = {"min_train_nodes": nodes, "min_available_nodes": nodes, "seed": int(cfg["seed"]),
              "node_wait_s": float(cfg["node-wait-s"])}
    if cfg["secure"] and cfg["protocol"] == "two-server":
        return TwoServerStrategy(build_pipeline(cfg, nodes), s1=_address(cfg["s1-address"]),
                                 dealer=_address(cfg["dealer-address"]),
                                 s1_public=bytes.fromhex(str(cfg["s1-public"])) or None,
                                 dealer_public=bytes.fromhex(str(cfg["dealer-public"])) or None,
                                 link_timeout_s=float(cfg["round-timeout-s"]), **common)
    if cfg["secure"]:  # a protocol stage waits as long as a training round
        return SecureAggregationStrategy(build_pipeline(cfg, nodes), stage_timeout_s=float(cfg["round-timeout-s"]),
                                         **common)
    return PipelineStrategy(build_pipeline(cfg, nodes), **common)


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run ``num-server-rounds`` rounds on ``num-nodes`` nodes and report accuracy and epsilon."""
    cfg = dict(context.run_config)
    nodes, rounds = int(cfg["num-nodes"]), int(cfg["num-server-rounds"])
    strategy = build_strategy(cfg, nodes)
    history: dict[int, dict[str, float]] = {}

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        acc = task.accuracy(arrays.to_numpy_ndarrays())
        history.setdefault(server_round, {})["accuracy"] = acc
        log.info("round %d: test accuracy %.4f", server_round, acc)
        return MetricRecord({"accuracy": acc})

    start = time.monotonic()
    result = strategy.start(grid=grid, initial_arrays=ArrayRecord(task.initial_arrays()), num_rounds=rounds,
                            timeout=float(cfg["round-timeout-s"]), evaluate_fn=evaluate)
    for rnd, metrics in sorted(result.train_metrics_clientapp.items()):
        m = dict(metrics)
        history.setdefault(rnd, {}).update({k: float(v) for k, v in m.items() if isinstance(v, int | float)})
        log.info("round %d: dp_epsilon %s, nodes aggregated %s, dropped %s", rnd, m.get("dp_epsilon", "n/a (no DP)"),
                 m.get("nodes-aggregated"), m.get("nodes-dropped"))
    final = result.arrays.to_numpy_ndarrays()
    acc = task.accuracy(final)
    last = history.get(rounds, {})
    log.info("FINAL accuracy %.4f (rule=%s, dp=%s, secure=%s, attack=%s, dp_epsilon=%s) after %.1f s", acc,
             cfg["rule"], cfg["dp"], cfg["secure"], cfg["attack"], last.get("dp_epsilon", "n/a"),
             time.monotonic() - start)
    if cfg["result-path"]:
        path = Path(str(cfg["result-path"]))
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(f"{path}.npz", *final)
        summary = {"final_accuracy": acc, "rounds_done": len(result.train_metrics_clientapp),
                   "history": {str(k): v for k, v in sorted(history.items())}, "config": cfg}
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(summary, indent=1, default=str))
        tmp.replace(path)  # atomic: a reader never sees half a file
