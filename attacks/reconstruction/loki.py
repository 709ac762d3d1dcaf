"""LOKI: a malicious server gives every client its own imprint, so the secure aggregate separates clients.

Zhao, Sharma, Elkordy, Ezzeldin, Avestimehr, Bagchi, "LOKI: Large-scale Data
Reconstruction Attack against Federated Learning through Model Manipulation",
IEEE S&P 2024 (arXiv:2303.12233).

Robbing the Fed (Fowl et al., ICLR 2022; :mod:`attacks.reconstruction.imprint`) reads
inputs off an imprint module's gradient; under secure aggregation the server sees only
the sum over all clients, so every client's samples fall into the same bins and
nothing tells whose sample a bin holds. LOKI defeats that by sending each client a
*different* model: the imprint parameters are customised per client so that client
``i``'s gradient lands only in parameters no other client touches, and the sum of
the updates is the concatenation of the per-client imprint updates. LOKI customises
identity-mapping convolution kernels in front of a shared fully connected imprint
layer; here the customisation is on the imprint layer itself, as in the construction
this module implements: the layer has ``n k`` rows (bins) in ``n`` disjoint blocks of
``k``; client ``i``'s model holds the ``k`` brightness-threshold bins of Fowl et al.
in block ``i`` (rows ``i k .. (i + 1) k - 1``) and *dead* rows everywhere else
(weight 0, bias -1, so ``ReLU`` never fires and those rows get exactly zero gradient,
also after several local steps). Every client's model computes the same function as
a ``k``-bin imprint; the server's :class:`LokiAttack` slices the aggregate into the
``n`` blocks and solves each one as a single client's imprint gradient
(:class:`~attacks.reconstruction.imprint.ImprintAttack`): per-client reconstructions,
attributed to their client, from the secure aggregate alone.

The attack needs the server to *equivocate*: to send clients models that differ.
A client that checks it holds the same model as its peers (the model digest bound
into SecAgg+'s signed key advertisement, :mod:`secure_agg.client`) stops it.

Examples
--------
>>> import torch
>>> from attacks.reconstruction.imprint import brightness_thresholds
>>> from attacks.reconstruction.models import SigmoidLeNet
>>> from attacks.reconstruction.view import ServerView, observe_gradient
>>> g = torch.Generator().manual_seed(0)
>>> body = SigmoidLeNet(input_shape=(1, 8, 8), num_classes=10, generator=g, init="default")
>>> models = plant_loki(body, input_shape=(1, 8, 8), num_clients=3,
...                     thresholds=brightness_thresholds(torch.randn(500, 1, 8, 8, generator=g), num_bins=16))
>>> xs = [torch.randn(2, 1, 8, 8, generator=g) for _ in range(3)]
>>> views = [observe_gradient(m, x, torch.tensor([0, 1])) for m, x in zip(models, xs)]
>>> agg = ServerView(model=views[0].model, params=views[0].params, kind="gradient", batch_size=2,
...                  observed=sum(v.observed for v in views) / 3, input_shape=(1, 8, 8),
...                  num_classes=10, num_clients=3)
>>> rec = LokiAttack().reconstruct(agg)
>>> [int((rec.info["client"] == i).sum()) for i in range(3)]  # two bins occupied per client
[2, 2, 2]
>>> bool(torch.cdist(xs[1].flatten(1), rec.x[rec.info["client"] == 1].flatten(1)).min(1).values.max() < 1e-3)
True
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Sequence

import torch
from torch import nn

from attacks.reconstruction.errors import MissingLayerError, UnsupportedBatchError, ViewMismatchError
from attacks.reconstruction.imprint import ImprintAttack, ImprintBlock, ImprintedModel
from attacks.reconstruction.result import Reconstruction
from attacks.reconstruction.view import ServerView
from fl_core.errors import ConfigError
from fl_core.params import unflatten_like

__all__ = ["DEAD_BIAS", "LokiAttack", "client_block", "plant_loki"]

log = logging.getLogger(__name__)

DEAD_BIAS = -1.0
"""Bias of a row outside the receiving client's block: with weight 0 its ReLU never fires."""


def client_block(i: int, *, bins_per_client: int) -> slice:
    """Rows of client ``i``'s bins (0-based client index in the order the server assigned blocks).

    Examples
    --------
    >>> client_block(2, bins_per_client=16)
    slice(32, 48, None)
    """
    return slice(i * bins_per_client, (i + 1) * bins_per_client)


def plant_loki(
    model: nn.Module,
    *,
    input_shape: Sequence[int],
    thresholds: torch.Tensor,
    num_clients: int,
    gain: float = 1e-3,
) -> tuple[ImprintedModel, ...]:
    """The ``num_clients`` models a LOKI server sends: ``model`` behind an imprint layer customised per client.

    Parameters
    ----------
    model : nn.Module
        The body (maps ``input_shape`` images to logits); every client gets an identical copy.
    input_shape : sequence of int
        ``(C, H, W)`` of one input.
    thresholds : torch.Tensor
        ``(k,)`` strictly increasing brightness thresholds of one client's bins
        (:func:`~attacks.reconstruction.imprint.brightness_thresholds`).
    num_clients : int
        ``n``: clients in the round (the layer gets ``n k`` rows).
    gain : float
        Scale of the imprint layer (as in :class:`~attacks.reconstruction.imprint.ImprintBlock`).

    Returns
    -------
    tuple of ImprintedModel
        Model ``i`` (0-based) has live bins only in :func:`client_block` ``(i)``; all
        share the architecture, so the updates sum coordinate by coordinate.

    Raises
    ------
    ConfigError
        If ``num_clients < 1``, or the thresholds or gain are invalid.
    """
    if isinstance(num_clients, bool) or not isinstance(num_clients, int) or num_clients < 1:
        raise ConfigError(f"num_clients must be an int >= 1, got {num_clients!r}")
    one = ImprintBlock(d=math.prod(int(s) for s in input_shape), thresholds=thresholds, gain=gain)
    k = one.num_bins
    d = one.linear0.in_features
    # the shared architecture: n k rows (the placeholder thresholds are overwritten per client)
    template = ImprintBlock(d=d, thresholds=torch.arange(num_clients * k, dtype=torch.float32), gain=gain)
    out = []
    for i in range(num_clients):
        block = copy.deepcopy(template)
        rows = client_block(i, bins_per_client=k)
        with torch.no_grad():
            block.linear0.weight.zero_()
            block.linear0.bias.fill_(DEAD_BIAS)
            block.linear0.weight[rows] = one.linear0.weight
            block.linear0.bias[rows] = one.linear0.bias
            block.linear1.weight.fill_(float(one.linear1.weight[0, 0]))
            block.linear1.bias.copy_(one.linear1.bias)
        out.append(ImprintedModel(imprint=block, body=copy.deepcopy(model), input_shape=input_shape))
    return tuple(out)


def _imprint_prefix(model: nn.Module) -> str:
    prefix = next((n for n, m in model.named_modules() if isinstance(m, ImprintBlock)), None)
    if prefix is None:
        raise MissingLayerError(
            "LOKI needs a model with an ImprintBlock (see plant_loki); " f"got {type(model).__name__}"
        )
    return prefix


class LokiAttack:
    """Per-client reconstructions from a secure aggregate of LOKI models (Zhao et al., IEEE S&P 2024).

    The view is what the server observes: the sum or mean over ``view.num_clients``
    clients of the updates of the models :func:`plant_loki` sent (``view.model`` is
    any of them: they share the architecture; ``view.num_samples`` is one client's
    number of samples). Block ``i`` of the imprint layer is client ``i``'s imprint
    gradient alone; :meth:`client_view` turns it into a one-client ``k``-bin view and
    :class:`~attacks.reconstruction.imprint.ImprintAttack` solves it exactly where a
    bin holds one sample.

    Parameters
    ----------
    tol : float
        Occupied-bin tolerance passed to :class:`~attacks.reconstruction.imprint.ImprintAttack`.
    """

    name = "loki"

    def __init__(self, *, tol: float = 1e-4) -> None:
        self._imprint = ImprintAttack(tol=tol)
        self.tol = tol

    def bins_per_client(self, view: ServerView) -> int:
        """``k``: the imprint layer's rows divided by ``view.num_clients``.

        Raises
        ------
        ViewMismatchError
            If the rows do not split into ``num_clients`` equal blocks.
        """
        block = view.model.get_submodule(_imprint_prefix(view.model))
        assert isinstance(block, ImprintBlock)
        rows, n = block.num_bins, view.num_clients
        if rows % n or rows // n < 2:
            raise ViewMismatchError(
                f"an imprint layer of {rows} rows does not split into num_clients={n} blocks of >= 2 bins"
            )
        return rows // n

    def client_view(self, view: ServerView, i: int) -> ServerView:
        """The server's view of client ``i`` alone: block ``i`` of the aggregate as a ``k``-bin imprint.

        The sub-model replaces the ``n k``-row imprint layer by a ``k``-row one; its
        observed vector takes rows ``client_block(i)`` of the first imprint layer
        (weight and bias), the same columns of the second layer's weight, and the
        remaining parameters unchanged (they mix all clients; the imprint attack
        does not read them).

        Raises
        ------
        ConfigError
            If ``i`` is not in ``[0, num_clients)``.
        """
        n = view.num_clients
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n:
            raise ConfigError(f"client index must be an int in [0, {n}), got {i!r}")
        k = self.bins_per_client(view)
        prefix = _imprint_prefix(view.model)
        big = view.model.get_submodule(prefix)
        assert isinstance(big, ImprintBlock)
        sub = copy.deepcopy(view.model)
        small = ImprintBlock(
            d=big.linear0.in_features, thresholds=torch.arange(k, dtype=torch.float32), gain=1.0
        )
        parent, _, leaf = prefix.rpartition(".")
        setattr(sub.get_submodule(parent) if parent else sub, leaf, small)
        rows = client_block(i, bins_per_client=k)
        cut = {f"{prefix}.linear0.weight": rows, f"{prefix}.linear0.bias": rows}
        columns = f"{prefix}.linear1.weight"
        shapes = [p.shape for p in view.model.parameters() if p.requires_grad]
        names = [name for name, p in sub.named_parameters() if p.requires_grad]

        def take(flat: torch.Tensor) -> torch.Tensor:
            layers = dict(zip(view.observed_layers(), unflatten_like(flat, shapes), strict=True))
            parts = [
                layers[nm][cut[nm]] if nm in cut else layers[nm][:, rows] if nm == columns else layers[nm]
                for nm in names
            ]
            return torch.cat([t.reshape(-1) for t in parts])

        observed, params = take(view.observed), take(view.params)
        return ServerView(
            model=sub,
            params=params,
            observed=observed,
            kind=view.kind,
            batch_size=view.batch_size,
            input_shape=view.input_shape,
            num_classes=view.num_classes,
            num_samples=view.num_samples,
            local_steps=view.local_steps,
            lr=view.lr,
            num_clients=1,
        )

    def reconstruct(self, view: ServerView, *, generator: torch.Generator | None = None) -> Reconstruction:
        """Every client's candidates, with ``info["client"]`` naming the client (block) of each.

        A block with no occupied bin (a client that dropped out of the aggregate,
        or sent nothing) contributes no candidate and is listed in ``info["empty"]``.

        Raises
        ------
        MissingLayerError
            If the view's model has no :class:`~attacks.reconstruction.imprint.ImprintBlock`.
        ViewMismatchError
            If the imprint layer does not split into ``view.num_clients`` blocks.
        UnsupportedBatchError
            If one client's samples outnumber its ``k`` bins, or no block holds anything.
        """
        n = view.num_clients
        k = self.bins_per_client(view)
        if view.num_samples is not None and view.num_samples > k:
            raise UnsupportedBatchError(
                f"{view.num_samples} samples per client cannot be separated by {k} bins per client"
            )
        xs, owner, empty, occupied = [], [], [], []
        for i in range(n):
            try:
                rec = self._imprint.reconstruct(self.client_view(view, i))
            except UnsupportedBatchError:
                empty.append(i)
                occupied.append(0)
                continue
            xs.append(rec.x)
            owner.append(torch.full((len(rec.x),), i, dtype=torch.long))
            occupied.append(int(rec.info["occupied_bins"]))  # type: ignore[arg-type]
        if not xs:
            raise UnsupportedBatchError("the LOKI blocks are all zero: no client's sample activated a bin")
        log.info("loki: %d clients, %d bins each, %d candidates, empty blocks %s", n, k, sum(occupied), empty)
        return Reconstruction(
            x=torch.cat(xs),
            labels=None,
            loss=0.0,
            info={
                "client": torch.cat(owner),
                "occupied_bins": occupied,
                "bins_per_client": k,
                "num_clients": n,
                "empty": empty,
            },
        )

