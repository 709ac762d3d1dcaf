"""attacks: poisoned clients (data and model poisoning) and their threat models.

Examples
--------
>>> from attacks import attack_names
>>> "alie" in attack_names() and "min-max" in attack_names()
True
"""

from attacks.a3fl import A3FLBackdoor
from attacks.byzantine import AttackView, ByzantineTransform, ModelPoisoning
from attacks.data_poisoning import LabelFlip, PixelBackdoor, ScheduledHook, TextBackdoor
from attacks.edge_case import EdgeCaseMix, EdgeCaseSet
from attacks.hooks import AnomalyEvasion, NeurotoxinMask
from attacks.inf import Inf
from attacks.metrics import Backdoor, DetectionRates, attack_success_rate, detection_rates
from attacks.mimic import Mimic
from attacks.model_poisoning import ALIE, IPM, ConstrainedScaling, FangGaussian, GaussianNoise, Scaling, SignFlip
from attacks.optimal import OptimalALIE, OptimalIPM
from attacks.optimized import FangKrum, FangTrimmedMean, MinMax, MinSum
from attacks.registry import (
    ATTACKS,
    AttackEnv,
    AttackPlan,
    attack_descriptions,
    attack_names,
    attack_parameters,
    build_attack,
)
from attacks.threat import AttackSchedule, ThreatModel
from attacks.triggers import PatternTrigger, PixelTrigger, TextTrigger

__all__ = [
    "ALIE",
    "ATTACKS",
    "IPM",
    "A3FLBackdoor",
    "AnomalyEvasion",
    "AttackEnv",
    "AttackPlan",
    "AttackSchedule",
    "AttackView",
    "Backdoor",
    "ByzantineTransform",
    "ConstrainedScaling",
    "DetectionRates",
    "EdgeCaseMix",
    "EdgeCaseSet",
    "FangGaussian",
    "FangKrum",
    "FangTrimmedMean",
    "GaussianNoise",
    "Inf",
    "LabelFlip",
    "Mimic",
    "MinMax",
    "MinSum",
    "ModelPoisoning",
    "NeurotoxinMask",
    "OptimalALIE",
    "OptimalIPM",
    "PatternTrigger",
    "PixelBackdoor",
    "PixelTrigger",
    "Scaling",
    "ScheduledHook",
    "SignFlip",
    "TextBackdoor",
    "TextTrigger",
    "ThreatModel",
    "attack_descriptions",
    "attack_names",
    "attack_parameters",
    "attack_success_rate",
    "build_attack",
    "detection_rates",
]
