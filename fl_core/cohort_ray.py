"""Scale-out on Ray: connect with bounded waits, check resources, and train a round's cohort on Ray workers.

Ray is optional (the ``ray`` extra); this module imports it only when a function
here is called, so ``fl_core`` imports without it.

* :func:`ray_session` connects to a cluster (``"host:port"``, ``"ray://host:port"``,
  ``"auto"``) or starts a local one, with a bounded check that the address answers
  first: an unreachable address is a :class:`RayClusterError` naming it, not a hang.
* :func:`check_resources` refuses, before anything is submitted, a task that asks
  for more CPUs or GPUs than any node of the cluster has (Ray would keep it
  pending for ever).
* :func:`as_completed` yields the results of submitted tasks as they finish, with
  every wait bounded; a worker that died (after Ray's retries) is a
  :class:`RayClusterError` naming the task, an error raised in a task is re-raised
  with a note naming it; leaving early cancels what is still running.
* :class:`RayCohortExecutor` is a :class:`~fl_core.federation.CohortExecutor`: the
  sampled clients of a round train as Ray tasks instead of one after the other.
  The model and each client's data go to the object store once per federation;
  per round only the global parameters ``x`` (one object) and each client's
  training hooks travel. Each client draws from the same generator as in the
  sequential run (seed, round, client id), so the history is the same when the
  workers use the same number of torch threads as the sequential run.

Examples
--------
>>> ex = RayCohortExecutor(num_cpus=1, round_timeout_s=600)
>>> ex.num_cpus, ex.threads
(1.0, 1)
>>> RayCohortExecutor(num_cpus=0)
Traceback (most recent call last):
...
fl_core.errors.ConfigError: num_cpus per client must be > 0, got 0
>>> parse_address("127.0.0.1:6379")
('127.0.0.1', 6379)
>>> import torch  # a federation whose clients train on Ray (needs a Ray cluster; not run here)
>>> # fed = Federation(..., executor=RayCohortExecutor()); with ray_session(None): fed.run(rounds=3)
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import re
import socket
import sys
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from fl_core.errors import ConfigError, FlsecError

if TYPE_CHECKING:
    from fl_core.federation import Client, Federation

__all__ = [
    "RayClusterError",
    "RayCohortExecutor",
    "as_completed",
    "check_resources",
    "get_once_per_worker",
    "parse_address",
    "ray_session",
]

log = logging.getLogger(__name__)

_ADDRESS = re.compile(r"^(?:ray://)?(?P<host>\[[0-9a-fA-F:]+\]|[A-Za-z0-9._-]+):(?P<port>\d{1,5})$")


class RayClusterError(FlsecError):
    """The Ray cluster cannot do what was asked: unreachable, too small, a worker died, or a wait ran out."""


def _ray():
    try:
        import ray
    except ModuleNotFoundError as exc:  # pragma: no cover - the extra is installed in CI
        raise RayClusterError(
            "Ray is not installed; install the ray extra: pip install -e '.[ray]'"
        ) from exc
    return ray


def parse_address(address: str) -> tuple[str, int]:
    """Host and port of ``"host:port"`` or ``"ray://host:port"``; a :class:`ConfigError` naming anything else.

    Examples
    --------
    >>> parse_address("ray://head.example:10001")
    ('head.example', 10001)
    >>> parse_address("head")
    Traceback (most recent call last):
    ...
    fl_core.errors.ConfigError: Ray address 'head' is not HOST:PORT, ray://HOST:PORT or 'auto'
    """
    m = _ADDRESS.match(address) if isinstance(address, str) else None
    if m is None or not 0 < int(m["port"]) < 65536:
        raise ConfigError(f"Ray address {address!r} is not HOST:PORT, ray://HOST:PORT or 'auto'")
    return m["host"].strip("[]"), int(m["port"])


def _probe(address: str, timeout_s: float) -> None:
    host, port = parse_address(address)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as exc:
        raise RayClusterError(
            f"no Ray cluster reachable at {address!r}: connecting to {host}:{port} failed within {timeout_s:g} s "
            f"({type(exc).__name__}: {exc}); start its head with `ray start --head --port {port}`, "
            "or check the address `ray start --head` printed"
        ) from None


@contextlib.contextmanager
def ray_session(
    address: str | None = None, *, num_cpus: int | None = None, connect_timeout_s: float = 10.0
) -> Iterator[Any]:
    """Use the Ray this process is connected to, or connect to ``address`` (or start a local Ray) for the block.

    Parameters
    ----------
    address : str, optional
        ``None``: the ``RAY_ADDRESS`` environment variable if set, else a new local Ray
        on this machine, listening on 127.0.0.1 only when Ray was not imported before
        (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` unless set); ``"auto"``: the cluster ``ray start`` left on this
        machine; ``"HOST:PORT"``: the head's GCS address printed by ``ray start --head``;
        ``"ray://HOST:PORT"``: a Ray Client server.
    num_cpus : int, optional
        CPUs of a new local Ray (default: all of this machine's); ignored when connecting.
    connect_timeout_s : float
        Bound on the check that ``address`` answers (a TCP connection to it).

    Yields
    ------
    module
        The ``ray`` module, initialised. A Ray this block started or connected to is
        shut down when it ends; one that was already initialised in this process is
        used (``address``, if given, must still answer) and left running.

    Raises
    ------
    RayClusterError
        The address does not answer within ``connect_timeout_s``, or Ray refuses to connect.
    ConfigError
        A malformed address, ``num_cpus < 1`` or ``connect_timeout_s <= 0``.
    """
    if not (isinstance(connect_timeout_s, int | float) and connect_timeout_s > 0):
        raise ConfigError(f"connect_timeout_s must be > 0, got {connect_timeout_s!r}")
    if num_cpus is not None and not (isinstance(num_cpus, int) and num_cpus >= 1):
        raise ConfigError(f"num_cpus of a local Ray must be an integer >= 1, got {num_cpus!r}")
    if address is not None and address != "auto":
        parse_address(address)  # malformed: before importing Ray
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is None and "ray" not in sys.modules:
        # a local Ray listens on 127.0.0.1 only (Ray reads this when it is imported)
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    ray = _ray()
    if address is not None and address != "auto":
        _probe(address, connect_timeout_s)  # also when already connected: the address asked for must answer
    if ray.is_initialized():
        current = ray.get_runtime_context().gcs_address
        if address not in (None, "auto", current):
            log.warning("Ray is already initialised in this process (%s); using it, not %s", current, address)
        yield ray
        return
    opts: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}
    if address is None:  # "local": a new Ray, not the cluster `ray start` may have left on this machine
        opts["num_cpus"] = num_cpus
    try:
        ray.init(address=address or "local", **opts)
    except (ConnectionError, TimeoutError, RuntimeError) as exc:
        raise RayClusterError(f"cannot connect to the Ray cluster at {address!r}: {exc}") from None
    try:
        log.info("Ray: %s", ray.cluster_resources())
        yield ray
    finally:
        ray.shutdown()


def _per_node(ray) -> list[dict[str, float]]:
    return [dict(n.get("Resources", {})) for n in ray.nodes() if n.get("Alive")]


def check_resources(request: Mapping[str, float], *, what: str) -> None:
    """Raise :class:`RayClusterError` unless one alive node has every resource of ``request`` (e.g. ``{"CPU": 2}``).

    A task that no node can hold would stay pending for ever; this check comes before
    anything is submitted. ``what`` names the task in the message.
    """
    ray = _ray()
    nodes = _per_node(ray)
    need = {k: float(v) for k, v in request.items() if v}
    if any(all(node.get(k, 0.0) >= v for k, v in need.items()) for node in nodes):
        return
    largest = {k: max((node.get(k, 0.0) for node in nodes), default=0.0) for k in need}
    total = {k: float(ray.cluster_resources().get(k, 0.0)) for k in need}
    raise RayClusterError(
        f"{what} asks for {_fmt(need)} per task, but no node of the Ray cluster has that much "
        f"(largest node: {_fmt(largest)}; whole cluster: {_fmt(total)}, {len(nodes)} node(s)); "
        "ask for less per task or add a bigger node"
    )


def _fmt(res: Mapping[str, float]) -> str:
    return ", ".join(f"{v:g} {k}" for k, v in res.items()) or "nothing"


def as_completed(
    refs: Sequence[Any],
    *,
    timeout_s: float | None,
    describe: Callable[[int], str] = lambda i: f"task {i}",
    poll_s: float = 1.0,
    on_poll: Callable[[int], None] | None = None,
    retries: int = 0,
) -> Iterator[tuple[int, Any]]:
    """Yield ``(index, result)`` of the Ray tasks ``refs`` in the order they finish; every wait is bounded.

    Parameters
    ----------
    refs : sequence of ObjectRef
        Submitted tasks.
    timeout_s : float or None
        Bound on the whole wait (``None``: none; each ``ray.wait`` still returns every ``poll_s``).
    describe : callable
        ``describe(i)`` names task ``i`` in errors.
    poll_s : float
        Seconds between checks; ``on_poll(pending)`` is called after each with the number still running.
    retries : int
        The tasks' ``max_retries`` (only for the message when a worker died).

    Raises
    ------
    RayClusterError
        A task's worker died (after Ray's retries), a node died, or ``timeout_s`` ran out.
    Exception
        The error a task raised, with a note naming the task and Ray's remote traceback.

    Tasks still running when the iteration ends early (an error, the consumer's
    ``break`` or ``KeyboardInterrupt``) are cancelled.
    """
    ray = _ray()
    index = {ref: i for i, ref in enumerate(refs)}
    pending = list(refs)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    try:
        while pending:
            wait_s = poll_s if deadline is None else max(0.0, min(poll_s, deadline - time.monotonic()))
            ready, pending = ray.wait(pending, num_returns=1, timeout=wait_s)
            for ref in ready:
                i = index[ref]
                try:
                    value = ray.get(ref, timeout=max(poll_s, 60.0))  # ready: returns at once
                except ray.exceptions.RayTaskError as exc:  # the task itself raised
                    cause = exc.cause if isinstance(exc.cause, Exception) else exc
                    cause.add_note(f"raised in {describe(i)} on a Ray worker:\n{exc}")
                    raise cause from None
                except ray.exceptions.RayError as exc:  # the worker or its node died, the result was lost
                    raise RayClusterError(
                        f"{describe(i)} failed on the Ray cluster after {retries} retr{'y' if retries == 1 else 'ies'}"
                        f": {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                    ) from None
                yield i, value
            if on_poll is not None:
                on_poll(len(pending))
            if pending and deadline is not None and time.monotonic() >= deadline:
                names = ", ".join(describe(index[r]) for r in pending[:5])
                raise RayClusterError(
                    f"{len(pending)} Ray task(s) not finished within {timeout_s:g} s ({names}"
                    f"{', ...' if len(pending) > 5 else ''}); cancelled"
                )
    finally:
        for ref in pending:
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)


# ---------------------------------------------------------------------------------------------------------------
# the cohort of a round on Ray workers

_WORKER_CACHE: dict[str, Any] = {}  # in a Ray worker: the model template, deserialised once per worker


def get_once_per_worker(ray, ref) -> Any:
    """``ray.get(ref)`` in a Ray worker, deserialised once per worker process (the last 8 objects are kept)."""
    key = ref.hex()
    if key not in _WORKER_CACHE:
        if len(_WORKER_CACHE) >= 8:  # models of finished federations
            _WORKER_CACHE.pop(next(iter(_WORKER_CACHE)))
        _WORKER_CACHE[key] = ray.get(ref, timeout=600)
    return _WORKER_CACHE[key]


def _train_clients(
    model_box: list, clients: list[tuple[int, Any, bytes]], x: torch.Tensor, *, round_idx: int, seed: int,
    local: Any, device: str, threads: int,
) -> tuple[torch.Tensor, list[float], list[int]]:
    """Some clients' local training on a Ray worker, one after the other (the sequential loop of ``train_cohort``).

    ``clients`` holds ``(id, [data ref], pickled hooks)``: the hooks as they stood after
    their ``on_round_start`` in the driver.
    """
    import ray
    from threadpoolctl import threadpool_limits

    from fl_core.device import resolve_device
    from fl_core.params import flatten_params, unflatten_into
    from fl_core.rng import Stream, torch_generator
    from fl_core.training import local_train

    torch.set_num_threads(threads)
    dev = resolve_device(device)
    model = get_once_per_worker(ray, model_box[0]).to(dev)
    datas = ray.get([box[0] for _, box, _ in clients], timeout=600)
    rows, losses, counts = [], [], []
    with threadpool_limits(limits=threads):
        x = x.to(dev)
        for (client_id, _, hooks), data in zip(clients, datas, strict=True):
            unflatten_into(model, x)
            generator = torch_generator(seed, Stream.CLIENT, round_idx, client_id)
            res = local_train(model, data, config=local, generator=generator, device=dev,
                              hooks=ray.cloudpickle.loads(hooks))
            rows.append((flatten_params(model) - x).cpu())
            losses.append(res.loss)
            counts.append(res.num_samples)
    return torch.stack(rows), losses, counts


class RayCohortExecutor:
    """Train the sampled clients of each round as Ray tasks (a :class:`~fl_core.federation.CohortExecutor`).

    Give it to :class:`~fl_core.federation.Federation` (``executor=``) and run the
    federation inside :func:`ray_session` (or after ``ray.init``). The model (as the
    federation built it) and every client's data are put into the object store the
    first time a federation uses the executor, once; each round puts ``x`` once, and
    each task trains a few clients of the cohort one after the other.
    The driver calls each client's hooks' ``on_round_start`` in cohort order, as the
    sequential loop does, and ships a snapshot of the hooks with the task: a hook's state that
    must last across rounds changes in ``on_round_start`` (true of every hook in
    ``attacks``); what a hook changes during training stays on the worker.

    Parameters
    ----------
    num_cpus : float
        CPUs each client's task asks Ray for (> 0).
    num_gpus : float
        GPUs (or a fraction of one) each task asks for; needs a CUDA federation device. 0 on CPU.
    threads : int, optional
        torch (and BLAS) threads in a task; default ``max(1, floor(num_cpus))``. The
        history equals the sequential run's when the driver ran with the same number.
    max_retries : int
        Times Ray re-runs a client whose worker died (>= 0); then a :class:`RayClusterError`.
    round_timeout_s : float
        Bound on one round's local training on the cluster (> 0).
    clients_per_task : int, optional
        Clients one task trains one after the other (>= 1); default: the cohort split
        into twice as many tasks as the cluster runs at once (fewer, larger tasks cost
        less scheduling and transfer; more balance the load).

    Notes
    -----
    Models with buffers (batch-norm statistics) start each client from the
    buffers the federation's model had when it was first put in the object store.
    """

    def __init__(
        self,
        *,
        num_cpus: float = 1.0,
        num_gpus: float = 0.0,
        threads: int | None = None,
        max_retries: int = 2,
        round_timeout_s: float = 3600.0,
        clients_per_task: int | None = None,
    ) -> None:
        if not (isinstance(num_cpus, int | float) and math.isfinite(num_cpus) and num_cpus > 0):
            raise ConfigError(f"num_cpus per client must be > 0, got {num_cpus!r}")
        if not (isinstance(num_gpus, int | float) and math.isfinite(num_gpus) and num_gpus >= 0):
            raise ConfigError(f"num_gpus per client must be >= 0, got {num_gpus!r}")
        if threads is not None and not (isinstance(threads, int) and threads >= 1):
            raise ConfigError(f"threads per client must be an integer >= 1, got {threads!r}")
        if not (isinstance(max_retries, int) and max_retries >= 0):
            raise ConfigError(f"max_retries must be an integer >= 0, got {max_retries!r}")
        if not (isinstance(round_timeout_s, int | float) and round_timeout_s > 0):
            raise ConfigError(f"round_timeout_s must be > 0, got {round_timeout_s!r}")
        if clients_per_task is not None and not (isinstance(clients_per_task, int) and clients_per_task >= 1):
            raise ConfigError(f"clients_per_task must be an integer >= 1, got {clients_per_task!r}")
        self.clients_per_task = clients_per_task
        self.num_cpus = float(num_cpus)
        self.num_gpus = float(num_gpus)
        self.threads = threads if threads is not None else max(1, int(num_cpus))
        self.max_retries = max_retries
        self.round_timeout_s = float(round_timeout_s)
        # per federation: (model ref, {client id: data ref}); dropped with the federation
        self._refs: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._task: Any = None

    def _put_once(self, ray, fed: Federation) -> tuple[Any, dict[int, Any]]:
        if fed not in self._refs:
            request = {"CPU": self.num_cpus, "GPU": self.num_gpus}
            if self.num_gpus and fed.device.type != "cuda":
                raise ConfigError(f"num_gpus={self.num_gpus:g} per client needs a CUDA federation, not {fed.device}")
            if not self.num_gpus and fed.device.type == "cuda":  # Ray hides the GPUs from a task without any
                raise ConfigError(f"a federation on {fed.device} needs num_gpus > 0 per client (e.g. 0.25), got 0")
            check_resources(request, what="a client's local training")
            template = copy.deepcopy(fed._worker).cpu()
            data = {c.id: ray.put(c.data) for c in fed.clients}
            self._refs[fed] = (ray.put(template), data)
            log.info("put the model and %d clients' data into the Ray object store", len(data))
        return self._refs[fed]

    def train_cohort(
        self, federation: Federation, cohort: Sequence[Client], x: torch.Tensor, round_idx: int
    ) -> tuple[torch.Tensor, list[float], list[int]]:
        """The ``(n, d)`` updates, losses and example counts of ``cohort`` trained from ``x`` on Ray workers."""
        ray = _ray()
        if not ray.is_initialized():
            raise RayClusterError("Ray is not initialised: run the federation inside fl_core.cohort_ray.ray_session()")
        model_ref, data_refs = self._put_once(ray, federation)
        x_ref = ray.put(x.detach().cpu())
        if self._task is None:  # defined (exported to the cluster) once
            self._task = ray.remote(_train_clients).options(
                num_cpus=self.num_cpus, num_gpus=self.num_gpus, max_retries=self.max_retries, retry_exceptions=False
            )
        per = self.clients_per_task or max(1, math.ceil(len(cohort) / (2 * self._slots(ray))))
        chunks = [list(range(i, min(i + per, len(cohort)))) for i in range(0, len(cohort), per)]
        refs = []
        for chunk in chunks:
            items = []
            for i in chunk:
                client = cohort[i]
                for hook in client.hooks:  # in the driver, in cohort order, as the sequential loop does
                    hook.on_round_start(round_idx=round_idx, global_params=x)
                items.append((client.id, [data_refs[client.id]], ray.cloudpickle.dumps(client.hooks)))
            refs.append(self._task.remote([model_ref], items, x_ref, round_idx=round_idx, seed=federation.seed,
                                          local=federation.local, device=str(federation.device),
                                          threads=self.threads))
        rows: list[torch.Tensor | None] = [None] * len(chunks)
        losses = [0.0] * len(cohort)
        counts = [0] * len(cohort)
        for j, (chunk_rows, chunk_losses, chunk_counts) in as_completed(
            refs, timeout_s=self.round_timeout_s, retries=self.max_retries,
            describe=lambda j: f"clients {[cohort[i].id for i in chunks[j]]} of round {round_idx}",
        ):
            rows[j] = chunk_rows
            for i, loss, n in zip(chunks[j], chunk_losses, chunk_counts, strict=True):
                losses[i], counts[i] = loss, n
        return torch.cat(rows).to(federation.device), losses, counts  # type: ignore[arg-type]

    def _slots(self, ray) -> int:
        """How many tasks the cluster runs at once."""
        return max(1, int(float(ray.cluster_resources().get("CPU", 1.0)) // self.num_cpus))
