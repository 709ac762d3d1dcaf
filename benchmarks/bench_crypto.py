"""``flsec bench crypto``: what cryptographic aggregation costs, for a design review.

For each number of clients ``n`` and model size ``d`` it measures, in one process:
the plaintext sum (the floor), SecAgg (Bonawitz et al., CCS 2017), SecAgg+ (Bell et
al., CCS 2020), CKKS and BFV aggregation with parameters chosen by
:func:`secure_agg.he.params.select_params` (addition only, 128-bit security,
``precision_bits``), and the anchor: the NVFlare CKKS configuration
(``N = 8192``, moduli ``[60, 40, 40]``, scale ``2^40``) run through the same roles.

Columns: ``client_s`` (one client: encode + encrypt/mask + all its protocol
stages + decrypting the result), ``server_s`` (server role: deserialise,
check, add / unmask), ``up_B`` (bytes uploaded per client), ``down_B`` (bytes
downloaded per client), ``up_x_f32`` (``up_B / 4d``) and ``rel_err`` (max abs
error of the weighted mean / max abs plaintext mean).

How HE is measured. ``--sample-clients K`` clients really encode and encrypt
(``client_s`` is their mean; every client does identical work, so the cost for
``n`` clients is ``n`` times it: column ``client_measured = K``). The remaining
``n - K`` inputs re-use those ciphertexts under other sender ids, so the **server
time is fully measured** on ``n`` real messages, and the error is exact against
the plaintext sum of the cohort actually encrypted. SecAgg/SecAgg+ run the full
protocol when ``n * k * d`` (keystream words the clients expand) stays within
``--secagg-budget``; otherwise the row is marked ``skipped`` (use
``flsec bench secagg`` for those).

Outputs: a rich table, ``crypto_bench.csv`` / ``.json`` (with the ratios against the
anchor) and ``crypto_scaling.png`` (time vs n, time vs d, bytes vs d).

Examples
--------
>>> rows = run_crypto_bench(ns=[3], ds=[500], methods=("plain", "bfv"), sample_clients=2)
>>> [r["method"] for r in rows], rows[1]["rel_err"] < 1e-5
(['plain', 'bfv'], True)
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import struct
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from benchmarks.cli_args import comma_ints
from fl_core.rng import numpy_generator
from secure_agg.errors import SecAggConfigError
from secure_agg.graph import CommunicationGraph, choose_k_t, secure_threshold
from secure_agg.he.client import HEClient, open_aggregate
from secure_agg.he.keys import KeyHolder
from secure_agg.he.messages import KEY_HOLDER_ID, PublicContext
from secure_agg.he.params import HEParams, select_params
from secure_agg.he.server import HEServer
from secure_agg.params import SecAggParams
from secure_agg.quantize import FixedPointEncoder
from secure_agg.runner import Direction, run_secagg

__all__ = ["ANCHOR", "METHODS", "main", "register", "run_crypto_bench", "write_outputs"]

logger = logging.getLogger(__name__)

METHODS = ("plain", "secagg", "secagg+", "ckks", "bfv", "anchor")
ANCHOR = {"poly_modulus_degree": 8192, "coeff_mod_bit_sizes": (60, 40, 40), "scale_bits": 40}
"""The NVFlare CKKS configuration (issue 6's performance anchor)."""
_CLIP = 1.0


def _cohort(n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = numpy_generator(seed, n, d)
    X = (rng.standard_normal((n, d), dtype=np.float32) * np.float32(0.05)).clip(-_CLIP, _CLIP)
    w = rng.integers(1, 100, n)
    return X, w


def _ref(X: np.ndarray, w: np.ndarray) -> np.ndarray:
    return (w.astype(np.float64) @ X.astype(np.float64)) / float(w.sum()) if X.shape[1] <= 10**5 else sum(
        float(wi) * X[i].astype(np.float64) for i, wi in enumerate(w)) / float(w.sum())


def _src(n: int, k: int) -> np.ndarray:
    """Which of the ``k`` really encrypted inputs each of the ``n`` server inputs is."""
    return np.arange(n) % max(1, min(k, n))


def _rel(mean: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    err = float(np.abs(mean - ref).max())
    return err, err / float(np.abs(ref).max())


def _row(method: str, n: int, d: int, **kw: object) -> dict[str, object]:
    row: dict[str, object] = {"method": method, "n": n, "d": d, "params": "", "client_s": math.nan,
                              "client_measured": 0, "server_s": math.nan, "up_B": math.nan, "down_B": math.nan,
                              "up_x_f32": math.nan, "abs_err": math.nan, "rel_err": math.nan, "note": ""}
    row.update(kw)
    if isinstance(row["up_B"], int | float) and not math.isnan(float(row["up_B"])):
        row["up_x_f32"] = float(row["up_B"]) / (4.0 * d)
    return row


def _plain(X: np.ndarray, w: np.ndarray) -> dict[str, object]:
    n, d = X.shape
    X32 = X.astype(np.float32)
    t0 = time.perf_counter()
    s = (w.astype(np.float32)[:, None] * X32).sum(axis=0)
    server_s = time.perf_counter() - t0
    err, rel = _rel(s.astype(np.float64) / w.sum(), _ref(X, w))
    return _row("plain", n, d, client_s=0.0, client_measured=n, server_s=server_s, up_B=4 * d, down_B=4 * d,
                abs_err=err, rel_err=rel, params="float32")


def _secagg(method: str, X: np.ndarray, w: np.ndarray, budget: float, seed: int) -> dict[str, object]:
    n, d = X.shape
    ids = list(range(1, n + 1))
    rng = numpy_generator(seed, 7, n, d)
    note = ""
    try:
        if method == "secagg":
            graph, t = CommunicationGraph.complete(ids), max(2, secure_threshold(n, n - 1, gamma=0.05))
        else:
            k, t = choose_k_t(n, gamma=0.05, delta=0.1)
            graph = CommunicationGraph.complete(ids) if k >= n - 1 else CommunicationGraph.harary(ids, k=k, rng=rng)
    except SecAggConfigError as e:  # tiny cohorts: no secure (k, t); fall back to the complete graph
        graph, t, note = CommunicationGraph.complete(ids), n // 2 + 1, f"complete graph, t=n/2+1 ({e})"
    t = min(t, n)
    words = n * graph.k * d
    desc = f"k={graph.k} t={t} ring 2^32"
    if words > budget:
        return _row(method, n, d, params=desc, note=f"skipped: n*k*d={words:.2g} > --secagg-budget")
    enc = FixedPointEncoder(clip=_CLIP, ring_bits=32, weight_bound=int(w.sum()))
    t0 = time.perf_counter()
    inputs = {u: enc.encode(X[u - 1], weight=int(w[u - 1]), rng=rng) for u in ids}
    encode_s = (time.perf_counter() - t0) / n
    res = run_secagg(inputs, params=SecAggParams(round_id=0, t=t, d=d + 1), graph=graph)
    mean, _ = enc.decode_mean(res.sum)
    err, rel = _rel(mean, _ref(X, w))
    return _row(method, n, d, params=desc, client_s=float(np.mean(list(res.client_seconds.values()))) + encode_s,
                client_measured=n, server_s=res.server_seconds, up_B=res.total_bytes(Direction.UP) / n,
                down_B=res.total_bytes(Direction.DOWN) / n, abs_err=err, rel_err=rel, note=note)


def _relabel(data: bytes, sender: int) -> bytes:
    # header: magic(2) version(1) type(1) round(8) sender(4) ...; unsigned inputs only
    return data[:12] + struct.pack("<I", sender) + data[16:]


def _he(method: str, params: HEParams, kh: KeyHolder, X: np.ndarray, w: np.ndarray, k: int) -> dict[str, object]:
    n, d = X.shape
    k = max(1, min(k, n))
    public = kh.public_context()
    secret = kh.client_context()
    msgs, enc_s = [], []
    for u in range(1, k + 1):
        t0 = time.perf_counter()
        c = HEClient(u, X[u - 1], weight=int(w[u - 1]), params=params, context=secret, round_id=0,
                     public_context=public)
        msgs.append(c.encrypt_input())
        enc_s.append(time.perf_counter() - t0)
    server = HEServer(params=params, round_id=0, client_ids=range(1, n + 1), allow_unauthenticated=True)
    setup = PublicContext(round_id=0, sender=KEY_HOLDER_ID, receiver=0, scheme=params.scheme, key_id=kh.key_id,
                          context=public).to_bytes()
    server_s = 0.0
    t0 = time.perf_counter()
    server.receive(KEY_HOLDER_ID, setup)
    server_s += time.perf_counter() - t0
    for u in range(1, n + 1):
        data = msgs[(u - 1) % k] if u <= k else _relabel(msgs[(u - 1) % k], u)
        t0 = time.perf_counter()
        ok = server.receive(u, data)
        server_s += time.perf_counter() - t0
        if not ok:
            raise RuntimeError(f"benchmark input of client {u} rejected: {server.rejected.get(u)}")
    t0 = time.perf_counter()
    outbox = server.advance()
    server_s += time.perf_counter() - t0
    agg = next(iter(outbox.values()))
    t0 = time.perf_counter()
    res = open_aggregate(kh.context, params, agg, key_id=kh.key_id, round_id=0)
    dec_s = time.perf_counter() - t0
    counts = np.bincount(_src(n, k), minlength=k)  # the cohort actually summed: input j appears counts[j] times
    err, rel = _rel(res.mean, _ref(X[:k], counts * w[:k]))
    desc = (f"N={params.poly_modulus_degree} q={list(params.coeff_mod_bit_sizes)} "
            + (f"t={params.plain_modulus.bit_length()}b" if params.scheme == "bfv" else f"scale=2^{params.scale_bits}")
            + f" {params.security_bits}-bit")
    return _row(method, n, d, params=desc, client_s=float(np.mean(enc_s)) + dec_s, client_measured=k,
                server_s=server_s, up_B=float(np.mean([len(m) for m in msgs])), down_B=len(agg), abs_err=err,
                rel_err=rel, encrypt_s=float(np.mean(enc_s)), decrypt_s=dec_s,
                note="" if k == n else f"client cost measured on {k} clients; {n - k} inputs re-use their ciphertexts")


def _he_params(method: str, n: int, d: int, w: np.ndarray, precision_bits: int, k: int) -> HEParams:
    W = int(w[_src(n, k)].sum())
    if method == "anchor":
        return HEParams(scheme="ckks", d=d, n_max=n, clip=_CLIP, weight_bound=W, **ANCHOR)  # type: ignore[arg-type]
    return select_params(d=d, n=n, clip=_CLIP, weight_bound=W, precision_bits=precision_bits, scheme=method)


def run_crypto_bench(
    *,
    ns: Sequence[int],
    ds: Sequence[int],
    methods: Sequence[str] = METHODS,
    sample_clients: int = 4,
    precision_bits: int = 24,
    secagg_budget: float = 2e8,
    seed: int = 0,
) -> list[dict[str, object]]:
    """Measure every method for every ``(n, d)``; one row each (see the module docstring)."""
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise ValueError(f"unknown methods {bad}; valid: {list(METHODS)}")
    if any(n < 2 for n in ns) or any(d < 1 for d in ds):
        raise ValueError(f"need n >= 2 and d >= 1, got ns={list(ns)}, ds={list(ds)}")
    if sample_clients < 1:
        raise ValueError(f"sample_clients must be >= 1, got {sample_clients}")
    rows: list[dict[str, object]] = []
    keys: dict[tuple, KeyHolder] = {}
    for n in ns:
        for d in ds:
            X, w = _cohort(n, d, seed)
            for m in methods:
                logger.info("crypto bench: %s n=%d d=%d", m, n, d)
                if m == "plain":
                    rows.append(_plain(X, w))
                elif m in ("secagg", "secagg+"):
                    rows.append(_secagg(m, X, w, secagg_budget, seed))
                else:
                    p = _he_params(m, n, d, w, precision_bits, sample_clients)
                    sig = (p.scheme, p.poly_modulus_degree, p.coeff_mod_bit_sizes, p.plain_modulus, p.scale_bits)
                    if sig not in keys:
                        keys[sig] = KeyHolder(p)
                    rows.append(_he(m, p, keys[sig], X, w, sample_clients))
    return rows


def ratios(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    """Anchor cost over CKKS/BFV cost (upload, client and server time) for every ``(n, d)``."""
    out = []
    by = {(r["method"], r["n"], r["d"]): r for r in rows}
    for (m, n, d), r in by.items():
        a = by.get(("anchor", n, d))
        if a is None or m not in ("ckks", "bfv"):
            continue
        out.append({"method": m, "n": n, "d": d,
                    "upload_x_smaller": float(a["up_B"]) / float(r["up_B"]),
                    "client_x_faster": float(a["client_s"]) / float(r["client_s"]),
                    "server_x_faster": float(a["server_s"]) / float(r["server_s"]),
                    "up_x_f32": r["up_x_f32"], "rel_err": r["rel_err"]})
    return out


def _print_table(rows: list[dict[str, object]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="crypto aggregation cost (per client: client_s, up_B, down_B)")
    cols = [("method", "{}"), ("n", "{}"), ("d", "{:.0e}"), ("params", "{}"), ("client_s", "{:.4f}"),
            ("client_measured", "{}"), ("server_s", "{:.4f}"), ("up_B", "{:.4g}"), ("down_B", "{:.4g}"),
            ("up_x_f32", "{:.2f}"), ("rel_err", "{:.2e}"), ("note", "{}")]
    for name, _ in cols:
        table.add_column(name, justify="right", overflow="fold")
    for r in rows:
        table.add_row(*[fmt.format(r[name]) for name, fmt in cols])
    console = Console()
    console.width = max(console.width, 180)
    console.print(table)
    rt = ratios(rows)
    if rt:
        t2 = Table(title="vs the NVFlare anchor (CKKS N=8192 [60,40,40] 2^40): higher is better")
        for name in ("method", "n", "d", "upload_x_smaller", "client_x_faster", "server_x_faster", "up_x_f32",
                     "rel_err"):
            t2.add_column(name, justify="right")
        for r in rt:
            t2.add_row(str(r["method"]), str(r["n"]), f"{r['d']:.0e}", f"{r['upload_x_smaller']:.2f}",
                       f"{r['client_x_faster']:.2f}", f"{r['server_x_faster']:.2f}", f"{r['up_x_f32']:.2f}",
                       f"{r['rel_err']:.1e}")
        console.print(t2)


def _plot(rows: list[dict[str, object]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if not math.isnan(float(r["server_s"]))]
    fig, (ax_n, ax_d, ax_b) = plt.subplots(1, 3, figsize=(16, 4.5))
    d_max = max(int(r["d"]) for r in rows)
    n_max = max(int(r["n"]) for r in rows)
    for m in METHODS:
        sel = [r for r in ok if r["method"] == m]
        if not sel:
            continue
        for key, style in (("server_s", "o-"), ("client_s", "^:")):
            by_n = sorted((int(r["n"]), float(r[key])) for r in sel if r["d"] == d_max)
            if by_n:
                ax_n.plot(*zip(*by_n, strict=True), style, label=f"{m} {key}")
            by_d = sorted((int(r["d"]), float(r[key])) for r in sel if r["n"] == n_max)
            if by_d:
                ax_d.plot(*zip(*by_d, strict=True), style, label=f"{m} {key}")
        by_d = sorted((int(r["d"]), float(r["up_B"])) for r in sel if r["n"] == n_max)
        if by_d:
            ax_b.plot(*zip(*by_d, strict=True), "o-", label=f"{m} up/client")
    ax_n.set(xlabel="clients n", ylabel="seconds", title=f"time vs n (d={d_max:.0e})", yscale="log")
    ax_d.set(xlabel="model size d", ylabel="seconds", title=f"time vs d (n={n_max})", xscale="log", yscale="log")
    ax_b.set(xlabel="model size d", ylabel="bytes", title=f"upload per client vs d (n={n_max})", xscale="log",
             yscale="log")
    for ax in (ax_n, ax_d, ax_b):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(rows: list[dict[str, object]], out_dir: Path) -> list[Path]:
    """Write CSV, JSON (rows and ratios against the anchor) and the scaling PNG into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, json_path, png_path = (out_dir / "crypto_bench.csv", out_dir / "crypto_bench.json",
                                     out_dir / "crypto_scaling.png")
    fields: list[str] = []
    for r in rows:
        fields += [k for k in r if k not in fields]
    with csv_path.open("w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=fields)
        wr.writeheader()
        wr.writerows(rows)
    json_path.write_text(json.dumps({"anchor": {k: list(v) if isinstance(v, tuple) else v for k, v in ANCHOR.items()},
                                     "rows": rows, "ratios_vs_anchor": ratios(rows)}, indent=2))
    _plot(rows, png_path)
    return [csv_path, json_path, png_path]


def _methods(text: str) -> list[str]:
    out = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in out if m not in METHODS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown methods {bad}; valid: {','.join(METHODS)}")
    return out


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``crypto`` subcommand (``flsec bench crypto``) to ``subparsers``."""
    p = subparsers.add_parser("crypto", help="plaintext vs SecAgg vs SecAgg+ vs CKKS vs BFV: time, bytes, error")
    p.add_argument("--ns", type=comma_ints, default=[10, 50, 100], help="clients, e.g. 10,50,100")
    p.add_argument("--ds", type=comma_ints, default=[10_000, 100_000, 1_000_000], help="model sizes")
    p.add_argument("--methods", type=_methods, default=list(METHODS), help=f"subset of {','.join(METHODS)}")
    p.add_argument("--sample-clients", type=int, default=4, help="HE clients that really encrypt (rest re-use)")
    p.add_argument("--precision-bits", type=int, default=24, help="HE target: mean within clip * 2^-p")
    p.add_argument("--secagg-budget", type=float, default=2e8, help="max n*k*d keystream words for SecAgg rows")
    p.add_argument("--quick", action="store_true", help="small grid (n=4,8; d=1e3,5e3) for a smoke test")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/bench_crypto"))
    p.set_defaults(func=main)
    return p


def main(args: argparse.Namespace) -> int:
    """Run the benchmark from parsed arguments; prints the tables and writes the outputs."""
    ns, ds = (args.ns, args.ds) if not args.quick else ([4, 8], [1_000, 5_000])
    rows = run_crypto_bench(ns=ns, ds=ds, methods=args.methods, sample_clients=args.sample_clients,
                            precision_bits=args.precision_bits, secagg_budget=args.secagg_budget, seed=args.seed)
    _print_table(rows)
    for path in write_outputs(rows, args.out):
        logger.info("wrote %s", path)
    return 0
