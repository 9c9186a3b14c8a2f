"""Leases, fencing, lost replies and stores that ignore conditional puts, on the local S3 server (issue 27,
findings 2, 3 and 4). The store's misbehaviour is simulated in this process only, by wrapping s3fs's
put (the server itself enforces ``If-None-Match``)."""

from __future__ import annotations

import threading
import time

import pytest
import s3fs

from attnwh.core.errors import WarehouseError
from attnwh.warehouse import parts, storage
from attnwh.warehouse.layout import RunPaths, open_warehouse
from attnwh.warehouse.runs import Plan, open_or_create_run
from tests.reliability.harness import write_part

ORIGINAL_PUT = s3fs.S3FileSystem._pipe_file


def objects(s3, url: str) -> list[str]:
    """The keys under a warehouse URL, relative to it (listed with boto3, not through attnwh)."""
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    pages = s3.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/")
    return sorted(item["Key"].removeprefix(prefix + "/") for page in pages for item in page.get("Contents", []))


def wrap_puts(monkeypatch, wrapper) -> None:
    """Every put of s3fs goes through ``wrapper(original, fs, path, data, mode, kwargs)`` (new clients only)."""

    async def put(self, path, data, *args, mode="overwrite", **kwargs):
        return await wrapper(ORIGINAL_PUT, self, path, data, mode, args, kwargs)

    monkeypatch.setattr(s3fs.S3FileSystem, "_pipe_file", put)
    s3fs.S3FileSystem.clear_instance_cache()


def new_run(url: str, name: str = "fence"):
    warehouse = open_warehouse(url, create=True)
    run, _ = open_or_create_run(warehouse, kind="extract", model="m", benchmark="b", spec={}, plan=Plan(["a", "b", "c", "d"], 2), run_id=name, details={})
    return run.paths


# finding 2: leases die quietly


def test_a_failed_lease_renewal_is_retried(s3, monkeypatch):
    monkeypatch.setenv("ATTNWH_LEASE_SECONDS", "1.5")  # renewed every 0.3 s
    url = s3.url()
    new_run(url)
    failing = threading.Event()
    renewed_after_outage: list[float] = []
    outage_over = [float("inf")]

    async def flaky(original, fs, path, data, mode, args, kwargs):
        if "/_leases/" in path:
            if failing.is_set():
                raise OSError(5, "simulated: the store is unreachable")
            if time.monotonic() > outage_over[0]:
                renewed_after_outage.append(time.monotonic())
        return await original(fs, path, data, *args, mode=mode, **kwargs)

    wrap_puts(monkeypatch, flaky)
    run = new_run(url)

    def outage(folder):
        failing.set()
        time.sleep(0.5)
        failing.clear()
        outage_over[0] = time.monotonic()
        time.sleep(0.7)

    assert parts.commit_part(run, 0, write_part(1, outage)) is not None
    assert renewed_after_outage, "no renewal after the first failed one: the renewal thread stopped for good"
    assert parts.verify(run) == []


def test_a_writer_that_cannot_renew_its_lease_for_the_lease_time_does_not_commit(s3, monkeypatch):
    monkeypatch.setenv("ATTNWH_LEASE_SECONDS", "0.4")
    url = s3.url()
    new_run(url)
    created = []

    async def unreachable(original, fs, path, data, mode, args, kwargs):
        if "/_leases/" in path:
            if created:
                raise OSError(5, "simulated: the store is unreachable")
            created.append(path)
        return await original(fs, path, data, *args, mode=mode, **kwargs)

    wrap_puts(monkeypatch, unreachable)
    run = new_run(url)
    with pytest.raises(WarehouseError, match=r"part-000001.*lost its lease"):
        parts.commit_part(run, 1, write_part(3, lambda folder: time.sleep(0.6)))
    assert parts.committed_part_ids(run) == set()
    assert not [key for key in objects(s3, url) if "/_staging/" in key or "/_commits/" in key]


def test_recovery_taking_over_just_before_the_record_is_put_fences_the_commit(s3, monkeypatch):
    """Another process's recovery takes the attempt over (its clock says the lease expired) between the
    upload and the record's put: the writer does not leave a record naming removed files."""
    url = s3.url()
    run = new_run(url)
    original = storage.put_exclusively

    def put_exclusively(target, content):
        if target.parent.name == "_commits":
            parts.recover(run, lease_seconds=-1)  # every lease counts as expired
        return original(target, content)

    monkeypatch.setattr(storage, "put_exclusively", put_exclusively)
    with pytest.raises(WarehouseError, match=r"part-000000.*lost its lease"):
        parts.commit_part(run, 0, write_part(1))
    monkeypatch.setattr(storage, "put_exclusively", original)
    assert parts.verify(run) == []
    assert parts.committed_part_ids(run) == set()
    assert parts.commit_part(run, 0, write_part(1)) is not None and parts.verify(run) == []


# finding 3: a writer can delete its own commit


def test_a_lost_reply_to_a_winning_record_put_is_a_success_not_a_lost_race(s3, monkeypatch):
    url = s3.url()
    new_run(url)

    async def reply_lost(original, fs, path, data, mode, args, kwargs):
        result = await original(fs, path, data, *args, mode=mode, **kwargs)
        if mode == "create" and "/_commits/" in path:
            return await original(fs, path, data, *args, mode=mode, **kwargs)  # the client sends it again: 412
        return result

    wrap_puts(monkeypatch, reply_lost)
    run = new_run(url)
    record = parts.commit_part(run, 0, write_part(1))
    assert record is not None, "the writer took its own record for another writer's"
    assert parts.verify(run) == []
    assert [key for key in objects(s3, url) if "/_staging/" in key] == [f"runs/model=m/benchmark=b/run=fence/_staging/part-000000.{record.attempt}/samples.parquet"]


# finding 4: stores that ignore If-None-Match


async def ignore_condition(original, fs, path, data, mode, args, kwargs):
    return await original(fs, path, data, *args, **kwargs)  # the header is not honoured: a plain put


def test_creating_a_warehouse_on_a_store_that_ignores_conditional_puts_is_refused_in_one_line(s3, monkeypatch, tmp_path):
    monkeypatch.setenv("ATTNWH_OBJECT_CACHE", str(tmp_path / "cache"))  # this machine has not asked this store yet
    wrap_puts(monkeypatch, ignore_condition)
    url = s3.url("ignores")
    with pytest.raises(WarehouseError) as refused:
        open_warehouse(url, create=True)
    message = str(refused.value)
    assert "\n" not in message and url in message and s3.endpoint in message and "If-None-Match" in message, message
    assert objects(s3, url) == []


def test_a_machine_writing_to_a_store_that_ignores_conditional_puts_is_refused(s3, monkeypatch, tmp_path):
    url = s3.url("ignores")
    run = new_run(url)  # the store honoured them when the warehouse was made
    monkeypatch.setenv("ATTNWH_OBJECT_CACHE", str(tmp_path / "another-machine"))
    wrap_puts(monkeypatch, ignore_condition)
    with pytest.raises(WarehouseError, match="If-None-Match"):
        open_warehouse(url, create=True)  # a writer opening the warehouse
    run = RunPaths(storage.location(str(run.root)))  # a cluster worker is handed the run's location
    with pytest.raises(WarehouseError, match="If-None-Match"):
        parts.commit_part(run, 0, write_part(1))
    assert parts.committed_part_ids(run) == set()
    assert not [key for key in objects(s3, url) if "/_staging/" in key or "/_commits/" in key or "probe" in key]


def test_the_probe_answer_is_kept_on_the_machine(s3, monkeypatch, tmp_path):
    monkeypatch.setenv("ATTNWH_OBJECT_CACHE", str(tmp_path / "cache"))
    probes: list[str] = []

    async def counting(original, fs, path, data, mode, args, kwargs):
        if "probe" in path:
            probes.append(path)
        return await original(fs, path, data, *args, mode=mode, **kwargs)

    wrap_puts(monkeypatch, counting)
    urls = [s3.url(), s3.url(), s3.url()]
    run = new_run(urls[0])
    assert len(probes) == 2  # one exclusive create, and a second one that must fail
    assert parts.commit_part(run, 0, write_part(1)) is not None
    new_run(urls[1])  # a new process on this machine: the answer is in its object cache
    assert len(probes) == 2
    monkeypatch.setenv("ATTNWH_OBJECT_CACHE", str(tmp_path / "elsewhere"))  # another machine
    new_run(urls[2])
    assert len(probes) == 4
    assert not any("probe" in key for url in urls for key in objects(s3, url))


def test_recovery_beside_writers_that_remove_the_last_lease_it_listed(s3, monkeypatch):
    """Ranks recover as they start, beside other ranks' writers: a prefix (``_leases/``) that held objects
    when recovery asked may hold none when it lists it. Found by a fault schedule (seed 93 on S3)."""
    run = new_run(s3.url())
    assert parts.commit_part(run, 0, write_part(1)) is not None  # its lease is gone again
    monkeypatch.setattr(type(run.leases), "is_dir", lambda self: True)  # as it was a moment before
    assert parts.recover(run) == {"rolled_forward": 0, "removed": 0}
