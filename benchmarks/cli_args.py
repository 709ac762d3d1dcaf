"""Argument types shared by the ``flsec bench`` sub-commands.

Examples
--------
>>> comma_ints("10,1e4"), comma_names(" krum, flame ,")
([10, 10000], ['krum', 'flame'])
"""

from __future__ import annotations

import argparse

__all__ = ["comma_ints", "comma_names"]


def comma_ints(text: str) -> list[int]:
    """Comma-separated numbers (``1e6`` allowed) as ints; a clear argparse error otherwise."""
    try:
        return [int(float(v)) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def comma_names(text: str) -> list[str]:
    """Comma-separated names, stripped, empty ones dropped."""
    return [v.strip() for v in text.split(",") if v.strip()]
