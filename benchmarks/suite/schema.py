"""The values a suite file parses into: its setting, its grid's components and cells, and its error.

They sit in their own module so that :mod:`benchmarks.suite.spec` (which parses
and validates suite files) and :mod:`benchmarks.suite.build` (which turns a cell
into live objects, and which the validation uses to try each defense) both import
them without importing each other in a cycle.

Examples
--------
>>> a = ComponentSpec(name="none", label="none")
>>> d = ComponentSpec(name="median", label="median")
>>> SuiteSpec("t", "", Setting(seeds=(0, 1)), (a,), (d,), source="").cells()[1].cell_id
'none__median__seed1'
>>> Setting(clients=10, malicious_fraction=0.2).expected_f
2
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fl_core.errors import ConfigError

__all__ = ["Cell", "ComponentSpec", "DPSpec", "Setting", "SuiteError", "SuiteSpec"]


class SuiteError(ConfigError):
    """A suite file is malformed; the message starts with the offending key path."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


@dataclass(frozen=True)
class Setting:
    """The federation every cell of the suite runs.

    ``fedsgd``: one gradient step per client per round (McMahan et al. 2017), on one mini-batch
    of ``batch_size`` or, with ``full_batch``, on the client's whole dataset. ``gamma_similarity``
    is the ``gamma`` of ``partition = "gamma"`` (1 = IID, 0 = sorted labels).
    """

    dataset: str = "fashion-mnist"
    data_path: str | None = None
    model: str = "mlp"
    partition: str = "dirichlet"
    alpha: float = 0.5
    shards_per_client: int = 2
    gamma_similarity: float = 0.5
    clients: int = 10
    clients_per_round: int | None = None
    rounds: int = 10
    local_epochs: int = 1
    fedsgd: bool = False
    full_batch: bool = False
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.9
    server_opt: str = "fedavg"
    server_lr: float | None = None
    seeds: tuple[int, ...] = (0,)
    malicious_fraction: float = 0.2
    omniscient: bool = True
    attack_start: int = 0
    attack_end: int | None = None
    attack_every: int = 1
    root_size: int = 100
    device: str = "cpu"
    exposure: bool = True

    @property
    def m(self) -> int:
        """Clients per round."""
        return self.clients_per_round or self.clients

    @property
    def expected_f(self) -> int:
        """Expected attackers per cohort: ``round(malicious_fraction * m)``."""
        return round(self.malicious_fraction * self.m)


@dataclass(frozen=True)
class DPSpec:
    """The DP stage of a defense pipeline: a DP-FedAvg variant and its privacy target.

    ``epsilon`` (the target after the suite's rounds, at ``delta``) or ``noise_multiplier``
    fixes the noise; ``params`` are the variant's other constructor parameters
    (``clip_norm``, ``bits``, ...).
    """

    variant: str
    epsilon: float | None = None
    noise_multiplier: float | None = None
    delta: float = 1e-5
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ComponentSpec:
    """An attack, or a defense of the grid: a pipeline of an optional secure protocol, a robust rule with
    its pre-aggregators (``name``, ``params``, ``pre``; ``"mean"`` for none), and an optional DP stage."""

    name: str
    label: str
    params: dict[str, Any] = field(default_factory=dict)
    pre: tuple[ComponentSpec, ...] = ()
    secure: ComponentSpec | None = None
    dp: DPSpec | None = None


@dataclass(frozen=True)
class Cell:
    """One run: an attack against a defense with one seed."""

    attack: ComponentSpec
    defense: ComponentSpec
    seed: int

    @property
    def cell_id(self) -> str:
        return f"{self.attack.label}__{self.defense.label}__seed{self.seed}"


@dataclass(frozen=True)
class SuiteSpec:
    """A parsed suite: its setting and grid; a reproduction also carries the paper's claims
    (``paper``, a :class:`benchmarks.reproduce.paper.Paper`), a ``sweep`` of setting values
    (each combination runs the grid once) and named ``scales`` (setting overrides, ``paper``)."""

    name: str
    description: str
    setting: Setting
    attacks: tuple[ComponentSpec, ...]
    defenses: tuple[ComponentSpec, ...]
    source: str
    paper: Any = None
    sweep: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    scales: dict[str, dict[str, Any]] = field(default_factory=dict)

    def cells(self) -> list[Cell]:
        return [Cell(a, d, s) for s in self.setting.seeds for a in self.attacks for d in self.defenses]
