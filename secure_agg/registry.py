"""Registry of the secure-aggregation protocols, as fl_core aggregators.

Each entry is an :class:`~fl_core.aggregation.Aggregator` that runs one round of
its protocol in memory; parameters and their defaults are the constructors'
signatures (:mod:`secure_agg.aggregator`, :mod:`secure_agg.he.aggregator`).

Examples
--------
>>> from secure_agg.registry import SECURE_PROTOCOLS
>>> SECURE_PROTOCOLS.names()
['bfv', 'ckks', 'grouped_secagg_plus', 'secagg', 'secagg_plus', 'two_server']
>>> type(SECURE_PROTOCOLS.make("secagg-plus", clip=1.0)).__name__
'SecAggPlusAggregator'
>>> SECURE_PROTOCOLS.make("secagg")
Traceback (most recent call last):
...
fl_core.errors.ConfigError: secure aggregation protocol secagg (SecAggAggregator) needs the parameter 'clip'; \
valid parameters: clip, ring_bits, gamma, delta, sigma, eta, active, dropout_rate, dropout_stage, seed, integer_input
"""

from __future__ import annotations

from fl_core.registry import Registry
from secure_agg.aggregator import SecAggAggregator, SecAggPlusAggregator
from secure_agg.grouped import GroupedSecAggPlus
from secure_agg.he.aggregator import BFVAggregator, CKKSAggregator
from secure_agg.twoserver.aggregator import TwoServerAggregator

__all__ = ["SECURE_PROTOCOLS"]

#: Secure-aggregation protocols, by name (``secagg-plus`` matches ``secagg_plus``).
SECURE_PROTOCOLS = Registry("secure aggregation protocol", title="secure aggregation protocols")

for _name, _cls, _description in (
    ("secagg", SecAggAggregator, "SecAgg, pairwise masks over the complete graph (Bonawitz et al. CCS 2017)"),
    (
        "secagg_plus",
        SecAggPlusAggregator,
        "SecAgg+, masks over a sparse random graph, polylog cost (Bell et al. CCS 2020)",
    ),
    (
        "grouped_secagg_plus",
        GroupedSecAggPlus,
        "SecAgg+ in random groups of s clients, any robust rule over the group means (Velicheti et al. 2021)",
    ),
    (
        "two_server",
        TwoServerAggregator,
        "two non-colluding servers on secret shares, norms/inner products opened for a robust rule (ELSA-style)",
    ),
    ("ckks", CKKSAggregator, "TenSEAL CKKS: approximate float sums under homomorphic encryption"),
    ("bfv", BFVAggregator, "TenSEAL BFV: exact integer sums of quantised updates under HE"),
):
    # the robust rules a protocol can run on hidden rows (Pipeline(secure=..., rule=...))
    _rules = {
        GroupedSecAggPlus: "robust rules: any, over the group means",
        TwoServerAggregator: "robust rules: norm_bound, krum, multi_krum, fltrust, centered_clipping, flame, "
        "NNM before them (on opened norms and inner products)",
    }.get(_cls, "robust rules: none")
    SECURE_PROTOCOLS.register(_name, description=_description, robust_rules=_rules)(_cls)
