"""`flsec recon run`: the data-reconstruction study, attacks x defenses, with a PNG grid of reconstructions.

Each cell runs one attack against one defense on a few images of the study's dataset
(Fashion-MNIST, or digits with ``--quick``) with the sigmoid LeNet of Zhu et al., scores
the reconstructions against the ground truth (which only this scoring code sees) and
writes ``cells/<attack>__<defense>.json`` atomically; a re-run skips finished cells.
``report.md`` holds the table and ``grid.png`` ground truth vs reconstructions.

Defenses: ``none``; ``prune-p`` (top-k sparsification: the fraction ``p`` of smallest-magnitude
coordinates zeroed, Zhu et al. 2019); ``dp-z`` (L2 clip to C = 1 and Gaussian noise
``N(0, (z C)^2)`` through ``defenses.dp``); ``batch-B`` (the client's gradient over B images);
``steps-K`` (a K-step FedAvg update; gradient attacks treat ``-update / (lr K)`` as a gradient,
``inverting-fedavg`` unrolls it); ``secagg-10`` (10 clients through SecAgg+, the server sees
only their mean; the attack inverts it as a batch of 10 and is scored against the best-matching
image of any client).

LOKI rows (Zhao et al., IEEE S&P 2024; :mod:`attacks.reconstruction.loki`): a malicious server
sends each of 10 clients its own imprint block and reconstructs every client's samples from the
aggregate. ``loki`` x ``none``: the server sees each client's gradient; ``secagg-10``: the
clients' gradients go through SecAgg+ (the real protocol roles, :func:`secagg_plus_round`,
signed setting) without the model check; ``secagg-10-modelcheck``: the same, with every client
binding the digest of the model it received into its signed key advertisement (the round aborts:
nothing is recovered). ``imprint`` x ``secagg-10-modelcheck`` is what the check still lets
through: one imprint model with the same number of rows (10 blocks' worth of bins) sent to all.
The recovery metric is the share of the clients' samples whose best-matching candidate has PSNR
above 40 dB (:data:`RECOVERY_PSNR_DB`), among that client's own candidates where the attack
attributes them (LOKI), among all candidates otherwise.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from attacks.reconstruction import (
    DLG,
    IDLG,
    ImprintAttack,
    InvertingFedAvg,
    InvertingGradients,
    LokiAttack,
    ServerView,
    SigmoidLeNet,
    UnsupportedBatchError,
    best_match_psnr,
    brightness_thresholds,
    label_accuracy,
    observe_gradient,
    observe_update,
    plant_imprint,
    plant_loki,
    ssim,
)
from fl_core import load_dataset
from fl_core.rng import torch_generator

log = logging.getLogger(__name__)

GRADIENT_ATTACKS = ("dlg", "idlg", "inverting-gradients")
DEFENSES = (
    "none",
    "prune-0.1",
    "prune-0.2",
    "prune-0.5",
    "prune-0.9",
    "dp-0.01",
    "dp-0.1",
    "dp-1",
    "batch-4",
    "batch-8",
    "steps-5",
    "secagg-10",
)
IMPRINT_DEFENSES = ("none", "prune-0.5", "dp-0.1", "secagg-10")
LOKI_DEFENSES = ("none", "secagg-10", "secagg-10-modelcheck")
RECOVERY_PSNR_DB = 40.0
"""A sample counts as recovered when its best-matching candidate scores above this PSNR."""


@dataclass(frozen=True)
class StudyConfig:
    dataset: str
    n_images: int
    dlg_iterations: int
    ig_iterations: int
    ig_restarts: int
    imprint_batch: int = 16
    imprint_bins: int = 64
    seed: int = 0
    lr: float = 0.1
    loki_clients: int = 10
    loki_batch: int = 8
    loki_bins: int = 32

    @staticmethod
    def make(quick: bool) -> StudyConfig:
        if quick:
            return StudyConfig(
                "digits", n_images=2, dlg_iterations=30, ig_iterations=200, ig_restarts=1, imprint_batch=3
            )
        return StudyConfig("fashion-mnist", n_images=2, dlg_iterations=100, ig_iterations=400, ig_restarts=1)


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _prune(v: torch.Tensor, p: float) -> torch.Tensor:
    k = round(p * v.numel())
    if k == 0:
        return v.clone()
    out = v.clone()
    out[v.abs().argsort()[:k]] = 0.0
    return out


def _dp(v: torch.Tensor, z: float, g: torch.Generator) -> torch.Tensor:
    from defenses.dp import GaussianMechanism, L2Clip

    clipped = L2Clip(clip_norm=1.0)(v.unsqueeze(0))[0]
    return GaussianMechanism(noise_multiplier=z, sensitivity=1.0)(clipped, generator=g).float()


def _secagg_mean(rows: torch.Tensor, seed: int) -> torch.Tensor:
    from secure_agg import SecAggPlusAggregator

    clip = float(rows.abs().max()) * 1.01 + 1e-12
    return SecAggPlusAggregator(clip=clip, gamma=0.0, delta=0.0, seed=seed)(rows).float()


def _replace(view: ServerView, observed: torch.Tensor, **kw: object) -> ServerView:
    fields = {
        k: getattr(view, k)
        for k in (
            "model",
            "params",
            "kind",
            "batch_size",
            "input_shape",
            "num_classes",
            "num_samples",
            "local_steps",
            "lr",
            "num_clients",
        )
    }
    fields.update(kw)
    return ServerView(observed=observed, **fields)  # type: ignore[arg-type]


def _observe(cfg: StudyConfig, model, defense: str, x_pool, y_pool, i: int, g: torch.Generator):
    """The view the server gets for target image ``i`` under ``defense``, and the true images behind it."""
    if defense.startswith("batch-"):
        b = int(defense.split("-")[1])
        x, y = x_pool[i * b : (i + 1) * b], y_pool[i * b : (i + 1) * b]
        return observe_gradient(model, x, y), x, y
    x, y = x_pool[i : i + 1], y_pool[i : i + 1]
    if defense.startswith("steps-"):
        k = int(defense.split("-")[1])
        view = observe_update(model, x, y, lr=cfg.lr, batch_size=1, epochs=k, generator=g)
        return view, x, y
    if defense.startswith("secagg-"):
        n = int(defense.split("-")[1])
        xs, ys = x_pool[i * n : (i + 1) * n], y_pool[i * n : (i + 1) * n]
        rows = torch.stack([observe_gradient(model, xs[j : j + 1], ys[j : j + 1]).observed for j in range(n)])
        base = observe_gradient(model, x, y)
        return _replace(base, _secagg_mean(rows, cfg.seed + i), num_clients=n), xs, ys
    view = observe_gradient(model, x, y)
    if defense.startswith("prune-"):
        return _replace(view, _prune(view.observed, float(defense.split("-")[1]))), x, y
    if defense.startswith("dp-"):
        return _replace(view, _dp(view.observed, float(defense.split("-")[1]), g)), x, y
    return view, x, y


def _as_gradient(view: ServerView) -> ServerView:
    """A naive attacker's reading of a K-step update as one gradient: ``-update / (lr K)``."""
    assert view.lr is not None
    return _replace(
        view,
        -view.observed / (view.lr * view.local_steps),
        kind="gradient",
        local_steps=1,
        lr=None,
        num_samples=view.batch_size,
    )


def _attack(cfg: StudyConfig, name: str, view: ServerView, bounds, g):
    if name == "inverting-fedavg":
        return InvertingFedAvg(iterations=cfg.ig_iterations, restarts=cfg.ig_restarts, bounds=bounds).reconstruct(
            view, generator=g
        )
    if view.kind == "update":
        view = _as_gradient(view)
    if name == "dlg":
        return DLG(iterations=cfg.dlg_iterations).reconstruct(view, generator=g)
    if name == "idlg":
        return IDLG(iterations=cfg.dlg_iterations).reconstruct(view, generator=g)
    return InvertingGradients(iterations=cfg.ig_iterations, restarts=cfg.ig_restarts, bounds=bounds).reconstruct(
        view, generator=g
    )


def score_images(rec_x: torch.Tensor, x: torch.Tensor, rng: float, win: int) -> dict[str, float]:
    """Scores of reconstructed images ``rec_x`` against the true ``x`` (scoring code only: attacks never see ``x``).

    ``psnr`` / ``psnr_max``: the mean / best over the true images of the best-matching candidate's PSNR
    (data range ``rng``, capped at 100 dB so that exact recoveries average); ``ssim``: the SSIM
    (window ``win``) of each true image with its nearest candidate; ``share_40db``: the share above 40 dB.

    Examples
    --------
    >>> x = torch.zeros(1, 1, 8, 8)
    >>> round(score_images(x + 0.1, x, 1.0, 7)["psnr"], 6)
    20.0
    """
    best = best_match_psnr(rec_x, x, data_range=rng)
    a = rec_x.reshape(len(rec_x), -1).double()
    b = x.reshape(len(x), -1).double()
    j = torch.cdist(b, a).argmin(dim=1)
    ss = [ssim(rec_x[int(j[t])], x[t], data_range=rng, window_size=win) for t in range(len(x))]
    finite = best.clamp(max=100.0)
    return {
        "psnr": float(finite.mean()),
        "psnr_max": float(finite.max()),
        "ssim": float(sum(ss) / len(ss)),
        "share_40db": float((best > 40).float().mean()),
    }


def run_cell(cfg: StudyConfig, attack: str, defense: str, out: Path) -> dict:
    """Run (or load) one cell; returns its record."""
    path = out / "cells" / f"{attack}__{defense}.json"
    if path.exists():
        return json.loads(path.read_text())
    split = load_dataset(cfg.dataset)
    shape = tuple(split.test.x.shape[1:])
    rng = float(split.train.x.max() - split.train.x.min())
    bounds = (float(split.train.x.min()), float(split.train.x.max()))
    win = 11 if min(shape[1:]) >= 11 else 7
    t0 = time.perf_counter()
    rows, recon = [], []
    for i in range(cfg.n_images):
        g = torch_generator(cfg.seed, 8, i)
        if attack == "imprint":
            body = SigmoidLeNet(input_shape=shape, num_classes=10, generator=g, init="default")
            n_total = cfg.imprint_batch * (10 if defense.startswith("secagg") else 1)
            bins = max(cfg.imprint_bins, 2 * n_total)
            model = plant_imprint(
                body, input_shape=shape, thresholds=brightness_thresholds(split.test.x[:2000], num_bins=bins)
            )
            pool = torch.randperm(len(split.train), generator=g)[:n_total]
            xp, yp = split.train.x[pool], split.train.y[pool]
            nb = cfg.imprint_batch
            if defense.startswith("secagg"):
                rws = torch.stack(
                    [
                        observe_gradient(model, xp[j * nb : (j + 1) * nb], yp[j * nb : (j + 1) * nb]).observed
                        for j in range(10)
                    ]
                )
                base = observe_gradient(model, xp[:nb], yp[:nb])
                view, x = _replace(base, _secagg_mean(rws, cfg.seed + i), num_clients=10), xp
            else:
                view, x, _ = _observe(cfg, model, defense, xp, yp, 0, g)
                view = _replace(view, view.observed, batch_size=len(x), num_samples=len(x))
            rec = ImprintAttack().reconstruct(view)
            rows.append(score_images(rec.x, x, rng, win))
            recon.append((x[:1], rec.x[torch.cdist(x[:1].flatten(1), rec.x.flatten(1)).argmin()].unsqueeze(0)))
            continue
        model = SigmoidLeNet(input_shape=shape, num_classes=10, generator=g)
        order = torch.randperm(len(split.test), generator=g)
        view, x, y = _observe(cfg, model, defense, split.test.x[order], split.test.y[order], i, g)
        try:
            rec = _attack(cfg, attack, view, bounds, g)
        except UnsupportedBatchError as exc:
            record = {"attack": attack, "defense": defense, "status": f"n/a: {exc}"}
            _atomic_write(path, json.dumps(record, indent=1))
            return record
        row = score_images(rec.x, x, rng, win)
        if rec.labels is not None and len(rec.labels) == len(y):
            row["label_acc"] = label_accuracy(rec.labels, y)
        rows.append(row)
        j = int(torch.cdist(x[:1].flatten(1), rec.x.flatten(1)).argmin())
        recon.append((x[:1], rec.x[j : j + 1]))
    keys = sorted({k for r in rows for k in r})
    record = {
        "attack": attack,
        "defense": defense,
        "status": "ok",
        "dataset": cfg.dataset,
        "n_images": cfg.n_images,
        "seconds": time.perf_counter() - t0,
    }
    for k in keys:
        vals = [r[k] for r in rows if k in r]
        record[k] = sum(vals) / len(vals)
    tensor_path = out / "cells" / f"{attack}__{defense}.pt"
    tensor_path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"truth": torch.cat([a for a, _ in recon]), "recon": torch.cat([b for _, b in recon])}, tensor_path)
    _atomic_write(path, json.dumps(record, indent=1))
    return record


@dataclass
class SecAggRoundOutcome:
    """What the server gets from one SecAgg+ round: the mean of the survivors, or nothing."""

    mean: torch.Tensor | None
    survivors: tuple[int, ...] = ()
    client_aborts: dict[int, str] = field(default_factory=dict)
    abort: str | None = None


def secagg_plus_round(
    rows: torch.Tensor,
    *,
    seed: int,
    digests: Sequence[bytes] | None = None,
    round_id: int = 0,
    active: bool = True,
    gamma: float = 0.05,
    delta: float = 0.1,
) -> SecAggRoundOutcome:
    """Client ``i`` (id ``i + 1``) submits ``rows[i]`` through one SecAgg+ round of the real protocol roles.

    The rows are encoded in fixed point (:class:`~secure_agg.quantize.FixedPointEncoder`,
    clip just above the largest entry), run through :func:`~secure_agg.runner.run_secagg`
    on the Harary graph of :func:`~secure_agg.graph.choose_k_t` (``gamma``, ``delta``;
    10 clients give ``k = 6``, ``t = 5``), in the signed setting by default, and the
    server decodes the mean. ``digests[i]`` is the model digest client ``i`` binds
    (``None``: no model check). A round the protocol aborts returns ``mean=None``
    with the reason.
    """
    from secure_agg.errors import ProtocolAbortError
    from secure_agg.graph import CommunicationGraph, choose_k_t
    from secure_agg.params import SecAggParams
    from secure_agg.quantize import FixedPointEncoder
    from secure_agg.runner import run_secagg

    n, d = rows.shape
    rng = np.random.default_rng(seed)
    clip = float(rows.abs().max()) * 1.01 + 1e-30
    enc = FixedPointEncoder(clip=clip, ring_bits=32, weight_bound=n)
    X = rows.detach().double().numpy()
    ids = list(range(1, n + 1))
    inputs = {u: enc.encode(X[u - 1], weight=1, rng=rng) for u in ids}
    k, t = choose_k_t(n, gamma=gamma, delta=delta)
    graph = CommunicationGraph.complete(ids) if k >= n - 1 else CommunicationGraph.harary(ids, k=k, rng=rng)
    params = SecAggParams(round_id=round_id, t=t, d=d + 1, active=active)
    model_digests = None if digests is None else {u: digests[u - 1] for u in ids}
    try:
        res = run_secagg(inputs, params=params, graph=graph, model_digests=model_digests)
    except ProtocolAbortError as e:
        return SecAggRoundOutcome(mean=None, abort=e.reason)
    mean, _ = enc.decode_mean(res.sum)
    return SecAggRoundOutcome(
        mean=torch.from_numpy(mean).float(), survivors=res.survivors, client_aborts=dict(res.client_aborts)
    )


def recovered_share(
    candidates: torch.Tensor, truth: torch.Tensor, *, data_range: float, owner: torch.Tensor | None = None,
    truth_owner: torch.Tensor | None = None,
) -> torch.Tensor:
    """Best-match PSNR of each true sample; with owners, only against its own client's candidates.

    Returns the ``(len(truth),)`` PSNRs (``-inf`` for a sample whose client has no candidate);
    the recovered share is ``(psnr > RECOVERY_PSNR_DB).float().mean()``.
    """
    if owner is None or truth_owner is None:
        return best_match_psnr(candidates, truth, data_range=data_range)
    out = torch.full((len(truth),), -math.inf, dtype=torch.float64)
    for c in truth_owner.unique().tolist():
        mine, theirs = truth_owner == c, owner == c
        if bool(theirs.any()):
            out[mine] = best_match_psnr(candidates[theirs], truth[mine], data_range=data_range)
    return out


def loki_experiment(
    split, *, defense: str, clients: int, batch: int, bins: int, seed: int, public: torch.Tensor,
    dlg_iterations: int = 20,
) -> dict:
    """One LOKI round on ``clients`` clients of ``batch`` training images each (see the module docstring).

    ``defense``: ``"none"`` (the server sees every client's gradient), ``"secagg-10"`` (SecAgg+
    without the model check), ``"secagg-10-modelcheck"`` (with it); ``"imprint-modelcheck"``:
    the server sends all clients the same imprint model of ``clients * bins`` bins (what the
    check lets through); ``"honest-modelcheck"``: an honest server sends all clients the same
    honest model (the sigmoid LeNet) and runs DLG on the SecAgg+ mean as one batch of all
    ``clients * batch`` samples (``dlg_iterations``). Returns the record fields (``recovered``,
    PSNRs, ``attributed``).
    """
    g = torch_generator(seed, 19)
    shape = tuple(split.train.x.shape[1:])
    rng = float(split.train.x.max() - split.train.x.min())
    body = SigmoidLeNet(input_shape=shape, num_classes=10, generator=g, init="default")
    pool = torch.randperm(len(split.train), generator=g)[: clients * batch]
    x, y = split.train.x[pool], split.train.y[pool]
    owner = torch.arange(clients).repeat_interleave(batch)
    thresholds = brightness_thresholds(public, num_bins=bins)
    if defense == "honest-modelcheck":
        models = (SigmoidLeNet(input_shape=shape, num_classes=10, generator=g),) * clients
    elif defense == "imprint-modelcheck":
        wide = brightness_thresholds(public, num_bins=clients * bins)
        models = (plant_imprint(body, input_shape=shape, thresholds=wide),) * clients
    else:
        models = plant_loki(body, input_shape=shape, thresholds=thresholds, num_clients=clients)
    views = [observe_gradient(models[i], x[owner == i], y[owner == i]) for i in range(clients)]
    rows = torch.stack([v.observed for v in views])
    out: dict = {"attributed": defense not in ("imprint-modelcheck", "honest-modelcheck")}
    if defense == "none":
        cands, who = [], []
        for i, v in enumerate(views):  # the server sees each client's own gradient
            single = _replace(v, v.observed, num_clients=clients, num_samples=batch)
            view_i = LokiAttack().client_view(single, i)
            rec = ImprintAttack().reconstruct(view_i)
            cands.append(rec.x)
            who.append(torch.full((len(rec.x),), i))
        psnrs = recovered_share(torch.cat(cands), x, data_range=rng, owner=torch.cat(who), truth_owner=owner)
    else:
        if defense == "secagg-10":
            digests = None
        else:
            from secure_agg.client import model_digest

            digests = [model_digest([p.detach().numpy() for p in m.parameters()], round_id=seed) for m in models]
        outcome = secagg_plus_round(rows, seed=seed, digests=digests, round_id=seed)
        out["survivors"] = len(outcome.survivors)
        out["client_aborts"] = len(outcome.client_aborts)
        if outcome.mean is None:
            out.update(recovered=0.0, psnr=float("nan"), psnr_max=float("nan"), abort=outcome.abort)
            return out
        view = _replace(views[0], outcome.mean, num_clients=clients, num_samples=batch)
        if defense == "honest-modelcheck":  # the mean of the batch means is the gradient of all samples
            agg = _replace(view, view.observed, num_clients=1, num_samples=clients * batch, batch_size=clients * batch)
            rec = DLG(iterations=dlg_iterations, max_batch=clients * batch).reconstruct(agg, generator=g)
            psnrs = recovered_share(rec.x, x, data_range=rng)
        elif defense == "imprint-modelcheck":
            agg = _replace(view, view.observed, num_clients=1, num_samples=clients * batch, batch_size=clients * batch)
            rec = ImprintAttack().reconstruct(agg)
            psnrs = recovered_share(rec.x, x, data_range=rng)
        else:
            rec = LokiAttack().reconstruct(view)
            psnrs = recovered_share(rec.x, x, data_range=rng, owner=rec.info["client"], truth_owner=owner)
    finite = psnrs.clamp(min=0.0, max=100.0)
    out.update(
        recovered=float((psnrs > RECOVERY_PSNR_DB).double().mean()),
        psnr=float(finite.mean()),
        psnr_max=float(finite.max()),
    )
    return out


def run_loki_cell(cfg: StudyConfig, attack: str, defense: str, out: Path) -> dict:
    """Run (or load) one LOKI-study cell: ``loki`` x ``LOKI_DEFENSES`` or ``imprint`` x ``secagg-10-modelcheck``."""
    path = out / "cells" / f"{attack}__{defense}.json"
    if path.exists():
        return json.loads(path.read_text())
    split = load_dataset(cfg.dataset)
    t0 = time.perf_counter()
    kind = {"imprint": "imprint-modelcheck", "dlg": "honest-modelcheck"}.get(attack, defense)
    res = loki_experiment(
        split, defense=kind, clients=cfg.loki_clients, batch=cfg.loki_batch, bins=cfg.loki_bins,
        seed=cfg.seed, public=split.test.x[:2000], dlg_iterations=cfg.dlg_iterations,
    )
    status = "ok" if "abort" not in res else "aborted"
    record = {"attack": attack, "defense": defense, "status": status, "dataset": cfg.dataset,
              "clients": cfg.loki_clients, "batch": cfg.loki_batch, "bins_per_client": cfg.loki_bins,
              "seconds": time.perf_counter() - t0, **res}
    _atomic_write(path, json.dumps(record, indent=1))
    return record


def noise_floor(cfg: StudyConfig) -> float:
    """PSNR of a random N(0, 1) image against the true images: what 'reconstruction is noise' scores."""
    split = load_dataset(cfg.dataset)
    rng = float(split.train.x.max() - split.train.x.min())
    g = torch_generator(cfg.seed, 9)
    x = split.test.x[:100]
    noise = torch.randn(x.shape, generator=g).clamp(float(split.train.x.min()), float(split.train.x.max()))
    return float(
        torch.stack([best_match_psnr(noise[i : i + 1], x[i : i + 1], data_range=rng)[0] for i in range(len(x))]).mean()
    )


def _grid(out: Path, records: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = [
        (r, torch.load(out / "cells" / f"{r['attack']}__{r['defense']}.pt"))
        for r in records
        if r["status"] == "ok" and (out / "cells" / f"{r['attack']}__{r['defense']}.pt").exists()
    ]
    if not cells:
        return
    fig, axes = plt.subplots(len(cells), 2, figsize=(3.2, 1.5 * len(cells)), squeeze=False)
    for row, (r, t) in enumerate(cells):
        for col, img in enumerate((t["truth"][0], t["recon"][0])):
            ax = axes[row][col]
            ax.imshow(img[0].numpy(), cmap="gray")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[row][0].set_ylabel(f"{r['attack']}\n{r['defense']}", fontsize=6)
        axes[row][1].set_title(f"{r['psnr']:.1f} dB", fontsize=6)
    axes[0][0].set_title("ground truth", fontsize=6)
    fig.tight_layout()
    fig.savefig(out / "grid.png", dpi=120)
    plt.close(fig)


def write_report(out: Path, records: list[dict], floor: float, cfg: StudyConfig) -> None:
    lines = [
        f"# Reconstruction study ({cfg.dataset}, sigmoid LeNet, {cfg.n_images} targets per cell)",
        "",
        f"Noise floor (PSNR of a random image): {floor:.2f} dB. PSNR is the mean over targets of the best match.",
        "",
        "| attack | defense | PSNR dB | max PSNR | SSIM | share > 40 dB | label acc | s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    loki = [r for r in records if "recovered" in r]
    records = [r for r in records if "recovered" not in r]
    for r in records:
        if r["status"] != "ok":
            lines.append(f"| {r['attack']} | {r['defense']} | {r['status']} | | | | | |")
            continue
        la = f"{r['label_acc']:.2f}" if "label_acc" in r else ""
        lines.append(
            f"| {r['attack']} | {r['defense']} | {r['psnr']:.2f} | {r['psnr_max']:.2f} | {r['ssim']:.3f} | "
            f"{r['share_40db']:.2f} | {la} | {r['seconds']:.1f} |"
        )
    if loki:
        lines += _loki_report(loki, cfg)
    lines += ["", "![ground truth vs reconstruction](grid.png)", ""]
    _atomic_write(out / "report.md", "\n".join(lines))


_LOKI_ROWS = {
    ("loki", "none"): "LOKI, no secure aggregation (the server sees each client's gradient)",
    ("loki", "secagg-10"): "LOKI through SecAgg+, no model check",
    ("loki", "secagg-10-modelcheck"): "LOKI through SecAgg+ with the model check (signed digests)",
    ("dlg", "secagg-10-modelcheck"): "honest server: one honest model, DLG on the SecAgg+ mean",
    ("imprint", "secagg-10-modelcheck"): "one imprint model for all (passes the check), RtF on the SecAgg+ mean",
}


def _loki_report(rows: list[dict], cfg: StudyConfig) -> list[str]:
    lines = [
        "",
        f"## Malicious server: LOKI (Zhao et al. 2024) through SecAgg+ ({cfg.loki_clients} clients x "
        f"{cfg.loki_batch} images, {cfg.loki_bins} bins per client, signed setting)",
        "",
        f"Recovered: share of the clients' images whose best candidate scores above {RECOVERY_PSNR_DB:.0f} dB "
        "(attributed: matched only against that client's candidates).",
        "",
        "| setting | round | recovered | attributed | mean PSNR dB | s |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        name = _LOKI_ROWS.get((r["attack"], r["defense"]), f"{r['attack']} x {r['defense']}")
        if r["status"] == "aborted":
            how = "aborted: " + ("model mismatch" if "model mismatch" in r.get("abort", "") else r.get("abort", ""))
            lines.append(f"| {name} | {how} | 0.00 | | | {r['seconds']:.1f} |")
            continue
        kept = f"{r['survivors']} of {r['clients']} summed" if "survivors" in r else "no aggregation"
        lines.append(
            f"| {name} | {kept} | {r['recovered']:.2f} | {'yes' if r['attributed'] else 'no'} | "
            f"{r['psnr']:.1f} | {r['seconds']:.1f} |"
        )
    return lines


def cells(quick: bool) -> list[tuple[str, str]]:
    out = [(a, d) for a in GRADIENT_ATTACKS for d in DEFENSES]
    out += [("inverting-fedavg", "steps-5")]
    out += [("imprint", d) for d in IMPRINT_DEFENSES]
    if quick:
        keep = {"none", "prune-0.5", "dp-0.1", "batch-4", "steps-5", "secagg-10"}
        out = [(a, d) for a, d in out if d in keep]
    return out + loki_cells(quick)


def loki_cells(quick: bool) -> list[tuple[str, str]]:
    """The LOKI study's cells (see the module docstring); digits (``--quick``) has too few distinct
    brightness values for the 320 bins of one imprint model shared by all, so that row is full-study only."""
    out = [("loki", d) for d in LOKI_DEFENSES] + [("dlg", "secagg-10-modelcheck")]
    if not quick:
        out.append(("imprint", "secagg-10-modelcheck"))
    return out


def main(args: argparse.Namespace) -> int:
    torch.set_num_threads(1)  # tiny models: threads only add overhead
    cfg = StudyConfig.make(args.quick)
    out = Path(args.out)
    records = []
    loki = set(loki_cells(args.quick))
    for attack, defense in cells(args.quick):
        log.info("cell %s x %s", attack, defense)
        run = run_loki_cell if (attack, defense) in loki else run_cell
        records.append(run(cfg, attack, defense, out))
    write_report(out, records, noise_floor(cfg), cfg)
    _grid(out, records)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("recon", help="data-reconstruction study: attacks x defenses, report with image grid")
    sub = p.add_subparsers(dest="recon", metavar="ACTION")
    run = sub.add_parser("run", help="run (or resume) the study")
    run.add_argument("--quick", action="store_true", help="digits, 2 targets, fewer iterations and defenses")
    run.add_argument("--out", required=True, help="output directory (cells/*.json, report.md, grid.png)")
    run.set_defaults(func=main)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])
