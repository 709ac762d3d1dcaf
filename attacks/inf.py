"""Inf: Byzantine rows at the top of the floating-point range (byzfl's ``Inf`` attack).

byzfl (the EPFL Distributed Computing Laboratory's library of Byzantine-robust
learning, attack ``byzfl.Inf``) sends ``+inf`` in every coordinate. The attack
probes one failure: a rule that adds, sorts or measures distances in floating
point without checking its input turns one such row into an infinite or NaN
aggregate (``inf - inf``), whatever its robustness on paper.

In flsec that failure cannot happen through the front door: every aggregator
validates its cohort first (:func:`fl_core.updates.check_cohort`), so a row of
``+inf`` raises :class:`~fl_core.errors.InvalidUpdateError` ("updates contains
... non-finite value(s)") for every rule alike, before any arithmetic; the
simulated round stops there (a suite cell records it as diverged) and the Flower
adapter drops a reply whose update does not fit in float32. Measured on a
7-client cohort with 2 attackers: ``+inf`` gave this same error under mean,
median, Krum and trimmed mean, while ``3.4e38`` rows (float32's largest finite
value) were accepted and separated the rules: the mean became ``~1e38`` per
coordinate, median, Krum and trimmed mean stayed near the honest rows.

:class:`Inf` therefore sends, by default, the **largest finite value** of the
cohort's dtype (``torch.finfo(dtype).max``: ``3.4028235e38`` for float32), the
variant that used to defeat rules by overflow (``x + y`` or ``||x - y||^2``
beyond the range), which flsec's rules must and do survive (DESIGN.md, "Bad
input"). ``finite=False`` sends byzfl's literal ``+inf``; its only outcome in
flsec is the :class:`~fl_core.errors.InvalidUpdateError` above (tested), never a
NaN aggregate, so it measures input validation, not robustness.

Examples
--------
>>> import torch
>>> from attacks.byzantine import AttackView
>>> from fl_core.aggregation import RoundContext
>>> H = torch.zeros(3, 2)
>>> view = AttackView(own=H[:1], benign=H, n=4, f=1, ctx=RoundContext(0, (0, 1, 2, 3), torch.ones(4),
...                   torch.zeros(2), torch.Generator()), aggregator=None)
>>> Inf().craft(view).tolist()
[[3.4028234663852886e+38, 3.4028234663852886e+38]]
>>> Inf(finite=False).craft(view).tolist()
[[inf, inf]]
"""

from __future__ import annotations

import torch

from attacks.byzantine import AttackView, ModelPoisoning
from fl_core.errors import ConfigError

__all__ = ["Inf"]


class Inf(ModelPoisoning):
    """Every attacker sends ``finfo(dtype).max`` (default) or ``+inf`` (``finite=False``) in every coordinate.

    Parameters
    ----------
    finite : bool
        ``True``: the largest finite value of the updates' dtype, valid input that
        every flsec rule must outvote without overflow. ``False``: byzfl's ``+inf``,
        which flsec's input checks refuse with
        :class:`~fl_core.errors.InvalidUpdateError` (the round fails; no aggregate).
    negative : bool
        Send the most negative value (``-max`` or ``-inf``) instead.

    Examples
    --------
    >>> import torch
    >>> from attacks.byzantine import AttackView
    >>> from fl_core.aggregation import RoundContext
    >>> H = torch.zeros(2, 1, dtype=torch.float64)
    >>> ctx = RoundContext(0, (0, 1, 2), torch.ones(3), torch.zeros(1), torch.Generator())
    >>> Inf(negative=True).craft(AttackView(H[:1], H, 3, 1, ctx, None)).item() == -torch.finfo(torch.float64).max
    True
    """

    def __init__(self, *, finite: bool = True, negative: bool = False) -> None:
        for name, value in (("finite", finite), ("negative", negative)):
            if not isinstance(value, bool):
                raise ConfigError(f"{name} must be a bool, got {value!r}")
        self.finite, self.negative = finite, negative

    def value(self, dtype: torch.dtype) -> float:
        """The value every coordinate gets for updates of ``dtype``."""
        if not dtype.is_floating_point:
            raise ConfigError(f"Inf needs floating-point updates, got dtype {dtype}")
        top = float(torch.finfo(dtype).max) if self.finite else float("inf")
        return -top if self.negative else top

    def craft(self, view: AttackView) -> torch.Tensor:
        own = view.own
        return torch.full(own.shape, self.value(own.dtype), dtype=own.dtype, device=own.device)
