"""``flsec two-server serve``: run S1 or the dealer of the two-server protocol as a process.

The operator of S1 chooses the rule and the bound (S0's rounds must match them); the
dealer needs neither. The process listens on ``--host`` (default ``127.0.0.1``), writes
its port and public key to ``--ready-file`` once it listens, keeps its X25519 key in
``--key-file`` (made on first start), and exits after ``--lifetime-s`` seconds or
``--max-connections`` sessions when they are given.

Examples
--------
>>> args = parser().parse_args(["--role", "s1", "--rule", "krum", "--param", "f=2", "--bound", "4"])
>>> build_role(args).rule
Krum(f=2)
>>> build_role(parser().parse_args(["--role", "s1", "--bound", "4"])).rule
GeometricMean()
>>> parse_params(["f=2", "tau=0.5", "name=x"])
{'f': 2, 'tau': 0.5, 'name': 'x'}
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from fl_core.errors import ConfigError

__all__ = ["Spawned", "add_arguments", "build_role", "load_key", "main", "parse_params", "parser", "register",
           "serve", "spawn"]

logger = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``flsec two-server serve`` (and ``python -m benchmarks.twoserver_serve``)."""
    p.add_argument("--role", choices=("s1", "dealer"), required=True)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="port (default: a free one, see --ready-file)")
    p.add_argument("--key-file", type=Path, help="this party's X25519 private key (32 raw bytes; made if absent)")
    p.add_argument("--peer-public", help="S0's X25519 public key (hex): refuse any other S0")
    p.add_argument("--ready-file", type=Path, help="write {port, public} as JSON here once listening")
    p.add_argument("--rule", help="S1: the robust rule's registry name (default: the weighted mean)")
    p.add_argument("--param", action="append", default=[], metavar="K=V", help="S1: a rule hyper-parameter")
    p.add_argument("--bound", type=float, help="S1: the largest valid update norm")
    p.add_argument("--frac-bits", type=int, help="S1: fixed-point fractional bits (default: the most the bound allows)")
    p.add_argument("--keep-f", action="store_true", help="S1: rejected clients do not count toward the rule's f")
    p.add_argument("--timeout", type=float, default=300.0, help="longest wait for one record from S0 (s)")
    p.add_argument("--lifetime-s", type=float, help="exit after this many seconds")
    p.add_argument("--max-connections", type=int, help="exit after this many S0 sessions")
    return p


def parser() -> argparse.ArgumentParser:
    return add_arguments(argparse.ArgumentParser(
        prog="flsec two-server serve",
        description="Run S1 or the dealer of the two-server protocol (S0 is the ServerApp)."))


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``flsec two-server serve``."""
    two = subparsers.add_parser("two-server", help="run S1 or the dealer of the two-server protocol as a process")
    sub = two.add_subparsers(dest="two_server", metavar="ACTION")
    serve_p = sub.add_parser("serve", help="S1 (with its rule and bound) or the dealer, on 127.0.0.1 by default",
                             description="Run S1 or the dealer of the two-server protocol (S0 is the ServerApp).")
    add_arguments(serve_p).set_defaults(func=serve)
    two.set_defaults(func=lambda args: (two.print_help(), 2)[1])


def parse_params(items: list[str]) -> dict[str, Any]:
    """``K=V`` pairs; values read as JSON (numbers, booleans), else kept as strings."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--param takes K=V, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def load_key(path: Path | None) -> X25519PrivateKey:
    """The party's key from ``path`` (32 raw bytes), made and saved (mode 0600) when absent."""
    if path is None:
        return X25519PrivateKey.generate()
    if path.exists():
        raw = path.read_bytes()
        if len(raw) != 32:
            raise ConfigError(f"--key-file {path} holds {len(raw)} bytes, expected a 32-byte X25519 key")
        return X25519PrivateKey.from_private_bytes(raw)
    key = X25519PrivateKey.generate()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()))
    return key


def build_role(args: argparse.Namespace) -> Any:
    """The :class:`~secure_agg.twoserver.service.S1Role` or ``DealerRole`` the arguments describe."""
    from secure_agg.twoserver.params import DEALER, SERVERS, Party
    from secure_agg.twoserver.service import DealerRole, S1Role

    key = load_key(args.key_file)
    if args.role == "dealer":
        if args.rule or args.param or args.bound is not None:
            raise ConfigError("the dealer takes no --rule, --param or --bound (it sees no data and runs no rule)")
        return DealerRole(party=Party(DEALER, private=key))
    if args.bound is None:
        raise ConfigError("S1 needs --bound (the largest valid update norm, as S0's TwoServerAggregator)")
    if args.rule:
        import defenses.robust  # noqa: F401  (registers the rules)
        from defenses.robust.registry import make

        rule = make(args.rule, **parse_params(args.param))
    else:
        if args.param:
            raise ConfigError("--param without --rule")
        from secure_agg.twoserver.aggregator import GeometricMean

        rule = GeometricMean()
    return S1Role(party=Party(SERVERS[1], private=key), bound=args.bound, rule=rule, frac_bits=args.frac_bits,
                  rejected_are_byzantine=not args.keep_f)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return serve(parser().parse_args(argv))


def serve(args: argparse.Namespace) -> int:
    """Serve until the lifetime or the session count ends (or forever)."""
    from secure_agg.twoserver.service import PartyService

    pin = bytes.fromhex(args.peer_public) if args.peer_public else None
    service = PartyService(build_role(args), host=args.host, port=args.port, peer_public=pin,
                           timeout_s=args.timeout)
    host, port = service.address
    if args.ready_file is not None:
        tmp = args.ready_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"host": host, "port": port, "public": service.public.hex()}))
        tmp.replace(args.ready_file)
    logger.info("%s listening on %s:%d, public key %s", args.role, host, port, service.public.hex())
    if args.lifetime_s is not None:  # a bounded process: gone after its lifetime, even mid-session
        timer = threading.Timer(args.lifetime_s, lambda: (service.close(), os._exit(0)))
        timer.daemon = True
        timer.start()
    try:
        service.serve(max_connections=args.max_connections)
    finally:
        service.close()
    return 0


@dataclass
class Spawned:
    """A party process started by :func:`spawn`: where it listens, its public key, its handle."""

    address: tuple[str, int]
    public: bytes
    popen: subprocess.Popen
    log: Path

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(timeout=30)


def spawn(role: str, *args: str, lifetime_s: float = 900.0, ready_s: float = 120.0) -> Spawned:
    """Start ``python -m benchmarks.twoserver_serve --role ROLE ARGS`` on 127.0.0.1 and wait until it listens.

    The process exits by itself after ``lifetime_s``; the caller kills it when done.
    """
    work = Path(tempfile.mkdtemp(prefix="flsec-2s-"))
    ready, log = work / "ready.json", work / "log.txt"
    cmd = [sys.executable, "-m", "benchmarks.twoserver_serve", "--role", role, "--ready-file", str(ready),
           "--lifetime-s", str(lifetime_s), *args]
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
    return Spawned((info["host"], int(info["port"])), bytes.fromhex(info["public"]), popen, log)


if __name__ == "__main__":
    raise SystemExit(main())
