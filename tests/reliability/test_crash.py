"""Crash safety: ``attnwh extract`` and ``attnwh mask`` killed with SIGKILL at every commit step and at
random moments, then resumed: ``verify`` passes, every planned sample is committed exactly once, and
the tables and raw rows equal those of an uninterrupted run."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from attnwh.queries.library import open_session
from attnwh.warehouse import arrays, parts
from attnwh.warehouse.layout import open_warehouse
from attnwh.warehouse.parts import FAULT_ENV, FAULT_POINTS

EXTRACT = ["extract", "--limit", "12", "--part-size", "3", "--batch-size", "3", "--device", "cpu"]
MASK = ["mask", "--limit", "12", "--k", "0,1,2", "--seeds", "1", "--device", "cpu", "--batch-size", "6"]


def attnwh(args: list[str], warehouse: Path, fault: str | None = None, **popen) -> subprocess.Popen:
    env = {**os.environ, "ATTNWH_WAREHOUSE": str(warehouse)}
    env.pop(FAULT_ENV, None)
    if fault:
        env[FAULT_ENV] = fault
    return subprocess.Popen([sys.executable, "-m", "attnwh.face.cli", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)


def run(args: list[str], warehouse: Path, fault: str | None = None) -> int:
    process = attnwh(args, warehouse, fault)
    process.communicate(timeout=300)
    return process.returncode


def snapshot(warehouse: Path) -> dict:
    """Every committed row (without run-specific ids and times), and each run's raw rows."""
    with open_session(warehouse) as session:
        tables = {
            "samples": session.query("select * exclude (run_id) from samples order by sample_idx").to_pylist(),
            "head_metrics": session.query("select * exclude (run_id) from head_metrics order by sample_idx, query, layer, head").to_pylist(),
            "logit_lens": session.query("select * exclude (run_id) from logit_lens order by sample_idx, query, layer").to_pylist(),
            # the per-part rollups, row by row (each part's are computed from that part alone)
            "head_scores": session.query("select * exclude (run_id) from head_scores order by all").to_pylist(),
            "head_ranks": session.query("select * exclude (run_id) from head_ranks order by all").to_pylist(),
            "mask": session.query("select * exclude (run_id) from mask_results order by condition_id, sample_idx").to_pylist(),
            "conditions": session.query("select * exclude (run_id, ranking_run_id) from mask_conditions order by condition_id").to_pylist(),
        }
    for run in open_warehouse(warehouse).run_folders():
        if any(run.root.glob("parts/*/rows.zarr")):
            attention, indices, _ = arrays.open_rows(run)
            tables["rows"] = (np.asarray(attention.compute(scheduler="threads")).tobytes(), indices.tolist())
    return tables


def check_complete(warehouse: Path) -> None:
    """verify passes, every planned part is committed, no staging is left, and every sample appears once per run."""
    store = open_warehouse(warehouse)
    for run in store.run_folders():
        assert parts.verify(run) == [], run.root
        plan_parts = set(pq.read_table(run.plan).column("part_id").to_pylist())
        assert parts.committed_part_ids(run) == plan_parts
        assert not any(run.staging.iterdir()) if run.staging.is_dir() else True
    with open_session(warehouse) as session:
        counts = session.query("select run_id, sample_idx, count(*) as n from samples group by run_id, sample_idx").to_pylist()
    assert counts and all(row["n"] == 1 for row in counts)  # every planned sample exactly once


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    warehouse = tmp_path_factory.mktemp("reference") / "wh"
    assert run(EXTRACT, warehouse) == 0
    assert run(MASK, warehouse) == 0
    return snapshot(warehouse)


@pytest.mark.parametrize("point", FAULT_POINTS)
def test_killed_at_each_commit_step_then_resumed(point, tmp_path, reference):
    warehouse = tmp_path / "wh"
    assert run(EXTRACT, warehouse, fault=f"{point}:1") == -signal.SIGKILL
    assert run(EXTRACT, warehouse) == 0
    assert run(MASK, warehouse, fault=f"{point}:2") == -signal.SIGKILL
    assert run(MASK, warehouse) == 0
    check_complete(warehouse)
    assert snapshot(warehouse) == reference


def test_killed_at_random_moments_twenty_times(tmp_path, reference):
    """Ten SIGKILLs of extract and ten of mask at random moments (start-up, model load, compute,
    commit), each followed by the same command; the last run of each completes."""
    warehouse = tmp_path / "wh"
    rng = random.Random(7)
    kills = 0
    for command in (EXTRACT, MASK):
        quota = kills + 10
        while True:
            process = attnwh(command, warehouse)
            deadline = time.monotonic() + rng.uniform(0.5, 6.0)
            while process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            if process.poll() is None and kills < quota:
                process.send_signal(signal.SIGKILL)
                process.communicate()
                kills += 1
                continue
            process.communicate(timeout=300)
            assert process.returncode in (0, -signal.SIGKILL)
            if process.returncode == 0 and kills >= quota:
                break
    assert kills >= 20, kills
    check_complete(warehouse)
    assert snapshot(warehouse) == reference


def test_readers_never_see_a_partial_part(tmp_path):
    """Queries run while an extraction writes and is killed: they never fail and see whole parts only."""
    warehouse = tmp_path / "wh"
    assert run(["extract", "--limit", "3", "--part-size", "3", "--device", "cpu"], warehouse) == 0  # a warehouse to read
    process = attnwh(EXTRACT, warehouse)
    seen = []
    started = time.monotonic()
    while time.monotonic() - started < 8:
        with open_session(warehouse) as session:
            counts = session.query("select run_id, count(distinct sample_idx) as samples, count(*) as metrics from head_metrics group by run_id").to_pylist()
        for row in counts:
            assert row["samples"] % 3 == 0  # parts of 3 samples, whole or absent
            seen.append(row["samples"])
        if process.poll() is not None:
            break
        if time.monotonic() - started > 4:
            process.send_signal(signal.SIGKILL)
    process.communicate()
    assert seen


def test_two_quick_interrupts_end_in_one_line_and_a_resumable_run(tmp_path):
    """Ctrl-C twice, 10 ms apart, once a part is committed: the second came while the first unwound (native code of
    a library underneath) and aborted the process (SIGABRT, "terminate called ..."); it is ignored now. Exit 130,
    one line, and the same command completes the run with every sample once."""
    warehouse = tmp_path / "wh"
    args = ["extract", "--limit", "24", "--part-size", "3", "--batch-size", "3", "--device", "cpu"]
    process = attnwh(args, warehouse, text=True)
    deadline = time.monotonic() + 240
    while process.poll() is None and not list(warehouse.glob("runs/*/*/*/_commits/*.json")) and time.monotonic() < deadline:
        time.sleep(0.005)
    assert process.poll() is None, "the run ended before it could be interrupted"
    process.send_signal(signal.SIGINT)
    time.sleep(0.01)
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    lines = [line for line in err.splitlines() if line.startswith(("attnwh", "terminate", "FATAL"))]
    assert process.returncode == 130 and lines == ["attnwh: error: interrupted; committed parts are kept, run the same command again to resume"], err[-2000:]
    assert run(args, warehouse) == 0
    with open_session(warehouse) as session:
        assert session.query("select count(*) as n, count(distinct sample_idx) as distinct_n from samples").to_pylist() == [{"n": 24, "distinct_n": 24}]
