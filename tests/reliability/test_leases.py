"""Leases and fencing on a local folder (issue 27, finding 2): a renewal that fails is retried; a
writer whose attempt recovery has taken over cannot commit; recovery never acts on a stale listing,
and never removes the live attempt of a writer thread of its own process."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from attnwh.core.errors import WarehouseError
from attnwh.warehouse import parts
from attnwh.warehouse.layout import open_warehouse
from attnwh.warehouse.runs import Plan, open_or_create_run
from attnwh.warehouse.schema import SCHEMA_VERSION
from tests.reliability.harness import write_part


@pytest.fixture
def run(tmp_path):
    warehouse = open_warehouse(tmp_path / "wh", create=True)
    created, _ = open_or_create_run(warehouse, kind="extract", model="m", benchmark="b", spec={}, plan=Plan(["a", "b", "c", "d"], 2), run_id="leases", details={})
    return created.paths


def lease_files(run) -> list[Path]:
    return sorted(run.leases.iterdir()) if run.leases.is_dir() else []


def test_a_renewal_that_fails_is_retried_and_the_lease_stays_fresh(run, monkeypatch):
    """The lease folder is unusable for a while (an NFS hiccup): renewals fail, then succeed again."""
    monkeypatch.setenv("ATTNWH_LEASE_SECONDS", "1")  # renewed every 0.2 s
    ages = []

    def hiccup(folder):
        (lease,) = lease_files(run)
        away = run.leases.with_name("_leases.away")
        run.leases.rename(away)
        run.leases.write_text("not a folder")  # renewals fail with NotADirectoryError
        time.sleep(0.4)
        run.leases.unlink()
        away.rename(run.leases)
        time.sleep(0.5)  # renewals resume
        ages.append(time.time() - lease.stat().st_mtime)

    record = parts.commit_part(run, 0, write_part(1, hiccup))
    assert record is not None and parts.verify(run) == []
    assert ages[0] < 0.45, f"the lease was not renewed after a failed renewal (age {ages[0]:.2f} s)"


def test_a_writer_whose_attempt_was_taken_over_does_not_commit(run):
    """Another process's recovery judges the lease expired (its clock far ahead) while the writer works:
    the writer stops with a clear error naming the part and leaves nothing committed."""

    def taken_over(folder):
        parts.recover(run, lease_seconds=-1)  # every lease counts as expired

    with pytest.raises(WarehouseError, match=r"part-000001.*lost its lease"):
        parts.commit_part(run, 1, write_part(3, taken_over))
    assert parts.committed_part_ids(run) == set()
    assert parts.verify(run) == []
    assert parts.commit_part(run, 1, write_part(3)) is not None  # the part is redone
    assert parts.verify(run) == [] and parts.committed_part_ids(run) == {1}


def test_recovery_in_the_writers_own_process_keeps_its_live_attempt(run):
    """A Dask worker thread (or a second run in one process) recovers while another thread writes a
    part: the writer's attempt is live (its lease is held in this process), so it is kept."""
    writing, recovered = threading.Event(), threading.Event()
    outcome = {}

    def wait_for_recovery(folder):
        writing.set()
        assert recovered.wait(30)

    def writer():
        try:
            outcome["record"] = parts.commit_part(run, 0, write_part(1, wait_for_recovery))
        except Exception as exc:  # noqa: BLE001
            outcome["error"] = exc

    thread = threading.Thread(target=writer)
    thread.start()
    assert writing.wait(30)
    parts.recover(run)
    recovered.set()
    thread.join(30)
    assert "error" not in outcome, outcome.get("error")
    assert outcome["record"] is not None and parts.verify(run) == []


def test_recovery_does_not_remove_an_attempt_committed_after_it_listed_the_commit_log(run, monkeypatch):
    """An attempt of another machine with an old lease commits just as recovery runs: recovery lists
    attempts before committed parts (and checks the record before removing), so it keeps the files."""
    attempt = "node-7-4242-abcdef12"
    staging = run.staging_attempt(2, attempt)
    staging.mkdir(parents=True)
    pq.write_table(pa.table({"v": [5, 6]}), staging / "samples.parquet")
    lease = run.lease(2, attempt)
    lease.parent.mkdir(parents=True, exist_ok=True)
    lease.touch()
    os.utime(lease, (time.time() - 1000, time.time() - 1000))
    run.commits.mkdir(exist_ok=True)
    content = {
        "part_id": 2,
        "attempt": attempt,
        "created": "2026-01-01T00:00:00.000+00:00",
        "layout_version": 1,
        "schema_version": SCHEMA_VERSION,
        "tables": {"samples": 2},
        "writer": {"host": "node-7", "pid": 4242},
        "files": [
            {
                "path": "samples.parquet",
                "size": (staging / "samples.parquet").stat().st_size,
                "sha256": hashlib.sha256((staging / "samples.parquet").read_bytes()).hexdigest(),
                "rows": 2,
            }
        ],
    }
    original_glob = Path.glob
    committed = []

    def glob(self, pattern):
        found = list(original_glob(self, pattern))
        if self == run.commits and not committed:  # the writer's record appears right after the commit log is listed
            (run.commits / "part-000002.json").write_text(json.dumps(content))
            committed.append(True)
        return iter(found)

    monkeypatch.setattr(Path, "glob", glob)
    parts.recover(run, lease_seconds=300)
    monkeypatch.setattr(Path, "glob", original_glob)
    assert committed
    assert parts.committed_part_ids(run) == {2}
    assert parts.verify(run) == [], "recovery removed the files of a part committed while it ran"


def test_a_failure_after_the_record_is_written_keeps_the_committed_files(run, monkeypatch):
    """The commit log's fsync fails after the record was linked: the writer reports the failure, but the
    part is committed, so its files stay, and recovery publishes them."""
    from attnwh.warehouse import commit

    original = commit._fsync_dir

    def failing(folder):
        if folder == run.commits:
            raise OSError(5, "Input/output error")
        original(folder)

    monkeypatch.setattr(commit, "_fsync_dir", failing)
    with pytest.raises(WarehouseError, match="Input/output error"):
        parts.commit_part(run, 3, write_part(7))
    monkeypatch.setattr(commit, "_fsync_dir", original)
    assert parts.committed_part_ids(run) == {3}
    parts.recover(run)
    assert parts.verify(run) == []


def test_a_process_id_past_any_process_is_not_a_live_writer():
    """A leftover staging name with a process id no process can have (the audit: 10**23) is a dead writer's, not an
    ``OverflowError`` from ``os.kill``."""
    import socket

    from attnwh.warehouse.leases import writer_alive

    assert not writer_alive(f"{socket.gethostname()}-{10**23}-abcd1234")
