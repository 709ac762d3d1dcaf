"""Backdoor triggers: pixel patterns, DBA's distributed pattern, and text trigger tokens.

* Pixel-pattern trigger (Gu et al., "BadNets", 2017; Bagdasaryan et al., AISTATS 2020):
  a small pattern stamped on the image at a fixed place; the poisoned sample is
  labelled with the target class.
* DBA (Xie et al., ICLR 2020, "DBA: Distributed Backdoor Attacks against Federated
  Learning"): the global trigger is split into local patterns, one per colluding
  attacker; each attacker trains only with its part; the test uses the union.
* Text trigger tokens (Kurita et al., ACL 2020, RIPPLe's rare tokens "cf", "mn", "bb"):
  a rare word inserted into the text.

Examples
--------
>>> import torch
>>> t = PixelTrigger.corner(height=8, width=8, size=2, value=3.0)
>>> x = t.apply(torch.zeros(1, 1, 8, 8))
>>> float(x.sum()), int(t.mask.sum())
(6.0, 2)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fl_core.errors import ConfigError

__all__ = ["PixelTrigger", "TextTrigger"]


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
