"""Secure aggregation by secret sharing (SecAgg, SecAgg+) and homomorphic encryption (:mod:`secure_agg.he`).

* SecAgg -- Bonawitz, Ivanov, Kreuter, Marcedone, McMahan, Patel, Ramage, Segal,
  Seth, "Practical Secure Aggregation for Privacy-Preserving Machine Learning",
  ACM CCS 2017.
* SecAgg+ -- Bell, Bonawitz, Gascon, Lepoint, Raykova, "Secure Single-Server
  Aggregation with (Poly)Logarithmic Overhead", ACM CCS 2020.

Layers, bottom up: :mod:`~secure_agg.shamir` (Shamir sharing over GF(2^31 - 1)),
:mod:`~secure_agg.prg` (AES-CTR mask expansion keyed through HKDF),
:mod:`~secure_agg.crypto` (X25519, AES-GCM, Ed25519, HMAC-SHA256), :mod:`~secure_agg.quantize`
(fixed-point ring encoding), :mod:`~secure_agg.graph` (SecAgg+ graphs and the
choice of k and t), :mod:`~secure_agg.messages` (typed messages, wire format),
:mod:`~secure_agg.client` / :mod:`~secure_agg.server` (state machines),
:mod:`~secure_agg.runner` (in-memory rounds with dropouts) and
:mod:`~secure_agg.aggregator` (the fl_core plug-ins).

Threat model per mode (a round never returns a wrong sum: it returns the exact
sum of the survivors it names, or raises :class:`ProtocolAbortError`):

* Passive (``SecAggParams(active=False)``, the default): the server follows the
  protocol but is curious; any set of fewer than ``t`` clients may collude with
  it. Every message carries an HMAC-SHA256 tag under the channel key its client
  shares with the server (``authenticated=True``, the default), so a network
  attacker can only make clients drop out, never alter, inject or replay a
  message. The server holds the channel keys and could forge client messages.
* Active (``active=True``): the server may lie. Client messages are Ed25519-signed
  and the survivor list is confirmed by signatures. In both modes each masked
  input commits to the peers it was masked with (the server unmasks with exactly
  those pairs or refuses the input), and ``t > (k + 1) / 2`` stops a server that
  equivocates about dropouts from collecting both secrets of a client. The
  server can still abort or leave clients out.
* ``authenticated=False``: only for a transport that authenticates each message
  itself (mutual TLS). Without it a flipped byte gives a wrong sum; withheld
  messages and relay entries are still handled.

Examples
--------
>>> import torch
>>> from secure_agg import SecAggPlusAggregator
>>> SecAggPlusAggregator(clip=1.0, gamma=0.0, delta=0.0)(torch.tensor([[0.5], [0.25]]))
tensor([0.3750])
"""

from fl_core.lazy import lazy_exports

#: Public name -> the module it lives in; each loads on first use (:mod:`fl_core.lazy`).
_EXPORTS = {
    "BFVAggregator": "secure_agg.he",
    "CKKSAggregator": "secure_agg.he",
    "ClientState": "secure_agg.client",
    "CommunicationGraph": "secure_agg.graph",
    "FixedPointEncoder": "secure_agg.quantize",
    "GroupedSecAggPlus": "secure_agg.grouped",
    "HEParams": "secure_agg.he",
    "KeyHolder": "secure_agg.he",
    "MessageRejectedError": "secure_agg.errors",
    "ProtocolAbortError": "secure_agg.errors",
    "RingOverflowError": "secure_agg.errors",
    "RunResult": "secure_agg.runner",
    "SecAggAggregator": "secure_agg.aggregator",
    "SecAggClient": "secure_agg.client",
    "SecAggConfigError": "secure_agg.errors",
    "SecAggError": "secure_agg.errors",
    "SecAggParams": "secure_agg.params",
    "SecAggPlusAggregator": "secure_agg.aggregator",
    "SecAggServer": "secure_agg.server",
    "ServerResult": "secure_agg.server",
    "ServerState": "secure_agg.server",
    "ShamirError": "secure_agg.errors",
    "Stage": "secure_agg.messages",
    "TwoServerAggregator": "secure_agg.twoserver",
    "TwoServerRound": "secure_agg.twoserver",
    "WireFormatError": "secure_agg.errors",
    "choose_k_t": "secure_agg.graph",
    "decode_message": "secure_agg.messages",
    "ring_dtype": "secure_agg.quantize",
    "run_he": "secure_agg.he",
    "run_secagg": "secure_agg.runner",
    "secure_threshold": "secure_agg.graph",
    "select_params": "secure_agg.he",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
