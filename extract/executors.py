"""Where a run's pending parts are computed: in this process (``local``), or on Dask distributed.

``--scheduler`` takes ``local`` (the in-process loop), ``local:N`` (a ``distributed.LocalCluster`` of N
worker processes on this machine), ``tcp://HOST:PORT`` or a ``scheduler.json`` file (an existing
cluster: ``dask-jobqueue``'s SLURMCluster / PBSCluster, ``dask-cuda``'s LocalCUDACluster with one
worker per GPU, ``dask scheduler`` + ``dask worker`` by hand); ``$DASK_SCHEDULER_ADDRESS`` is read
when no option is given. The client plans and creates the run; each task computes one part and
commits it itself through the commit protocol, so a task that Dask runs again after its worker died
commits at most once. Each worker loads a model once (``ModelCache``, a worker plugin keyed by the
model's location, revision, dtype and device), however many threads it runs, and builds a run's
set-up (samples, model config) once; before its first task of a run uses that set-up,
``worker_run_setup`` compares it with what the run recorded (its fingerprinted settings and plan
hash), so a worker with other data or model files than the client stops with one line naming the
differing key, before it commits anything. ``local:N`` is capped at the machine's CPU cores.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
from distributed import WorkerPlugin

from attnwh.core.errors import UsageError, first_line

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


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity where the OS tells it, else the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover  (macOS, Windows)
        return max(1, os.cpu_count() or 1)


def parse_scheduler(text: str | None) -> Scheduler:
    """``--scheduler`` (else ``$DASK_SCHEDULER_ADDRESS``, else ``local``).

    ``local:N`` is refused above the cores this process may use: each worker is a process that loads
    the model, and ``local:100000`` ran for minutes and grew to gigabytes before any task started.
    A scheduler file is read here, so a file that does not hold a scheduler's address is one line.
    """
    text = (text or os.environ.get(SCHEDULER_ENV) or "local").strip()
    if text == "local":
        return Scheduler("local")
    if text.startswith("local:"):
        count = text.removeprefix("local:")
        if not count.isascii() or not count.isdigit() or int(count) < 1:
            raise UsageError(f"--scheduler local:N takes a number of workers N ≥ 1; got {text!r}")
        cores = usable_cores()
        if int(count) > cores:
            raise UsageError(
                f"--scheduler {text}: at most {cores} workers on this machine ({cores} CPU cores); more workers than cores only compete for them (use a cluster for more)"
            )
        return Scheduler("cluster", int(count))
    if "://" in text:
        return Scheduler("address", address=text)
    if text.endswith(".json"):
        if not Path(text).is_file():
            raise UsageError(f"--scheduler {text}: no such scheduler file")
        check_scheduler_file(Path(text))
        return Scheduler("file", address=text)
    raise UsageError(f"--scheduler takes local, local:N, tcp://HOST:PORT or a scheduler.json file; got {text!r}")


SCHEDULER_FILE_LIMIT = 1 << 20  # a scheduler file is a few hundred bytes


def check_scheduler_file(path: Path) -> str:
    """The scheduler address a scheduler file (``dask scheduler --scheduler-file``) holds; anything else is one line naming the file."""

    def refuse(why: str) -> UsageError:
        return UsageError(f"--scheduler {path}: not a Dask scheduler file ({why}); point it at the file `dask scheduler --scheduler-file` writes")

    try:
        with open(path, "rb") as handle:
            content = handle.read(SCHEDULER_FILE_LIMIT + 1)
    except OSError as exc:
        raise UsageError(f"--scheduler {path}: cannot read it ({exc.strerror or exc})") from exc
    if len(content) > SCHEDULER_FILE_LIMIT:
        raise refuse(f"larger than {SCHEDULER_FILE_LIMIT} bytes")
    try:
        found = json.loads(content.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise refuse("not UTF-8 text") from exc
    except (ValueError, RecursionError) as exc:
        raise refuse(f"not JSON: {first_line(exc)}") from exc
    if not isinstance(found, dict):
        raise refuse(f"a JSON {type(found).__name__}, not an object")
    address = found.get("address")
    if not isinstance(address, str):
        raise refuse('no "address" string' if address is None else f'its "address" is a JSON {type(address).__name__}')
    scheme, _, rest = address.partition("://")
    if not scheme or not rest or not scheme.isascii() or not scheme.isalnum() or address != address.strip():
        raise refuse(f"its address {address!r} is not PROTOCOL://HOST:PORT")
    return address


class ModelCache(WorkerPlugin):
    """Per worker process: the run set-ups and loaded models its tasks share (loaded once each).

    A worker runs ``--threads-per-worker`` tasks at once (a hand-started ``dask worker`` several by
    default): two threads asking for the same set-up or model wait for one build, not one each. Each
    key has its own lock, so a long build (a sweep's head means) does not hold up other keys; a build
    that fails is not kept, and the next task tries again.
    """

    name = "attnwh-model-cache"

    def setup(self, worker) -> None:
        self.setups: dict[str, Any] = {}
        self.models: dict[tuple, Any] = {}
        self.loads = 0
        self._lock = threading.Lock()  # guards the two dicts of per-key locks and ``loads``
        self._building: dict[tuple, threading.Lock] = {}
        # commits in flight beside computing tasks: at most one per worker thread, as the local loop
        # keeps one commit in flight beside its computing part
        self.commit_slots = threading.BoundedSemaphore(max(1, worker.state.nthreads))

    def _once(self, kept: dict, kind: str, key: Any, make: Callable[[], Any]) -> tuple[Any, bool]:
        """``kept[key]``, built by ``make`` by the first thread that asks (the others wait for it); and whether this call built it."""
        if key in kept:
            return kept[key], False
        with self._lock:
            building = self._building.setdefault((kind, key), threading.Lock())
        with building:
            if key in kept:
                return kept[key], False
            kept[key] = make()
            return kept[key], True

    def run_setup(self, key: str, make: Callable[[], Any]) -> Any:
        return self._once(self.setups, "setup", key, make)[0]

    def model(self, setup) -> Any:
        """The ``LoadedModel`` of a run's set-up (``extract.setup.RunSetup``), loaded on first use."""
        from attnwh.extract import models

        key = (setup.source.location, setup.source.revision, str(setup.dtype), str(setup.device))
        loaded, new = self._once(self.models, "model", key, lambda: models.load_model(setup.source, dtype=setup.dtype, device=setup.device))
        if new:
            with self._lock:
                self.loads += 1
        return loaded


# Settings a worker resolves for itself but may differ on it without changing the samples: where the
# data lie on this machine (a hub dataset's cache, a home folder). The samples themselves are checked.
LOCATION_KEYS = frozenset({"data"})


def samples_digest(samples: list) -> str:
    """What a run's samples are (keys, questions, choices, gold answers, regions, annotated objects): equal on a worker
    and the client exactly when they read the same benchmark data (images are not read for it)."""
    digest = hashlib.sha256()
    for sample in samples:
        fields = [
            sample.key,
            sample.question,
            list(sample.choices),
            sample.gold,
            sample.category,
            sample.parser,
            sample.hint,
            sample.note,
            [list(box) for box in sample.boxes],
            sample.group,
            sample.error,
            None if sample.objects is None else [list(sample.objects.truth), list(sample.objects.hallu), sample.objects.vocabulary.name, sample.objects.vocabulary.version],
        ]
        digest.update(json.dumps(fields, default=repr, ensure_ascii=False).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def worker_run_setup(cache: ModelCache, run_root: str | Path, run_id: str, make: Callable[[], Any], samples: str | None = None) -> Any:
    """The run's set-up (``extract.setup.RunSetup``), built by ``make`` once per worker process and
    checked, before the first task of this worker uses it, against what the run recorded:

    - every fingerprinted setting the set-up resolves (``setup.spec``: model revision, dtype, prompt,
      benchmark and its version, split, limit, ...) against the run's ``RUN.json`` (its location on
      this machine, ``data``, may differ);
    - for an extraction run, the plan hash of the worker's samples against the run's plan;
    - with ``samples`` (``samples_digest`` of the client's samples, which a sweep's plan does not
      hold), the worker's samples against it.

    A difference is one ``WarehouseError`` naming the worker and each differing key; the worker then
    commits nothing. Cached per run id, as ``ModelCache.run_setup`` (other keys of the run's tasks,
    like ``f"{run_id}/sweep"``, stay the caller's).
    """

    def checked() -> Any:
        setup = make()
        check_worker_setup(setup, run_root, run_id, samples)
        return setup

    return cache.run_setup(run_id, checked)


def check_worker_setup(setup, run_root: str | Path, run_id: str, samples: str | None = None) -> None:
    """Raise ``WarehouseError`` naming each key in which ``setup`` differs from the run at ``run_root``."""
    from attnwh.core.errors import WarehouseError
    from attnwh.warehouse import storage
    from attnwh.warehouse.layout import RunPaths
    from attnwh.warehouse.runs import canonical_json, plan_hash, read_manifest, read_plan

    paths = RunPaths(storage.location(str(run_root)))
    manifest = read_manifest(paths)
    recorded = manifest["spec"]
    differing = [
        f"{key} {value!r} != {recorded[key]!r}"
        for key, value in sorted(setup.spec.items())
        if key in recorded and key not in LOCATION_KEYS and canonical_json(value) != canonical_json(recorded[key])
    ]
    keys = [sample.key for sample in setup.samples]
    if manifest["kind"] == "extract":
        mine, theirs = plan_hash(keys, manifest["part_size"]), recorded.get("plan_hash")
        if mine != theirs:
            planned = read_plan(paths, manifest).sample_keys
            where = next((i for i, (a, b) in enumerate(zip(keys, planned)) if a != b), None)
            detail = (
                f"sample {where} is {keys[where]!r} here, {planned[where]!r} in the run's plan"
                if where is not None
                else f"{len(keys)} samples here, {len(planned)} in the run's plan"
            )
            differing.append(f"plan hash {mine[:12]} != {str(theirs)[:12]} ({detail})")
    if samples is not None:
        mine = samples_digest(setup.samples)
        if mine != samples:
            differing.append(f"samples {mine[:12]} != {samples[:12]} ({len(keys)} samples here; the client's differ in their keys, questions or answers)")
    if differing:
        raise WarehouseError(
            f"worker {_this_worker()} does not match run {run_id}: {'; '.join(differing)} (this worker's value first). "
            f"Give every worker the client's data and model files (and settings that resolve alike, e.g. --dtype)"
        )


def _this_worker() -> str:
    try:
        return worker_address()
    except ValueError:  # not on a Dask worker
        import socket

        return f"{socket.gethostname()}:{os.getpid()}"


def check_reachable(scheduler: Scheduler) -> None:
    """Connect to a running scheduler (an address or a scheduler file) and let go, so that one that cannot be reached is
    refused in one line before a run is created; a local cluster is started where it is used."""
    if scheduler.kind in ("address", "file"):
        with dask_client(scheduler):
            pass


@contextmanager
def dask_client(scheduler: Scheduler, threads_per_worker: int = 1) -> Iterator[Any]:
    """A client of the scheduler (a LocalCluster for ``local:N``), with the model cache on every worker."""
    try:
        from distributed import Client, LocalCluster
    except ImportError as exc:  # pragma: no cover  (a dependency)
        raise UsageError("--scheduler other than local needs the distributed package (pip install distributed)") from exc
    cluster = None
    # never the process's default scheduler: attnwh hands its work to this client, and a default set by a client that
    # then failed to connect stayed set (every later .compute() in a notebook failed: "no Client active")
    own = {"set_as_default": False}
    try:
        if scheduler.kind == "cluster":
            with dask.config.set(WORKER_CONFIG):
                cluster = LocalCluster(n_workers=scheduler.workers, threads_per_worker=threads_per_worker, processes=True, host="127.0.0.1", dashboard_address=":0")
            client = Client(cluster, **own)
        elif scheduler.kind == "file":
            client = Client(scheduler_file=scheduler.address, timeout=os.environ.get(TIMEOUT_ENV, "20s"), **own)
        else:
            client = Client(scheduler.address, timeout=os.environ.get(TIMEOUT_ENV, "20s"), **own)
    except Exception as exc:  # noqa: BLE001  (distributed fails on bad addresses with AssertionError, TypeError, KeyError, ...)
        if cluster is not None:
            cluster.close()
        text = first_line(exc) if str(exc).strip() else ""
        raise UsageError(f"cannot reach the Dask scheduler at {scheduler.address or 'a local cluster'}: {type(exc).__name__}{': ' + text if text else ''}") from exc
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


def worker_memory_limit() -> int | None:
    """The memory limit of the Dask worker this task runs on; None outside a worker's task, or for a worker without one."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):  # not in a Dask worker's task
        return None
    limit = getattr(getattr(worker, "memory_manager", None), "memory_limit", None)  # None or 0: no limit
    return int(limit) if limit else None


def sweep_on_dask(scheduler: Scheduler, threads_per_worker: int, run, conditions: list, groups, task, task_args, on_progress=None) -> tuple[int, list]:
    """A sweep's conditions as Dask tasks, one per group (``groups(threads)``: the conditions in groups, given
    how many threads the cluster has), ``task(*task_args(group))``, which commits its conditions on the worker
    and returns a report with how many it committed (``written``); returns how many were committed and the
    reports. Attempts of workers that died (their tasks ran again elsewhere) are removed afterwards."""
    from distributed import as_completed

    from attnwh.warehouse import parts

    written, reports = 0, []
    with dask_client(scheduler, threads_per_worker) as client:
        threads = max(1, sum(client.nthreads().values()))
        futures = {client.submit(task, *task_args(group), key=f"attnwh-{run.run_id}-{group[0].condition_id}", pure=False): len(group) for group in groups(threads)}
        if on_progress:
            on_progress(0, len(conditions))
        done = 0
        for future in as_completed(list(futures), loop=client.loop):  # the client is not the default one
            report = future.result()
            written += report.written
            reports.append(report)
            done += futures[future]
            if on_progress:
                on_progress(done, len(conditions))
    parts.recover(run.paths)
    return written, reports
