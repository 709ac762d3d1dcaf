"""The ClientApp: local training; partitions 0 and 1 sign-flip their update when ``attack`` is on."""

from __future__ import annotations

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from flower_robust_dp import task

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train from the received global model and reply with the new arrays and the example count."""
    partition_id = int(context.node_config["partition-id"])
    cfg = context.run_config
    global_arrays = msg.content["arrays"].to_numpy_ndarrays()
    local = task.train(global_arrays, partition_id, lr=float(cfg["lr"]), steps=int(cfg["local-steps"]))
    malicious = bool(cfg["attack"]) and partition_id in task.MALICIOUS_PARTITIONS
    if malicious:
        local = task.sign_flip(global_arrays, local, float(cfg["boost"]))
    metrics = MetricRecord({"num-examples": task.EXAMPLES_PER_PARTITION, "malicious": int(malicious)})
    return Message(content=RecordDict({"arrays": ArrayRecord(local), "metrics": metrics}), reply_to=msg)
