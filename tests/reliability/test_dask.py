"""Extraction on Dask distributed: a LocalCluster of two worker processes, a worker killed mid-part,
the client killed, and bad scheduler addresses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dask
import pytest

from attnwh.core.errors import UsageError
from attnwh.extract.executors import parse_scheduler
from attnwh.extract.run import ExtractOptions, run_extract
from attnwh.warehouse import parts
from attnwh.warehouse.layout import open_warehouse
from tests.reliability.harness import run_cli
from tests.reliability.test_crash import check_complete, snapshot

ARGS = ["--limit", "16", "--part-size", "4", "--batch-size", "4", "--device", "cpu"]


def extract(warehouse: Path, *extra: str, **env: str) -> subprocess.Popen:
    environment = {**os.environ, "ATTNWH_WAREHOUSE": str(warehouse), **env}
    return subprocess.Popen([sys.executable, "-m", "attnwh.face.cli", "extract", *ARGS, *extra], env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """The single-process run, with one math thread as Dask gives each worker (equal bits need equal threads)."""
    warehouse = tmp_path_factory.mktemp("single") / "wh"
    assert extract(warehouse, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1").wait(timeout=600) == 0
    return snapshot(warehouse)


def test_two_workers_give_the_single_process_tables_and_load_the_model_once_each(tmp_path, reference):
    warehouse = tmp_path / "wh"
    options = ExtractOptions(limit=16, part_size=4, batch_size=4, device="cpu", scheduler="local:2", command=["test"])
    result = run_extract(warehouse, options)
    assert (result.parts_written, result.samples_written) == (4, 16) and result.dashboard.startswith("http://127.0.0.1:")
    assert len(result.model_loads) == 2 and set(result.model_loads.values()) <= {0, 1} and sum(result.model_loads.values()) >= 1
    check_complete(warehouse)
    assert snapshot(warehouse) == reference
    run = open_warehouse(warehouse).run_folders()[0]
    assert {record.writer["worker"].startswith("tcp://127.0.0.1:") for record in parts.commit_records(run)} == {True}


def test_a_worker_killed_in_a_part_is_replaced_and_every_sample_committed_once(tmp_path, reference):
    warehouse = tmp_path / "wh"
    process = extract(warehouse, "--scheduler", "local:2", ATTNWH_FAULT="after_staging:1", ATTNWH_FAULT_ONCE=str(tmp_path / "killed-once"))
    _, err = process.communicate(timeout=600)
    assert process.returncode == 0, err.decode()[-2000:]
    assert (tmp_path / "killed-once").exists()  # a worker did die in part 1
    check_complete(warehouse)
    assert snapshot(warehouse) == reference


def test_the_client_killed_then_the_same_command_resumes(tmp_path, reference):
    warehouse = tmp_path / "wh"
    process = extract(warehouse, "--scheduler", "local:2")
    time.sleep(12)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert extract(warehouse, "--scheduler", "local:2").wait(timeout=600) == 0
    check_complete(warehouse)
    assert snapshot(warehouse) == reference


def test_bad_schedulers_are_one_clear_line(capsys, tmp_path, monkeypatch):
    with pytest.raises(UsageError, match="local:N takes a number of workers"):
        parse_scheduler("local:0")
    with pytest.raises(UsageError, match="no such scheduler file"):
        parse_scheduler(str(tmp_path / "scheduler.json"))
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", "somewhere")
    with pytest.raises(UsageError, match="takes local, local:N"):
        parse_scheduler(None)
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS")
    monkeypatch.setenv("ATTNWH_DASK_CONNECT_TIMEOUT", "1s")
    configured = dask.config.get("scheduler", None)
    code, _, err = run_cli(capsys, "extract", *ARGS, "--scheduler", "tcp://127.0.0.1:9", "--warehouse", str(tmp_path / "wh"))
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("attnwh: error: cannot reach the Dask scheduler at tcp://127.0.0.1:9")
    # the process's dask configuration is the caller's (a notebook's): the client that never connected named itself
    # the default scheduler, and every later .compute() in the process failed ("no Client active")
    assert dask.config.get("scheduler", None) == configured
    assert not list((tmp_path / "wh").glob("runs/**/RUN.json"))  # refused before any run was created
    assert run_cli(capsys, "extract", "--limit", "4", "--no-rows", "--warehouse", str(tmp_path / "wh"))[0] == 0  # what mask ranks heads by
    before = sorted(path.parent.name for path in (tmp_path / "wh").glob("runs/**/RUN.json"))
    code, _, err = run_cli(capsys, "mask", "--limit", "2", "--scheduler", "tcp://127.0.0.1:9", "--warehouse", str(tmp_path / "wh"))
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("attnwh: error: cannot reach the Dask scheduler at tcp://127.0.0.1:9")
    assert sorted(path.parent.name for path in (tmp_path / "wh").glob("runs/**/RUN.json")) == before  # no mask run left behind


def test_a_mask_sweep_on_two_workers_equals_the_single_process_sweep(tmp_path):
    from attnwh.extract.mask_run import MaskOptions
    from attnwh.face.workflows import mask_sweep
    from attnwh.queries.library import open_session

    results = []
    for name, scheduler in (("single", "local"), ("cluster", "local:2")):
        warehouse = tmp_path / name
        assert extract(warehouse, "--no-rows", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1").wait(timeout=600) == 0
        options = MaskOptions(limit=16, k=("0", "2"), seeds=2, device="cpu", batch_size=8, scheduler=scheduler, command=["test"])
        if scheduler == "local":
            code = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    f"from attnwh.face.workflows import mask_sweep; from attnwh.extract.mask_run import MaskOptions; "
                    f"mask_sweep({str(warehouse)!r}, MaskOptions(limit=16, k=('0', '2'), seeds=2, device='cpu', batch_size=8, command=['test']))",
                ],
                env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
                capture_output=True,
            ).returncode
            assert code == 0
        else:
            result, summary = mask_sweep(warehouse, options)
            assert result.conditions_written == 4 and summary.num_rows == 4
        check_complete(warehouse)
        with open_session(warehouse) as session:
            results.append(session.query("select * exclude (run_id) from mask_results order by condition_id, sample_idx").to_pylist())
    assert results[0] == results[1] and len(results[0]) == 4 * 16


def test_a_prune_sweep_on_two_workers_equals_the_single_process_sweep(tmp_path):
    from attnwh.queries.library import open_session

    results = []
    for name, scheduler in (("single", "local"), ("cluster", "local:2")):
        warehouse = tmp_path / name
        assert extract(warehouse, "--no-rows", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1").wait(timeout=600) == 0
        code = subprocess.run(
            [
                sys.executable,
                "-m",
                "attnwh.face.cli",
                "prune",
                "--limit",
                "16",
                "--kv-share",
                "1,0.25",
                "--allocation",
                "score,random",
                "--seeds",
                "1",
                "--batch-size",
                "8",
                "--device",
                "cpu",
                "--scheduler",
                scheduler,
                "--warehouse",
                str(warehouse),
            ],
            env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
            capture_output=True,
            text=True,
        )
        assert code.returncode == 0, code.stderr
        assert "wrote 3 condition(s)" in code.stdout
        check_complete(warehouse)
        with open_session(warehouse) as session:
            results.append(session.query("select * exclude (run_id) from prune_results order by condition_id, sample_idx").to_pylist())
    assert results[0] == results[1] and len(results[0]) == 3 * 16


def test_attribution_on_two_workers_equals_the_single_process_run(tmp_path):
    """attnwh attribute's patterns as conditions of a sweep on a LocalCluster of two workers: the client fits
    once every pattern is in, and the heads' scores equal one process's."""
    from attnwh.queries.library import open_session

    scores = []
    for name, scheduler in (("single", "local"), ("cluster", "local:2")):
        args = ["attribute", "--limit", "4", "--patterns", "12", "--bootstrap", "5", "--batch-size", "4", "--device", "cpu", "--scheduler", scheduler]
        done = subprocess.run(
            [sys.executable, "-m", "attnwh.face.cli", *args, "--warehouse", str(tmp_path / name)],
            env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr
        (run,) = open_warehouse(tmp_path / name).run_folders()
        assert parts.verify(run) == [] and parts.committed_part_ids(run) == set(range(14))  # baseline, 12 patterns (the fewest a fit takes), fit
        with open_session(tmp_path / name) as session:
            scores.append(session.query("select layer, head, score, ci_low, ci_high from head_attributions order by layer, head").to_pylist())
    assert len(scores[0]) == 32
    for alone, clustered in zip(*scores):
        assert clustered == pytest.approx(alone, abs=1e-6)
