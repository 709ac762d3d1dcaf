"""Suites on Ray (a local 2-CPU Ray started and stopped here): the sequential results, resume, faults."""

import functools
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from benchmarks.cli import main as cli_main
from benchmarks.suite import parse_suite, run_suite

ray = pytest.importorskip("ray", reason="the ray extra is not installed")

from benchmarks.suite.ray_runner import run_suite_ray  # noqa: E402
from fl_core.cohort_ray import RayClusterError  # noqa: E402

SUITE = """
name = "tiny-ray"
[setting]
dataset = "digits"
clients = 5
rounds = 2
malicious_fraction = 0.4
[[attacks]]
name = "none"
[[attacks]]
name = "ipm"
[[defenses]]
name = "median"
"""
TIMING = "seconds"


def _strip(value):
    """A result without its wall-clock times (cell, rounds, exposure probe): what the seed must reproduce."""
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k != TIMING}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def _canonical(results) -> list[str]:
    return [json.dumps(_strip(r), sort_keys=True) for r in results]


@pytest.fixture(scope="module")
def sequential(tmp_path_factory):
    """The reference: the suite run in this process with 1 torch thread (a Ray cell's default)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run_suite(parse_suite(SUITE), out=tmp_path_factory.mktemp("seq"), progress=False)
    finally:
        torch.set_num_threads(threads)


def test_unreachable_address_is_a_quick_clear_error_and_creates_nothing(tmp_path, capsys):
    was = ray.is_initialized()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    suite = tmp_path / "s.toml"
    suite.write_text(SUITE)
    t0 = time.monotonic()
    assert cli_main(["suite", "run", str(suite), "--out", str(tmp_path / "o"), "--ray", f"127.0.0.1:{port}"]) == 2
    assert time.monotonic() - t0 < 15
    assert f"no Ray cluster reachable at '127.0.0.1:{port}'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    assert ray.is_initialized() == was  # a failed connection changes nothing
    assert cli_main(["suite", "run", str(suite), "--out", str(tmp_path / "o"), "--cpus-per-cell", "2"]) == 2
    assert "--cpus-per-cell: applies to --ray runs only" in capsys.readouterr().err
    assert cli_main(["suite", "run", "fm", "--out", str(tmp_path / "fm"), "--ray"]) == 2
    assert "--ray: runs image suites; the FM suite 'fm' runs without it" in capsys.readouterr().err
    assert not (tmp_path / "fm").exists()


@pytest.fixture(scope="module")
def cluster():
    info = ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield info.address_info["gcs_address"]
    finally:
        ray.shutdown()


def test_results_equal_the_sequential_run(cluster, sequential, tmp_path):
    results = run_suite_ray(parse_suite(SUITE), out=tmp_path, progress=False, timeout_s=300)
    assert [r["cell_id"] for r in results] == [r["cell_id"] for r in sequential]
    assert _canonical(results) == _canonical(sequential)
    # one probe per column, from its first cell (attackers 0 and 2 in the ipm row would change its target)
    assert _strip(results[1]["exposure"]) == _strip(results[0]["exposure"]) and results[0]["exposure"]["psnr"] > 0


def test_a_cell_larger_than_any_node_is_refused_before_work(cluster, tmp_path):
    with pytest.raises(RayClusterError, match=r"a cell of suite 'tiny-ray' asks for 3 CPU.*largest node: 2 CPU"):
        run_suite_ray(parse_suite(SUITE), out=tmp_path / "o", cpus_per_cell=3, progress=False)
    assert not (tmp_path / "o").exists()
    with pytest.raises(ValueError, match="needs a CUDA suite"):
        run_suite_ray(parse_suite(SUITE), out=tmp_path / "o", gpus_per_cell=0.5, progress=False)


@pytest.mark.slow  # about 15 s: worker restarts
def test_a_dead_worker_is_retried_then_a_clear_error_and_a_run_timeout_stops(cluster, sequential, tmp_path):
    marker = tmp_path / "died"

    def die_once(cell, spec, split, **kw):  # pickled by value: the worker kills itself in its first ipm cell
        from benchmarks.suite.runner import run_cell

        if cell.cell_id.startswith("ipm") and not marker.exists():
            marker.touch()
            os._exit(1)
        return run_cell(cell, spec, split, **kw)

    results = run_suite_ray(parse_suite(SUITE), out=tmp_path / "a", max_retries=1, cell_fn=die_once, progress=False,
                            timeout_s=300)
    assert marker.exists() and _canonical(results) == _canonical(sequential)
    marker.unlink()
    with pytest.raises(RayClusterError, match=r"cell ipm__median__seed0 failed on the Ray cluster after 0 retries"):
        run_suite_ray(parse_suite(SUITE), out=tmp_path / "b", max_retries=0, cell_fn=die_once, progress=False,
                      timeout_s=300)
    assert not (tmp_path / "b" / "cells" / "ipm__median__seed0.json").exists()
    assert not list((tmp_path / "b" / "cells").glob(".*.tmp"))  # nothing half-written
    t0 = time.monotonic()  # a run past its bound stops, cancelling its cells
    with pytest.raises(RayClusterError, match=r"not finished within 0.5 s \(cell none__median__seed0"):
        run_suite_ray(parse_suite(SUITE), out=tmp_path / "c", progress=False, timeout_s=0.5)
    assert time.monotonic() - t0 < 30 and not list((tmp_path / "c" / "cells").iterdir())


def test_resume_after_the_driver_is_killed(cluster, sequential, tmp_path, caplog):
    suite = tmp_path / "s.toml"
    suite.write_text(SUITE)
    out = tmp_path / "out"
    # one cell at a time (2 CPUs per cell on the 2-CPU cluster), 1 thread; SIGKILL once the first cell is written
    cmd = [sys.executable, "-m", "benchmarks.cli", "suite", "run", str(suite), "--out", str(out), "--ray", cluster,
           "--cpus-per-cell", "2", "--threads", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while not list((out / "cells").glob("*.json")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        err = proc.stderr.read().decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    done = {p.name: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json")}
    assert proc.returncode == -signal.SIGKILL and len(done) == 1, err[-2000:]
    caplog.set_level(logging.INFO, logger="benchmarks.suite.ray_runner")
    results = run_suite_ray(parse_suite(SUITE), out=out, cpus_per_cell=2, threads=1, progress=False, timeout_s=300)
    assert "2 cells, 1 to run on Ray" in caplog.text  # resumed: only the missing cell ran
    assert {n: (out / "cells" / n).stat().st_mtime_ns for n in done} == done  # the finished cell is untouched
    assert _canonical(results) == _canonical(sequential)


TINY_REPRO = SUITE.replace('name = "tiny-ray"', 'name = "tiny-ray-repro"').replace(
    "rounds = 2", "rounds = 2\nseeds = [0, 1, 2]") + """
[paper]
source = "a tiny check"
figure = "none"
[[paper.claims]]
kind = "ordering"
metric = "accuracy"
higher = { attack = "none" }
lower = { attack = "ipm" }
"""


def test_reproduction_on_ray_equals_the_sequential_run(cluster, tmp_path):
    """`flsec reproduce --ray`: the image reproduction's cells as Ray tasks give the same cells and verdict."""
    from benchmarks.reproduce.run import run_reproduction

    path = tmp_path / "repro-tiny.toml"
    path.write_text(TINY_REPRO)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        seq = run_reproduction(path, out=tmp_path / "seq", progress=False, threads=1)
    finally:
        torch.set_num_threads(threads)
    on_ray = run_reproduction(path, out=tmp_path / "ray", progress=False, threads=1,
                              suite_runner=functools.partial(run_suite_ray, timeout_s=300))
    assert on_ray["cells"] == seq["cells"] == 6 and on_ray["cells_run_now"] == 6
    assert on_ray["claims"] == seq["claims"] and on_ray["verdict"] == seq["verdict"]
    cells = sorted(p.name for p in (tmp_path / "seq" / "cells").iterdir())
    assert cells == sorted(p.name for p in (tmp_path / "ray" / "cells").iterdir())
    for name in cells:
        a, b = (json.loads((tmp_path / d / "cells" / name).read_text()) for d in ("seq", "ray"))
        assert _canonical([a]) == _canonical([b])
