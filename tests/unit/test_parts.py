"""The part commit protocol, recovery and verification on hand-made parts (no model)."""

from __future__ import annotations

import json
import os
import socket

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from attnwh.core.errors import WarehouseError
from attnwh.warehouse import parts
from attnwh.warehouse.layout import open_warehouse
from attnwh.warehouse.runs import Plan, open_or_create_run


@pytest.fixture
def run(tmp_path):
    warehouse = open_warehouse(tmp_path / "wh", create=True)
    created, new = open_or_create_run(warehouse, kind="extract", model="m", benchmark="b", spec={"x": 1}, plan=Plan(["a", "b", "c"], 2), run_id=None, details={})
    assert new
    return created.paths


def writer(value: int):
    def write(folder):
        pq.write_table(pa.table({"v": [value, value + 1]}), folder / "samples.parquet")
        (folder / "rows.zarr").mkdir()
        (folder / "rows.zarr" / "chunk").write_bytes(bytes([value]) * 10)
        return {"samples": 2}

    return write


def test_commit_publishes_and_records_every_file(run):
    record = parts.commit_part(run, 0, writer(1))
    assert record is not None
    assert run.published_part(0).is_dir()
    on_disk = json.loads(run.commit_record(0).read_text())
    assert sorted(entry["path"] for entry in on_disk["files"]) == ["rows.zarr/chunk", "samples.parquet"]
    assert [entry.get("rows") for entry in on_disk["files"] if entry["path"] == "samples.parquet"] == [2]
    assert parts.verify(run) == []
    assert list(run.staging.iterdir()) == []


def test_second_writer_of_a_part_loses_and_leaves_the_first_intact(run):
    parts.commit_part(run, 0, writer(1))
    assert parts.commit_part(run, 0, writer(7)) is None
    assert pq.read_table(run.published_part(0) / "samples.parquet").column("v").to_pylist() == [1, 2]
    assert parts.verify(run) == []
    assert list(run.staging.iterdir()) == []


def test_failed_write_leaves_nothing_committed(run):
    def broken(folder):
        (folder / "samples.parquet").write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    with pytest.raises(WarehouseError, match="No space left"):
        parts.commit_part(run, 1, broken)
    assert parts.committed_part_ids(run) == set()
    assert list(run.staging.iterdir()) == []


def test_verify_names_flipped_truncated_missing_and_unreferenced_files(run):
    parts.commit_part(run, 0, writer(1))
    parts.commit_part(run, 1, writer(3))
    chunk = run.published_part(0) / "rows.zarr" / "chunk"
    data = bytearray(chunk.read_bytes())
    data[3] ^= 0xFF
    chunk.write_bytes(bytes(data))
    samples = run.published_part(1) / "samples.parquet"
    samples.write_bytes(samples.read_bytes()[:-5])
    (run.published_part(1) / "rows.zarr" / "chunk").unlink()
    (run.published_part(0) / "stray.txt").write_text("x")
    problems = "\n".join(parts.verify(run))
    assert "part-000000: rows.zarr/chunk content differs from its sha256" in problems
    assert "part-000001: samples.parquet has" in problems and "commit says" in problems
    assert "part-000001: missing file rows.zarr/chunk" in problems
    assert "part-000000: unreferenced file stray.txt" in problems


def test_recover_publishes_committed_parts_and_removes_dead_attempts(run):
    record = parts.commit_part(run, 0, writer(1))
    # a crash between commit and publish: the committed attempt is still in staging
    os.rename(run.published_part(0), run.staging_attempt(0, record.attempt))
    # a crash before commit, by a process that no longer exists
    dead = run.staging_attempt(1, f"{socket.gethostname()}-999999999-deadbeef")
    elsewhere = run.staging_attempt(1, "another-host-123-cafebabe")  # cannot tell: kept
    elsewhere.mkdir(parents=True)
    dead.mkdir(parents=True)
    (dead / "samples.parquet").write_bytes(b"junk")
    # readers already see the committed part where it is
    assert parts.table_files(run, "samples")[0].parent == run.staging_attempt(0, record.attempt)
    outcome = parts.recover(run)
    assert outcome["rolled_forward"] == 1
    assert run.published_part(0).is_dir()
    assert not dead.exists()
    assert elsewhere.exists()
    assert parts.verify(run) == []


def test_warehouse_paths_are_checked(tmp_path):
    file_path = tmp_path / "a-file"
    file_path.write_text("x")
    with pytest.raises(WarehouseError, match="is a file"):
        open_warehouse(file_path, create=True)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "thing").write_text("x")
    with pytest.raises(WarehouseError, match="non-empty folder"):
        open_warehouse(busy, create=True)
    newer = tmp_path / "newer"
    newer.mkdir()
    (newer / "WAREHOUSE.json").write_text(json.dumps({"format": "attnwh", "layout_version": 99}))
    with pytest.raises(WarehouseError, match="layout version 99"):
        open_warehouse(newer)


def test_a_prefix_that_vanishes_between_check_and_listing_lists_nothing():
    """On a store, ``_staging/`` or ``_leases/`` is a prefix: another process removing its last object
    between ``is_dir`` and ``iterdir`` leaves no folder (recovery and ``attnwh status`` both list it)."""
    from attnwh.warehouse.commit import names_under

    class Vanishing:
        def is_dir(self) -> bool:
            return True

        def iterdir(self):
            raise NotADirectoryError("the prefix's last object was just removed")

    assert names_under(Vanishing()) == []
