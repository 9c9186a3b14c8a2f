"""Where a run's pending parts are computed: in this process (``local``), or on Dask distributed.

``--scheduler`` takes ``local`` (the in-process loop), ``local:N`` (a ``distributed.LocalCluster`` of N
worker processes on this machine), ``tcp://HOST:PORT`` or a ``scheduler.json`` file (an existing
cluster: ``dask-jobqueue``'s SLURMCluster / PBSCluster, ``dask-cuda``'s LocalCUDACluster with one
worker per GPU, ``dask scheduler`` + ``dask worker`` by hand); ``$DASK_SCHEDULER_ADDRESS`` is read
when no option is given. The client plans and creates the run; each task computes one part and
commits it itself through the commit protocol, so a task that Dask runs again after its worker died
commits at most once. Each worker loads a model once (``ModelCache``, a worker plugin keyed by the
model's location, revision, dtype and device).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
from distributed import WorkerPlugin

from attnwh.errors import UsageError

SCHEDULER_ENV = "DASK_SCHEDULER_ADDRESS"
# Dask's nannies start workers with MALLOC_TRIM_THRESHOLD_=65536, which turns off glibc's dynamic mmap
# threshold: every tensor over 128 KiB is then mmap'ed and unmapped again, page faults each time, and
# a forward pass on the CPU ran 1.2x slower (bench/bench_scale.py). Workers of ``local:N`` keep
# glibc's default; a cluster started by hand takes the same setting from a Dask config file (README).
WORKER_CONFIG = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}
TIMEOUT_ENV = "ATTNWH_DASK_CONNECT_TIMEOUT"  # how long to try to reach a scheduler (default 20s)


@dataclass(frozen=True)
class Scheduler:
    kind: str  # local | cluster (a LocalCluster of ``workers``) | address | file
    workers: int = 0
    address: str | None = None

    @property
    def in_process(self) -> bool:
        return self.kind == "local"


def parse_scheduler(text: str | None) -> Scheduler:
    """``--scheduler`` (else ``$DASK_SCHEDULER_ADDRESS``, else ``local``)."""
    text = (text or os.environ.get(SCHEDULER_ENV) or "local").strip()
    if text == "local":
        return Scheduler("local")
    if text.startswith("local:"):
        count = text.removeprefix("local:")
        if not count.isdigit() or int(count) < 1:
            raise UsageError(f"--scheduler local:N takes a number of workers N ≥ 1; got {text!r}")
        return Scheduler("cluster", int(count))
    if "://" in text:
        return Scheduler("address", address=text)
    if text.endswith(".json"):
        if not Path(text).is_file():
            raise UsageError(f"--scheduler {text}: no such scheduler file")
        return Scheduler("file", address=text)
    raise UsageError(f"--scheduler takes local, local:N, tcp://HOST:PORT or a scheduler.json file; got {text!r}")


class ModelCache(WorkerPlugin):
    """Per worker process: the run set-ups and loaded models its tasks share (loaded once each)."""

    name = "attnwh-model-cache"

    def setup(self, worker) -> None:
        self.setups: dict[str, Any] = {}
        self.models: dict[tuple, Any] = {}
        self.loads = 0
        # commits in flight beside computing tasks: at most one per worker thread, as the local loop
        # keeps one commit in flight beside its computing part
        self.commit_slots = threading.BoundedSemaphore(max(1, worker.state.nthreads))

    def run_setup(self, key: str, make: Callable[[], Any]) -> Any:
        if key not in self.setups:
            self.setups[key] = make()
        return self.setups[key]

    def model(self, setup) -> Any:
        """The ``LoadedModel`` of a run's set-up (``extract.setup.RunSetup``), loaded on first use."""
        from attnwh.extract.models import load_model

        key = (setup.source.location, setup.source.revision, str(setup.dtype), str(setup.device))
        if key not in self.models:
            self.models[key] = load_model(setup.source, dtype=setup.dtype, device=setup.device)
            self.loads += 1
        return self.models[key]


@contextmanager
def dask_client(scheduler: Scheduler, threads_per_worker: int = 1) -> Iterator[Any]:
    """A client of the scheduler (a LocalCluster for ``local:N``), with the model cache on every worker."""
    try:
        from distributed import Client, LocalCluster
    except ImportError as exc:  # pragma: no cover  (a dependency)
        raise UsageError("--scheduler other than local needs the distributed package (pip install distributed)") from exc
    cluster = None
    try:
        if scheduler.kind == "cluster":
            with dask.config.set(WORKER_CONFIG):
                cluster = LocalCluster(
                    n_workers=scheduler.workers, threads_per_worker=threads_per_worker, processes=True, host="127.0.0.1", dashboard_address=":0"
                )
            client = Client(cluster)
        elif scheduler.kind == "file":
            client = Client(scheduler_file=scheduler.address, timeout=os.environ.get(TIMEOUT_ENV, "20s"))
        else:
            client = Client(scheduler.address, timeout=os.environ.get(TIMEOUT_ENV, "20s"))
    except (OSError, TimeoutError, ValueError) as exc:
        if cluster is not None:
            cluster.close()
        raise UsageError(f"cannot reach the Dask scheduler at {scheduler.address or 'a local cluster'}: {type(exc).__name__}: {exc}") from exc
    try:
        client.register_plugin(ModelCache())
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


@contextmanager
def commit_beside_next_task(cache: ModelCache) -> Iterator[None]:
    """Commit a computed part while this worker thread computes the next one.

    Waits for a commit slot (so commits in flight stay bounded), then secedes the task from the
    worker's thread pool (``distributed.secede``), which frees its slot for the next task while this
    one writes and commits. The task returns only once committed, so a worker lost mid-commit makes
    Dask run the task again, and the commit protocol keeps it to one commit.
    """
    from distributed import secede

    with cache.commit_slots:
        secede()
        yield


def model_loads(client) -> dict[str, int]:
    """How many models each worker loaded (the cache's count), by worker address."""
    return client.run(lambda dask_worker: dask_worker.plugins[ModelCache.name].loads)


def worker_cache() -> ModelCache:
    """The model cache of the worker this task runs on."""
    from distributed import get_worker

    return get_worker().plugins[ModelCache.name]


def worker_address() -> str:
    from distributed import get_worker

    return get_worker().address


def sweep_on_dask(scheduler: Scheduler, threads_per_worker: int, run, conditions: list, task, task_args, on_progress=None) -> int:
    """A sweep's conditions (each one part) as one Dask task each, ``task(*task_args(condition))``, which
    commits its condition on the worker and returns 1 if it did; returns how many were committed. Attempts
    of workers that died (their tasks ran again elsewhere) are removed afterwards."""
    from distributed import as_completed

    from attnwh.warehouse import parts

    written = 0
    with dask_client(scheduler, threads_per_worker) as client:
        futures = [client.submit(task, *task_args(condition), key=f"attnwh-{run.run_id}-{condition.condition_id}", pure=False) for condition in conditions]
        if on_progress:
            on_progress(0, len(conditions))
        for done, future in enumerate(as_completed(futures), start=1):
            written += future.result()
            if on_progress:
                on_progress(done, len(conditions))
    parts.recover(run.paths)
    return written
