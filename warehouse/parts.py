"""Reading and verifying a run's committed parts, and the names other code imports from the part modules.

The commit protocol and recovery are in ``commit``, attempt leases in ``leases``, commit records in
``records``; this module re-exports what readers, writers and tests use (``parts.commit_part``,
``parts.recover``, ``parts.CommitRecord``, ...), so ``attnwh.warehouse.parts`` stays the one import.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from attnwh.core.errors import WarehouseError, first_line
from attnwh.warehouse import storage
from attnwh.warehouse.commit import FAULT_ENV, FAULT_ONCE_ENV, FAULT_POINTS, FENCE_POINT, commit_part, describe_files, recover  # noqa: F401  (re-exported)
from attnwh.warehouse.layout import RunPaths, part_name, record_name, table_file_name
from attnwh.warehouse.leases import DEFAULT_LEASE_SECONDS, LEASE_ENV, attempt_writer, lease_age, lease_timeout, new_attempt_id  # noqa: F401  (re-exported)
from attnwh.warehouse.records import (  # noqa: F401  (re-exported)
    CommitRecord,
    commit_log_names,
    commit_records,
    committed_part_ids,
    part_folder,
    part_id_of,
    record_part_id,
    sha256,
    table_files,
    unrecorded_parts,
)
from attnwh.warehouse.runs import load_run, read_manifest
from attnwh.warehouse.storage import Location


def _is_table(path: str) -> bool:
    return path.endswith(".parquet")


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
    records = commit_records(run, {name.removeprefix(commits): tag for name, (_, tag) in listed.items() if name.startswith(commits) and "/" not in name.removeprefix(commits)})
    manifest = read_manifest(run)
    if (problem := size_problem(run, records, {name: size for name, (size, _) in listed.items()})) is not None:
        raise WarehouseError(problem)
    return ReadableRun(manifest, records, run)


def size_problem(run: RunPaths, records: list[CommitRecord], listed: dict[str, int] | None, checked: Callable[[str], bool] = _is_table) -> str | None:
    """The first committed file whose size differs from its record (or that is missing), or None: of the files whose
    path in the part ``checked`` takes (the Parquet tables; ``arrays`` checks a part's Zarr rows so).
    ``listed``: an object store's sizes under the run, by path relative to it (``storage.sizes_under``); None: stat each file."""
    for record in records:
        # an object store's part folder by its name in the record (joining a store's paths costs 0.1 ms each)
        folder = part_folder(run, record) if listed is None or record.folder is None else None
        relative = record.folder if folder is None else str(folder).removeprefix(f"{run.root}/")
        for entry in record.files:
            if not checked(entry["path"]):
                continue
            size = _size(folder / entry["path"]) if listed is None else listed.get(f"{relative}/{entry['path']}")
            if size is None:
                return f"{run.root}/{relative}/{entry['path']} is missing"
            if size != entry["size"]:
                return f"{run.root}/{relative}/{entry['path']} has {size} bytes, its commit record says {entry['size']}"
    return None


def _size(path: Location) -> int | None:
    """The file's size; None where it is missing. A path that cannot be looked at raises ``WarehouseError`` naming it."""
    try:
        return path.stat().st_size
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise storage.unreadable(path, exc) from exc


def _file_problem(folder: Location, entry: dict[str, Any], found: dict[str, int]) -> str | None:
    """What is wrong with one file of a part against its record's ``entry`` (``found``: the sizes of the part's files), or None."""
    size = found.get(entry["path"])
    if size is None:
        return f"missing file {entry['path']}"
    if size != entry["size"]:
        return f"{entry['path']} has {size} bytes, commit says {entry['size']}"
    try:
        digest = sha256(folder / entry["path"])
    except OSError as exc:  # unreadable (permissions, an I/O error): a problem of this file, not the end of the check
        return f"{entry['path']} is unreadable ({exc.strerror or first_line(exc)})"
    return None if digest == entry["sha256"] else f"{entry['path']} content differs from its sha256"


def _rows_problem(path: Location, rows: int) -> str | None:
    """What is wrong with a table file whose bytes match its record against the rows the record counts (its
    footer's count; readers trust the record's), or None."""
    try:
        source, filesystem = storage.arrow_source(path)
        found = pq.read_metadata(source, filesystem=filesystem).num_rows
    except (OSError, pa.ArrowInvalid) as exc:
        return f"{path.name} is not a readable Parquet file ({first_line(exc)})"
    return None if found == rows else f"{path.name} holds {found} rows, commit says {rows}"


def verify(run: RunPaths) -> list[str]:
    """Every problem found between the manifest, plan, commit log and the files on disk, one line each."""
    problems = []
    try:
        load_run(run)
    except WarehouseError as exc:
        problems.append(str(exc))
    records = []
    try:
        names = sorted(commit_log_names(run))
    except WarehouseError as exc:  # an unreadable commit log: nothing more can be checked against it
        return [*problems, str(exc)]
    # a record is read by its part's name: another name (part-1.json) is never read, and said so
    problems += [
        f"{run.commits / name}: not a commit record's name ({record_name(part_id)}); readers ignore it"
        for name in names
        if record_part_id(name) is None and (part_id := part_id_of(name.removesuffix(".json"))) is not None
    ]
    for part_id in sorted(part_id for name in names if (part_id := record_part_id(name)) is not None):
        try:
            records.append(CommitRecord.load(run.commit_record(part_id)))
        except WarehouseError as exc:
            problems.append(str(exc))
    referenced_parts = set()
    for record in records:
        try:
            folder = part_folder(run, record)
            found = storage.sizes_under(folder)
            missing = not found and not storage.is_dir(folder)
        except WarehouseError as exc:  # the parts folder (or the staging folder) cannot be looked into
            problems.append(f"{part_name(record.part_id)}: {exc}")
            continue
        referenced_parts.add(folder.name)
        if missing:
            problems.append(f"{part_name(record.part_id)}: folder missing ({folder if record.folder else run.published_part(record.part_id)})")
            continue
        file_problems = {entry["path"]: problem for entry in record.files if (problem := _file_problem(folder, entry, found)) is not None}
        problems += [f"{part_name(record.part_id)}: {problem}" for problem in file_problems.values()]
        problems += [
            f"{part_name(record.part_id)}: {problem}"
            for table, rows in record.tables.items()
            if table_file_name(table) not in file_problems and (problem := _rows_problem(folder / table_file_name(table), rows)) is not None
        ]
        listed = {entry["path"] for entry in record.files}
        problems += [f"{part_name(record.part_id)}: unreferenced file {path}" for path in sorted(found) if path not in listed]
    try:
        unrecorded = unrecorded_parts(run)
    except WarehouseError as exc:
        problems.append(str(exc))
        unrecorded = []
    for name in unrecorded:
        if name not in referenced_parts:
            problems.append(f"{name}: published without a commit record ({run.commits / (name + '.json')} is missing)")
    return problems
