"""The part commit protocol, recovery and verification.

A part is written under ``_staging/part-N.<attempt>/``, fsynced and hashed; then its commit record
``_commits/part-N.json`` is created exclusively (a hard link of a complete temporary file, so the
record appears whole or not at all, and only one writer can win); then the staging folder is
renamed to ``parts/part-N``. A part is done iff its commit record exists. Readers take file lists
from commit records only, so uncommitted files are invisible.

On an object store (no rename, no hard link) the part is written into a local temporary folder,
hashed, and uploaded under its attempt's prefix ``_staging/part-N.<attempt>/``, which is its final
place: the commit record, put conditionally (``If-None-Match: *``, so exactly one writer wins),
names that folder, and there is no publish step.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import shutil
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from attnwh.core.errors import IntegrityError, WarehouseError
from attnwh.warehouse import storage
from attnwh.warehouse.layout import LAYOUT_VERSION, RunPaths, part_name, record_name, table_file, table_file_name
from attnwh.warehouse.runs import load_run, read_manifest
from attnwh.warehouse.schema import SCHEMA_VERSION
from attnwh.warehouse.storage import Location

_HASH_BLOCK = 1 << 20
FAULT_ENV = "ATTNWH_FAULT"  # "point" or "point:PART_ID": SIGKILL this process there (crash tests)
FAULT_ONCE_ENV = "ATTNWH_FAULT_ONCE"  # a file: the fault fires only for the process that creates it (one kill in a cluster)
FAULT_POINTS = ("after_staging", "after_fsync", "after_record_tmp", "after_commit", "after_publish")


def _fault(point: str, part_id: int) -> None:
    """Kill the process at ``point`` when ``$ATTNWH_FAULT`` names it (and this part, if it names one)."""
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


@dataclass(frozen=True)
class CommitRecord:
    part_id: int
    attempt: str
    files: list[dict[str, Any]]  # {"path", "size", "sha256", "rows" (tables only)}
    tables: dict[str, int]  # table name -> rows
    schema_version: int
    created: str | None = None  # when it was committed (ISO 8601, UTC)
    writer: dict[str, Any] | None = None  # host, pid, rank and world size of the process that committed it
    folder: str | None = None  # where its files are, relative to the run (object stores: the attempt's prefix); None: published

    @classmethod
    def load(cls, path: Location) -> "CommitRecord":
        """A commit record, refused (naming the file) when unreadable, of the wrong shape or newer than this attnwh."""
        try:
            text = path.read_bytes()
        except OSError as exc:
            raise IntegrityError(f"commit record {path} is unreadable ({_first_line(exc)})") from exc
        return cls.parse(path, text)

    @classmethod
    def parse(cls, path: Location, text: bytes) -> "CommitRecord":
        """The record in ``text`` (the content of ``path``), checked as ``load`` checks it."""
        try:
            content = json.loads(text)
        except ValueError as exc:
            raise IntegrityError(f"commit record {path} is unreadable ({_first_line(exc)})") from exc
        if not isinstance(content, dict):
            raise IntegrityError(f"commit record {path} holds a JSON {type(content).__name__}, not a commit record")
        version = content.get("schema_version")
        if not isinstance(version, int) or isinstance(version, bool) or version > SCHEMA_VERSION:
            raise IntegrityError(f"commit record {path} has schema version {version!r}; this attnwh reads up to {SCHEMA_VERSION}")
        files, tables = content.get("files"), content.get("tables")
        well_formed = (
            content.get("part_id") == part_id_of(path.stem)
            and isinstance(content.get("attempt"), str)
            and isinstance(files, list)
            and all(_file_entry(entry) for entry in files)
            and isinstance(tables, dict)
            and all(isinstance(name, str) and isinstance(rows, int) and not isinstance(rows, bool) for name, rows in tables.items())
            and (content.get("folder") is None or _relative(content["folder"]))
        )
        if not well_formed:
            raise IntegrityError(f"commit record {path} lacks or mistypes part_id, attempt, files or tables")
        listed = {entry["path"] for entry in files}
        if (unlisted := next((name for name in tables if table_file_name(name) not in listed), None)) is not None:
            raise IntegrityError(f"commit record {path} counts rows of table {unlisted} but lists no file {table_file_name(unlisted)}")
        writer = content.get("writer") if isinstance(content.get("writer"), dict) else None
        created = content.get("created") if isinstance(content.get("created"), str) else None
        folder = posixpath.normpath(content["folder"]) if content.get("folder") is not None else None  # joined as text by readers
        return cls(content["part_id"], content["attempt"], files, tables, version, created, writer, folder)


def _file_entry(entry: Any) -> bool:
    return isinstance(entry, dict) and _relative(entry.get("path")) and isinstance(entry.get("size"), int) and isinstance(entry.get("sha256"), str)


def _relative(path: Any) -> bool:
    """A path inside its folder: relative, without '..'."""
    return isinstance(path, str) and bool(path) and not path.startswith("/") and ".." not in path.split("/")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def new_attempt_id() -> str:
    """Names an attempt by host and process, so recovery knows whether its writer may still live."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def committed_part_ids(run: RunPaths) -> set[int]:
    """The parts whose commit record is there, by its part's name (another name, like ``part-1.json``, is no record)."""
    return {part_id for name in _commit_log_names(run) if (part_id := record_part_id(name)) is not None}


def record_part_id(name: str) -> int | None:
    """The part whose commit record ``name`` is (``part-000012.json``: 12); None for any other name."""
    part_id = part_id_of(name.removesuffix(".json"))
    return part_id if part_id is not None and name == record_name(part_id) else None


def _commit_log_names(run: RunPaths) -> list[str]:
    """The names of the commit log's objects named like a record (``part-*.json``)."""
    if not run.commits.is_dir():
        return []
    return [record.name for record in run.commits.glob("part-*.json")]


def commit_records(run: RunPaths, listed: dict[str, str | None] | None = None) -> list[CommitRecord]:
    """The run's commit records in part order; on an object store from ``listed`` (the commit log's
    objects, name -> ETag) when the caller listed it, the records not cached on this machine read concurrently."""
    if not storage.is_object_store(run.root):
        return [CommitRecord.load(run.commit_record(part_id)) for part_id in sorted(committed_part_ids(run))]
    listed = storage.tagged_listing(run.commits) if listed is None else listed
    ids = sorted(part_id for name in listed if (part_id := record_part_id(name)) is not None)
    paths = [run.commit_record(part_id) for part_id in ids]
    found = storage.read_all(paths, [listed[path.name] for path in paths])
    return [CommitRecord.parse(path, content) if isinstance(content, bytes) else _unreadable(path, content) for path, content in zip(paths, found)]


def _unreadable(path: Location, exc: BaseException) -> CommitRecord:
    raise IntegrityError(f"commit record {path} is unreadable ({_first_line(exc)})") from exc


def part_folder(run: RunPaths, record: CommitRecord) -> Location:
    """Where a committed part's files are: the folder its record names (object stores), published, or
    still in staging if publishing was cut short."""
    if record.folder is not None:
        return run.root / record.folder
    published = run.published_part(record.part_id)
    if published.is_dir():
        return published
    return run.staging_attempt(record.part_id, record.attempt)


def table_files(run: RunPaths, table: str, records: list[CommitRecord] | None = None) -> list[Location]:
    """Committed Parquet files of ``table`` in this run, in part order (from ``records`` when the caller has them)."""
    records = commit_records(run) if records is None else records
    return [table_file(part_folder(run, record), table) for record in records if table in record.tables]


def commit_part(
    run: RunPaths, part_id: int, write: Callable[[Path], dict[str, int]], writer: dict[str, Any] | None = None
) -> CommitRecord | None:
    """Write one part through staging and commit it.

    ``write(folder)`` writes the part's files into ``folder`` and returns rows per table
    (``{"samples": 12, "head_metrics": 1536}``). Returns the commit record, or None if another
    writer committed this part first (our attempt is then discarded). ``writer`` (rank, world size)
    is recorded with the host and process. The attempt holds a lease while it works.
    """
    attempt = new_attempt_id()
    with _Lease(run.lease(part_id, attempt)):
        if storage.is_object_store(run.root):
            return _commit_to_store(run, part_id, write, attempt, writer or {})
        return _commit(run, part_id, write, attempt, writer or {})


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


def _commit(run: RunPaths, part_id: int, write: Callable[[Path], dict[str, int]], attempt: str, writer: dict[str, Any]) -> CommitRecord | None:
    staging = run.staging_attempt(part_id, attempt)
    try:
        staging.mkdir(parents=True)
        tables = write(staging)
        _fault("after_staging", part_id)
        files = _describe_files(staging, tables)
        _fsync_tree(staging)
        _fault("after_fsync", part_id)
        record = _record(part_id, attempt, tables, files, writer)
        if not _create_exclusively(run.commit_record(part_id), json.dumps(record, indent=1) + "\n", part_id):
            shutil.rmtree(staging, ignore_errors=True)
            return None
        _fault("after_commit", part_id)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise WarehouseError(f"could not write {part_name(part_id)} of {run.root}: {exc.strerror or exc}") from exc
    _publish(run, part_id, attempt)
    _fault("after_publish", part_id)
    return CommitRecord(part_id, attempt, files, tables, SCHEMA_VERSION)


def _commit_to_store(run: RunPaths, part_id: int, write: Callable[[Path], dict[str, int]], attempt: str, writer: dict[str, Any]) -> CommitRecord | None:
    """The object-store protocol: write locally, upload under the attempt's prefix, put the record conditionally."""
    target = run.staging_attempt(part_id, attempt)
    folder = f"{run.staging.name}/{target.name}"
    with storage.local_staging(f"attnwh-{part_name(part_id)}-") as local:
        tables = write(local)
        files = _describe_files(local, tables)
        try:
            storage.upload_folder(local, target)
            _fault("after_staging", part_id)
            record = _record(part_id, attempt, tables, files, writer, folder)
            won = storage.put_exclusively(run.commit_record(part_id), (json.dumps(record, indent=1) + "\n").encode())
        except OSError as exc:
            storage.remove_tree(target)
            raise WarehouseError(f"could not write {part_name(part_id)} of {run.root}: {storage.describe_error(run.root, exc)}") from exc
    if not won:
        storage.remove_tree(target)
        return None
    _fault("after_commit", part_id)
    return CommitRecord(part_id, attempt, files, tables, SCHEMA_VERSION, folder=folder)


def recover(run: RunPaths, lease_seconds: float | None = None) -> dict[str, int]:
    """Roll committed-but-unpublished parts forward; delete attempts that can no longer commit.

    An attempt can no longer commit when its writer is a dead process of this host, or when its
    lease has not been renewed for ``lease_seconds`` (default ``$ATTNWH_LEASE_SECONDS``, else 300):
    a writer on another machine that crashed. A live attempt (fresh lease) is never removed; an
    attempt of another machine without a lease (older attnwh) is left alone.
    """
    lease_seconds = lease_timeout() if lease_seconds is None else lease_seconds
    rolled = removed = 0
    committed = {record.part_id: record for record in commit_records(run)}
    for record in committed.values():
        if record.folder is None and not run.published_part(record.part_id).is_dir() and run.staging_attempt(record.part_id, record.attempt).is_dir():
            _publish(run, record.part_id, record.attempt)
            rolled += 1
    attempts = _attempt_names(run.staging)
    for attempt_name in attempts:
        name, _, attempt = attempt_name.partition(".")
        part = committed.get(part_id_of(name))
        if part is not None and part.attempt == attempt:
            continue  # committed: being published right now, or (object stores) its final place
        if part is None and not _expired(run, part_id_of(name), attempt, lease_seconds):
            continue
        storage.remove_tree(run.staging / attempt_name)
        removed += 1
    for lease_name in _attempt_names(run.leases):  # leases whose attempt is gone
        name, _, attempt = lease_name.partition(".")
        part_id = part_id_of(name)
        if part_id is not None and f"{part_name(part_id)}.{attempt}" not in attempts and _expired(run, part_id, attempt, lease_seconds):
            storage.remove_file(run.leases / lease_name)
    if storage.is_object_store(run.root):
        return {"rolled_forward": rolled, "removed": removed}
    for leftover in run.commits.glob(".part-*.json.*.tmp") if run.commits.is_dir() else []:
        attempt = leftover.name.removesuffix(".tmp").split(".json.", 1)[-1]
        if not _writer_alive(attempt):
            leftover.unlink(missing_ok=True)
            removed += 1
    return {"rolled_forward": rolled, "removed": removed}


def _attempt_names(folder: Location) -> list[str]:
    """The names directly under ``folder`` (attempts under ``_staging``, leases under ``_leases``)."""
    try:
        return sorted(entry.name for entry in folder.iterdir()) if folder.is_dir() else []
    except FileNotFoundError:
        return []


LEASE_ENV = "ATTNWH_LEASE_SECONDS"
DEFAULT_LEASE_SECONDS = 300.0


def lease_timeout() -> float:
    """How long an attempt's lease lasts without renewal: ``$ATTNWH_LEASE_SECONDS``, else 300 s."""
    text = os.environ.get(LEASE_ENV)
    try:
        return float(text) if text else DEFAULT_LEASE_SECONDS
    except ValueError as exc:
        raise WarehouseError(f"{LEASE_ENV} must be a number of seconds, got {text!r}") from exc


def lease_age(run: RunPaths, part_id: int | None, attempt: str) -> float | None:
    """Seconds since the attempt's lease was last renewed (None: it has no lease)."""
    if part_id is None:
        return None
    try:
        return max(0.0, time.time() - run.lease(part_id, attempt).stat().st_mtime)
    except OSError:
        return None


def _expired(run: RunPaths, part_id: int | None, attempt: str, lease_seconds: float) -> bool:
    """Whether an uncommitted attempt may be removed: its writer is gone, or its lease ran out."""
    if _dead_here(attempt):
        return True
    age = lease_age(run, part_id, attempt)
    if age is None:
        return not _writer_alive(attempt)
    return age > lease_seconds


class _Lease:
    """A file whose modification time a background thread renews while the attempt's writer works."""

    def __init__(self, path: Location):
        self.path = path
        self.stop = threading.Event()
        self.interval = max(0.05, min(30.0, lease_timeout() / 5))

    def __enter__(self) -> "_Lease":
        storage.make_folders(self.path.parent)
        self._touch()
        self.thread = threading.Thread(target=self._renew, name="attnwh-lease", daemon=True)
        self.thread.start()
        return self

    def _touch(self) -> None:
        if storage.is_object_store(self.path):
            storage.put(self.path, b"")  # an object's modification time is its last put
        else:
            self.path.touch()

    def _renew(self) -> None:
        while not self.stop.wait(self.interval):
            try:
                self._touch()
            except OSError:
                return

    def __exit__(self, *exc_info) -> None:
        self.stop.set()
        self.thread.join()
        storage.remove_file(self.path)


@dataclass(frozen=True)
class ReadableRun:
    """A run whose manifest, commit records and committed tables a reader can trust."""

    manifest: dict[str, Any]
    records: list[CommitRecord]
    paths: RunPaths  # the run's paths, with the listing of its own objects on an object store


def readable_run(run: RunPaths) -> ReadableRun:
    """The run's manifest and commit records, or ``WarehouseError`` naming the first damaged file.

    Cheap enough for every session: the manifest and every commit record are parsed once and checked,
    and every committed Parquet table's size is checked against its record (hashes are ``verify``'s):
    stat-ed in a local folder; on an object store, from one listing of everything under the run (its
    own objects with their ETags, its commit log and every staged file; it replaced a listing of the run
    folder and one of its commit log, then one of its staging prefix), the manifest and records unchanged
    since an earlier session taken from the local cache.
    """
    if not storage.is_object_store(run.root):
        manifest, records = read_manifest(run), commit_records(run)
        if (problem := size_problem(run, records, None)) is not None:
            raise WarehouseError(problem)
        return ReadableRun(manifest, records, run)
    listed = storage.objects_under(run.root)
    run = RunPaths(run.root, {name: tag for name, (_, tag) in listed.items() if "/" not in name})
    commits = f"{run.commits.name}/"
    records = commit_records(run, {name.removeprefix(commits): tag for name, (_, tag) in listed.items()
                                   if name.startswith(commits) and "/" not in name.removeprefix(commits)})
    manifest = read_manifest(run)
    if (problem := size_problem(run, records, {name: size for name, (size, _) in listed.items()})) is not None:
        raise WarehouseError(problem)
    return ReadableRun(manifest, records, run)


def size_problem(run: RunPaths, records: list[CommitRecord], listed: dict[str, int] | None) -> str | None:
    """The first committed Parquet table whose size differs from its record (or that is missing), or None.
    ``listed``: an object store's sizes under the run, by path relative to it (``storage.sizes_under``); None: stat each file."""
    for record in records:
        # an object store's part folder by its name in the record (joining a store's paths costs 0.1 ms each)
        folder = part_folder(run, record) if listed is None or record.folder is None else None
        relative = record.folder if folder is None else str(folder).removeprefix(f"{run.root}/")
        for entry in record.files:
            if not entry["path"].endswith(".parquet"):
                continue
            size = _size(folder / entry["path"]) if listed is None else listed.get(f"{relative}/{entry['path']}")
            if size is None:
                return f"{run.root}/{relative}/{entry['path']} is missing"
            if size != entry["size"]:
                return f"{run.root}/{relative}/{entry['path']} has {size} bytes, its commit record says {entry['size']}"
    return None


def _size(path: Location) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def unrecorded_parts(run: RunPaths) -> list[str]:
    """Published part folders with no commit record: readers cannot trust them, so they are not read."""
    if not run.parts.is_dir():
        return []
    recorded = {part_name(part_id) for part_id in committed_part_ids(run)}
    return sorted(folder.name for folder in run.parts.iterdir() if folder.is_dir() and folder.name not in recorded)


def verify(run: RunPaths) -> list[str]:
    """Every problem found between the manifest, plan, commit log and the files on disk, one line each."""
    problems = []
    try:
        load_run(run)
    except WarehouseError as exc:
        problems.append(str(exc))
    records = []
    names = sorted(_commit_log_names(run))
    # a record is read by its part's name: another name (part-1.json) is never read, and said so
    problems += [f"{run.commits / name}: not a commit record's name ({record_name(part_id)}); readers ignore it"
                 for name in names if record_part_id(name) is None and (part_id := part_id_of(name.removesuffix(".json"))) is not None]
    for part_id in sorted(part_id for name in names if (part_id := record_part_id(name)) is not None):
        try:
            records.append(CommitRecord.load(run.commit_record(part_id)))
        except WarehouseError as exc:
            problems.append(str(exc))
    referenced_parts = set()
    for record in records:
        folder = part_folder(run, record)
        referenced_parts.add(folder.name)
        found = storage.sizes_under(folder)
        if not found and not folder.is_dir():
            problems.append(f"{part_name(record.part_id)}: folder missing ({folder if record.folder else run.published_part(record.part_id)})")
            continue
        for entry in record.files:
            size = found.get(entry["path"])
            if size is None:
                problems.append(f"{part_name(record.part_id)}: missing file {entry['path']}")
            elif size != entry["size"]:
                problems.append(f"{part_name(record.part_id)}: {entry['path']} has {size} bytes, commit says {entry['size']}")
            elif _sha256(folder / entry["path"]) != entry["sha256"]:
                problems.append(f"{part_name(record.part_id)}: {entry['path']} content differs from its sha256")
        listed = {entry["path"] for entry in record.files}
        problems += [f"{part_name(record.part_id)}: unreferenced file {path}" for path in sorted(found) if path not in listed]
    for name in unrecorded_parts(run):
        if name not in referenced_parts:
            problems.append(f"{name}: published without a commit record ({run.commits / (name + '.json')} is missing)")
    return problems


def _describe_files(folder: Path, tables: dict[str, int]) -> list[dict[str, Any]]:
    files = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = path.relative_to(folder).as_posix()
        entry: dict[str, Any] = {"path": relative, "size": path.stat().st_size, "sha256": _sha256(path)}
        table = relative.removesuffix(".parquet")
        if relative.endswith(".parquet") and table in tables:
            entry["rows"] = tables[table]
        files.append(entry)
    return files


def _sha256(path: Location) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(_HASH_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


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


def _create_exclusively(target: Path, content: str, part_id: int = -1) -> bool:
    """Make ``target`` appear with ``content`` atomically; False if it already exists."""
    tmp = target.with_name(f".{target.name}.{new_attempt_id()}.tmp")
    with open(tmp, "w") as handle:
        handle.write(content)
        handle.flush()
        os.fsync(handle.fileno())
    _fault("after_record_tmp", part_id)
    try:
        os.link(tmp, target)
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(target.parent)
    return True


def _publish(run: RunPaths, part_id: int, attempt: str) -> None:
    source = run.staging_attempt(part_id, attempt)
    target = run.published_part(part_id)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(source, target)
    except FileNotFoundError:
        return  # another process published it
    except OSError:
        if target.is_dir():
            return
        raise
    _fsync_dir(run.parts)


def part_id_of(name: str) -> int | None:
    """The part id in a name like ``part-000012`` (None for any other name)."""
    try:
        return int(name.removeprefix("part-"))
    except ValueError:
        return None


def attempt_writer(attempt: str) -> tuple[str, int] | None:
    """(host, pid) of the process an attempt id names (``new_attempt_id``); None for another kind of name.
    Host names may contain '-': the pid is the second-to-last field."""
    fields = attempt.rsplit("-", 2)
    if len(fields) != 3 or not fields[1].isdigit():
        return None
    return fields[0], int(fields[1])


def _dead_here(attempt: str) -> bool:
    """The attempt's writer was a process of this host that no longer runs."""
    writer = attempt_writer(attempt)
    return writer is not None and writer[0] == socket.gethostname() and not _writer_alive(attempt)


def _writer_alive(attempt: str) -> bool:
    writer = attempt_writer(attempt)
    if writer is None:
        return False
    host, pid = writer
    if host != socket.gethostname():
        return True  # cannot tell for another machine: leave it
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
