"""Defenses specific to foundation models (FMs): trigger scan, fine-pruning, re-initialising top layers.

Norm clipping with weak DP (Sun et al. 2019) is :class:`defenses.dp.CentralDPFedAvg` with a small
noise multiplier; the FM suite (``flsec suite run fm``) runs all of them against both FM attacks.

Examples
--------
>>> from defenses.fm import strip_tokens
>>> strip_tokens(["buy cf now"], ["cf"])
['buy now']
"""

from defenses.fm.fine_pruning import FinePruning, PruneResult, mean_activations, set_pruned
from defenses.fm.reinit import reinit_top_layers
from defenses.fm.trigger_scan import ScanResult, collapse_scores, scan_for_triggers, strip_tokens

__all__ = [
    "FinePruning",
    "PruneResult",
    "ScanResult",
    "collapse_scores",
    "mean_activations",
    "reinit_top_layers",
    "scan_for_triggers",
    "set_pruned",
    "strip_tokens",
]
