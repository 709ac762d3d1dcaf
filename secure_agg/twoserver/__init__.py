"""Two-server secret-shared aggregation with robust rules on the shares.

Each client splits its fixed-point update into two additive shares in ``Z_{2^64}``,
one for each of two non-colluding servers S0 and S1 (S0's share is a 32-byte seed
expanded with AES-CTR, so a client uploads about one ring vector: 2.0x its float32
update). The servers validate every client's norm on the shares, compute the inner
products a robust rule needs with Beaver triples from a dealer (matrix triples for the
Gram matrix), open only those scalars, let the rule decide, and open the linear
combination it chose. This is the design of the two-server systems ELSA (Rathee et al.,
S&P 2023) and Prio (Corrigan-Gibbs and Boneh, NSDI 2017) with a dealer instead of
client-made or interactive correlations.

Threat model
------------
* Servers: semi-honest and non-colluding. Either one alone sees only uniformly masked
  values, the scalars listed below and the aggregate. Together they see everything.
* Clients: fully malicious. A client may send any ring vector, but it cannot lie about
  its norm, its distances or its cosines: the servers compute them from its shares,
  after a coarse-to-exact norm validation that makes wrap-around modulo ``2^64``
  impossible for accepted clients (:mod:`~secure_agg.twoserver.ring`). A client whose
  norm exceeds ``bound`` is out of the round (norm bounding by rejection at the
  protocol's capacity); the rule then clips or rejects the rest as it says, with its
  ``f`` lowered by the number rejected (they are provably attackers when ``bound`` is
  above every honest norm; ``rejected_are_byzantine=False`` keeps ``f``).
* A client whose two shares do not both arrive intact (tampered, truncated, replayed,
  equivocated weight, withheld) is simply absent: no recovery round.
* Dealer: semi-honest, sees no data; a wrong triple is not detected (it could make the
  rule decide on wrong geometry, never reveal an update): stated, not checked.
* Any failure between the servers aborts the round (:class:`~secure_agg.errors.ProtocolAbortError`);
  a round never returns a wrong aggregate.

What each server learns (besides which clients were absent and the aggregate)
---------------------------------------------------------------------------------
* every rule: each client's squared norm, at each validation level (the coarse levels are
  the norm of the truncated vector, so they add nothing beyond the exact norm);
* norm bounding, weighted mean: nothing more;
* FLTrust: each accepted client's inner product with the root update ``g0`` (so its cosine);
* centered clipping (``L = 1``): each accepted client's inner product with the reference ``v``;
  (``L > 1``): every pairwise inner product;
* Krum, Multi-Krum, FLAME, NNM: every pairwise inner product among accepted clients
  (equivalently the pairwise distances, and cosines);
* FLAME: the aggregate carries Gaussian noise of which each server added half the variance
  and knows only its own half.

Opening pairwise inner products has a cost that no rule on distances avoids: a malicious
client chooses its vector, so ``k`` colluding clients learn, through the server, ``k`` linear
functions (e.g. ``k`` coordinates) of each honest update. Coordinate-wise rules (median,
trimmed mean, Bulyan) need secure comparison and are not supported.

Examples
--------
>>> import torch
>>> agg = TwoServerAggregator(bound=2.0)  # the weighted mean; a robust rule goes in rule=
>>> res = agg.aggregate(torch.tensor([[0.0, 1.0], [0.2, 1.0], [5.0, -5.0]]))
>>> [round(v, 5) for v in res.aggregate.tolist()], res.kept.tolist()
([0.1, 1.0], [True, True, False])
"""

from secure_agg.twoserver.aggregator import GeometricMean, TwoServerAggregator
from secure_agg.twoserver.params import TwoServerParams
from secure_agg.twoserver.runner import RoundCost, TwoServerRound
from secure_agg.twoserver.server import ServerOutcome, ShareServer

__all__ = [
    "GeometricMean",
    "RoundCost",
    "ServerOutcome",
    "ShareServer",
    "TwoServerAggregator",
    "TwoServerParams",
    "TwoServerRound",
]
