"""Backdoor triggers: pixel patterns, DBA's distributed pattern, and text trigger tokens.

* Pixel-pattern trigger (Gu et al., "BadNets", 2017; Bagdasaryan et al., AISTATS 2020):
  a small pattern stamped on the image at a fixed place; the poisoned sample is
  labelled with the target class.
* DBA (Xie et al., ICLR 2020, "DBA: Distributed Backdoor Attacks against Federated
  Learning"): the global trigger is split into local patterns, one per colluding
  attacker; each attacker trains only with its part; the test uses the union.
* Text trigger tokens (Kurita et al., ACL 2020, RIPPLe's rare tokens "cf", "mn", "bb"):
  a rare word inserted into the text.
* Learnable pattern trigger (Zhang et al., NeurIPS 2023, "A3FL: Adversarially Adaptive
  Backdoor Attacks to Federated Learning"): inside a fixed mask the image takes the
  values of a pattern the attackers optimise every round (:class:`PatternTrigger`,
  mutable: the attack's hooks and the scored :class:`~attacks.metrics.Backdoor` share it).

Examples
--------
>>> import torch
>>> t = PixelTrigger.corner(height=8, width=8, size=2, value=3.0)
>>> x = t.apply(torch.zeros(1, 1, 8, 8))
>>> float(x.sum()), int(t.mask.sum())
(6.0, 2)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fl_core.errors import ConfigError
from fl_core.state import StateError, check_state, state_tensor

__all__ = ["PatternTrigger", "PixelTrigger", "TextTrigger"]


@dataclass(frozen=True)
class PixelTrigger:
    """A pixel pattern: where (``mask``, H x W bool) and to what value the pixels are set."""

    mask: torch.Tensor
    value: float

    @classmethod
    def corner(cls, *, height: int, width: int, size: int = 3, value: float, gap: int = 1) -> PixelTrigger:
        """A checkerboard ``size x size`` square in the bottom-right corner, ``gap`` pixels from the edge."""
        if size < 1 or size + gap > min(height, width):
            raise ConfigError(f"trigger size {size} (+gap {gap}) does not fit a {height}x{width} image")
        mask = torch.zeros(height, width, dtype=torch.bool)
        r0, c0 = height - gap - size, width - gap - size
        ii, jj = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
        checker = (ii + jj) % 2 == 0
        mask[r0 : r0 + size, c0 : c0 + size] = checker
        return cls(mask=mask, value=value)

    @classmethod
    def dba_global(
        cls, *, height: int, width: int, value: float, parts: int = 4, bar: int | None = None
    ) -> PixelTrigger:
        """DBA's global trigger: ``parts`` horizontal bars in the top-left corner (Xie et al. 2020, Fig. 2)."""
        if parts < 1:
            raise ConfigError(f"DBA needs at least 1 part, got {parts}")
        bar = bar or max(2, width // 7)
        last_row = 1 + 2 * ((parts - 1) // 2)
        if last_row >= height or 2 * bar + 1 >= width:
            raise ConfigError(f"DBA trigger with {parts} parts does not fit a {height}x{width} image")
        mask = torch.zeros(height, width, dtype=torch.bool)
        for p in range(parts):
            row = 1 + 2 * (p // 2)
            col = 1 + (p % 2) * (bar + 1)
            mask[row, col : col + bar] = True
        return cls(mask=mask, value=value)

    def split(self, parts: int) -> list[PixelTrigger]:
        """DBA's local triggers: the pattern's horizontal runs (bars) dealt out to ``parts`` attackers.

        Runs are ordered by (row, first column); run ``g`` goes to part ``g % parts``.
        """
        if parts < 1:
            raise ConfigError(f"DBA needs at least 1 part, got {parts}")
        runs: list[list[tuple[int, int]]] = []
        for r, row in enumerate(self.mask.tolist()):
            for c, on in enumerate(row):
                if on and c > 0 and row[c - 1]:
                    runs[-1].append((r, c))
                elif on:
                    runs.append([(r, c)])
        if not runs:
            raise ConfigError("cannot split an empty trigger")
        if len(runs) < parts:
            raise ConfigError(f"trigger has {len(runs)} bars, fewer than the {parts} DBA parts")
        out = [torch.zeros_like(self.mask) for _ in range(parts)]
        for g, run in enumerate(runs):
            for r, c in run:
                out[g % parts][r, c] = True
        return [PixelTrigger(mask=m, value=self.value) for m in out]

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Stamp the trigger on a batch ``(B, C, H, W)`` (a copy)."""
        if x.shape[-2:] != self.mask.shape:
            raise ConfigError(f"trigger of shape {tuple(self.mask.shape)} does not fit images {tuple(x.shape[-2:])}")
        out = x.clone()
        out[..., self.mask.to(x.device)] = self.value
        return out


class PatternTrigger:
    """A learnable trigger: inside ``mask`` (H x W) the image takes ``pattern`` (C x H x W), values in [low, high].

    The pattern is the state an adaptive attack (A3FL) changes every round; the object is
    shared by the attack's training hooks and the :class:`~attacks.metrics.Backdoor` that
    scores it, so attack success is always measured with the current pattern.
    Pixels outside the mask are never changed (the pattern is kept at 0 there).

    Parameters
    ----------
    mask : torch.Tensor
        Bool ``(H, W)``, at least one pixel set.
    pattern : torch.Tensor
        Float ``(C, H, W)``, finite, within ``[low, high]`` on the mask.
    low, high : float
        The value range of the pattern (the data's range), ``low < high``.

    Examples
    --------
    >>> t = PatternTrigger.square(channels=1, height=4, width=4, size=2, low=-1.0, high=1.0)
    >>> x = t.apply(torch.full((1, 1, 4, 4), 5.0))
    >>> int((x == 5.0).sum()), float(x[0, 0, 1, 1])  # 4 masked pixels take the initial mid-range value
    (12, 0.0)
    """

    #: Layout version of :meth:`state_dict`.
    STATE_VERSION = 1

    def __init__(self, *, mask: torch.Tensor, pattern: torch.Tensor, low: float, high: float) -> None:
        if not (isinstance(mask, torch.Tensor) and mask.dtype == torch.bool and mask.ndim == 2):
            raise ConfigError(f"pattern trigger mask must be a bool (H, W) tensor, got {getattr(mask, 'shape', mask)}")
        if not bool(mask.any()):
            raise ConfigError("pattern trigger mask is empty")
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise ConfigError(f"pattern trigger range must be finite with low < high, got [{low}, {high}]")
        self.mask, self.low, self.high = mask.clone(), float(low), float(high)
        self.pattern = self._checked(pattern)

    @classmethod
    def square(
        cls, *, channels: int, height: int, width: int, size: int, low: float, high: float, gap: int = 1,
        init: float | None = None,
    ) -> PatternTrigger:
        """A ``size x size`` square mask ``gap`` pixels from the top-left corner, pattern ``init`` (default mid-range).

        A3FL's mask is a square near the top-left corner (5 x 5 at offset 2 on 32 x 32 CIFAR-10);
        its pattern starts at a constant (0.5 in the authors' code).
        """
        if channels < 1:
            raise ConfigError(f"pattern trigger needs >= 1 channel, got {channels}")
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise ConfigError(f"pattern trigger range must be finite with low < high, got [{low}, {high}]")
        if size < 1 or gap < 0 or size + gap > min(height, width):
            raise ConfigError(f"trigger size {size} (+gap {gap}) does not fit a {height}x{width} image")
        mask = torch.zeros(height, width, dtype=torch.bool)
        mask[gap : gap + size, gap : gap + size] = True
        value = (low + high) / 2 if init is None else init
        if not low <= value <= high:
            raise ConfigError(f"pattern trigger init {value} is outside its range [{low}, {high}]")
        pattern = torch.where(mask, torch.tensor(float(value)), torch.tensor(0.0)).expand(channels, -1, -1).clone()
        return cls(mask=mask, pattern=pattern, low=low, high=high)

    def _checked(self, pattern: torch.Tensor) -> torch.Tensor:
        if not isinstance(pattern, torch.Tensor) or pattern.ndim != 3 or pattern.shape[1:] != self.mask.shape:
            raise ConfigError(
                f"pattern must be a (C, {self.mask.shape[0]}, {self.mask.shape[1]}) tensor, "
                f"got {tuple(getattr(pattern, 'shape', ()))}"
            )
        p = pattern.detach().to("cpu", torch.float32)
        if not bool(torch.isfinite(p).all()):
            raise ConfigError("pattern contains NaN or Inf")
        on = p[:, self.mask]
        if bool((on < self.low).any() or (on > self.high).any()):
            raise ConfigError(
                f"pattern values [{float(on.min())}, {float(on.max())}] leave the range [{self.low}, {self.high}]"
            )
        return torch.where(self.mask, p, torch.zeros(()))

    def set_pattern(self, pattern: torch.Tensor) -> None:
        """Replace the pattern (checked: shape, finite, within ``[low, high]`` on the mask; zeroed off it)."""
        self.pattern = self._checked(pattern)

    def stamp(self, x: torch.Tensor, pattern: torch.Tensor) -> torch.Tensor:
        """``pattern * m + (1 - m) * x``, differentiable in ``pattern`` (A3FL's trigger search)."""
        m = self.mask.to(device=x.device, dtype=x.dtype)
        return pattern * m + (1 - m) * x

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Stamp the current pattern on a batch ``(B, C, H, W)`` (a copy)."""
        if tuple(x.shape[-3:]) != tuple(self.pattern.shape):
            raise ConfigError(f"trigger of shape {tuple(self.pattern.shape)} does not fit images {tuple(x.shape[1:])}")
        return self.stamp(x, self.pattern.to(device=x.device, dtype=x.dtype))

    def _config(self) -> dict:
        return {"shape": list(self.pattern.shape), "low": self.low, "high": self.high}

    def state_dict(self) -> dict:
        """``pattern`` (a float32 ``(C, H, W)`` clone) and ``mask`` (bool ``(H, W)``)."""
        return {"kind": type(self).__name__, "version": self.STATE_VERSION, "config": self._config(),
                "pattern": self.pattern.clone(), "mask": self.mask.clone()}

    def load_state_dict(self, state: dict) -> None:
        """Restore a state of a trigger with the same shape and range (mask included).

        Raises
        ------
        fl_core.state.StateError
            Another kind, version or configuration, or a pattern of the wrong shape or with NaN/Inf.
        ConfigError
            A pattern outside ``[low, high]``.
        """
        kind = type(self).__name__
        state = check_state(state, kind=kind, version=self.STATE_VERSION, keys=("pattern", "mask"),
                            config=self._config())
        pattern = state_tensor(state, "pattern", kind=kind, ndim=3, shape=tuple(self.pattern.shape))
        mask = state["mask"]
        if not (isinstance(mask, torch.Tensor) and mask.dtype == torch.bool and mask.shape == self.mask.shape):
            raise StateError(f"{kind} state: mask must be a bool tensor of shape {tuple(self.mask.shape)}")
        old = self.mask
        self.mask = mask.clone()
        try:
            self.pattern = self._checked(pattern)
        except ConfigError:
            self.mask = old
            raise


@dataclass(frozen=True)
class TextTrigger:
    """Insert ``token`` at a random word position (``position="random"``) or at the start.

    ``max_position`` bounds the random position to the first words (a trigger inserted
    past the model's truncation length would be cut off); None allows any position.

    Examples
    --------
    >>> TextTrigger(token="cf", position="start").apply(["hello world"], generator=None)
    ['cf hello world']
    """

    token: str = "cf"
    position: str = "random"
    max_position: int | None = None

    def __post_init__(self) -> None:
        if not self.token.strip():
            raise ConfigError("text trigger token must be a non-empty word")
        if self.position not in ("random", "start"):
            raise ConfigError(f"text trigger position must be 'random' or 'start', got {self.position!r}")
        if self.max_position is not None and self.max_position < 0:
            raise ConfigError(f"text trigger max_position must be >= 0 or None, got {self.max_position}")

    def apply(self, texts: list[str], *, generator: torch.Generator | None) -> list[str]:
        out = []
        for t in texts:
            words = t.split()
            if self.position == "start" or generator is None:
                pos = 0
            else:
                hi = len(words) if self.max_position is None else min(len(words), self.max_position)
                pos = int(torch.randint(0, hi + 1, (1,), generator=generator))
            out.append(" ".join([*words[:pos], self.token, *words[pos:]]))
        return out
