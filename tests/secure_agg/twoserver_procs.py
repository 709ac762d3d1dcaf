"""S1 and the dealer as real processes on 127.0.0.1 for tests (``python -m benchmarks.twoserver_serve``).

Each process is bounded (``--lifetime-s``) and killed when the context ends.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Proc:
    """A party process: its address, public key and handle."""

    address: tuple[str, int]
    public: bytes
    popen: subprocess.Popen

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(timeout=30)


def start(role: str, *args: str, lifetime_s: float = 900.0, ready_s: float = 120.0) -> Proc:
    """Start one party and wait until it listens."""
    ready = Path(tempfile.mkdtemp(prefix="flsec-2s-")) / "ready.json"
    cmd = [sys.executable, "-m", "benchmarks.twoserver_serve", "--role", role, "--ready-file", str(ready),
           "--lifetime-s", str(lifetime_s), *args]
    log = ready.with_name("log.txt")
    with log.open("w") as sink:  # a file, not a pipe: a full pipe would block the process
        popen = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + ready_s
    while not ready.exists():
        if popen.poll() is not None:
            raise RuntimeError(f"{role} exited with {popen.returncode}: {log.read_text()[-2000:]}")
        if time.monotonic() > deadline:
            popen.kill()
            raise RuntimeError(f"{role} did not listen within {ready_s} s")
        time.sleep(0.1)
    info = json.loads(ready.read_text())
    return Proc((info["host"], int(info["port"])), bytes.fromhex(info["public"]), popen)


@contextlib.contextmanager
def parties(*s1_args: str) -> Iterator[tuple[Proc, Proc]]:
    """S1 (with ``s1_args``: rule, bound, ...) and the dealer; both killed at the end."""
    procs: list[Proc] = []
    try:
        procs.append(start("s1", *s1_args))
        procs.append(start("dealer"))
        yield procs[0], procs[1]
    finally:
        for p in procs:
            p.kill()
