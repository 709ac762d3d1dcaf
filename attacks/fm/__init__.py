"""Attacks through the foundation model: a compromised pre-trained FM, and FM-made public data.

Examples
--------
>>> from attacks.fm import FMBackdoor
>>> FMBackdoor().trigger.token
'cf'
"""

from attacks.fm.compromised import FMBackdoor, pooled_layers

__all__ = ["FMBackdoor", "pooled_layers"]
