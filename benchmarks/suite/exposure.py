"""Privacy exposure of a pipeline's clients to its server: a reconstruction attack on what the server observes.

The threat suite reports, for every attack x pipeline cell, how much of a client's
training data the (honest-but-curious) server can recover from exactly what the
pipeline shows it. :func:`measure_exposure` runs one probe round:

1. Each probe client ``i`` (id ``client_ids[i]``) takes one training example of its
   dataset ``(z_i, y_i)`` (batch 1, drawn with a generator derived from ``seed`` and its
   id) and computes a one-step FedSGD update ``u_i = -lr * grad CE(model(z_i), y_i)``, the
   gradient taken w.r.t. the global parameters ``x`` (flat, :mod:`fl_core.params` order).
2. The given :class:`~fl_core.pipeline.Pipeline` runs on the stacked rows ``(n, d)``
   (weights 1) with ``Round(index=0, client_ids, global_params=x)``.
3. The server observes ``rows_seen[target]`` (one client's row, after the client
   transforms, e.g. local DP noise) where the rows reach it in the clear, else only
   the aggregate ``delta`` (a secure protocol such as SecAgg+ or HE hides the rows).
   Visible rows in an encoded form (distributed DP's integers modulo ``2^b`` summed
   without a secure protocol) are decoded first, as the server decodes their sum.
   Where the protocol shows the server partial means (grouped SecAgg+:
   ``result.seen``), it observes the mean of the target's group instead.
4. The server reads the observation as a gradient, ``-observation / lr`` (``lr`` is
   public), and runs a gradient-inversion attack on it through a
   :class:`~attacks.reconstruction.ServerView`: a batch of one example for a row; for
   an aggregate, the mean gradient of the ``n`` clients is the gradient of their joint
   batch, so the attack inverts a batch of ``n`` (as ``flsec recon``'s ``secagg-10``).
5. Only this scoring code sees the ground truth: ``psnr`` is the target's image against
   the reconstruction of its row, or, for an aggregate, against its best-matching
   candidate of the batch (the same honest client in every pipeline, so columns compare);
   ``psnr_max`` is the most exposed probe client.

The attack is Inverting Gradients (Geiping et al., NeurIPS 2020: cosine gradient
distance, TV prior, signed Adam, box projection; the label of a single sample by iDLG,
Zhao et al. 2020), chosen because it is reliable on the suite's MLP (200, 200). Measured
on one core against a visible row: with the defaults (300 iterations, 2 restarts)
44-81 dB (median 69 dB) over 8 seeds on Fashion-MNIST and 63 dB on digits, against a
dataset-mean baseline of 9-14 dB; DLG (Zhu et al. 2019: L-BFGS, L2 distance, joint
dummy labels) failed on 2 of 3 Fashion-MNIST images (8-9 dB after 30 iterations) and,
being an L2 match, is thrown off by any rescaling (clipping) of the update. The cosine
distance is scale-free, so a clipped row (central DP's clip, SecAgg+'s per-coordinate
clip) is inverted as well as a raw one. DLG stays available (``attack="dlg"``; with
the iDLG label it is exact on a visible digits row) for comparison. Under SecAgg+ with
5 clients the same attack on the aggregate reached 29-43 dB for the most exposed
client (the mean of batch-1 MLP gradients still leaks), and local DP with ``z = 1``
gave 6-8 dB, below the baseline.

Cost, measured on one core (``torch.set_num_threads(1)``) with the defaults: 1-3 s per
call on Fashion-MNIST with visible rows, 1.5-4 s under SecAgg+ with 5 or 10 clients (the
protocol itself included), about 1 s on digits: inside the 10 s budget.

Examples
--------
>>> import torch
>>> from fl_core import build_model, load_dataset
>>> from fl_core.pipeline import Pipeline
>>> split = load_dataset("digits")
>>> model = build_model("mlp", input_shape=(1, 8, 8), num_classes=10, generator=torch.Generator().manual_seed(0))
>>> clients = [split.train.subset(range(30 * i, 30 * i + 30)) for i in range(3)]
>>> out = measure_exposure(pipeline=Pipeline(), model=model, clients=clients, client_ids=[0, 1, 2],
...                        lr=0.1, seed=0, iterations=100)
>>> out["observed"], out["attack"], out["psnr"] > out["baseline_psnr"] + 20
('row', 'inverting-gradients', True)
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from attacks.reconstruction import DLG, InvertingGradients, ServerView, best_match_psnr, idlg_label, psnr
from attacks.reconstruction import observe_gradient as _client_gradient
from fl_core.aggregation import RoundContext
from fl_core.checks import as_int, as_real, is_int
from fl_core.contracts import contract_of
from fl_core.data.dataset import ArrayDataset
from fl_core.errors import ConfigError, DatasetError
from fl_core.params import flatten_params, num_params
from fl_core.pipeline import Pipeline, Round, apply_stage
from fl_core.rng import Stream, torch_generator

__all__ = ["EXPOSURE_ATTACKS", "PSNR_CAP", "measure_exposure"]

log = logging.getLogger(__name__)

#: The reconstruction attacks :func:`measure_exposure` runs, with their default iterations.
EXPOSURE_ATTACKS: dict[str, int] = {"inverting-gradients": 300, "dlg": 50}

#: PSNRs are capped here (dB), so an exact reconstruction (``inf``) stays a finite number in reports.
PSNR_CAP = 100.0

_EXAMPLE_KEY, _ATTACK_KEY = 31, 32  # keys of the streams under Stream.USER


def _check_clients(clients: Sequence[ArrayDataset], client_ids: Sequence[int]) -> tuple[int, ...]:
    if isinstance(clients, str | bytes) or not isinstance(clients, Sequence):
        raise ConfigError(f"clients must be a sequence of ArrayDataset, got {type(clients).__name__}")
    if isinstance(client_ids, str | bytes) or not isinstance(client_ids, Sequence):
        raise ConfigError(f"client_ids must be a sequence of ints, got {type(client_ids).__name__}")
    if len(clients) == 0:
        raise ConfigError("clients is empty: the probe needs at least one client")
    if len(client_ids) != len(clients):
        raise ConfigError(f"client_ids has {len(client_ids)} ids for {len(clients)} clients; need one id per client")
    ids = tuple(as_int(f"client_ids[{i}]", c, minimum=0) for i, c in enumerate(client_ids))
    if len(set(ids)) != len(ids):
        dup = sorted({c for c in ids if ids.count(c) > 1})
        raise ConfigError(f"client_ids must be distinct, got duplicates {dup}")
    shape = None
    for i, ds in enumerate(clients):
        if not isinstance(ds, ArrayDataset):
            raise ConfigError(f"clients[{i}] must be an ArrayDataset, got {type(ds).__name__}")
        if len(ds) == 0:
            raise DatasetError(f"clients[{i}] (id {ids[i]}) has no examples")
        if shape is None:
            shape = tuple(ds.x.shape[1:])
        elif tuple(ds.x.shape[1:]) != shape:
            raise DatasetError(
                f"clients[{i}] (id {ids[i]}) has inputs of shape {tuple(ds.x.shape[1:])}, clients[0] has {shape}"
            )
    return ids


def _check_bounds(bounds: tuple[float, float] | None, clients: Sequence[ArrayDataset]) -> tuple[float, float]:
    if bounds is None:
        lo = min(float(ds.x.min()) for ds in clients)
        hi = max(float(ds.x.max()) for ds in clients)
        if not hi > lo:
            raise DatasetError(f"the clients' inputs are constant ({lo}); pass bounds= with the data's range")
        return lo, hi
    if isinstance(bounds, str | bytes) or not isinstance(bounds, Sequence) or len(bounds) != 2:
        raise ConfigError(f"bounds must be (low, high), got {bounds!r}")
    lo, hi = as_real("bounds[0]", bounds[0]), as_real("bounds[1]", bounds[1])
    if not lo < hi:
        raise ConfigError(f"bounds must be (low, high) with low < high, got ({lo}, {hi})")
    return lo, hi


def _decode_row(pipeline: Pipeline, row: torch.Tensor, info: Round) -> tuple[torch.Tensor, bool]:
    """A visible row as the server can read it: modular rows (distributed DP without a secure sum) decoded.

    The server knows the encoding (it decodes the sum), so it applies the pipeline's decoders
    (server transforms made for a ``"modular_sum"``) to the one row; copies of them, so the
    pipeline's state (its DP ledger) is untouched. Returns the row and whether it was decoded.
    """
    rows = "real"
    for stage in pipeline.client:
        rows = contract_of(stage).rows
    if rows == "real":
        return row, False
    decoders = [s for s in pipeline.server if "modular_sum" in (contract_of(s).needs_output or ())]
    if not decoders:
        log.warning("exposure: the visible rows are %r and the pipeline has no decoder; attacking them raw", rows)
        return row, False
    ctx = RoundContext(info.index, info.client_ids, torch.ones(len(info.client_ids)), info.global_params,
                       torch.Generator())
    for stage in decoders:
        row = apply_stage(copy.deepcopy(stage), row, ctx).value
    return row, True


def _cap(v: float) -> float:
    return min(float(v), PSNR_CAP)


def measure_exposure(
    *,
    pipeline: Pipeline,
    model: nn.Module,
    clients: Sequence[ArrayDataset],
    client_ids: Sequence[int],
    lr: float,
    seed: int,
    target: int = 0,
    attack: str = "inverting-gradients",
    iterations: int | None = None,
    restarts: int = 2,
    bounds: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """Reconstruct a probe client's training example from what the server observes in ``pipeline``.

    Parameters
    ----------
    pipeline : Pipeline
        A fresh pipeline built for the probe (its stages' state, e.g. DP ledgers, records the
        probe round), without an attack.
    model : torch.nn.Module
        The global model as the server sent it; not modified (a CPU copy is used, in eval mode).
    clients : sequence of ArrayDataset
        The probe clients' training data, one dataset per client, inputs of one shape.
    client_ids : sequence of int
        Distinct non-negative ids of the clients, in the order of ``clients`` (the rows' order).
    lr : float
        Client learning rate ``> 0`` of the one-step FedSGD update ``-lr * gradient`` (public).
    seed : int
        Seeds the choice of each client's example (keyed by its id) and the attack's initialisation.
    target : int
        Index into ``clients`` of the client whose row the server attacks when rows are visible.
    attack : str
        ``"inverting-gradients"`` (default) or ``"dlg"`` (:data:`EXPOSURE_ATTACKS`).
    iterations : int, optional
        Attack iterations; default :data:`EXPOSURE_ATTACKS` ``[attack]`` (300 Adam steps for
        Inverting Gradients, 50 L-BFGS steps for DLG).
    restarts : int
        Random restarts of Inverting Gradients (ignored by DLG).
    bounds : (float, float), optional
        The data's value range (public normalisation): the box of Inverting Gradients and,
        as ``high - low``, the PSNR data range. Default: min and max over the clients' inputs.

    Returns
    -------
    dict
        ``psnr`` (dB, capped at :data:`PSNR_CAP`): the target's true image against the
        reconstruction where its row was visible; where only the aggregate was seen, against its
        best-matching candidate of the batch. ``psnr_max``: the most exposed probe client (the
        target where a row was visible). ``observed``: ``"row"``,
        ``"group mean"`` or ``"aggregate"``. ``decoded``: the visible row was modular and decoded. ``attack``,
        ``iterations``, ``restarts``. ``baseline_psnr``: the target's score
        for the mean image of all the clients' data (what the data prior alone gives; an attack
        that learnt nothing scores about this). ``psnr_clients``: ``{client id: best-match PSNR}``
        for an aggregate, ``{target id: psnr}`` for a row. ``psnr_mean`` over those. ``target``,
        ``target_id``, ``num_clients``, ``label_correct`` (the recovered label of a single visible
        row, else ``None``), ``attack_loss`` (the attack's final objective), ``data_range``,
        ``seconds`` (wall time of the call).

    Raises
    ------
    ConfigError
        Empty ``clients``, ``client_ids`` not one distinct non-negative int per client,
        ``target`` out of range, a pipeline with an attack, ``lr <= 0``, an unknown ``attack``,
        bad ``iterations``, ``restarts`` or ``bounds``.
    DatasetError
        A client without examples, or clients whose inputs differ in shape.
    """
    t0 = time.perf_counter()
    if not isinstance(pipeline, Pipeline):
        raise ConfigError(f"pipeline must be a fl_core.pipeline.Pipeline, got {type(pipeline).__name__}")
    if pipeline.attack is not None:
        raise ConfigError(
            f"the probe pipeline must not carry an attack (got {type(pipeline.attack).__name__}); "
            "build a fresh pipeline for the probe"
        )
    if not isinstance(model, nn.Module) or num_params(model) == 0:
        raise ConfigError(f"model must be a torch.nn.Module with trainable parameters, got {type(model).__name__}")
    ids = _check_clients(clients, client_ids)
    n = len(ids)
    if not is_int(target) or not 0 <= int(target) < n:
        raise ConfigError(f"target must be an index into the {n} clients, in [0, {n - 1}], got {target!r}")
    target = int(target)
    lr = as_real("lr", lr, low=0.0, low_open=True)
    seed = as_int("seed", seed, minimum=0)
    if attack not in EXPOSURE_ATTACKS:
        raise ConfigError(f"attack must be one of {sorted(EXPOSURE_ATTACKS)}, got {attack!r}")
    iterations = EXPOSURE_ATTACKS[attack] if iterations is None else as_int("iterations", iterations, minimum=1)
    restarts = as_int("restarts", restarts, minimum=1)
    lo, hi = _check_bounds(bounds, clients)
    data_range = hi - lo

    # -- clients: one example each, one FedSGD step (the caller's model is never touched)
    server_model = copy.deepcopy(model).cpu().float().eval()
    x_global = flatten_params(server_model)
    images, labels, rows = [], [], []
    for ds, cid in zip(clients, ids, strict=True):
        g = torch_generator(seed, Stream.USER, _EXAMPLE_KEY, cid)
        j = int(torch.randint(len(ds), (1,), generator=g))
        xi, yi = ds.x[j : j + 1].detach().cpu().float(), ds.y[j : j + 1].detach().cpu().long()
        images.append(xi)
        labels.append(yi)
        rows.append(-lr * _client_gradient(server_model, xi, yi).observed)
    truth = torch.cat(images)
    updates = torch.stack(rows)

    # -- the pipeline, and what the server observes
    info = Round(index=0, client_ids=ids, global_params=x_global.clone())
    out = pipeline(updates, torch.ones(n), info)
    decoded = False
    if out.rows_seen is not None:
        observed, decoded = _decode_row(pipeline, out.rows_seen[target], info)
        kind, num_clients = "row", 1
    elif out.result.seen is not None:  # the protocol shows the server partial means (grouped SecAgg+)
        group = (out.result.seen_owner == out.result.seen_owner[target]).nonzero().flatten()
        observed, kind, num_clients = out.result.seen[out.result.seen_owner[target]], "group mean", len(group)
    else:
        observed, kind, num_clients = out.delta, "aggregate", n
    observed = observed.detach().cpu().float()
    with torch.no_grad():
        num_classes = int(server_model(torch.zeros(1, *truth.shape[1:])).shape[1])
    view = ServerView(
        model=copy.deepcopy(server_model),
        params=x_global,
        observed=-observed / lr,
        kind="gradient",
        batch_size=1,
        input_shape=tuple(truth.shape[1:]),
        num_classes=num_classes,
        num_clients=num_clients,
    )

    # -- the attack (sees only the view)
    g_attack = torch_generator(seed, Stream.USER, _ATTACK_KEY)
    batch = max(64, num_clients)
    if attack == "inverting-gradients":
        inverter = InvertingGradients(iterations=iterations, restarts=restarts, bounds=(lo, hi), max_batch=batch)
        rec = inverter.reconstruct(view, generator=g_attack)
    else:
        known = torch.tensor([idlg_label(view)]) if num_clients == 1 else None
        rec = DLG(iterations=iterations, max_batch=batch).reconstruct(view, generator=g_attack, labels=known)
    rec_x = rec.x.clamp(lo, hi)  # the data's range is public

    # -- scoring (the only place that sees the ground truth)
    prior = torch.cat([ds.x.detach().cpu().float() for ds in clients]).mean(dim=0, keepdim=True)
    label_correct = None
    if kind == "row":
        scored = {ids[target]: _cap(psnr(rec_x, truth[target : target + 1], data_range=data_range))}
        best = scored[ids[target]]
        baseline = _cap(psnr(prior, truth[target : target + 1], data_range=data_range))
        if rec.labels is not None and rec.labels.numel() == 1:
            label_correct = int(rec.labels[0]) == int(labels[target][0])
    else:
        per_client = best_match_psnr(rec_x, truth, data_range=data_range)
        scored = {cid: _cap(v) for cid, v in zip(ids, per_client.tolist(), strict=True)}
        best = scored[ids[target]]
        baseline = _cap(float(best_match_psnr(prior, truth[target : target + 1], data_range=data_range)[0]))
    seconds = time.perf_counter() - t0
    log.info(
        "exposure: %s on the %s of %d client(s): PSNR %.2f dB (baseline %.2f dB), %.2f s",
        attack, kind, num_clients, best, baseline, seconds,
    )
    return {
        "psnr": best,
        "psnr_max": max(scored.values()),
        "observed": kind,
        "decoded": decoded,
        "attack": attack,
        "iterations": iterations,
        "restarts": restarts if attack == "inverting-gradients" else 1,
        "baseline_psnr": baseline,
        "psnr_clients": scored,
        "psnr_mean": sum(scored.values()) / len(scored),
        "target": target,
        "target_id": ids[target],
        "num_clients": n,
        "label_correct": label_correct,
        "attack_loss": float(rec.loss),
        "data_range": data_range,
        "seconds": seconds,
    }
