"""Registries of the DP mechanisms and the DP-FedAvg variants.

* :data:`DP_MECHANISMS`: noise mechanisms (Gaussian, Laplace, discrete Gaussian,
  Skellam), calibrated from a noise scale or a noise multiplier.
* :data:`DP_FEDAVG`: client-level DP-FedAvg variants by where the noise is
  added: ``central`` (the server), ``local`` (each client), ``distributed`` (each
  client adds a share of discrete Gaussian noise under secure aggregation).

The classes live in :mod:`defenses.dp.mechanisms`, :mod:`defenses.dp.dp_fedavg`
and :mod:`defenses.dp.distributed`; this module only names them. Parameters and
their defaults are the constructors' signatures.

Examples
--------
>>> from defenses.dp.registry import DP_MECHANISMS, DP_FEDAVG
>>> DP_MECHANISMS.make("gaussian", sigma=2.0).sigma
2.0
>>> DP_FEDAVG.names()
['central', 'distributed', 'local']
>>> DP_MECHANISMS.make("gauss")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
fl_core.errors.UnknownNameError: unknown DP mechanism 'gauss'. Did you mean 'gaussian'? ...
"""

from __future__ import annotations

from defenses.dp.distributed import DistributedDiscreteGaussian
from defenses.dp.dp_fedavg import CentralDPFedAvg, LocalGaussianDP
from defenses.dp.mechanisms import DiscreteGaussianMechanism, GaussianMechanism, LaplaceMechanism, SkellamMechanism
from fl_core.registry import Registry

__all__ = ["DP_FEDAVG", "DP_MECHANISMS"]

#: DP noise mechanisms, by name.
DP_MECHANISMS = Registry("DP mechanism", title="defenses: DP mechanisms")
#: Client-level DP-FedAvg variants, by where the noise is added.
DP_FEDAVG = Registry("DP-FedAvg variant", title="defenses: DP-FedAvg variants (where the noise is added)")

for _name, _cls, _description in (
    ("gaussian", GaussianMechanism, "x + N(0, sigma^2 I), L2 sensitivity; classic or analytic calibration"),
    ("laplace", LaplaceMechanism, "x + Lap(b)^d, L1 sensitivity, epsilon = Delta_1 / b (pure DP)"),
    (
        "discrete_gaussian",
        DiscreteGaussianMechanism,
        "x + N_Z(0, sigma^2)^d on integers, exact sampling (Canonne, Kamath, Steinke 2020)",
    ),
    ("skellam", SkellamMechanism, "x + Sk(mu)^d on integers (Agarwal, Kairouz, Liu 2021)"),
):
    DP_MECHANISMS.register(_name, description=_description)(_cls)

for _name, _cls, _description in (
    (
        "central",
        CentralDPFedAvg,
        "clip -> fixed-denominator mean -> server Gaussian noise -> ledger (McMahan et al. 2018)",
    ),
    ("local", LocalGaussianDP, "each client clips to C and adds N(0, (z 2C)^2) itself (local DP)"),
    (
        "distributed",
        DistributedDiscreteGaussian,
        "distributed discrete Gaussian under secure aggregation (Kairouz, Liu, Steinke 2021)",
    ),
):
    DP_FEDAVG.register(_name, description=_description)(_cls)
