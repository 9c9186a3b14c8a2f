"""The part commit protocol and recovery.

A part is written under ``_staging/part-N.<attempt>/``, fsynced and hashed; then its commit record
``_commits/part-N.json`` is created exclusively (a hard link of a complete temporary file, so the
record appears whole or not at all, and only one writer can win); then the staging folder is
renamed to ``parts/part-N``. A part is done iff its commit record exists. Readers take file lists
from commit records only, so uncommitted files are invisible.

On an object store (no rename, no hard link) the part is written into a local temporary folder,
hashed, and uploaded under its attempt's prefix ``_staging/part-N.<attempt>/``, which is its final
place: the commit record, put conditionally (``If-None-Match: *``, so exactly one writer wins),
names that folder, and there is no publish step.

The attempt holds a lease (``leases``) while it works. The record is **fenced**: right before it is
written the writer confirms its lease (and, on a store, that its uploaded objects are all there), and
right after, that its files are still there (a local part: published); a writer whose attempt was taken
over writes no record, or withdraws the one it wrote, and stops with ``WarehouseError`` ("lost its
lease"). A put whose reply was lost is retried by the store's client and answered "exists": the
writer then reads the record, and a record naming its own attempt is its success (never a reason to
remove its files).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from attnwh.core.errors import WarehouseError
from attnwh.warehouse import probe, storage
from attnwh.warehouse.layout import LAYOUT_VERSION, RunPaths, part_name
from attnwh.warehouse.leases import Lease, LeaseLost, expired, lease_age, lease_timeout, new_attempt_id, writer_alive
from attnwh.warehouse.records import CommitRecord, commit_records, current_record, part_folder, part_id_of, sha256
from attnwh.warehouse.schema import SCHEMA_VERSION

FAULT_ENV = "ATTNWH_FAULT"  # "point" or "point:PART_ID": SIGKILL this process there (crash tests)
FAULT_ONCE_ENV = "ATTNWH_FAULT_ONCE"  # a file: the fault fires only for the process that creates it (one kill in a cluster)
FAULT_POINTS = ("after_staging", "after_fsync", "after_record_tmp", "after_commit", "after_publish")
FENCE_POINT = "before_record"  # after the lease is confirmed, before the record is written (a fault point too)
# tests: called at every fault point (the fault-schedule harness); a context variable, so it belongs to the
# thread or task that set it and never reaches another writer in the same process
FAULT_HOOK: ContextVar[Callable[[str, int], None] | None] = ContextVar("attnwh_fault_hook", default=None)


def _fault(point: str, part_id: int) -> None:
    """Kill the process at ``point`` when ``$ATTNWH_FAULT`` names it (and this part, if it names one)."""
    hook = FAULT_HOOK.get()
    if hook is not None:
        hook(point, part_id)
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    name, _, part = spec.partition(":")
    if name == point and (not part or int(part) == part_id):
        once = os.environ.get(FAULT_ONCE_ENV)
        if once:
            try:
                os.close(os.open(once, os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                return
        os.kill(os.getpid(), signal.SIGKILL)


def commit_part(run: RunPaths, part_id: int, write: Callable[[Path], dict[str, int]], writer: dict[str, Any] | None = None) -> CommitRecord | None:
    """Write one part through staging and commit it.

    ``write(folder)`` writes the part's files into ``folder`` and returns rows per table
    (``{"samples": 12, "head_metrics": 1536}``). Returns the commit record, or None if another
    writer committed this part first (our attempt is then discarded). ``writer`` (rank, world size)
    is recorded with the host and process. The attempt holds a lease while it works; a writer that
    loses it raises ``WarehouseError`` and commits nothing.
    """
    on_store = storage.is_object_store(run.root)
    if on_store:
        try:
            probe.check_conditional_puts(run.root)
        except OSError as exc:
            raise WarehouseError(storage.describe_error(run.root, exc)) from exc
    attempt = new_attempt_id()
    with Lease(run.lease(part_id, attempt), attempt) as lease:
        try:
            if on_store:
                return _commit_to_store(run, part_id, write, attempt, writer or {}, lease)
            return _commit(run, part_id, write, attempt, writer or {}, lease)
        except LeaseLost as lost:
            raise WarehouseError(f"{part_name(part_id)} of {run.root}: this writer lost its lease ({lost}); it committed nothing, and another process may redo the part") from None


def _record(part_id: int, attempt: str, tables: dict[str, int], files: list[dict[str, Any]], writer: dict[str, Any], folder: str | None = None) -> dict[str, Any]:
    record = {
        "part_id": part_id,
        "attempt": attempt,
        "created": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
        "layout_version": LAYOUT_VERSION,
        "schema_version": SCHEMA_VERSION,
        "tables": tables,
        "files": files,
        "writer": {"host": socket.gethostname(), "pid": os.getpid(), **writer},
    }
    if folder is not None:
        record["folder"] = folder
    return record


def _commit(run: RunPaths, part_id: int, write: Callable[[Path], dict[str, int]], attempt: str, writer: dict[str, Any], lease: Lease) -> CommitRecord | None:
    staging = run.staging_attempt(part_id, attempt)
    try:
        staging.mkdir(parents=True)
        tables = write(staging)
        _fault("after_staging", part_id)
        files = describe_files(staging, tables)
        _fsync_tree(staging)
        _fault("after_fsync", part_id)
        record = _record(part_id, attempt, tables, files, writer)
        if not _create_exclusively(run, part_id, attempt, json.dumps(record, indent=1) + "\n", lease):
            shutil.rmtree(staging, ignore_errors=True)
            return None
        _fault("after_commit", part_id)
    except LeaseLost:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    except OSError as exc:
        if not _recorded(run, part_id, attempt):  # a record of ours (its folder's fsync failed) keeps its files: recovery publishes them
            shutil.rmtree(staging, ignore_errors=True)
            lease.confirm()  # a folder removed under the writer: say that its attempt was taken over
        raise WarehouseError(f"could not write {part_name(part_id)} of {run.root}: {exc.strerror or exc}") from exc
    if not _publish(run, part_id, attempt):
        _withdraw(run, part_id, attempt)
        raise LeaseLost("its staging folder was removed by another process before it was published; its record is withdrawn")
    _fault("after_publish", part_id)
    return CommitRecord(part_id, attempt, files, tables, SCHEMA_VERSION)


def _commit_to_store(run: RunPaths, part_id: int, write: Callable[[Path], dict[str, int]], attempt: str, writer: dict[str, Any], lease: Lease) -> CommitRecord | None:
    """The object-store protocol: write locally, upload under the attempt's prefix, put the record conditionally."""
    target = run.staging_attempt(part_id, attempt)
    folder = f"{run.staging.name}/{target.name}"
    with storage.local_staging(f"attnwh-{part_name(part_id)}-") as local:
        tables = write(local)
        files = describe_files(local, tables)
        try:
            storage.upload_folder(local, target)
            _fault("after_staging", part_id)
            record = _record(part_id, attempt, tables, files, writer, folder)
            lease.confirm()
            if (missing := _missing(target, files)) is not None:
                raise LeaseLost(f"its uploaded object {missing} was removed by another process")
            _fault(FENCE_POINT, part_id)
            won = _put_record(run, part_id, attempt, (json.dumps(record, indent=1) + "\n").encode())
        except LeaseLost:
            storage.remove_tree(target)
            raise
        except OSError as exc:
            storage.remove_tree(target)
            raise WarehouseError(f"could not write {part_name(part_id)} of {run.root}: {storage.describe_error(run.root, exc)}") from exc
    if not won:
        storage.remove_tree(target)
        return None
    _fault("after_commit", part_id)
    if (missing := _missing(target, files)) is not None:  # taken over while the record was put: it names removed files
        _withdraw(run, part_id, attempt)
        storage.remove_tree(target)
        raise LeaseLost(f"its uploaded object {missing} was removed by another process as its record was written; the record is withdrawn")
    return CommitRecord(part_id, attempt, files, tables, SCHEMA_VERSION, folder=folder)


def _missing(target: storage.Location, files: list[dict[str, Any]]) -> str | None:
    """The first of ``files`` not under the store's prefix ``target`` with its size (one listing), or None."""
    found = storage.sizes_under(target)
    return next((entry["path"] for entry in files if found.get(entry["path"]) != entry["size"]), None)


def _put_record(run: RunPaths, part_id: int, attempt: str, content: bytes) -> bool:
    """Put the record conditionally: True when the part's record is ours, put now or by an earlier request
    of this put whose reply was lost (the client's retry is then answered "exists"); False when another
    attempt's record is there. A failed put whose record is ours is a success too."""
    try:
        if storage.put_exclusively(run.commit_record(part_id), content):
            return True
    except OSError:
        if _ours(run, part_id, attempt):
            return True
        raise
    return _ours(run, part_id, attempt)


def _ours(run: RunPaths, part_id: int, attempt: str) -> bool:
    """Whether the part's record, read now, names ``attempt``. An unreadable record is nobody's to remove
    files for: ``WarehouseError``, and the attempt is left to recovery (which never removes a committed one)."""
    record = current_record(run, part_id)
    return record is not None and record.attempt == attempt


def _recorded(run: RunPaths, part_id: int, attempt: str) -> bool:
    """Whether the part's record may name ``attempt`` (an unreadable one may: its files are kept)."""
    try:
        return _ours(run, part_id, attempt)
    except WarehouseError:
        return True


def _withdraw(run: RunPaths, part_id: int, attempt: str) -> None:
    """Remove the part's record if it names ``attempt``, whose files are gone: the part is not committed."""
    try:
        if not _ours(run, part_id, attempt):
            return
    except WarehouseError:
        return
    storage.remove_file(run.commit_record(part_id))
    if not storage.is_object_store(run.root):
        _fsync_dir(run.commits)


def recover(run: RunPaths, lease_seconds: float | None = None) -> dict[str, int]:
    """Roll committed-but-unpublished parts forward; take over attempts that can no longer commit.

    An attempt can no longer commit when its writer is a dead process of this host, or when its
    lease has not been renewed for ``lease_seconds`` (default ``$ATTNWH_LEASE_SECONDS``, else 300):
    a writer on another machine that crashed. A live attempt (fresh lease) is never removed; an
    attempt of another machine without a lease (older attnwh) is left alone. Attempts and leases are
    listed before the commit log, so an attempt that commits while recovery runs is seen committed;
    each attempt is taken over by removing its lease first, then its record is read again before its
    files are removed (``_take_over``).
    """
    lease_seconds = lease_timeout() if lease_seconds is None else lease_seconds
    attempts = names_under(run.staging)
    leases = names_under(run.leases)
    leftovers = [] if storage.is_object_store(run.root) or not run.commits.is_dir() else list(run.commits.glob(".part-*.json.*.tmp"))
    committed = {record.part_id: record for record in commit_records(run)}
    rolled = removed = 0
    for record in committed.values():
        if record.folder is None and not run.published_part(record.part_id).is_dir() and run.staging_attempt(record.part_id, record.attempt).is_dir():
            _publish(run, record.part_id, record.attempt)
            rolled += 1
    for attempt_name in attempts:
        name, _, attempt = attempt_name.partition(".")
        part_id = part_id_of(name)
        part = committed.get(part_id)
        if part is not None and part.attempt == attempt:
            continue  # committed: being published right now, or (object stores) its final place
        if not expired(run, part_id, attempt, lease_seconds) and (part is None or lease_age(run, part_id, attempt) is not None):
            continue  # live: still working, or a live writer that lost the race (it removes its own attempt)
        if part_id is None:
            storage.remove_tree(run.staging / attempt_name)
            removed += 1
        elif _take_over(run, part_id, attempt):
            removed += 1
    for lease_name in leases:  # leases whose attempt is gone, or committed (its writer died before removing its lease)
        name, _, attempt = lease_name.partition(".")
        part_id = part_id_of(name)
        gone = f"{part_name(part_id)}.{attempt}" not in attempts if part_id is not None else False
        done = part_id in committed and committed[part_id].attempt == attempt
        if (gone or done) and expired(run, part_id, attempt, lease_seconds):
            storage.remove_file(run.leases / lease_name)
    for leftover in leftovers:
        attempt = leftover.name.removesuffix(".tmp").split(".json.", 1)[-1]
        if not writer_alive(attempt):
            leftover.unlink(missing_ok=True)
            removed += 1
    return {"rolled_forward": rolled, "removed": removed}


def _take_over(run: RunPaths, part_id: int, attempt: str) -> bool:
    """Remove an attempt that can no longer commit: its lease first (its writer's renewals and fence then
    fail), then, if the part's record read now does not name it, its files; a record that names it and
    appeared while they were removed (clocks further apart than the lease allows) is withdrawn."""
    storage.remove_file(run.lease(part_id, attempt))
    try:
        if _ours(run, part_id, attempt):
            return False  # it committed after the listing
    except WarehouseError:
        return False  # a damaged record: verify names it; its files are not ours to judge
    storage.remove_tree(run.staging_attempt(part_id, attempt))
    try:
        record = current_record(run, part_id)
    except WarehouseError:
        return True
    if record is not None and record.attempt == attempt and not storage.sizes_under(part_folder(run, record)):
        _withdraw(run, part_id, attempt)
    return True


def names_under(folder: storage.Location) -> list[str]:
    """The names directly under ``folder`` (attempts under ``_staging``, leases under ``_leases``). On a
    store, a prefix whose last object another process just removed is no folder any more: empty."""
    try:
        return sorted(entry.name for entry in folder.iterdir()) if folder.is_dir() else []
    except (FileNotFoundError, NotADirectoryError):
        return []


def describe_files(folder: Path, tables: dict[str, int]) -> list[dict[str, Any]]:
    files = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = path.relative_to(folder).as_posix()
        entry: dict[str, Any] = {"path": relative, "size": path.stat().st_size, "sha256": sha256(path)}
        table = relative.removesuffix(".parquet")
        if relative.endswith(".parquet") and table in tables:
            entry["rows"] = tables[table]
        files.append(entry)
    return files


def _fsync_tree(folder: Path) -> None:
    for path in _walk(folder):
        flags = os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0)
        fd = os.open(path, flags)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _walk(folder: Path) -> Iterator[Path]:
    yield from sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True)
    yield folder


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_link = os.link  # the exclusive step of a local commit (tests wrap it)


def _create_exclusively(run: RunPaths, part_id: int, attempt: str, content: str, lease: Lease) -> bool:
    """Make the part's record appear with ``content`` atomically, the lease confirmed just before: True
    when the record is ours, False when another attempt's record is there."""
    target = run.commit_record(part_id)
    tmp = target.with_name(f".{target.name}.{attempt}.tmp")  # recovery removes it once its writer is gone
    try:
        with open(tmp, "w") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        _fault("after_record_tmp", part_id)
        lease.confirm()
        _fault(FENCE_POINT, part_id)
        try:
            _link(tmp, target)
        except FileExistsError:
            return _ours(run, part_id, attempt)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(target.parent)
    return True


def _publish(run: RunPaths, part_id: int, attempt: str) -> bool:
    """Rename a committed attempt's staging folder to the part's folder; False when neither is there (its
    files were removed)."""
    source = run.staging_attempt(part_id, attempt)
    target = run.published_part(part_id)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(source, target)
    except FileNotFoundError:
        return target.is_dir()  # another process published it (or the files are gone)
    except OSError:
        if target.is_dir():
            return True
        raise
    _fsync_dir(run.parts)
    return True
