"""Registry of the reconstruction attacks, by name.

Every attack has ``reconstruct(view, *, generator) -> Reconstruction`` and takes its
hyper-parameters as keyword arguments.

Examples
--------
>>> RECONSTRUCTION_ATTACKS.names()
['dlg', 'idlg', 'imprint', 'inverting-fedavg', 'inverting-gradients', 'loki', 'tag']
>>> build_reconstruction_attack("dlg", iterations=10).iterations
10
>>> build_reconstruction_attack("dgl")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
fl_core.errors.UnknownNameError: unknown reconstruction attack 'dgl'. Did you mean 'dlg', 'idlg'? ...
"""

from __future__ import annotations

from typing import Any

from attacks.reconstruction.dlg import DLG
from attacks.reconstruction.idlg import IDLG
from attacks.reconstruction.imprint import ImprintAttack
from attacks.reconstruction.inverting import InvertingFedAvg, InvertingGradients
from attacks.reconstruction.loki import LokiAttack
from attacks.reconstruction.text import TAG
from fl_core.registry import Registry

__all__ = ["RECONSTRUCTION_ATTACKS", "build_reconstruction_attack", "reconstruction_attack_descriptions"]

#: The reconstruction attacks, by name (matched exactly: reports carry them verbatim).
RECONSTRUCTION_ATTACKS = Registry("reconstruction attack", title="attacks: data reconstruction", normalise=False)

_DESCRIPTIONS = {
    DLG: ("dlg", "Deep Leakage from Gradients: L-BFGS, L2 gradient distance, dummy labels (Zhu et al. 2019)"),
    IDLG: ("idlg", "iDLG: analytic label from the last layer's gradient sign, then DLG (Zhao et al. 2020)"),
    InvertingGradients: (
        "inverting-gradients",
        "Inverting Gradients: cosine loss, TV prior, signed Adam, restarts (Geiping et al. 2020)",
    ),
    InvertingFedAvg: (
        "inverting-fedavg",
        "Inverting Gradients on a multi-step FedAvg update, unrolled (Geiping 2020)",
    ),
    ImprintAttack: (
        "imprint",
        "malicious server: imprint module, exact inputs from bin differences (Fowl et al. 2022)",
    ),
    LokiAttack: (
        "loki",
        "malicious server: a per-client imprint block in each client's model, per-client inputs "
        "from the secure aggregate (Zhao et al. 2024)",
    ),
    TAG: ("tag", "TAG: L2+L1 gradient matching on MiniLM input embeddings (Deng et al. 2021)"),
}
for _cls, (_name, _description) in _DESCRIPTIONS.items():
    RECONSTRUCTION_ATTACKS.register(_name, description=_description)(_cls)


def reconstruction_attack_descriptions() -> dict[str, str]:
    """Name -> one-line description."""
    return RECONSTRUCTION_ATTACKS.descriptions()


def build_reconstruction_attack(name: str, **params: Any) -> Any:
    """Build the attack ``name`` with keyword hyper-parameters.

    Raises
    ------
    UnknownNameError
        For an unknown name (lists the closest valid ones).
    ConfigError
        For a parameter the attack does not take.
    """
    return RECONSTRUCTION_ATTACKS.make(name, **params)
