"""Dask workers that must match their run, a model cache shared by a worker's threads, and the
scheduler / SLURM inputs probes found (issue 27, findings 5 and 6)."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import dask
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attnwh.core.errors import UsageError, WarehouseError
from attnwh.extract import executors
from attnwh.extract.executors import ModelCache, parse_scheduler
from attnwh.extract.ranks import Rank, detect_rank
from attnwh.extract.run import ExtractOptions, run_extract
from attnwh.extract.setup import prepare_run
from attnwh.warehouse import parts
from attnwh.warehouse.layout import open_warehouse
from tests.reliability.harness import run_cli

OPTIONS = dict(limit=8, part_size=4, batch_size=4, device="cpu", rows=False, lens=False, command=["test"])


def _cache(threads: int = 8) -> ModelCache:
    cache = ModelCache()
    cache.setup(SimpleNamespace(state=SimpleNamespace(nthreads=threads)))
    return cache


# -- finding 5: one model cache, many threads -----------------------------------------------------


@pytest.mark.parametrize("threads", [2, 4, 8])
def test_threads_of_one_worker_build_a_setup_and_load_a_model_once(threads, monkeypatch):
    cache = _cache(threads)
    built, loaded = [], []

    def make():
        time.sleep(0.05)  # long enough for every thread to ask before the first is done
        built.append(threading.get_ident())
        return SimpleNamespace(source=SimpleNamespace(location="toy", revision="r1"), dtype="float32", device="cpu")

    def load_model(source, dtype, device):
        time.sleep(0.05)
        loaded.append(source.location)
        return object()

    monkeypatch.setattr("attnwh.extract.models.load_model", load_model)
    start = threading.Barrier(threads)

    def task(_):
        start.wait()
        setup = cache.run_setup("run", make)
        return setup, cache.model(setup)

    with ThreadPoolExecutor(threads) as pool:
        results = list(pool.map(task, range(threads)))
    assert len(built) == 1 and len(loaded) == 1 and cache.loads == 1
    assert len({id(setup) for setup, _ in results}) == 1 and len({id(model) for _, model in results}) == 1


def test_a_failed_build_is_not_kept_and_other_keys_do_not_wait(monkeypatch):
    cache = _cache()
    with pytest.raises(RuntimeError):
        cache.run_setup("run", lambda: (_ for _ in ()).throw(RuntimeError("no data here")))
    assert cache.run_setup("run", lambda: "second try") == "second try"
    slow_started = threading.Event()

    def slow():
        slow_started.set()
        time.sleep(1.0)
        return "slow"

    with ThreadPoolExecutor(2) as pool:
        pending = pool.submit(cache.run_setup, "slow", slow)
        slow_started.wait()
        began = time.monotonic()
        assert cache.run_setup("fast", lambda: "fast") == "fast"
        assert time.monotonic() - began < 0.5  # a key being built does not hold up another key
        assert pending.result() == "slow"


# -- finding 5: a worker's set-up checked against the run ------------------------------------------


@pytest.fixture(scope="module")
def started_run(tmp_path_factory) -> tuple[Path, str, ExtractOptions]:
    """A toy extraction of 2 parts of which only part 0 is committed."""
    warehouse = tmp_path_factory.mktemp("workers") / "wh"
    options = ExtractOptions(**OPTIONS, max_parts=1)
    result = run_extract(warehouse, options)
    assert (result.parts_total, result.parts_written) == (2, 1)
    return result.run_path, result.run_id, dataclasses.replace(options, max_parts=None)


def test_a_worker_with_the_runs_data_gets_its_setup_built_once(started_run):
    root, run_id, options = started_run
    cache, built = _cache(), []

    def make():
        built.append(1)
        return prepare_run(options)

    first = executors.worker_run_setup(cache, str(root), run_id, make)
    assert executors.worker_run_setup(cache, str(root), run_id, make) is first and len(built) == 1


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda setup: dataclasses.replace(setup, samples=setup.samples[::-1]), r"plan hash [0-9a-f]{12} != [0-9a-f]{12}"),
        (lambda setup: dataclasses.replace(setup, samples=setup.samples[:6]), r"plan hash .*6 samples here, 8 in the run's plan"),
        (lambda setup: dataclasses.replace(setup, spec={**setup.spec, "model_revision": "sha256:other"}), r"model_revision 'sha256:other' != '"),
        (lambda setup: dataclasses.replace(setup, spec={**setup.spec, "benchmark_version": "0"}), r"benchmark_version '0' != '"),
    ],
)
def test_a_worker_with_other_data_or_model_files_is_one_clear_error(started_run, change, message):
    root, run_id, options = started_run
    with pytest.raises(WarehouseError, match=message) as raised:
        executors.worker_run_setup(_cache(), str(root), run_id, lambda: change(prepare_run(options)))
    text = str(raised.value)
    assert len(text.splitlines()) == 1 and text.startswith("worker ") and f"run {run_id}" in text


def test_a_sweep_worker_with_other_samples_than_the_client_is_refused(started_run):
    root, run_id, options = started_run
    setup = prepare_run(options)
    expected = executors.samples_digest(setup.samples)
    assert executors.worker_run_setup(_cache(), str(root), run_id, lambda: setup, samples=expected) is setup
    other = dataclasses.replace(setup, samples=[dataclasses.replace(setup.samples[0], gold="no" if setup.samples[0].gold == "yes" else "yes"), *setup.samples[1:]])
    with pytest.raises(WarehouseError, match=r"samples [0-9a-f]{12} != [0-9a-f]{12}"):
        executors.worker_run_setup(_cache(), str(root), run_id, lambda: other, samples=expected)


def test_the_dask_task_of_a_worker_with_other_data_commits_nothing(started_run, monkeypatch):
    """Through Dask (a worker thread in this process, so that its data can be swapped): the task refuses."""
    from distributed import Client, LocalCluster

    from attnwh.extract import run as run_module

    root, run_id, options = started_run
    real = run_module.prepare_run

    def other_data(*args, **kwargs):
        setup = real(*args, **kwargs)
        return dataclasses.replace(setup, samples=setup.samples[::-1])

    monkeypatch.setattr(run_module, "prepare_run", other_data)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster, Client(cluster) as client:
        client.register_plugin(ModelCache())
        future = client.submit(run_module.extract_part_task, options, str(root), run_id, 4, 1, pure=False)
        with pytest.raises(WarehouseError, match=r"^worker (tcp|inproc)://\S+ does not match run \w+: plan hash"):
            future.result()
    run = next(run for run in open_warehouse(root.parents[3]).run_folders() if run.root == root)
    assert parts.committed_part_ids(run) == {0}


# -- finding 6: schedulers and SLURM arrays ---------------------------------------------------------


def test_local_n_is_capped_at_the_machines_cores():
    cores = executors.usable_cores()
    assert parse_scheduler(f"local:{cores}") == executors.Scheduler("cluster", cores)
    for text in (f"local:{cores + 1}", "local:100000", "local:" + "9" * 40):
        with pytest.raises(UsageError, match=rf"at most {cores} workers on this machine \({cores} CPU cores\)"):
            parse_scheduler(text)


def _json_values():
    scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=8)


BAD_ADDRESSES = st.sampled_from(["", "nowhere", "://", "tcp://", "tcp://:", "tcp://[::", "tcp://host:notaport", "x://y", "tcp://127.0.0.1:0", " tcp://127.0.0.1:9"])
SCHEDULER_FILES = st.one_of(
    st.binary(max_size=64),
    st.text(max_size=64).map(str.encode),
    _json_values().map(lambda value: json.dumps(value).encode()),
    st.dictionaries(st.sampled_from(["address", "id", "type", "services"]), _json_values(), max_size=3).map(lambda value: json.dumps(value).encode()),
    BAD_ADDRESSES.map(lambda address: json.dumps({"address": address, "type": "Scheduler"}).encode()),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(content=SCHEDULER_FILES)
def test_a_scheduler_file_holding_garbage_is_one_line_naming_it(tmp_path, monkeypatch, content):
    monkeypatch.setenv("ATTNWH_DASK_CONNECT_TIMEOUT", "1s")
    path = tmp_path / "scheduler.json"
    path.write_bytes(content)
    configured = dask.config.get("scheduler", None)
    with pytest.raises(UsageError) as raised:
        with executors.dask_client(parse_scheduler(str(path))):
            pass
    text = str(raised.value)
    assert len(text.splitlines()) == 1 and str(path) in text
    # the process's dask configuration stays the caller's: the client that never connected had named itself the
    # default scheduler, and every later .compute() in the process failed ("no Client active")
    assert dask.config.get("scheduler", None) == configured


@pytest.mark.parametrize("content", [b'{"x":1}', b"not json at all", bytes(range(256)), b"[1, 2]", b'{"address": 5}'])
def test_a_garbage_scheduler_file_through_the_cli(capsys, tmp_path, content):
    path = tmp_path / "scheduler.json"
    path.write_bytes(content)
    code, _, err = run_cli(capsys, "extract", "--limit", "4", "--device", "cpu", "--scheduler", str(path), "--warehouse", str(tmp_path / "wh"))
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith(f"attnwh: error: --scheduler {path}: not a Dask scheduler file")


def _array_env(task: int, first: int, last: int, step: int, count: int) -> dict[str, str]:
    return {
        "SLURM_ARRAY_TASK_ID": str(task),
        "SLURM_ARRAY_TASK_MIN": str(first),
        "SLURM_ARRAY_TASK_MAX": str(last),
        "SLURM_ARRAY_TASK_STEP": str(step),
        "SLURM_ARRAY_TASK_COUNT": str(count),
    }


def test_a_stepped_slurm_array_takes_the_tasks_index():
    # sbatch --array=0-6:2 runs tasks 0, 2, 4 and 6
    assert [detect_rank(env=_array_env(task, 0, 6, 2, 4)) for task in (0, 2, 4, 6)] == [Rank(i, 4, None, "a SLURM array") for i in range(4)]


@settings(max_examples=200, deadline=None)
@given(first=st.integers(0, 1000), step=st.integers(1, 50), count=st.integers(1, 40))
def test_every_task_of_a_stepped_array_gets_its_own_rank(first, step, count):
    last = first + step * (count - 1)
    ranks = [detect_rank(env=_array_env(first + i * step, first, last, step, count)) for i in range(count)]
    assert [rank.rank for rank in ranks] == list(range(count)) and {rank.world_size for rank in ranks} == {count}


def test_arrays_that_are_not_an_evenly_stepped_range_are_one_clear_line():
    with pytest.raises(UsageError, match=r"SLURM array task 3 is not one of 0, 2, 4, \.\.\. \(SLURM_ARRAY_TASK_MIN 0, step 2\)"):
        detect_rank(env=_array_env(3, 0, 6, 2, 4))
    # sbatch --array=1,3,8: 3 tasks whose ids no step describes
    with pytest.raises(UsageError, match=r"not an evenly stepped range, .*give --rank and --world-size"):
        detect_rank(env=_array_env(3, 1, 8, 1, 3))
    with pytest.raises(UsageError, match=r"\$SLURM_ARRAY_TASK_STEP must be at least 1"):
        detect_rank(env=_array_env(0, 0, 6, 0, 4))
