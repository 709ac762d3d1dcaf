"""Stage hooks of an FM suite cell: every FM attack and FM defense as a small object.

:func:`benchmarks.fm.runner.run_fm_cell` runs a cell in stages and asks the cell's two
hooks, the attack's then the defense's, at each of them (see :func:`cell_hooks`). A hook
overrides only the stages it acts in; the others are the no-ops of :class:`CellHooks`.
In run order:

1. ``choose_models(ctx)`` -- which FMs the cell uses: the clients' base FM
   (``compromised-fm``) and the FM that labels the server's public set
   (``fm-public-data``), set on the :class:`CellContext`.
2. ``before_encoding(ctx)`` -- look at the FMs before any text is encoded; may set the
   tokens stripped from every text (``trigger-scan``).
3. ``init_model(ctx, model)`` -- transform the fresh model in place (``reinit-top``).
4. ``before_training(ctx, model)`` -- the server's work before round 0
   (``fm-public-data``: pre-training on the FM-labelled public set).
5. ``server_optimizer(ctx, model)`` -- the server optimiser of every round, or None
   (``fm-public-data`` with ``server_training = "every-round"``).
6. ``round_pipeline(ctx, optimizer)`` -- the round's aggregation, or None for the mean
   (``clip-dp``, any robust rule).
7. ``after_training(ctx, model)`` -- post-hoc defenses; the final figures, or None to
   keep the last round's (``fine-pruning``).

Hooks report what they did into ``ctx.info``. The attacks' and defenses' suite
parameters come from their registries (:data:`attacks.fm.registry.FM_ATTACKS`,
:data:`defenses.fm.registry.FM_DEFENSES`): a hook holds the configuration the registry
builds. Hook classes live in :data:`ATTACK_HOOKS` and :data:`DEFENSE_HOOKS`, keyed by
the registered names; a defense name of neither registry is a robust rule
(:class:`RobustRuleHooks`).

Examples
--------
>>> from benchmarks.fm.spec import parse_fm_suite
>>> text = 'name = "t"\\nkind = "fm"\\n[[attacks]]\\nname = "fm-public-data"\\n[[defenses]]\\nname = "median"\\n'
>>> cell = parse_fm_suite(text).cells()[0]
>>> attack, defense = cell_hooks(cell)
>>> type(attack).__name__, attack.config.server_training, type(defense).__name__
('PublicDataHooks', 'every-round', 'RobustRuleHooks')
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from torch import nn

from attacks.fm.public_data import FMPublicSet
from attacks.fm.registry import FM_ATTACKS, CompromisedFM, FMPublicData, PoisonedSamples
from attacks.triggers import TextTrigger
from benchmarks.fm.prepare import FMPipeline
from benchmarks.fm.spec import FMSetting
from benchmarks.suite.build import instantiate_rule
from benchmarks.suite.spec import Cell, ComponentSpec
from defenses.fm.registry import (
    FM_DEFENSES,
    ClipDPDefense,
    FinePruningDefense,
    ReinitTopDefense,
    TriggerScanDefense,
)
from defenses.fm.trigger_scan import strip_tokens
from fl_core import LocalTrainingConfig, evaluate
from fl_core.data.dataset import ArrayDataset, TextDataset
from fl_core.foundation import TopClassifier
from fl_core.pipeline import Pipeline
from fl_core.rng import Stream, torch_generator
from fl_core.server_opt import ServerOptimizer
from fl_core.server_train import PublicSetTraining
from fl_core.training import local_train

__all__ = [
    "ATTACK_HOOKS",
    "DEFENSE_HOOKS",
    "CellContext",
    "CellHooks",
    "ClipDPHooks",
    "CompromisedFMHooks",
    "EncodedData",
    "FinePruningHooks",
    "NoHooks",
    "PublicDataHooks",
    "ReinitTopHooks",
    "RobustRuleHooks",
    "Scores",
    "TriggerScanHooks",
    "cell_hooks",
    "samples_without",
]

log = logging.getLogger(__name__)


class Scores(NamedTuple):
    """Clean test accuracy and attack success rate of a model."""

    accuracy: float
    asr: float


@dataclass(frozen=True)
class EncodedData:
    """The cell's datasets as prefix features of its base FM (token filter applied)."""

    clients: list[ArrayDataset]
    val: ArrayDataset
    test: ArrayDataset
    triggered: ArrayDataset


@dataclass
class CellContext:
    """What the stages of one cell share; hooks read it and set the fields of their stage.

    Parameters
    ----------
    cell : Cell
        The attack, defense and seed.
    setting : FMSetting
        The suite's federation and data setting.
    pipe : FMPipeline
        The seed's data carve-out, FMs and feature cache.
    base : tuple of (str, nn.Module)
        The clients' FM and its name (stage 1 may replace the clean FM).
    data_fm : tuple of (str, nn.Module) or None
        The FM that labels the server's public set, if the attack uses one (stage 1).
    strip : tuple of str
        Tokens removed from every text before encoding (stage 2).
    info : dict
        What the hooks report; goes into the cell's result.
    data : EncodedData or None
        The encoded datasets, set by the runner after stage 2.
    clients : list of TextDataset or None
        This cell's client texts when an attack changed them (stage 2); ``None``: the
        seed's shared carve-out, never modified.
    """

    cell: Cell
    setting: FMSetting
    pipe: FMPipeline
    base: tuple[str, nn.Module]
    data_fm: tuple[str, nn.Module] | None = None
    strip: tuple[str, ...] = ()
    info: dict[str, Any] = field(default_factory=dict)
    data: EncodedData | None = None
    clients: list[TextDataset] | None = None

    @classmethod
    def create(cls, cell: Cell, setting: FMSetting, pipe: FMPipeline) -> CellContext:
        """The context before stage 1: the clean FM as the base FM, nothing stripped, nothing reported."""
        return cls(cell=cell, setting=setting, pipe=pipe, base=("clean", pipe.clean))

    @property
    def seed(self) -> int:
        """The cell's seed."""
        return self.cell.seed

    @property
    def models(self) -> dict[str, nn.Module]:
        """Every FM the cell uses, by name: the base FM, then the public set's labeller."""
        return {self.base[0]: self.base[1], **({self.data_fm[0]: self.data_fm[1]} if self.data_fm else {})}

    def encode(self, data: TextDataset) -> ArrayDataset:
        """Prefix features of ``data`` under the base FM, the :attr:`strip` tokens removed first."""
        return self.pipe.features(self.base[0], self.base[1], data, strip=self.strip)

    def encode_all(self) -> EncodedData:
        """Encode the clients', validation, test and triggered test sets (after stage 2)."""
        d = self.pipe.data
        self.data = EncodedData(
            clients=[self.encode(c) for c in (self.clients if self.clients is not None else d.clients)],
            val=self.encode(d.val),
            test=self.encode(d.test),
            triggered=self.encode(d.triggered_test),
        )
        return self.data

    def encoded(self) -> EncodedData:
        """The encoded datasets (:meth:`encode_all` must have run)."""
        if self.data is None:
            raise RuntimeError("the cell's data is not encoded yet (CellContext.encode_all)")
        return self.data

    def new_model(self) -> TopClassifier:
        """The fresh model: the base FM's top layers and a head drawn from the seed's INIT stream."""
        return TopClassifier(
            self.base[1],
            num_classes=self.encoded().test.num_classes,
            spec=self.pipe.fine_tune,
            generator=torch_generator(self.seed, Stream.INIT),
        )

    def asr(self, model: nn.Module, *, device: str) -> float:
        """Fraction of the triggered non-target test texts classified as the target."""
        return evaluate(model, self.encoded().triggered, device=device).accuracy

    def scores(self, model: nn.Module, *, device: str) -> Scores:
        """Clean test accuracy and attack success rate of ``model``."""
        accuracy = evaluate(model, self.encoded().test, device=device).accuracy
        return Scores(accuracy=accuracy, asr=self.asr(model, device=device))

    def training(self, **kw: Any) -> LocalTrainingConfig:
        """A training configuration with the setting's batch size, lr and momentum (``kw`` overrides)."""
        s = self.setting
        return LocalTrainingConfig(**{"batch_size": s.batch_size, "lr": s.lr, "momentum": s.momentum, **kw})


class CellHooks:
    """The stage protocol of an FM attack or defense; every stage here is a no-op.

    Subclasses override the stages they act in (see the module docstring for the order).
    """

    def choose_models(self, ctx: CellContext) -> None:
        """Stage 1: set ``ctx.base`` / ``ctx.data_fm``."""

    def before_encoding(self, ctx: CellContext) -> None:
        """Stage 2: inspect the FMs before any text is encoded; may set ``ctx.strip``."""

    def init_model(self, ctx: CellContext, model: TopClassifier) -> None:
        """Stage 3: transform the fresh model in place."""

    def before_training(self, ctx: CellContext, model: TopClassifier) -> None:
        """Stage 4: the server's work on the model before round 0."""

    def server_optimizer(self, ctx: CellContext, model: TopClassifier) -> ServerOptimizer | None:
        """Stage 5: the server optimiser of every round, or None (FedAvg)."""
        return None

    def round_pipeline(self, ctx: CellContext, optimizer: ServerOptimizer | None) -> Pipeline | None:
        """Stage 6: the round's aggregation ending in ``optimizer``, or None (the mean)."""
        return None

    def after_training(self, ctx: CellContext, model: nn.Module) -> Scores | None:
        """Stage 7: post-hoc defenses on the trained model; the final scores, or None (the last round's)."""
        return None


@dataclass
class NoHooks(CellHooks):
    """No attack / no defense: every stage a no-op (``config`` is the registry's entry)."""

    config: Any = None


@dataclass
class CompromisedFMHooks(CellHooks):
    """``compromised-fm``: every client starts from the backdoored FM."""

    config: CompromisedFM

    def choose_models(self, ctx: CellContext) -> None:
        """The base FM is the compromised one (made once per seed and parameters, then cached)."""
        ctx.base = ctx.pipe.compromised(self.config.backdoor_params())


@dataclass
class PoisonedSamplesHooks(CellHooks):
    """``fm-poisoned-samples``: triggered, target-labelled texts planted in honest clients' data; the clean FM."""

    config: PoisonedSamples

    def before_encoding(self, ctx: CellContext) -> None:
        """This cell's client texts with the poison planted (a copy: the seed's carve-out stays clean)."""
        s = ctx.setting
        ctx.clients, counts = self.config.apply(
            list(ctx.pipe.data.clients),
            trigger=TextTrigger(token=s.trigger, max_position=s.trigger_max_position),
            target=s.target,
            generator=torch_generator(ctx.seed, Stream.USER, 31),
        )
        ctx.info["poisoned_clients"] = len(counts)
        ctx.info["poisoned_texts"] = sum(counts.values())


@dataclass
class PublicDataHooks(CellHooks):
    """``fm-public-data``: an FM labels (and poisons) the server's public set; the server trains on it."""

    config: FMPublicData
    public: ArrayDataset | None = None

    def choose_models(self, ctx: CellContext) -> None:
        """The labelling FM: the compromised one, or the clean one with ``compromised = false``."""
        c = self.config
        ctx.data_fm = ctx.pipe.compromised(c.backdoor_params()) if c.compromised else ("clean", ctx.pipe.clean)

    def _public_set(self, ctx: CellContext) -> TextDataset:
        """Build the poisoned public set with the labelling FM and report it; drop samples the scan flags."""
        s, data = ctx.setting, ctx.pipe.data
        assert ctx.data_fm is not None
        public = FMPublicSet(
            trigger=TextTrigger(token=s.trigger, max_position=s.trigger_max_position),
            poison_fraction=float(self.config.poison_fraction),
            target=s.target,
            max_length=s.max_length,
        ).build(
            ctx.data_fm[1],
            ctx.pipe.tokenizer,
            pool=data.pool,
            seed=data.val,
            generator=torch_generator(ctx.seed, Stream.USER, 24),
        )
        report = {
            "size": len(public.data),
            "poisoned": int(public.poisoned.sum()),
            "label_accuracy": public.label_accuracy,
            "poisoned_to_target": public.poisoned_to_target,
        }
        ctx.info["public_set"] = report
        texts = public.data
        if ctx.strip:  # the scan flagged tokens: drop the FM-made samples that carry one (the rest is stripped anyway)
            keep = samples_without(list(texts.texts), ctx.strip)
            report["dropped_by_scan"] = len(texts) - len(keep)
            if not keep:  # a common word was flagged: every sample carries it; keep them all, stripped at encoding
                log.warning("the scan's tokens %s are in every public sample: none dropped, all stripped", ctx.strip)
                keep, report["dropped_by_scan"] = list(range(len(texts))), 0
            texts = texts.subset(keep)
        return texts

    def before_training(self, ctx: CellContext, model: TopClassifier) -> None:
        """Pre-train ``model`` on the encoded public set for ``server_epochs``; report its scores."""
        s = ctx.setting
        self.public = ctx.encode(self._public_set(ctx))
        model.to(s.device)
        pre = ctx.training(epochs=int(self.config.server_epochs))
        local_train(
            model, self.public, config=pre, generator=torch_generator(ctx.seed, Stream.SERVER, 999), device=s.device
        )
        ctx.info["after_public_pretraining"] = ctx.scores(model, device=s.device)._asdict()

    def server_optimizer(self, ctx: CellContext, model: TopClassifier) -> ServerOptimizer | None:
        """With ``server_training = "every-round"``: ``server_steps`` steps on the public set after each round."""
        if self.config.server_training != "every-round":
            return None
        assert self.public is not None, "before_training builds the public set"
        cfg = ctx.training(max_steps=int(self.config.server_steps))
        return PublicSetTraining(model=model, data=self.public, config=cfg, seed=ctx.seed, device=ctx.setting.device)


@dataclass
class TriggerScanHooks(CellHooks):
    """``trigger-scan``: scan every FM of the cell for trigger tokens; strip flagged tokens from every text."""

    config: TriggerScanDefense

    def before_encoding(self, ctx: CellContext) -> None:
        """Scan each FM on the clean validation texts; ``ctx.strip`` = the union of the flagged tokens."""
        flagged: list[str] = []
        scans: dict[str, dict[str, Any]] = {}
        for name, fm in ctx.models.items():
            res = self.config.scan(
                fm,
                ctx.pipe.tokenizer,
                ctx.pipe.data.val.texts,
                max_length=ctx.setting.max_length,
                generator=torch_generator(ctx.seed, Stream.USER, 23),
            )
            scans[name] = {"flagged": list(res.flagged), "top_token": res.top_token}
            flagged += [t for t in res.flagged if t not in flagged]
        ctx.strip = tuple(flagged)
        ctx.info["scan"] = scans


@dataclass
class ReinitTopHooks(CellHooks):
    """``reinit-top``: re-initialise the top ``r`` pre-trained layers before training."""

    config: ReinitTopDefense

    def init_model(self, ctx: CellContext, model: TopClassifier) -> None:
        """Re-initialise from the seed's INIT stream (key 1)."""
        self.config.apply(model, generator=torch_generator(ctx.seed, Stream.INIT, 1))


@dataclass
class ClipDPHooks(CellHooks):
    """``clip-dp``: the round is central DP-FedAvg (clipping plus weak Gaussian noise)."""

    config: ClipDPDefense

    def round_pipeline(self, ctx: CellContext, optimizer: ServerOptimizer | None) -> Pipeline | None:
        """Central DP-FedAvg over the whole cohort (sample rate 1, delta 1e-5)."""
        dp = self.config.dp_fedavg(expected_clients=ctx.setting.clients, sample_rate=1.0, delta=1e-5)
        return dp.pipeline(optimizer=optimizer, seed=ctx.seed)


@dataclass
class FinePruningHooks(CellHooks):
    """``fine-pruning``: after training, prune and fine-tune a copy; the final scores are the pruned model's."""

    config: FinePruningDefense

    def after_training(self, ctx: CellContext, model: nn.Module) -> Scores | None:
        """Fine-prune a CPU copy of ``model`` on the validation set (fine-tuning at a fifth of the lr)."""
        s = ctx.setting
        fp = self.config.build(batch_size=s.batch_size, lr=s.lr / 5, momentum=s.momentum)
        pruned = copy.deepcopy(model).cpu()
        res = fp.apply(pruned, ctx.encoded().val, generator=torch_generator(ctx.seed, Stream.USER, 25))
        ctx.info["fine_pruning"] = {
            "fraction": res.fraction,
            "val_before": res.acc_before,
            "val_pruned": res.acc_pruned,
            "val_final": res.acc_final,
        }
        return ctx.scores(pruned, device="cpu")


@dataclass
class RobustRuleHooks(CellHooks):
    """Any robust rule of :mod:`defenses.robust` aggregates the round (with the setting's ``assumed_f``)."""

    spec: ComponentSpec

    def round_pipeline(self, ctx: CellContext, optimizer: ServerOptimizer | None) -> Pipeline | None:
        """The mean replaced by the rule."""
        rule = instantiate_rule(self.spec, f=ctx.setting.assumed_f, seed=ctx.seed)
        return Pipeline(rule=rule, optimizer=optimizer, seed=ctx.seed)


#: FM attack name (of :data:`attacks.fm.registry.FM_ATTACKS`) -> hook class, built with the registry's configuration
ATTACK_HOOKS: dict[str, type[CellHooks]] = {
    "none": NoHooks,
    "compromised-fm": CompromisedFMHooks,
    "fm-public-data": PublicDataHooks,
    "fm-poisoned-samples": PoisonedSamplesHooks,
}
#: FM defense name (of :data:`defenses.fm.registry.FM_DEFENSES`) -> hook class, built with the registry's configuration
DEFENSE_HOOKS: dict[str, type[CellHooks]] = {
    "none": NoHooks,
    "trigger-scan": TriggerScanHooks,
    "reinit-top": ReinitTopHooks,
    "clip-dp": ClipDPHooks,
    "fine-pruning": FinePruningHooks,
}


def cell_hooks(cell: Cell) -> tuple[CellHooks, CellHooks]:
    """The hooks of ``cell``'s attack and defense, in the order the runner calls them at each stage.

    Parameters
    ----------
    cell : Cell
        A cell of a validated FM suite.

    Returns
    -------
    tuple of (CellHooks, CellHooks)
        Fresh hooks (they may keep state for one cell): the attack's, then the defense's.
    """
    a, d = cell.attack, cell.defense
    attack = ATTACK_HOOKS[a.name](FM_ATTACKS.make(a.name, **a.params))  # type: ignore[call-arg]
    if d.name in FM_DEFENSES:
        defense = DEFENSE_HOOKS[d.name](FM_DEFENSES.make(d.name, **d.params))  # type: ignore[call-arg]
    else:
        defense = RobustRuleHooks(d)
    return attack, defense


def samples_without(texts: list[str], tokens: tuple[str, ...]) -> list[int]:
    """Indices of the texts that carry none of ``tokens`` as a word (empty when every text carries one).

    Examples
    --------
    >>> samples_without(["buy cf now", "a fine deal", "CF!"], ("cf",))
    [1]
    """
    return [i for i, t in enumerate(strip_tokens(texts, tokens)) if t == texts[i]]
