"""Differential privacy for federated learning: mechanisms, clipping, DP-FedAvg and a privacy ledger.

* :mod:`defenses.dp.mechanisms`: Gaussian (classic and analytic calibration), Laplace,
  discrete Gaussian (exact sampling) and Skellam mechanisms.
* :mod:`defenses.dp.clipping`: flat L2, per-layer and adaptive (private quantile) clipping.
* :mod:`defenses.dp.dp_fedavg`: central and local client-level DP-FedAvg.
* :mod:`defenses.dp.distributed`: distributed DP-FedAvg with the distributed discrete
  Gaussian, to compose with secure aggregation.
* :mod:`defenses.dp.ledger`: the privacy ledger over Opacus' RDP and PRV accountants.

Examples
--------
>>> from defenses.dp import calibrate_noise_multiplier, planned_epsilon
>>> z = calibrate_noise_multiplier(target_epsilon=8.0, delta=1e-5, sample_rate=0.1, rounds=100)
>>> planned_epsilon(noise_multiplier=z, sample_rate=0.1, rounds=100, delta=1e-5) <= 8.0
True
"""

from defenses.dp.clipping import AdaptiveClip, L2Clip, PerLayerClip, clip_rows, layer_sizes
from defenses.dp.distributed import (
    DDGDecode,
    DDGEncode,
    DistributedDiscreteGaussian,
    ModularSum,
    calibrate_ddg_noise_multiplier,
    ddg_gaussian_equivalent_multiplier,
    hadamard_transform,
    rounded_l2_bound,
)
from defenses.dp.dp_fedavg import CentralDPFedAvg, CentralGaussianNoise, FixedDenominatorMean, LocalGaussianDP
from defenses.dp.errors import PrivacyBudgetError, PrivacyConfigError
from defenses.dp.events import GaussianEvent, PrivacyEvent, PureDPEvent
from defenses.dp.ledger import PerClientLedger, PrivacyLedger, calibrate_noise_multiplier, planned_epsilon
from defenses.dp.mechanisms import (
    DiscreteGaussianMechanism,
    GaussianMechanism,
    LaplaceMechanism,
    Mechanism,
    SkellamMechanism,
    analytic_gaussian_delta,
    analytic_gaussian_sigma,
    classic_gaussian_sigma,
    discrete_gaussian_pmf,
    sample_discrete_gaussian,
    sample_discrete_gaussian_exact,
    sample_laplace,
    sample_skellam,
    skellam_rdp,
)

__all__ = [
    "AdaptiveClip",
    "CentralDPFedAvg",
    "CentralGaussianNoise",
    "DDGDecode",
    "DDGEncode",
    "DiscreteGaussianMechanism",
    "DistributedDiscreteGaussian",
    "FixedDenominatorMean",
    "GaussianEvent",
    "GaussianMechanism",
    "L2Clip",
    "LaplaceMechanism",
    "LocalGaussianDP",
    "Mechanism",
    "ModularSum",
    "PerClientLedger",
    "PerLayerClip",
    "PrivacyBudgetError",
    "PrivacyConfigError",
    "PrivacyEvent",
    "PrivacyLedger",
    "PureDPEvent",
    "SkellamMechanism",
    "analytic_gaussian_delta",
    "analytic_gaussian_sigma",
    "calibrate_ddg_noise_multiplier",
    "calibrate_noise_multiplier",
    "classic_gaussian_sigma",
    "clip_rows",
    "ddg_gaussian_equivalent_multiplier",
    "discrete_gaussian_pmf",
    "hadamard_transform",
    "layer_sizes",
    "planned_epsilon",
    "rounded_l2_bound",
    "sample_discrete_gaussian",
    "sample_discrete_gaussian_exact",
    "sample_laplace",
    "sample_skellam",
    "skellam_rdp",
]
