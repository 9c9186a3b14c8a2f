"""Commit records: what a committed part is made of, how a record is named and read, and where its files are.

A part is done iff its commit record ``_commits/part-N.json`` exists. A record lists every file of
the part with its size and sha256, the rows of each table, the attempt that wrote it and, on an object
store, the folder (the attempt's prefix) its files are in.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from dataclasses import dataclass
from typing import Any

from attnwh.core.errors import IntegrityError, first_line
from attnwh.warehouse import storage
from attnwh.warehouse.layout import RunPaths, part_name, record_name, table_file, table_file_name
from attnwh.warehouse.schema import SCHEMA_VERSION, TABLES
from attnwh.warehouse.storage import Location

_HASH_BLOCK = 1 << 20


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
            raise IntegrityError(f"commit record {path} is unreadable ({first_line(exc)})") from exc
        return cls.parse(path, text)

    @classmethod
    def parse(cls, path: Location, text: bytes) -> "CommitRecord":
        """The record in ``text`` (the content of ``path``), checked as ``load`` checks it."""
        try:
            content = json.loads(text)
        except ValueError as exc:
            raise IntegrityError(f"commit record {path} is unreadable ({first_line(exc)})") from exc
        if not isinstance(content, dict):
            raise IntegrityError(f"commit record {path} holds a JSON {type(content).__name__}, not a commit record")
        version = content.get("schema_version")
        if not isinstance(version, int) or isinstance(version, bool):
            raise IntegrityError(f"commit record {path} is damaged: its schema_version is {json.dumps(version)[:40]}, not a whole number")
        if version > SCHEMA_VERSION:
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
        for entry in files:
            table = _table_of(entry)
            if table is not None and table not in tables:  # its rows would be left out of every view without a word
                raise IntegrityError(f"commit record {path} lists {entry['path']} but counts no rows of table {table}")
            if "rows" in entry and entry["rows"] != tables.get(table):
                raise IntegrityError(f"commit record {path} says {entry['path']} holds {entry['rows']!r} rows but counts {tables.get(table)!r}")
        writer = content.get("writer") if isinstance(content.get("writer"), dict) else None
        created = content.get("created") if isinstance(content.get("created"), str) else None
        folder = posixpath.normpath(content["folder"]) if content.get("folder") is not None else None  # joined as text by readers
        return cls(content["part_id"], content["attempt"], files, tables, version, created, writer, folder)


def _table_of(entry: dict[str, Any]) -> str | None:
    """The table whose file a record's ``entry`` is (a part's ``<table>.parquet``), or None."""
    table = entry["path"].removesuffix(".parquet")
    return table if entry["path"] == table_file_name(table) and table in TABLES else None


def _file_entry(entry: Any) -> bool:
    return isinstance(entry, dict) and _relative(entry.get("path")) and isinstance(entry.get("size"), int) and isinstance(entry.get("sha256"), str)


def _relative(path: Any) -> bool:
    """A path inside its folder: relative, without '..'."""
    return isinstance(path, str) and bool(path) and not path.startswith("/") and ".." not in path.split("/")


def part_id_of(name: str) -> int | None:
    """The part id in a name like ``part-000012`` (None for any other name)."""
    try:
        return int(name.removeprefix("part-"))
    except ValueError:
        return None


def record_part_id(name: str) -> int | None:
    """The part whose commit record ``name`` is (``part-000012.json``: 12); None for any other name."""
    part_id = part_id_of(name.removesuffix(".json"))
    return part_id if part_id is not None and name == record_name(part_id) else None


def committed_part_ids(run: RunPaths) -> set[int]:
    """The parts whose commit record is there, by its part's name (another name, like ``part-1.json``, is no record)."""
    return {part_id for name in commit_log_names(run) if (part_id := record_part_id(name)) is not None}


def commit_log_names(run: RunPaths) -> list[str]:
    """The names of the commit log's objects named like a record (``part-*.json``); a commit log that cannot be
    listed raises ``WarehouseError`` naming it (the run's parts would look uncommitted)."""
    return [name for name in storage.names_in(run.commits, "part-") if name.endswith(".json")]


def unrecorded_parts(run: RunPaths) -> list[str]:
    """Published part folders with no commit record: readers cannot trust them, so they are not read."""
    recorded = {part_name(part_id) for part_id in committed_part_ids(run)}
    return [name for name in storage.names_in(run.parts) if name not in recorded and storage.is_dir(run.parts / name)]


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


def current_record(run: RunPaths, part_id: int) -> CommitRecord | None:
    """The part's commit record as it is now (read afresh, never from a cache or an earlier listing); None
    when there is none. An unreadable record raises ``IntegrityError``."""
    path = run.commit_record(part_id)
    try:
        content = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise IntegrityError(f"commit record {path} is unreadable ({first_line(exc)})") from exc
    return CommitRecord.parse(path, content)


def _unreadable(path: Location, exc: BaseException) -> CommitRecord:
    raise IntegrityError(f"commit record {path} is unreadable ({first_line(exc)})") from exc


def part_folder(run: RunPaths, record: CommitRecord) -> Location:
    """Where a committed part's files are: the folder its record names (object stores), published, or
    still in staging if publishing was cut short."""
    if record.folder is not None:
        return run.root / record.folder
    published = run.published_part(record.part_id)
    if storage.is_dir(published):
        return published
    return run.staging_attempt(record.part_id, record.attempt)


def table_files(run: RunPaths, table: str, records: list[CommitRecord] | None = None) -> list[Location]:
    """Committed Parquet files of ``table`` in this run, in part order (from ``records`` when the caller has them)."""
    records = commit_records(run) if records is None else records
    return [table_file(part_folder(run, record), table) for record in records if table in record.tables]


def sha256(path: Location) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(_HASH_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()
