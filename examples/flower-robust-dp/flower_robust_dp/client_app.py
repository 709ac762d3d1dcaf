"""The ClientApp: local training; partitions 0 and 1 sign-flip their update when ``attack`` is on.

Honest nodes run the pipeline's client transform (DP clipping) on their own update in a
secure round, then answer SecAgg+'s stages (``add_secagg``); an attacker skips the clip.
In a plain round :func:`~secure_agg.flower_client.train_reply` sends the arrays.

Flower starts this ClientApp afresh for every message; PyTorch (for the clip) is imported
only in ``train``, so the four protocol messages of a round load just Flower and the
protocol (about 0.5 s instead of 5 s here).
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from flower_robust_dp import task
from secure_agg.flower_client import add_secagg, train_reply

app = ClientApp()
add_secagg(app)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train from the received global model; reply with the arrays, or keep the update for SecAgg+."""
    partition_id = int(context.node_config["partition-id"])
    cfg = context.run_config
    global_arrays = msg.content["arrays"].to_numpy_ndarrays()
    local = task.train(global_arrays, partition_id, lr=float(cfg["lr"]), steps=int(cfg["local-steps"]))
    malicious = bool(cfg["attack"]) and partition_id in task.MALICIOUS_PARTITIONS
    if malicious:
        local = task.sign_flip(global_arrays, local, float(cfg["boost"]))
    from defenses.dp import L2Clip  # PyTorch: only in the train message
    from fl_core.pipeline import Pipeline

    honest_clip = Pipeline(client=[L2Clip(clip_norm=float(cfg["clip-norm"]))]) if cfg["dp"] else None
    return train_reply(msg, context, local, task.EXAMPLES_PER_PARTITION, pipeline=None if malicious else honest_clip,
                       metrics={"malicious": int(malicious)})
