"""Registry of the defenses specific to foundation models (FM suites, ``kind = "fm"``).

Each entry is a small frozen configuration whose fields are the defense's suite
parameters; their defaults are the fields' defaults, and where a field mirrors a
library parameter (``top_k`` of :func:`~defenses.fm.trigger_scan.scan_for_triggers`,
``max_drop`` of :class:`~defenses.fm.fine_pruning.FinePruning`) the default is read
from that signature with :func:`fl_core.registry.default_of`, never copied. Each
configuration builds or applies the library object it configures. Names are
matched exactly (suite results carry them verbatim). Any robust rule of
:data:`defenses.robust.registry.ROBUST` is an FM defense too; the FM suite looks
those up there.

Examples
--------
>>> from defenses.fm.registry import FM_DEFENSES
>>> FM_DEFENSES.names()
['clip-dp', 'fine-pruning', 'none', 'reinit-top', 'trigger-scan']
>>> FM_DEFENSES.make("trigger-scan", top_k=8)
TriggerScanDefense(texts=16, top_k=8, reference=128, z_threshold=3.5)
>>> FM_DEFENSES.defaults("fine-pruning")
{'max_drop': 0.04, 'step': 0.05, 'finetune_epochs': 2}
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from defenses.dp.dp_fedavg import CentralDPFedAvg
from defenses.fm.fine_pruning import FinePruning
from defenses.fm.reinit import reinit_top_layers
from defenses.fm.trigger_scan import ScanResult, scan_for_triggers
from fl_core.foundation import TopClassifier
from fl_core.registry import Registry, default_of
from fl_core.training import LocalTrainingConfig

__all__ = [
    "FM_DEFENSES",
    "ClipDPDefense",
    "FinePruningDefense",
    "NoFMDefense",
    "ReinitTopDefense",
    "TriggerScanDefense",
]

#: FM defenses, by name; ``stage`` tags when each acts.
FM_DEFENSES = Registry("FM defense", title='FM suite (kind = "fm"): defenses, besides any robust rule', normalise=False)


@FM_DEFENSES.register("none", description="plain FedAvg", stage="none")
@dataclass(frozen=True)
class NoFMDefense:
    """No defense: plain FedAvg."""


@FM_DEFENSES.register(
    "trigger-scan",
    description="gradient-guided vocabulary scan for collapse tokens; strip flagged tokens from every text",
    stage="before training",
)
@dataclass(frozen=True)
class TriggerScanDefense:
    """Scan each FM for trigger tokens on the first ``texts`` clean validation texts.

    The other fields are :func:`~defenses.fm.trigger_scan.scan_for_triggers`'s.
    """

    texts: int = 16
    top_k: int = default_of(scan_for_triggers, "top_k")
    reference: int = default_of(scan_for_triggers, "reference")
    z_threshold: float = default_of(scan_for_triggers, "z_threshold")

    def scan(
        self,
        encoder: nn.Module,
        tokenizer: object,
        texts: Sequence[str],
        *,
        max_length: int,
        generator: torch.Generator,
    ) -> ScanResult:
        """Run the scan on the first :attr:`texts` of ``texts``."""
        return scan_for_triggers(
            encoder,
            tokenizer,
            list(texts[: int(self.texts)]),
            max_length=max_length,
            top_k=int(self.top_k),
            reference=int(self.reference),
            z_threshold=float(self.z_threshold),
            generator=generator,
        )


@FM_DEFENSES.register(
    "fine-pruning",
    description="prune dormant FFN neurons of the last layer on clean data, then fine-tune (Liu et al. 2018)",
    stage="after training",
)
@dataclass(frozen=True)
class FinePruningDefense:
    """:class:`~defenses.fm.fine_pruning.FinePruning` with ``finetune_epochs`` epochs of fine-tuning."""

    max_drop: float = default_of(FinePruning, "max_drop")
    step: float = default_of(FinePruning, "step")
    finetune_epochs: int = 2

    def build(self, *, batch_size: int, lr: float, momentum: float) -> FinePruning:
        """The fine-pruning defense, fine-tuning with these optimiser settings."""
        return FinePruning(
            max_drop=float(self.max_drop),
            step=float(self.step),
            finetune=LocalTrainingConfig(
                epochs=int(self.finetune_epochs), batch_size=batch_size, lr=lr, momentum=momentum
            ),
        )


@FM_DEFENSES.register(
    "reinit-top",
    description="re-initialise the top r pre-trained layers before fine-tuning",
    stage="before training",
)
@dataclass(frozen=True)
class ReinitTopDefense:
    """:func:`~defenses.fm.reinit.reinit_top_layers` on the top ``r`` layers."""

    r: int = 1

    def apply(self, model: TopClassifier, *, generator: torch.Generator) -> None:
        """Re-initialise ``model``'s top ``r`` layers in place."""
        reinit_top_layers(model, r=int(self.r), generator=generator)


@FM_DEFENSES.register(
    "clip-dp",
    description="norm clipping + weak central Gaussian noise (Sun et al. 2019)",
    stage="aggregation",
)
@dataclass(frozen=True)
class ClipDPDefense:
    """Central DP-FedAvg with a small noise multiplier: norm clipping plus weak noise (Sun et al. 2019)."""

    clip_norm: float = 1.0
    noise_multiplier: float = 0.01

    def dp_fedavg(self, *, expected_clients: int, sample_rate: float = 1.0, delta: float = 1e-5) -> CentralDPFedAvg:
        """The central DP-FedAvg pipeline for a cohort of ``expected_clients``."""
        return CentralDPFedAvg(
            clip_norm=float(self.clip_norm),
            noise_multiplier=float(self.noise_multiplier),
            expected_clients=expected_clients,
            sample_rate=sample_rate,
            delta=delta,
        )
