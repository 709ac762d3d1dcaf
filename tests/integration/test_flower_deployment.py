"""The example app ``examples/flower-robust-dp`` on a real local Flower deployment, run by Flower's own CLI.

One ``flower-superlink`` and 10 ``flower-supernode`` processes on 127.0.0.1 (each SuperNode
with its partition in ``--node-config``), then ``flwr run`` of the app against that
SuperLink, three times: one round of flsec's SecAgg+ between the ClientApps and the ServerApp, whose
aggregate must equal plaintext FedAvg recomputed here; then Median with central DP under two
sign-flipping, boosting nodes; then one round of Krum under two-server sharing with S1 and the
dealer as two more processes, whose aggregate must equal plaintext Krum recomputed here.
The ServerApp writes its final accuracy, per-round metrics and arrays to the ``result-path``
of the run config.
Every process (and the SuperExec/app processes they spawn) is stopped in ``finally``.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tomllib

pytest.importorskip("flwr", reason="the flower extra (flwr) is not installed")
psutil = pytest.importorskip("psutil", reason="psutil finds the processes Flower spawns in new sessions")

REPO = Path(__file__).resolve().parents[2]
APP = REPO / "examples" / "flower-robust-dp"
BIN = Path(sys.executable).parent
NODES, ROUNDS = 10, 5
sys.path.insert(0, str(APP))  # the app's task module: the known answer is computed from the same training
import torch  # noqa: E402
from flower_robust_dp import task  # noqa: E402

from benchmarks.twoserver_serve import spawn  # noqa: E402
from defenses.robust import Krum  # noqa: E402

TWO_SERVER_BOUND = 5.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(flwr_home: Path) -> dict[str, str]:
    """No telemetry, no update check, no runtime ``uv sync``; a private Flower home; one thread each."""
    env = dict(os.environ)
    env.update(FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1", UV_OFFLINE="1", FLWR_HOME=str(flwr_home),
               RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
    return env


def _wait_http(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} not up after {timeout_s:.0f} s") from None
            time.sleep(0.5)


def _tree(procs: list[subprocess.Popen]) -> list[psutil.Process]:
    """Our processes and all their descendants (SuperExec and app processes run in their own sessions)."""
    out: list[psutil.Process] = []
    for p in procs:
        try:
            root = psutil.Process(p.pid)
            out += [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    return out


def _stop(procs: list[subprocess.Popen]) -> None:
    tree = _tree(procs)
    for p in tree:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(tree, timeout=10)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)
    for p in procs:
        p.wait(timeout=5)


def _listening(procs: list[subprocess.Popen]) -> set[tuple[str, int]]:
    addrs = set()
    for p in _tree(procs):
        try:
            addrs |= {(c.laddr.ip, c.laddr.port) for c in p.net_connections(kind="inet") if c.status == "LISTEN"}
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return addrs


def _replay_fedavg(rounds: int) -> list[np.ndarray]:
    """Plaintext FedAvg of the app's 10 honest nodes (equal weights), without Flower: the known answer."""
    cfg = tomllib.loads((APP / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    g = task.initial_arrays()
    for _ in range(rounds):
        news = [task.train(g, k, lr=float(cfg["lr"]), steps=int(cfg["local-steps"])) for k in range(NODES)]
        g = [np.mean([n[i].astype(np.float64) for n in news], axis=0) for i in range(len(g))]
    return g


def _replay_two_server_krum() -> list[np.ndarray]:
    """Plaintext Krum(f=2) over the 10 honest nodes' first-round updates whose norm is within the bound."""
    cfg = tomllib.loads((APP / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    g = task.initial_arrays()
    flat = np.concatenate([a.ravel() for a in g]).astype(np.float64)
    ups = [np.concatenate([a.ravel() for a in task.train(g, k, lr=float(cfg["lr"]), steps=int(cfg["local-steps"]))])
           - flat for k in range(NODES)]
    ok = [u for u in ups if np.linalg.norm(u) <= TWO_SERVER_BOUND]
    new = flat + Krum(f=2).excluding(NODES - len(ok))(torch.tensor(np.stack(ok))).numpy()
    out, pos = [], 0
    for a in g:
        out.append(new[pos: pos + a.size].reshape(a.shape))
        pos += a.size
    return out


@pytest.mark.slow
def test_flwr_run_on_a_local_deployment_secagg_plus_round_and_median_dp_under_attack(tmp_path: Path) -> None:
    """Two runs on one deployment: a SecAgg+ round equal to plaintext FedAvg; Median with DP under attack.

    Flower starts a ``flwr-clientapp`` process for every message, so each of SecAgg+'s five
    messages per node per round pays a Python start-up (about 1 min per stage for 10 nodes on
    2 cores): one secure round here; grouped SecAgg+ with Median and DP over several rounds
    runs in the simulation test (``tests/integration/test_flower_secagg.py``).
    """
    env, port = _env(tmp_path / "flwr-home"), _free_port()
    (tmp_path / "flwr-home").mkdir()
    (tmp_path / "flwr-home" / "config.toml").write_text(  # the SuperLink connection `flwr run` uses
        f'[superlink]\ndefault = "deployment"\n\n[superlink.deployment]\naddress = "127.0.0.1:{port}"\n'
        "insecure = true\n")
    logs = tmp_path / "logs"
    logs.mkdir()
    procs: list[subprocess.Popen] = []

    def start(name: str, *cmd: str) -> subprocess.Popen:
        with open(logs / f"{name}.log", "wb") as out:
            procs.append(subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT))
        return procs[-1]

    def flwr_run(name: str, run_config: str) -> dict:
        result = tmp_path / f"{name}.json"
        t0 = time.monotonic()
        run = start(name, str(BIN / "flwr"), "run", str(APP), "deployment", "--stream", "--run-config",
                    f'num-nodes={NODES} {run_config} result-path="{result}"')
        while not result.exists():
            assert time.monotonic() - t0 < 1200, (logs / f"{name}.log").read_text()[-3000:]
            assert run.poll() is None or run.returncode == 0, (logs / f"{name}.log").read_text()[-3000:]
            time.sleep(1)
        summary = json.loads(result.read_text())
        with np.load(f"{result}.npz") as z:
            summary["arrays"] = [z[k] for k in sorted(z.files, key=lambda f: int(f.split("_")[1]))]
        return summary

    try:
        start("superlink", str(BIN / "flower-superlink"), "--insecure", "--host", "127.0.0.1", "--port", str(port),
              "--disable-runtime-dependency-installation")
        _wait_http(f"http://127.0.0.1:{port}/health", 60)
        for k in range(NODES):
            start(f"supernode-{k}", str(BIN / "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{port}",
                  "--host", "127.0.0.1", "--port", str(_free_port()),
                  "--node-config", f"partition-id={k} num-partitions={NODES}")
        time.sleep(10)
        listening = _listening(procs)
        t0 = time.monotonic()
        plain = flwr_run("secagg-mean", 'num-server-rounds=1 secure=true rule="mean" dp=false attack=false')
        secure_s = time.monotonic() - t0
        robust = flwr_run("median-dp", f'num-server-rounds={ROUNDS} secure=false rule="median" attack=true '
                                       "dp=true noise-multiplier=0.01")
        # the two-server protocol: S1 (Krum, f=2, the app's bound) and the dealer as two more processes
        parties = [spawn("s1", "--rule", "krum", "--param", "f=2", "--bound", str(TWO_SERVER_BOUND)),
                   spawn("dealer")]
        t0 = time.monotonic()
        two = flwr_run("two-server-krum", 'num-server-rounds=1 secure=true protocol="two-server" rule="krum" '
                       f"dp=false attack=false two-server-bound={TWO_SERVER_BOUND} "
                       f's1-address="127.0.0.1:{parties[0].address[1]}" s1-public="{parties[0].public.hex()}" '
                       f'dealer-address="127.0.0.1:{parties[1].address[1]}" dealer-public="{parties[1].public.hex()}"')
        two_s = time.monotonic() - t0
    finally:
        for party in locals().get("parties", []):
            party.kill()
        _stop(procs)
    assert listening and all(ip == "127.0.0.1" for ip, _ in listening), listening
    # SecAgg+ across 11 processes: the aggregate is plaintext FedAvg within the quantisation bound
    for got, want in zip(plain["arrays"], _replay_fedavg(1), strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    assert plain["history"]["1"]["nodes-aggregated"] == NODES
    # two-server sharing across 13 processes: the aggregate is plaintext Krum over the nodes whose norm is in bound
    for got, want in zip(two["arrays"], _replay_two_server_krum(), strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    assert two["history"]["1"]["nodes-trained"] == NODES and "aborted" not in two["history"]["1"]
    print(f"one two-server round on the deployment: {two_s:.0f} s (one message per node)")
    print(f"one SecAgg+ round on the deployment: {secure_s:.0f} s (a ClientApp process per node per stage)")
    history = robust["history"]
    assert robust["rounds_done"] == ROUNDS
    eps = [history[str(r)]["dp_epsilon"] for r in range(1, ROUNDS + 1)]
    assert all(0 < a < b for a, b in itertools.pairwise(eps)), eps  # the ledger grows every round
    assert all(history[str(r)]["nodes-aggregated"] == NODES for r in range(1, ROUNDS + 1)), history
    assert history[str(ROUNDS)]["malicious"] == pytest.approx(2 / NODES)  # the two attackers took part every round
    # Median (f=2) under two sign-flipping nodes boosted 5x; the plain mean ends below 0.1
    assert robust["final_accuracy"] >= 0.85, {k: v for k, v in robust.items() if k != "arrays"}
