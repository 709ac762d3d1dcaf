"""The results directory of a suite: one JSON file per finished cell, written atomically.

Layout::

    DIR/suite.toml          the suite source the results belong to
    DIR/cells/<cell>.json   one finished cell (configuration, seed, versions, per-round history)
    DIR/report.md, *.png    written by ``flsec suite report``

A cell file appears only complete (write to a temporary file, fsync, rename), so
a crash or Ctrl-C loses at most the running cell; re-running skips finished cells.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import tomllib

from benchmarks.suite.spec import SuiteError

__all__ = ["CELL_KEYS", "ResultStore"]

#: Keys every cell file has (image and FM suites); a file without them is damaged.
CELL_KEYS = frozenset({"cell_id", "attack", "defense", "seed", "setting", "rounds", "summary", "versions"})


def _without_paper(source: str) -> Any:
    """What a suite's cells depend on: its parsed TOML without the ``[paper]`` table (the text itself if not TOML)."""
    try:
        raw = tomllib.loads(source)
    except tomllib.TOMLDecodeError:
        return source
    raw.pop("paper", None)
    return raw


class ResultStore:
    """Atomic per-cell JSON files under ``root``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.cells_dir = self.root / "cells"

    def check_owner(self, suite_source: str) -> None:
        """Raise :class:`SuiteError` if the directory holds another suite's results; creates nothing.

        A file that differs only in its ``[paper]`` table (a reproduction's claims and prose, which
        no cell depends on) still owns the directory: editing a claim re-scores the finished cells.
        """
        marker = self.root / "suite.toml"
        if marker.exists() and _without_paper(marker.read_text()) != _without_paper(suite_source):
            raise SuiteError(
                str(self.root),
                "holds results of a different suite file; use another output directory or delete it",
            )

    def claim(self, suite_source: str) -> None:
        """Create the directory for this suite, or check that it already belongs to it."""
        self.check_owner(suite_source)
        self.cells_dir.mkdir(parents=True, exist_ok=True)
        marker = self.root / "suite.toml"
        if not marker.exists():
            self._atomic_write(marker, suite_source)
        for stale in self.cells_dir.glob(".*.tmp"):
            stale.unlink()

    def path(self, cell_id: str) -> Path:
        return self.cells_dir / f"{cell_id}.json"

    def done(self, cell_id: str) -> bool:
        """Whether ``cell_id`` finished; a damaged file counts as not done (the run recomputes it)."""
        p = self.path(cell_id)
        if not p.is_file():
            return False
        try:
            self._load_cell(p)
        except SuiteError:
            return False
        return True

    def write(self, cell_id: str, payload: dict[str, Any]) -> Path:
        p = self.path(cell_id)
        self._atomic_write(p, json.dumps(payload, indent=1, sort_keys=True))
        return p

    def load_all(self) -> list[dict[str, Any]]:
        """Every finished cell; a damaged cell file raises :class:`SuiteError` naming it and the problem."""
        if not self.cells_dir.is_dir():
            raise SuiteError(str(self.root), "is not a suite results directory (no cells/ inside)")
        return [self._load_cell(p) for p in sorted(self.cells_dir.glob("*.json"))]

    @staticmethod
    def _load_cell(path: Path) -> dict[str, Any]:
        fix = "delete it, or run the same `flsec suite run` command again to recompute it"
        try:
            cell = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
            raise SuiteError(str(path), f"damaged cell file ({type(exc).__name__}: {exc}); {fix}") from None
        if not isinstance(cell, dict):
            raise SuiteError(str(path), f"damaged cell file: not a JSON object but {type(cell).__name__}; {fix}")
        missing = sorted(CELL_KEYS - set(cell))
        if missing or cell.get("cell_id") != path.stem or not isinstance(cell.get("rounds"), list):
            what = f"missing keys {missing}" if missing else "cell_id or rounds do not match the file"
            raise SuiteError(str(path), f"damaged cell file: {what}; {fix}")
        return cell

    @staticmethod
    def _atomic_write(path: Path, text: str) -> None:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
