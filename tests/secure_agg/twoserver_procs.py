"""S1 and the dealer as real processes on 127.0.0.1 for tests (:func:`benchmarks.twoserver_serve.spawn`).

Each process is bounded (``--lifetime-s``) and killed when the context ends.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from benchmarks.twoserver_serve import Spawned, spawn

start = spawn


@contextlib.contextmanager
def parties(*s1_args: str) -> Iterator[tuple[Spawned, Spawned]]:
    """S1 (with ``s1_args``: rule, bound, ...) and the dealer; both killed at the end."""
    procs: list[Spawned] = []
    try:
        procs.append(spawn("s1", *s1_args))
        procs.append(spawn("dealer"))
        yield procs[0], procs[1]
    finally:
        for p in procs:
            p.kill()
