"""DeepSight (Rieger, Nguyen, Miettinen, Sadeghi, NDSS 2022): inspect the models' output layers and predictions.

Examples
--------
>>> import torch
>>> from torch import nn
>>> net = nn.Sequential(nn.Linear(4, 3))                   # the global model: d = 3 * 4 + 3 = 15
>>> rule = DeepSight(model=net, input_shape=(4,), samples=256, generator=torch.Generator().manual_seed(0))
>>> g = torch.Generator().manual_seed(1)
>>> honest = 0.1 + 0.01 * torch.randn(5, 15, generator=g)   # every output neuron updated alike
>>> bad = torch.zeros(2, 15)
>>> bad[:, 8:12], bad[:, 14] = 0.5, 0.5                      # only neuron 2 (the backdoor's target) updated
>>> res = rule.aggregate(torch.cat([honest, bad]))
>>> res.scores.tolist()                                      # threshold exceedings
[3.0, 3.0, 3.0, 3.0, 3.0, 1.0, 1.0]
>>> res.kept.tolist()
[True, True, True, True, True, False, False]
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence

import numpy as np
import torch
from sklearn.cluster import HDBSCAN
from torch import nn

from defenses.robust.base import RobustAggregator, check_count, check_positive, require, resolve_generator
from defenses.robust.distances import pairwise_cosine_similarity
from defenses.robust.registry import register
from defenses.robust.sorting import column_median, sort_columns
from fl_core.aggregation import AggregationResult, RoundContext
from fl_core.errors import ConfigError, InvalidUpdateError
from fl_core.numerics import WIDE, combine, row_exponents, row_norms, scale_rows
from fl_core.params import flatten_params, unflatten_like

__all__ = [
    "DeepSight",
    "accepted_clusters",
    "cluster_distances",
    "division_differences",
    "ensemble_clusters",
    "neups",
    "threshold_exceedings",
]

logger = logging.getLogger(__name__)


def neups(weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Normalised update energies of the output layer (DeepSight, Eq. 7-8), ``(n, P)`` float64.

    ``weight`` is ``(n, P, H)``, ``bias`` ``(n, P)``: the output layer's updates of
    ``n`` clients with ``P`` output neurons. The energy of neuron ``i`` is
    ``e_i = sum_j |dW_ij| + |db_i|`` and ``c_i = e_i^2 / sum_j e_j^2``. Each client's
    slice is first divided by a power of two near its largest magnitude (exact;
    ``c`` does not change), so rows of ``3e38`` do not overflow. A client whose
    output layer did not change gets all-zero NEUPs.

    Examples
    --------
    >>> import torch
    >>> neups(torch.tensor([[[1.0, -1.0], [0.0, 1.0]]]), torch.tensor([[0.0, 1.0]])).tolist()  # e = (2, 2)
    [[0.5, 0.5]]
    """
    n = bias.shape[0]
    flat = torch.cat([weight.reshape(n, -1), bias], dim=1)
    flat = scale_rows(flat, row_exponents(flat)).to(WIDE)
    w, b = flat[:, : weight[0].numel()].reshape(weight.shape), flat[:, weight[0].numel() :]
    energy = w.abs().sum(dim=2) + b.abs()
    sq = energy.square()
    total = sq.sum(dim=1, keepdim=True)
    return torch.where(total > 0, sq / torch.where(total > 0, total, torch.ones_like(total)), torch.zeros_like(sq))


def threshold_exceedings(c: torch.Tensor) -> torch.Tensor:
    """Threshold exceedings of each row of NEUPs ``c`` ``(n, P)`` (DeepSight, Eq. 9-11), ``(n,)`` int64.

    ``TE = #{i : c_i > xi}`` with ``xi = max(0.01, 1 / P) * max_i c_i``: how many
    output neurons received a large share of the update energy. A model trained on
    homogeneous data (a backdoor's, mostly one label) has few.

    Examples
    --------
    >>> import torch
    >>> threshold_exceedings(torch.tensor([[0.25, 0.25, 0.25, 0.25], [0.97, 0.01, 0.01, 0.01]])).tolist()
    [4, 1]
    """
    xi = max(0.01, 1.0 / c.shape[1]) * c.max(dim=1, keepdim=True).values
    return (c > xi).sum(dim=1)


def division_differences(
    net: nn.Module,
    names: Sequence[str],
    shapes: Sequence[torch.Size],
    global_params: torch.Tensor,
    updates: torch.Tensor,
    inputs: torch.Tensor,
    *,
    batch: int = 4096,
) -> torch.Tensor:
    """DDifs (DeepSight, Eq. 6): ``DDif_k,i = (1 / N) sum_m p_i(x_m; W_k) / p_i(x_m; G)``, ``(n, P)`` float64.

    ``net`` is the model (evaluated with :func:`torch.func.functional_call` on the
    parameters ``names`` / ``shapes`` of a flat vector, in float64),
    ``global_params`` the ``(d,)`` global model ``G``, ``updates`` the ``(n, d)``
    updates ``x_k``, so that the local models are ``W_k = G + x_k`` (formed one at a
    time in float64), ``inputs`` the ``(N, ...)`` random inputs ``x_m``, read in
    chunks of ``batch``. The ratios are ``exp(log p(W_k) - log p(G))`` of log-softmax
    outputs. A client whose model gives a non-finite output gets a row of NaN.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Linear(1, 2).double()
    >>> G = torch.zeros(4, dtype=torch.float64)             # predicts (1/2, 1/2) everywhere
    >>> X = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, -1.0]])
    >>> ddif = division_differences(net, ["weight", "bias"], [torch.Size([2, 1]), torch.Size([2])], G, X,
    ...                             torch.zeros(3, 1, dtype=torch.float64))
    >>> ddif[0].tolist(), [round(v, 6) for v in ddif[1].tolist()]   # softmax(1, -1) * 2
    ([1.0, 1.0], [1.761594, 0.238406])
    """
    g = global_params.to(WIDE)

    def log_probs(flat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        params = dict(zip(names, unflatten_like(flat, list(shapes)), strict=True))
        return torch.log_softmax(torch.func.functional_call(net, params, (x,)).to(WIDE), dim=1)

    chunks = range(0, inputs.shape[0], batch)
    with torch.no_grad():
        base = [log_probs(g, inputs[start : start + batch]) for start in chunks]
        rows = []
        for k in range(updates.shape[0]):
            w = g + updates[k].to(WIDE)
            rows.append(sum(torch.exp(log_probs(w, inputs[s : s + batch]) - b).sum(dim=0)
                            for s, b in zip(chunks, base, strict=True)))
    ddif = torch.stack(rows) / inputs.shape[0]
    return torch.where(torch.isfinite(ddif).all(dim=1, keepdim=True), ddif, torch.full_like(ddif, float("nan")))


def _hdbscan(data: np.ndarray, *, precomputed: bool, min_cluster_size: int) -> np.ndarray:
    """HDBSCAN labels (``-1`` noise) with ``min_samples = 1`` and a single cluster allowed."""
    n = data.shape[0]
    if n < 2:
        return np.zeros(n, dtype=np.int64)
    clusterer = HDBSCAN(
        min_cluster_size=min(min_cluster_size, n),
        min_samples=1,
        metric="precomputed" if precomputed else "euclidean",
        allow_single_cluster=True,
        copy=True,
    )
    return clusterer.fit(data).labels_


def cluster_distances(labels: np.ndarray) -> np.ndarray:
    """``(n, n)`` distances of a clustering: 0 within a cluster, 1 across; a noise point (``-1``) is its own cluster.

    Examples
    --------
    >>> import numpy as np
    >>> cluster_distances(np.array([0, 0, -1, -1])).tolist()
    [[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0], [1.0, 1.0, 0.0, 1.0], [1.0, 1.0, 1.0, 0.0]]
    """
    same = (labels[:, None] == labels[None, :]) & (labels[:, None] >= 0)
    out = np.where(same, 0.0, 1.0)
    np.fill_diagonal(out, 0.0)
    return out


def _features_distances(x: np.ndarray, min_cluster_size: int) -> np.ndarray:
    """Cluster distances of an HDBSCAN on the rows of ``x``; rows with NaN are noise (singletons)."""
    finite = np.isfinite(x).all(axis=1)
    labels = np.full(x.shape[0], -1, dtype=np.int64)
    if finite.sum() >= 2:
        labels[finite] = _hdbscan(x[finite], precomputed=False, min_cluster_size=min_cluster_size)
    return cluster_distances(labels)


def ensemble_clusters(
    bias_cosine_distances: np.ndarray, c: np.ndarray, ddifs: Sequence[np.ndarray], *, min_cluster_size: int = 2
) -> np.ndarray:
    """DeepSight's clustering (Algorithm 2): three HDBSCAN clusterings merged, then clustered again.

    HDBSCAN (``min_samples = 1``) clusters the clients (i) on the cosine distances
    of their output-layer bias updates, (ii) on their NEUPs ``c`` and (iii) on
    their DDifs, once per set of random inputs; each clustering becomes a 0/1
    distance matrix (:func:`cluster_distances`), the DDif ones are averaged over
    the sets, and the mean of the three is clustered by HDBSCAN once more.
    Returns the final ``(n,)`` labels, ``-1`` for noise.

    Examples
    --------
    >>> import numpy as np
    >>> cos = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [1, 1, 0, 0], [1, 1, 0, 0]], dtype=float)
    >>> c = np.array([[0.5, 0.5], [0.5, 0.5], [1.0, 0.0], [1.0, 0.0]])
    >>> labels = ensemble_clusters(cos, c, [c])
    >>> bool(labels[0] == labels[1] != labels[2] == labels[3])
    True
    """
    merged = cluster_distances(_hdbscan(bias_cosine_distances, precomputed=True, min_cluster_size=min_cluster_size))
    merged += _features_distances(c, min_cluster_size)
    merged += np.mean([_features_distances(x, min_cluster_size) for x in ddifs], axis=0)
    return _hdbscan(merged / 3.0, precomputed=True, min_cluster_size=min_cluster_size)


def accepted_clusters(labels: np.ndarray, suspicious: np.ndarray, tau: float) -> np.ndarray:
    """``(n,)`` bool: the models of the clusters whose fraction of suspicious models is below ``tau``
    (DeepSight, Algorithm 1); a noise point (label ``-1``) is a cluster of its own.

    Examples
    --------
    >>> import numpy as np
    >>> labels = np.array([0, 0, 0, 0, 1, 1, -1, -1])
    >>> suspicious = np.array([True, False, False, False, True, False, True, False])
    >>> accepted_clusters(labels, suspicious, 1 / 3).tolist()   # 1/4 < 1/3 accepted, 1/2 not; noise by itself
    [True, True, True, True, False, False, False, True]
    """
    accepted = np.zeros(labels.shape[0], dtype=bool)
    groups = [labels == lab for lab in np.unique(labels[labels >= 0])]
    groups += [np.arange(labels.shape[0]) == i for i in np.flatnonzero(labels < 0)]
    for members in groups:
        if suspicious[members].mean() < tau:
            accepted[members] = True
    return accepted


def _output_layer(model: nn.Module, name: str | None) -> tuple[str, nn.Linear]:
    modules = dict(model.named_modules())
    if name is None:
        linear = [(k, m) for k, m in modules.items() if isinstance(m, nn.Linear)]
        if not linear:
            raise ConfigError("DeepSight needs a model with an nn.Linear output layer; it has none")
        return linear[-1]
    if name not in modules:
        raise ConfigError(f"output_layer={name!r} is not a module of the model; modules: {sorted(modules)[:10]}")
    if not isinstance(modules[name], nn.Linear):
        raise ConfigError(f"output_layer={name!r} is a {type(modules[name]).__name__}, not an nn.Linear")
    return name, modules[name]


@register(
    "deepsight",
    kind="rule",
    description="NEUP threshold exceedings label clusters of DDifs, NEUPs and bias cosines; median-norm "
    "clipping (Rieger et al. 2022); needs the model",
)
class DeepSight(RobustAggregator):
    """DeepSight: remove clusters of models trained on homogeneous data, clip the rest to the median norm.

    Rieger, Nguyen, Miettinen, Sadeghi, "DeepSight: Mitigating Backdoor Attacks
    in Federated Learning Through Deep Model Inspection", NDSS 2022
    (Algorithms 1 and 2). With ``G`` the global model and ``W_k = G + x_k`` the
    local models:

    1. labelling: the NEUPs ``c_k`` of the output layer (:func:`neups`) give the
       threshold exceedings ``TE_k`` (:func:`threshold_exceedings`); a model with
       ``TE_k <= median(TE) / 2`` is labelled suspicious (its training data were
       homogeneous, as a backdoor's are);
    2. clustering (:func:`ensemble_clusters`): HDBSCAN on the cosine distances of
       the output layer's bias updates, on the NEUPs and on the DDifs
       (:func:`division_differences`, one per set of ``samples`` random inputs,
       ``seeds`` sets), the three merged and clustered again;
    3. a cluster is accepted if less than ``tau`` of its models are suspicious
       (a noise point is a cluster of its own);
    4. every accepted update is clipped to ``S_t``, the median of the ``n``
       update norms (``x_k * min(1, S_t / ||x_k||)``), and the clipped accepted
       updates are averaged (unweighted, as in the paper); none accepted gives
       the zero update (a warning is logged).

    The model: DeepSight reads the structure of the updates. ``model`` is the
    global model's architecture; the flat update is its trainable parameters in
    ``named_parameters()`` order (:mod:`fl_core.params`); the output layer is its
    last ``nn.Linear`` (or the module named ``output_layer``), which must have a
    bias. ``G`` is ``ctx.global_params`` inside fl_core, else ``model``'s current
    parameters (pass the live global model in a hand-written loop). The DDifs run
    a private float64 copy of the model on the updates' device.

    Nothing of the algorithm is left out. The round context carries no model
    structure, so the model is a constructor argument (a suite must pass the
    cell's model). What the paper leaves open, chosen here: the random inputs are standard
    normal (the project's images are standardised), drawn from ``ctx.generator``
    (else ``generator``), the same for every model in a round; HDBSCAN uses
    ``min_samples = 1`` and ``min_cluster_size`` (2); a model whose outputs are
    not finite (float64 rows beyond ``~1e300``) is noise in the DDif clusterings.
    The clients are clustered in a canonical order of their features, so the
    result does not depend on the order of the rows. Extreme rows: NEUPs are
    computed on rows scaled by powers of two, cosines, norms and ``S_t`` in
    float64 without overflow (:mod:`fl_core.numerics`), so a row of ``3e38`` is
    clipped to ``S_t`` if accepted, and with ``f < n / 2`` Byzantine rows the
    aggregate's norm is at most the largest honest norm.

    Parameters
    ----------
    f : int
        Byzantine clients assumed; the median labelling needs an honest
        majority, ``n > 2f``, and clustering ``n >= 3``.
    model : torch.nn.Module
        The global model (architecture and, without a ``ctx``, parameters).
    input_shape : sequence of int
        Shape of one model input (``(1, 8, 8)`` for digits), for the random inputs.
    output_layer : str, optional
        Name of the output ``nn.Linear`` in ``model.named_modules()``; default the last.
    tau : float
        Largest fraction of suspicious models an accepted cluster may hold is
        below ``tau`` (the paper's ``1/3``), ``0 < tau <= 1``.
    samples : int
        Random inputs per set for the DDifs (default 20,000). The DDifs cost ``seeds * samples`` forward
        passes per model: one aggregation of 12 clients of the digits MLP took 5.5 s on one core (float64),
        7-11 s per round in a suite sharing 2 cores, where a round of the mean takes about 0.1 s; quick
        suites may pass fewer samples (``samples=2000``: 10-15 s per 15-round digits cell instead of
        130-170 s, with the same detections and accuracy in the backdoor cells measured).
    seeds : int
        Sets of random inputs, one DDif clustering each (3).
    min_cluster_size : int
        HDBSCAN's smallest cluster (>= 2).
    generator : torch.Generator, optional
        Draws the random inputs when no ``ctx`` is given; ``ctx.generator`` takes precedence.

    Raises
    ------
    ConfigError
        A parameter out of range, a model without trainable parameters or an
        ``nn.Linear`` output layer with a bias, or whose output for an input of
        ``input_shape`` is not ``(1, P)``.
    InvalidUpdateError
        At call time: updates or ``ctx.global_params`` not of the model's ``d``.

    Notes
    -----
    ``kept`` marks the accepted models; ``scores`` are the threshold exceedings
    ``TE_k``; ``metrics`` holds ``accepted``, ``suspicious``, ``clusters`` and ``S_t``.
    """

    OUTPUT_REGION = "ball"

    def __init__(
        self,
        *,
        f: int = 0,
        model: nn.Module,
        input_shape: Sequence[int],
        output_layer: str | None = None,
        tau: float = 1.0 / 3.0,
        samples: int = 20_000,
        seeds: int = 3,
        min_cluster_size: int = 2,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(f=f)
        if not isinstance(model, nn.Module):
            raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if isinstance(input_shape, str | bytes) or not isinstance(input_shape, Sequence) or not input_shape:
            raise ConfigError(f"input_shape must be a non-empty sequence of positive ints, got {input_shape!r}")
        self.input_shape = tuple(check_count(f"input_shape[{i}]", s, minimum=1) for i, s in enumerate(input_shape))
        self.tau = check_positive("tau", tau)
        if self.tau > 1.0:
            raise ConfigError(f"tau must be in (0, 1], got tau={tau!r}")
        self.samples = check_count("samples", samples, minimum=1)
        self.seeds = check_count("seeds", seeds, minimum=1)
        self.min_cluster_size = check_count("min_cluster_size", min_cluster_size, minimum=2)
        self.generator = generator
        self.model = model
        trainable = [(k, p) for k, p in model.named_parameters() if p.requires_grad]
        if not trainable:
            raise ConfigError("model has no trainable parameters")
        self.output_layer, out = _output_layer(model, output_layer)
        if out.bias is None or not out.bias.requires_grad or not out.weight.requires_grad:
            raise ConfigError(f"output layer {self.output_layer!r} needs a trainable weight and bias")
        self._names = [k for k, _ in trainable]
        self._shapes = [p.shape for _, p in trainable]
        offsets = np.cumsum([0] + [p.numel() for _, p in trainable])
        where = {id(p): int(o) for (_, p), o in zip(trainable, offsets[:-1], strict=True)}
        self.d = int(offsets[-1])
        self._weight_at, self._bias_at = where[id(out.weight)], where[id(out.bias)]
        self._out_shape = tuple(out.weight.shape)
        self._net = copy.deepcopy(model).to(dtype=WIDE).eval()
        with torch.no_grad():
            try:
                y = self._net(torch.zeros(1, *self.input_shape, dtype=WIDE, device=flatten_params(model).device))
            except Exception as exc:  # any failure means the input shape does not suit the model
                raise ConfigError(f"the model does not accept an input of shape {self.input_shape}: {exc}") from None
        if tuple(y.shape) != (1, out.out_features):
            raise ConfigError(
                f"the model's output for input_shape={self.input_shape} has shape {tuple(y.shape)}, but its output "
                f"layer {self.output_layer!r} has {out.out_features} neurons: pass output_layer"
            )

    def check_tolerance(self, n: int) -> None:
        require(n >= 3, f"DeepSight needs n >= 3 clients to cluster, got n={n}, f={self.f}")
        require(n > 2 * self.f, f"DeepSight needs n > 2f, got n={n}, f={self.f}")

    def _global(self, ctx: RoundContext | None, device: torch.device) -> torch.Tensor:
        g = flatten_params(self.model) if ctx is None else ctx.global_params.reshape(-1)
        if g.shape[0] != self.d:
            raise InvalidUpdateError(f"global parameters have length {g.shape[0]}, the model has d={self.d}")
        return g.to(device=device, dtype=WIDE)

    def _ddifs(self, updates: torch.Tensor, g: torch.Tensor, gen: torch.Generator) -> list[torch.Tensor]:
        device = updates.device
        if next(self._net.parameters()).device != device:
            self._net = self._net.to(device)
        out = []
        for _ in range(self.seeds):
            x = torch.randn((self.samples, *self.input_shape), generator=gen, dtype=WIDE, device=gen.device)
            out.append(division_differences(self._net, self._names, self._shapes, g, updates, x.to(device)))
        return out

    def _aggregate(self, updates: torch.Tensor, weights: torch.Tensor, ctx: RoundContext | None) -> AggregationResult:
        n, d = updates.shape
        if d != self.d:
            raise InvalidUpdateError(f"DeepSight's model has d={self.d} parameters, but the updates have d={d}")
        gen = resolve_generator(self.generator, ctx, "DeepSight")
        p, h = self._out_shape
        weight = updates[:, self._weight_at : self._weight_at + p * h].reshape(n, p, h)
        bias = updates[:, self._bias_at : self._bias_at + p]
        c = neups(weight, bias)
        te = threshold_exceedings(c)
        suspicious = (te.to(WIDE) <= float(np.median(te.cpu().numpy())) / 2.0).cpu().numpy()
        cos = (1.0 - pairwise_cosine_similarity(bias)).clamp(0.0, 2.0)
        ddifs = [x.cpu().numpy() for x in self._ddifs(updates, self._global(ctx, updates.device), gen)]
        c_np, cos_np = c.cpu().numpy(), cos.cpu().numpy()
        # a canonical order of the clients (lexicographic on their features): the labels do not depend on row order
        key = np.concatenate([c_np, *[np.nan_to_num(x, nan=np.inf) for x in ddifs], bias.to(WIDE).cpu().numpy()], 1)
        order = np.lexsort(key.T[::-1])
        dist = cos_np[np.ix_(order, order)]
        dist = np.clip(0.5 * (dist + dist.T), 0.0, 2.0)
        np.fill_diagonal(dist, 0.0)
        labels = np.empty(n, dtype=np.int64)
        labels[order] = ensemble_clusters(dist, c_np[order], [x[order] for x in ddifs],
                                          min_cluster_size=self.min_cluster_size)
        accepted = accepted_clusters(labels, suspicious, self.tau)
        clusters = np.unique(labels[labels >= 0]).size + int((labels < 0).sum())
        kept = torch.as_tensor(accepted, device=updates.device)
        norms = row_norms(updates)
        s_t = column_median(sort_columns(norms[:, None]))[0]
        safe = torch.where(norms > 0, norms, torch.ones_like(norms))
        factor = torch.where(norms > s_t, s_t / safe, torch.ones_like(norms))
        count = int(accepted.sum())
        if count == 0:
            logger.warning("DeepSight: every cluster was rejected; returning the zero update")
        agg = combine(factor * kept.to(WIDE) / max(count, 1), updates)
        metrics = {
            "accepted": float(count),
            "suspicious": float(suspicious.sum()),
            "clusters": float(clusters),
            "S_t": float(s_t),
        }
        return AggregationResult(aggregate=agg, kept=kept, scores=te.to(WIDE), metrics=metrics)

    def __repr__(self) -> str:
        return f"DeepSight(f={self.f}, output_layer={self.output_layer!r}, tau={self.tau:.4g})"
