"""The round's aggregation as one checked value: :class:`Pipeline`.

A pipeline chains typed stages, in the spirit of optax's ``chain``::

    attack -> client transforms -> secure protocol | robust rule -> server transforms -> server optimiser
    (rows)    (clip, local DP,     (SecAgg, SecAgg+,   (pre-aggregators  (central DP     (FedAvg, FedAvgM,
               DDG encoding)        HE)                  + rule)           noise, decode)  FedAdam)

and has one call, ``pipeline(updates, weights, round) -> RoundOutput``, usable in
any training loop: :class:`~fl_core.federation.Federation` runs the same object.

**Checked when built.** Every stage declares a contract (:mod:`fl_core.contracts`):
what rows it takes and produces, whether it hides them, whether it bounds them,
the sensitivity of its output. A chain that cannot work raises
:class:`~fl_core.contracts.CompositionError` naming both stages and why, before any
training. A robust rule after a secure protocol is allowed only where the protocol
declares it supports that rule (``supports_rule``); otherwise the rule would need
the plaintext rows the protocol hides.

**Facts are return values.** Stages with something to report implement
``apply(x, ctx) -> StageOutput``: a clip returns its bound, which the pipeline turns,
with the aggregator's :meth:`~fl_core.aggregation.Aggregator.sensitivity`, into the
sensitivity handed to server noise (``ctx.sensitivity``), so the noise is sized for
the rule actually used.

**Randomness per stage.** Each stage draws from its own generator derived from
``(seed, round, stage kind, position)`` (:class:`StageKind`): another attack leaves
the rule's and the noise's draws unchanged.

**Explicit state.** :meth:`Pipeline.state_dict` gathers the ``state_dict()`` of every
stateful stage (ledgers, FoolsGold, centered clipping, adaptive clipping, the server
optimiser, protocol round counters), keyed by slot.

Examples
--------
>>> import torch
>>> from fl_core.server_opt import FedAvg
>>> pipe = Pipeline(optimizer=FedAvg(lr=1.0), seed=0)
>>> out = pipe(torch.tensor([[1.0, 0.0], [3.0, 2.0]]), torch.ones(2),
...            Round(index=0, client_ids=(7, 9), global_params=torch.zeros(2)))
>>> out.params
tensor([2., 1.])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from fl_core.aggregation import (
    AggregationResult,
    Aggregator,
    RoundContext,
    StageOutput,
    WeightedMean,
    collect_metrics,
)
from fl_core.checks import as_int
from fl_core.contracts import CompositionError, check_round, contract_of
from fl_core.errors import ConfigError, InvalidUpdateError
from fl_core.rng import Stream, torch_generator
from fl_core.server_opt import FedAvg, ServerOptimizer
from fl_core.state import StateError
from fl_core.updates import check_update

__all__ = ["Pipeline", "Round", "RoundOutput", "StageKind", "apply_stage"]


class StageKind:
    """Keys of the per-stage random streams of a round (after ``Stream.PLUGIN`` and the round).

    Each stage draws from its own generator, derived from ``(seed, round, kind, position)``:
    changing one stage (another attack, more client transforms) leaves the draws of every
    other stage unchanged, so the defense and the server noise see the same randomness.
    """

    CLIENT_TRANSFORM = 1
    AGGREGATOR = 2
    SERVER_TRANSFORM = 3
    ATTACK = 4


@dataclass(frozen=True)
class Round:
    """What the caller of a pipeline knows about the round.

    Attributes
    ----------
    index : int
        Zero-based round number (keys the per-stage randomness).
    client_ids : tuple of int
        Ids of the clients whose updates are the rows, in row order.
    global_params : torch.Tensor
        ``(d,)`` flat global parameters ``x`` the clients started from.
    """

    index: int
    client_ids: tuple[int, ...]
    global_params: torch.Tensor


@dataclass(frozen=True)
class RoundOutput:
    """Everything one call of a pipeline produced.

    Attributes
    ----------
    params : torch.Tensor
        ``(d,)`` the new global parameters (the server optimiser's step).
    delta : torch.Tensor
        ``(d,)`` the aggregate after the server transforms, which the optimiser applied.
    result : AggregationResult
        What the aggregator decided (kept rows, scores, its metrics).
    rows_seen : torch.Tensor or None
        ``(n, d)`` the rows the server received in the clear (after client transforms),
        or ``None`` where the protocol hides them (the server then sees only the aggregate).
    metrics : dict of str to float
        The stages' returned metrics, the aggregator's, and those of stateful stages
        (``round_metrics()``, e.g. epsilon spent so far).
    """

    params: torch.Tensor
    delta: torch.Tensor
    result: AggregationResult
    rows_seen: torch.Tensor | None
    metrics: dict[str, float] = field(default_factory=dict)


def apply_stage(stage: Any, x: torch.Tensor, ctx: RoundContext) -> StageOutput:
    """Run one transform: its ``apply`` if it has one, else its ``__call__`` (no bound, no metrics)."""
    apply = getattr(stage, "apply", None)
    if callable(apply):
        out = apply(x, ctx)
        if not isinstance(out, StageOutput):
            raise ConfigError(f"{type(stage).__name__}.apply must return a StageOutput, got {type(out).__name__}")
        return out
    return StageOutput(value=stage(x, ctx))


def _check_stages(name: str, stages: Sequence[Any]) -> tuple[Any, ...]:
    if isinstance(stages, str | bytes) or not isinstance(stages, Sequence):
        raise ConfigError(f"{name} must be a sequence of stages, got {type(stages).__name__}")
    for i, s in enumerate(stages):
        if not (callable(s) or callable(getattr(s, "apply", None))):
            raise ConfigError(f"{name}[{i}] must be callable or have apply() (a transform), got {type(s).__name__}")
    return tuple(stages)


def _resolve_aggregator(secure: Aggregator | None, rule: Aggregator | None) -> Aggregator:
    for slot, agg in (("secure", secure), ("rule", rule)):
        if agg is not None and not isinstance(agg, Aggregator):
            raise ConfigError(f"{slot} must be an fl_core Aggregator, got {type(agg).__name__}")
    if secure is not None and not contract_of(secure).hides_rows:
        raise CompositionError(f"secure={type(secure).__name__} does not hide the rows; pass it as rule=")
    if rule is not None and contract_of(rule).hides_rows:
        raise CompositionError(
            f"rule={type(rule).__name__} is a secure protocol (it hides the rows); pass it as secure="
        )
    if secure is None:
        return rule if rule is not None else WeightedMean()
    if rule is None:
        return secure
    supports = getattr(secure, "supports_rule", None)
    if not (callable(supports) and supports(rule)):
        raise CompositionError(
            f"{type(rule).__name__} needs the plaintext rows, which {type(secure).__name__} hides, and "
            f"{type(secure).__name__} does not declare that it can run {type(rule).__name__} on hidden rows"
        )
    return secure.with_rule(rule)  # type: ignore[attr-defined]


class Pipeline:
    """One round's aggregation: attack, client transforms, secure protocol or robust rule, server transforms,
    server optimiser.

    Parameters
    ----------
    attack : callable, optional
        Replaces the malicious clients' rows (an ``UpdateTransform``); its own random stream.
    client : sequence of transforms
        Client-side ``(n, d) -> (n, d)`` transforms in order (clipping, local DP, DDG encoding).
    secure : Aggregator, optional
        A secure-aggregation protocol (``hides_rows``): SecAgg, SecAgg+, HE.
    rule : Aggregator, optional
        A robust rule (with its pre-aggregators, :class:`~defenses.robust.compose.Compose`) or
        a mean; after ``secure`` only where the protocol supports it. Neither: the weighted mean.
    server : sequence of transforms
        Server-side ``(d,) -> (d,)`` transforms (central DP noise, DDG decoding).
    optimizer : ServerOptimizer, optional
        Default FedAvg with server learning rate 1.
    seed : int
        Seed of the per-stage random streams.

    Raises
    ------
    CompositionError
        Stages that cannot work together (:mod:`fl_core.contracts`).
    ConfigError
        A stage of the wrong type.
    """

    def __init__(
        self,
        *,
        attack: Any = None,
        client: Sequence[Any] = (),
        secure: Aggregator | None = None,
        rule: Aggregator | None = None,
        server: Sequence[Any] = (),
        optimizer: ServerOptimizer | None = None,
        seed: int = 0,
    ) -> None:
        if attack is not None and not callable(attack):
            raise ConfigError(f"attack must be callable (an update transform), got {type(attack).__name__}")
        if optimizer is not None and not isinstance(optimizer, ServerOptimizer):
            raise ConfigError(f"optimizer must be a ServerOptimizer, got {type(optimizer).__name__}")
        self.attack = attack
        self.client = _check_stages("client", client)
        self.secure, self.rule = secure, rule
        self.aggregator = _resolve_aggregator(secure, rule)
        self.server = _check_stages("server", server)
        self.optimizer = optimizer if optimizer is not None else FedAvg()
        self.seed = as_int("seed", seed, minimum=0)
        check_round(
            update_transforms=[*([attack] if attack is not None else []), *self.client],
            aggregator=self.aggregator,
            aggregate_transforms=self.server,
        )

    def with_attack(self, attack: Any) -> Pipeline:
        """The same stages with ``attack`` in the attack slot (checked again)."""
        return Pipeline(attack=attack, client=self.client, secure=self.secure, rule=self.rule,
                        server=self.server, optimizer=self.optimizer, seed=self.seed)

    def check_cohort_size(self, n: int) -> None:
        """Raise before any training if the aggregator cannot run on ``n`` clients (Krum: ``n > 2f + 2``)."""
        self.aggregator.check_tolerance(n)

    def stages(self) -> list[tuple[str, Any]]:
        """``(slot, stage)`` of every stage in order: ``attack``, ``client.i``, ``aggregator``, ``server.j``,
        ``optimizer``."""
        out: list[tuple[str, Any]] = [("attack", self.attack)] if self.attack is not None else []
        out += [(f"client.{i}", s) for i, s in enumerate(self.client)]
        out.append(("aggregator", self.aggregator))
        out += [(f"server.{j}", s) for j, s in enumerate(self.server)]
        out.append(("optimizer", self.optimizer))
        return out

    def _ctx(self, base: RoundContext, kind: int, index: int, **kw: Any) -> RoundContext:
        g = torch_generator(self.seed, Stream.PLUGIN, base.round_idx, kind, index)
        return RoundContext(base.round_idx, base.client_ids, base.weights, base.global_params, g, **kw)

    def _client_side(self, updates: torch.Tensor, base: RoundContext, *,
                     attack: bool = True) -> tuple[torch.Tensor, float | None, dict]:
        shape, bound, metrics = tuple(updates.shape), None, {}
        steps = [(StageKind.ATTACK, 0, self.attack)] if attack and self.attack is not None else []
        steps += [(StageKind.CLIENT_TRANSFORM, i, s) for i, s in enumerate(self.client)]
        for kind, i, stage in steps:
            out = apply_stage(stage, updates, self._ctx(base, kind, i, bound=bound))
            updates, bound = out.value, out.bound
            metrics.update(out.metrics)
            if tuple(updates.shape) != shape:
                raise InvalidUpdateError(
                    f"update transform {type(stage).__name__} returned shape {tuple(updates.shape)}, expected {shape}"
                )
        return updates, bound, metrics

    def __call__(self, updates: torch.Tensor, weights: torch.Tensor, info: Round) -> RoundOutput:
        """Aggregate one round's cohort ``(n, d)`` with ``weights`` ``(n,)`` and step the global parameters.

        Raises
        ------
        InvalidUpdateError
            A cohort, weight vector or stage output of the wrong shape, or NaN/Inf.
        """
        if not isinstance(info, Round):
            raise ConfigError(f"info must be a fl_core.pipeline.Round, got {type(info).__name__}")
        x = info.global_params
        if updates.ndim != 2 or len(info.client_ids) != updates.shape[0] or updates.shape[1:] != x.shape:
            raise InvalidUpdateError(
                f"updates must be (n, d) = ({len(info.client_ids)}, {x.shape[0]}) for the round's clients "
                f"and parameters, got {tuple(updates.shape)}"
            )
        base = RoundContext(info.index, tuple(info.client_ids), weights, x, torch.Generator())
        rows, bound, metrics = self._client_side(updates, base)
        agg_ctx = self._ctx(base, StageKind.AGGREGATOR, 0, bound=bound)
        result = self.aggregator.aggregate(rows, weights, ctx=agg_ctx)
        hidden = contract_of(self.aggregator).hides_rows
        out = self.finish(result, info, bound=bound, n=rows.shape[0], metrics=metrics)
        return RoundOutput(params=out.params, delta=out.delta, result=result,
                           rows_seen=None if hidden else rows, metrics=out.metrics)

    def finish(self, result: AggregationResult, info: Round, *, bound: float | None, n: int,
               metrics: Mapping[str, float] | None = None) -> RoundOutput:
        """The server half of a round: server transforms and optimiser on an aggregate computed elsewhere.

        Where the aggregator's protocol runs outside this process (SecAgg+ between a
        Flower ``ClientApp`` and ``ServerApp``), its result comes here; the noise is sized by
        :meth:`~fl_core.aggregation.Aggregator.sensitivity` of ``bound`` (the client
        transforms' bound, :meth:`client_bound`) and ``n`` rows, as in :meth:`__call__`.
        ``rows_seen`` is ``None``: this path never sees rows.

        Examples
        --------
        >>> import torch
        >>> from fl_core.aggregation import AggregationResult
        >>> res = AggregationResult(aggregate=torch.tensor([0.5, 1.0]), kept=torch.ones(2, dtype=torch.bool))
        >>> Pipeline().finish(res, Round(0, (1, 2), torch.ones(2)), bound=None, n=2).params
        tensor([1.5000, 2.0000])
        """
        x = info.global_params
        base = RoundContext(info.index, tuple(info.client_ids), torch.ones(len(info.client_ids)), x,
                            torch.Generator())
        sens = None if bound is None else self.aggregator.sensitivity(bound, n)
        delta, metrics = result.aggregate, dict(metrics or {})
        for j, stage in enumerate(self.server):
            out = apply_stage(stage, delta, self._ctx(base, StageKind.SERVER_TRANSFORM, j, sensitivity=sens))
            delta = out.value
            metrics.update(out.metrics)
        check_update(delta, d=x.shape[0], name="aggregate")
        metrics = {**result.metrics, **metrics, **collect_metrics([s for _, s in self.stages()])}
        return RoundOutput(params=self.optimizer.step(x, delta), delta=delta, result=result, rows_seen=None,
                           metrics=metrics)

    def client_side_for(self, client_id: int, update: torch.Tensor, info: Round) -> torch.Tensor:
        """The client transforms (clip, local DP) on one client's own ``(d,)`` update, where that client runs.

        For a protocol that hides the rows, the client transforms run on each client
        before it encodes its input. Each stage's generator is keyed by the client id as
        well, so two clients never draw the same noise. The attack slot does not run here
        (an attacker changes its own update before this call).

        Examples
        --------
        >>> import torch
        >>> halve = lambda rows, ctx: rows / 2
        >>> Pipeline(client=[halve]).client_side_for(7, torch.tensor([3.0, 4.0]), Round(0, (7,), torch.zeros(2)))
        tensor([1.5000, 2.0000])
        """
        x = info.global_params
        if update.shape != x.shape:
            raise InvalidUpdateError(f"update must have shape {tuple(x.shape)}, got {tuple(update.shape)}")
        row, cid = update.reshape(1, -1), int(client_id)
        for i, stage in enumerate(self.client):
            g = torch_generator(self.seed, Stream.PLUGIN, info.index, StageKind.CLIENT_TRANSFORM, i, cid)
            ctx = RoundContext(info.index, (cid,), torch.ones(1), x, g)
            row = apply_stage(stage, row, ctx).value
            if tuple(row.shape) != (1, x.shape[0]):
                raise InvalidUpdateError(f"client transform {type(stage).__name__} changed the shape to "
                                         f"{tuple(row.shape)}")
        return row[0]

    def client_bound(self, d: int) -> float | None:
        """The norm bound the client transforms guarantee for every row (``None``: unbounded).

        It is a property of the transforms' configuration, not of the data: they run
        once on a zero row to read it.

        Examples
        --------
        >>> from fl_core.aggregation import StageOutput
        >>> class Clip:
        ...     def apply(self, rows, ctx):
        ...         return StageOutput(rows * (2.0 / rows.norm(dim=1, keepdim=True).clamp(min=2.0)), bound=2.0)
        >>> Pipeline(client=[Clip()]).client_bound(3), Pipeline().client_bound(3)
        (2.0, None)
        """
        base = RoundContext(0, (0,), torch.ones(1), torch.zeros(d), torch.Generator())
        return self._client_side(torch.zeros(1, d), base, attack=False)[1]

    def state_dict(self) -> dict[str, Any]:
        """``{slot: stage.state_dict()}`` for every stage that has state (see :meth:`stages`)."""
        out = {}
        for slot, stage in self.stages():
            save = getattr(stage, "state_dict", None)
            if callable(save):
                try:
                    out[slot] = save()
                except NotImplementedError:
                    continue
        return out

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` of a pipeline with the same stages.

        All or nothing: when one stage refuses its state, the stages already restored go
        back to the state they had, so the pipeline is never half-loaded.

        Raises
        ------
        fl_core.state.StateError
            A slot this pipeline does not have, or a stage's own error for its state.
        """
        stages = dict(self.stages())
        unknown = sorted(set(state) - set(stages))
        if unknown:
            raise StateError(f"pipeline state has slots {unknown} this pipeline does not have ({sorted(stages)})")
        before = {slot: stages[slot].state_dict() for slot in state}
        done: list[str] = []
        try:
            for slot, sub in state.items():
                stages[slot].load_state_dict(sub)
                done.append(slot)
        except Exception:
            for slot in done:
                stages[slot].load_state_dict(before[slot])
            raise

    def __repr__(self) -> str:
        inner = ", ".join(f"{slot}={type(s).__name__}" for slot, s in self.stages())
        return f"Pipeline({inner})"
