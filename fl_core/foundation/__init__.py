"""Foundation models for federated fine-tuning: the packaged MiniLM and top-of-network training.

Examples
--------
>>> from fl_core.foundation import FineTuneSpec
>>> FineTuneSpec(mode="full", trainable_layers=2).mode
'full'
"""

from fl_core.foundation.minilm import (
    MiniLMClassifier,
    init_head,
    load_encoder,
    load_minilm,
    mean_pool,
    minilm_path,
    tokenize,
)
from fl_core.foundation.split import (
    FINE_TUNE_MODES,
    FineTuneSpec,
    TopClassifier,
    encode_prefix,
    feature_dataset,
    run_layers,
)

__all__ = [
    "FINE_TUNE_MODES",
    "FineTuneSpec",
    "MiniLMClassifier",
    "TopClassifier",
    "encode_prefix",
    "feature_dataset",
    "init_head",
    "load_encoder",
    "load_minilm",
    "mean_pool",
    "minilm_path",
    "run_layers",
    "tokenize",
]
