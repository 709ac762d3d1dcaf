"""Byzantine-robust aggregation rules and pre-aggregators.

Every rule has the same call shape, ``Rule(f=..., ...)(updates, weights=None)``,
accepts a torch ``(n, d)`` tensor (CPU or CUDA), a NumPy ``(n, d)`` array or a
list of per-client lists of per-layer arrays, and returns the aggregate in the
same form. ``rule.aggregate(...)`` returns the full
:class:`~fl_core.aggregation.AggregationResult` (kept mask, scores), which is
what the fl_core federation loop calls. Rules are registered by name
(:mod:`defenses.robust.registry`).

Examples
--------
>>> import numpy as np
>>> from defenses.robust import Krum, make
>>> U = np.array([[0.0], [0.1], [0.2], [0.3], [50.0]])
>>> Krum(f=1)(U)
array([0.1])
>>> make("median", f=1)(U)
array([0.2])
"""

from defenses.robust.base import PreAggregation, PreAggregator, RobustAggregator
from defenses.robust.bulyan import Bulyan
from defenses.robust.caf import CAF
from defenses.robust.centered_clipping import CenteredClipping
from defenses.robust.compose import Compose
from defenses.robust.deepsight import DeepSight
from defenses.robust.distances import pairwise_cosine_similarity, pairwise_sq_distances
from defenses.robust.dnc import DnC
from defenses.robust.errors import (
    LayerShapeError,
    MissingGeneratorError,
    MissingServerUpdateError,
    StateMismatchError,
)
from defenses.robust.flame import FLAME
from defenses.robust.fldetector import FLDetector
from defenses.robust.fltrust import FLTrust
from defenses.robust.foolsgold import FoolsGold
from defenses.robust.formats import FormSpec, from_cohort, from_vector, to_cohort, to_vector
from defenses.robust.freqfed import FreqFed
from defenses.robust.geomed import GeometricMedian
from defenses.robust.krum import Krum, MultiKrum
from defenses.robust.mda import MDA, SubsetLimitError
from defenses.robust.meamed import Meamed
from defenses.robust.mean import Mean
from defenses.robust.median import Median
from defenses.robust.monna import MissingPivotError, MoNNA
from defenses.robust.norm_bound import NormBound
from defenses.robust.preagg import ARC, NNM, Bucketing
from defenses.robust.registry import RegistryEntry, entries, get, make, names, register
from defenses.robust.rlr import RLR
from defenses.robust.signguard import SignGuard
from defenses.robust.trimmed_mean import TrimmedMean

__all__ = [
    "ARC",
    "CAF",
    "FLAME",
    "MDA",
    "NNM",
    "RLR",
    "Bucketing",
    "Bulyan",
    "CenteredClipping",
    "Compose",
    "DeepSight",
    "DnC",
    "FLDetector",
    "FLTrust",
    "FoolsGold",
    "FormSpec",
    "FreqFed",
    "GeometricMedian",
    "Krum",
    "LayerShapeError",
    "Meamed",
    "Mean",
    "Median",
    "MissingGeneratorError",
    "MissingPivotError",
    "MissingServerUpdateError",
    "MoNNA",
    "MultiKrum",
    "NormBound",
    "PreAggregation",
    "PreAggregator",
    "RegistryEntry",
    "RobustAggregator",
    "SignGuard",
    "StateMismatchError",
    "SubsetLimitError",
    "TrimmedMean",
    "entries",
    "from_cohort",
    "from_vector",
    "get",
    "make",
    "names",
    "pairwise_cosine_similarity",
    "pairwise_sq_distances",
    "register",
    "to_cohort",
    "to_vector",
]
