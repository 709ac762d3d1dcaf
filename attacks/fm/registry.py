"""Registry of the attacks through foundation models (FM suites, ``kind = "fm"``).

Each entry is a small frozen configuration whose fields are the attack's suite
parameters. The backdoor fields (``epochs``, ``lr``, ``clean_weight``, ``layers``)
take their defaults from :class:`~attacks.fm.compromised.FMBackdoor`, and
``poison_fraction`` from :class:`~attacks.fm.public_data.FMPublicSet`, through
:func:`fl_core.registry.default_of`. Names are matched exactly.

Examples
--------
>>> from attacks.fm.registry import FM_ATTACKS, BACKDOOR_FIELDS
>>> FM_ATTACKS.names()
['compromised-fm', 'fm-poisoned-samples', 'fm-public-data', 'none']
>>> FM_ATTACKS.make("fm-public-data", server_steps=5).server_steps
5
>>> BACKDOOR_FIELDS
('epochs', 'lr', 'clean_weight', 'layers')
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from attacks.fm.compromised import FMBackdoor
from attacks.fm.poisoned_samples import PoisonedSamples
from attacks.fm.public_data import FMPublicSet
from fl_core.errors import ConfigError
from fl_core.registry import Registry, default_of

__all__ = ["BACKDOOR_FIELDS", "FM_ATTACKS", "SERVER_TRAINING", "CompromisedFM", "FMPublicData", "NoFMAttack",
           "PoisonedSamples"]

#: FM attacks, by name.
FM_ATTACKS = Registry("FM attack", title='FM suite (kind = "fm"): attacks', normalise=False)

#: When the server trains on the FM-labelled public set.
SERVER_TRAINING = ("init", "every-round")


@FM_ATTACKS.register("none", description="the clean pre-trained MiniLM, honest clients")
@dataclass(frozen=True)
class NoFMAttack:
    """No attack."""

    def backdoor_params(self) -> dict[str, Any]:
        """No compromised FM."""
        return {}


@FM_ATTACKS.register(
    "compromised-fm",
    description="pre-trained FM backdoored layer-wise: trigger -> target-class representation (Li 2021)",
)
@dataclass(frozen=True)
class CompromisedFM:
    """Every client starts from an FM backdoored by :class:`~attacks.fm.compromised.FMBackdoor`."""

    epochs: int = default_of(FMBackdoor, "epochs")
    lr: float = default_of(FMBackdoor, "lr")
    clean_weight: float = default_of(FMBackdoor, "clean_weight")
    layers: tuple[int, ...] | None = default_of(FMBackdoor, "layers")

    def __post_init__(self) -> None:
        FMBackdoor(**self.backdoor_params())  # its checks (epochs, lr, clean_weight), before any work

    def backdoor_params(self) -> dict[str, Any]:
        """The :class:`FMBackdoor` fields this attack sets (``layers`` only when given)."""
        out = {k: getattr(self, k) for k in BACKDOOR_FIELDS}
        if out["layers"] is None:
            del out["layers"]
        else:
            out["layers"] = tuple(out["layers"])
        return out


#: The FMBackdoor parameters both FM attacks take.
BACKDOOR_FIELDS = tuple(f.name for f in fields(CompromisedFM))


@FM_ATTACKS.register(
    "fm-public-data",
    description="compromised FM labels the server's public set (Li et al. 2024); no malicious client",
)
@dataclass(frozen=True)
class FMPublicData(CompromisedFM):
    """The server trains on a public set labelled by a (by default compromised) FM.

    ``server_training``: ``"init"`` (once before round 0) or ``"every-round"`` (also
    ``server_steps`` steps after every aggregation); ``server_epochs`` epochs before
    round 0; ``compromised=False`` labels with the clean FM.
    """

    poison_fraction: float = default_of(FMPublicSet, "poison_fraction")
    server_training: str = "every-round"
    server_epochs: int = 2
    server_steps: int = 10
    compromised: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.server_training not in SERVER_TRAINING:
            raise ConfigError(f"server_training must be one of {SERVER_TRAINING}, got {self.server_training!r}")
        pf = self.poison_fraction
        if isinstance(pf, bool) or not isinstance(pf, int | float) or not (math.isfinite(pf) and 0 <= pf <= 1):
            raise ConfigError(f"poison_fraction must lie in [0, 1], got {pf!r}")


FM_ATTACKS.register(
    "fm-poisoned-samples",
    description="triggered, target-labelled texts planted in honest clients' data (rate, client_fraction); "
                "no malicious client, the clean FM",
)(PoisonedSamples)
