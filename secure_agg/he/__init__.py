"""Homomorphic-encryption aggregation with TenSEAL: CKKS for floats, BFV for quantised integers.

* BFV -- Fan, Vercauteren, "Somewhat Practical Fully Homomorphic Encryption",
  IACR ePrint 2012/144 (batching: Smart, Vercauteren, DCC 2014).
* CKKS -- Cheon, Kim, Kim, Song, "Homomorphic Encryption for Arithmetic of
  Approximate Numbers", ASIACRYPT 2017.
* Parameters -- Albrecht et al., "Homomorphic Encryption Security Standard",
  HomomorphicEncryption.org, 2018.

Layers, bottom up: :mod:`~secure_agg.he.params` (addition-only parameters at
128-bit security), :mod:`~secure_agg.he.keys` (key holder, public context without
the secret key), :mod:`~secure_agg.he.packing` (whole-model packing, encoding and
checked decoding), :mod:`~secure_agg.he.messages` (SecAgg wire format, magic
``HE``), :mod:`~secure_agg.he.client` / :mod:`~secure_agg.he.server` (roles; the
server only adds), :mod:`~secure_agg.he.runner` (in-memory rounds with dropouts)
and :mod:`~secure_agg.he.aggregator` (the fl_core plug-ins).

Threat model (details in :mod:`secure_agg.he.server`): the server cannot
decrypt; inputs are Ed25519-signed and the aggregate is signed by default, and a
rejected client contributes nothing; the server is not trusted for correctness
(it can add an encryption of an offset, drop contributors or replay an older
aggregate under the same key).

Examples
--------
>>> import torch
>>> from secure_agg.he import BFVAggregator
>>> BFVAggregator(clip=1.0, precision_bits=12)(torch.tensor([[0.5], [0.25]]))
tensor([0.3750])
"""

from secure_agg.he.aggregator import BFVAggregator, CKKSAggregator, HEAggregator
from secure_agg.he.client import HEClient, HEClientResult, open_aggregate
from secure_agg.he.errors import HEConfigError, HEDecryptionError, HEError, HEOverflowError, InsecureParametersError
from secure_agg.he.keys import KeyHolder, key_id, load_server_context
from secure_agg.he.messages import (
    EncryptedAggregate,
    EncryptedInput,
    HEMessage,
    HEStage,
    PublicContext,
    decode_he_message,
)
from secure_agg.he.packing import decode_mean, decode_sum, encode_update, pack, unpack
from secure_agg.he.params import SECURITY_TABLE, HEParams, security_level, select_params
from secure_agg.he.runner import HERunResult, run_he
from secure_agg.he.server import HEServer, HEServerResult, HEServerState

__all__ = [
    "SECURITY_TABLE",
    "BFVAggregator",
    "CKKSAggregator",
    "EncryptedAggregate",
    "EncryptedInput",
    "HEAggregator",
    "HEClient",
    "HEClientResult",
    "HEConfigError",
    "HEDecryptionError",
    "HEError",
    "HEMessage",
    "HEOverflowError",
    "HEParams",
    "HERunResult",
    "HEServer",
    "HEServerResult",
    "HEServerState",
    "HEStage",
    "InsecureParametersError",
    "KeyHolder",
    "PublicContext",
    "decode_he_message",
    "decode_mean",
    "decode_sum",
    "encode_update",
    "key_id",
    "load_server_context",
    "open_aggregate",
    "pack",
    "run_he",
    "security_level",
    "select_params",
    "unpack",
]
