"""fl_core: the minimal federated-learning core every flsec package plugs into.

Examples
--------
>>> import fl_core
>>> sorted(fl_core.MODELS)
['cnn', 'lenet5', 'mlp']
"""

from fl_core.lazy import lazy_exports

#: Public name -> the module it lives in; each loads on first use (:mod:`fl_core.lazy`).
_EXPORTS = {
    "AggregateTransform": "fl_core.aggregation",
    "AggregationResult": "fl_core.aggregation",
    "Aggregator": "fl_core.aggregation",
    "ArrayDataset": "fl_core.data",
    "Client": "fl_core.federation",
    "ConfigError": "fl_core.errors",
    "DATASETS": "fl_core.data",
    "DataSplit": "fl_core.data",
    "DatasetError": "fl_core.errors",
    "DeviceError": "fl_core.errors",
    "EvalResult": "fl_core.training",
    "FedAdam": "fl_core.server_opt",
    "FedAvg": "fl_core.server_opt",
    "FedAvgM": "fl_core.server_opt",
    "Federation": "fl_core.federation",
    "FlsecError": "fl_core.errors",
    "History": "fl_core.history",
    "InvalidUpdateError": "fl_core.errors",
    "LocalResult": "fl_core.training",
    "LocalTrainingConfig": "fl_core.training",
    "MODELS": "fl_core.models",
    "PARTITIONS": "fl_core.data",
    "PartitionError": "fl_core.errors",
    "RoundContext": "fl_core.aggregation",
    "RoundRecord": "fl_core.history",
    "SERVER_OPTIMIZERS": "fl_core.server_opt",
    "ServerOptimizer": "fl_core.server_opt",
    "TextDataset": "fl_core.data",
    "ToleranceError": "fl_core.errors",
    "TrainingHook": "fl_core.training",
    "UnknownNameError": "fl_core.errors",
    "UpdateTransform": "fl_core.aggregation",
    "WeightedMean": "fl_core.aggregation",
    "build_model": "fl_core.models",
    "build_server_optimizer": "fl_core.server_opt",
    "evaluate": "fl_core.training",
    "flatten_params": "fl_core.params",
    "load_dataset": "fl_core.data",
    "local_train": "fl_core.training",
    "make_clients": "fl_core.federation",
    "num_params": "fl_core.params",
    "partition": "fl_core.data",
    "resolve_device": "fl_core.device",
    "unflatten_into": "fl_core.params",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"
