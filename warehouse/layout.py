"""Every path inside a warehouse is built here, and only here."""

from __future__ import annotations

import json
import os
import re
import uuid
from dataclasses import dataclass, field
from functools import partial

from attnwh.core.errors import WarehouseError, first_line
from attnwh.warehouse import probe, storage
from attnwh.warehouse.storage import Location

LAYOUT_VERSION = 1
FORMAT_NAME = "attnwh"
DEFAULT_WAREHOUSE = "attnwh-warehouse"
ENV_WAREHOUSE = "ATTNWH_WAREHOUSE"

_SLUG_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_GLOB = re.compile(r"[*?\[]")  # what DuckDB's readers take a file path with for a pattern (it has no escape)


def slug(text: str) -> str:
    """A path-safe rendering of a model or benchmark name (``org/model`` -> ``org--model``)."""
    cleaned = _SLUG_UNSAFE.sub("-", text.replace("/", "--")).strip("-.")
    return cleaned[:120] or "unnamed"


ROWS_FOLDER = "rows.zarr"  # a part's raw attention rows (a Zarr group)


def part_name(part_id: int) -> str:
    return f"part-{part_id:06d}"


def record_name(part_id: int) -> str:
    """The name of a part's commit record in the run's commit log (the only name a record is read by)."""
    return f"{part_name(part_id)}.json"


def table_file(part_folder: Location, table: str) -> Location:
    """A part's Parquet file of ``table`` (``samples``, ``head_metrics``, ...)."""
    return part_folder / table_file_name(table)


def table_file_name(table: str) -> str:
    """The name of a part's Parquet file of ``table`` (readers over many parts join it to the folder's
    text: a ``/`` on an object-store path costs 0.14 ms, 2,000 files a session)."""
    return f"{table}.parquet"


def rows_folder(part_folder: Location) -> Location:
    """A part's Zarr group of raw attention rows."""
    return part_folder / ROWS_FOLDER


def warehouse_location(path: Location | str | None) -> Location:
    """The folder or object-store prefix a ``--warehouse`` value (or ``$ATTNWH_WAREHOUSE``, else the
    default) names: a local path, or a URL like ``s3://bucket/prefix`` (``storage.location``)."""
    if path is not None and not isinstance(path, str) and storage.is_object_store(path):
        root = path
    else:
        root = storage.location(str(path) if path is not None else os.environ.get(ENV_WAREHOUSE) or DEFAULT_WAREHOUSE)
    if (pattern := _GLOB.search(str(root))) is not None:
        shown = str(root) if str(root).isprintable() else repr(str(root))
        raise WarehouseError(
            f"warehouse path {shown} contains {pattern.group()!r}: DuckDB reads a file path with * ? [ as a pattern, which "
            "can match another folder's files; rename the folder, or reach it through a link whose path has none of them"
        )
    return root


@dataclass(frozen=True)
class RunPaths:
    """The folder of one run and the paths inside it."""

    root: Location
    # object stores: the run folder's own objects (RUN.json, plan.parquet) by name -> ETag, from the
    # listing that found the run, so that readers take unchanged ones from the local cache
    tags: dict[str, str | None] | None = field(default=None, compare=False, hash=False, repr=False)

    @property
    def manifest(self) -> Location:
        return self.root / "RUN.json"

    @property
    def plan(self) -> Location:
        return self.root / "plan.parquet"

    @property
    def commits(self) -> Location:
        return self.root / "_commits"

    @property
    def staging(self) -> Location:
        return self.root / "_staging"

    @property
    def parts(self) -> Location:
        return self.root / "parts"

    def commit_record(self, part_id: int) -> Location:
        return self.commits / record_name(part_id)

    def published_part(self, part_id: int) -> Location:
        return self.parts / part_name(part_id)

    def staging_attempt(self, part_id: int, attempt: str) -> Location:
        return self.staging / f"{part_name(part_id)}.{attempt}"

    @property
    def leases(self) -> Location:
        return self.root / "_leases"

    @property
    def progress(self) -> Location:
        """A sweep's finished batches not yet in a committed part (extract.batch_journal)."""
        return self.root / "_progress"

    def lease(self, part_id: int, attempt: str) -> Location:
        """The lease of an attempt: renewed (its mtime) while the attempt's writer lives."""
        return self.leases / f"{part_name(part_id)}.{attempt}"


PROGRESS_MANIFEST = "conditions.json"  # in each group folder under ``_progress/``: the group's condition ids


def is_progress_batch(name: str) -> bool:
    """Whether a file's name under a group folder of ``_progress/`` is a batch's (not the manifest, not a write's temporary)."""
    return name.startswith("samples-") and name.endswith(".json")


def progress_listing(run: RunPaths) -> dict[Location, list[str]]:
    """The group folders under a run's ``_progress/`` (extract.batch_journal), each with the names of its files;
    entries another process removes meanwhile are left out."""
    grouped: dict[Location, list[str]] = {}
    for name in storage.names_under_tree(run.progress):
        folder, _, file = name.partition("/")
        if file and "/" not in file:
            grouped.setdefault(run.progress / folder, []).append(file)
    return grouped


@dataclass(frozen=True)
class Warehouse:
    """A warehouse folder: ``WAREHOUSE.json`` plus ``runs/model=.../benchmark=.../run=...``."""

    root: Location

    @property
    def marker(self) -> Location:
        return self.root / "WAREHOUSE.json"

    @property
    def runs_root(self) -> Location:
        return self.root / "runs"

    def run_paths(self, model: str, benchmark: str, run_id: str) -> RunPaths:
        return RunPaths(self.runs_root / f"model={slug(model)}" / f"benchmark={slug(benchmark)}" / f"run={run_id}")

    def run_folders(self, tagged: bool = True) -> list[RunPaths]:
        """Every run's folder; on an object store with the listing of its own objects, unless ``tagged`` is
        False (``parts.readable_run`` lists everything under the run in one listing)."""
        if storage.is_object_store(self.root):
            return self._stored_runs(tagged=tagged)
        return [RunPaths(folder) for folder in self._local_runs()]

    def find_run(self, run_id: str) -> RunPaths | None:
        if storage.is_object_store(self.root):
            return next((run for run in self._stored_runs(run_id) if run.root.name == f"run={run_id}"), None)
        # by name, never a glob: a run id is the user's text ("*" would match any run)
        return next((RunPaths(folder) for folder in self._local_runs() if folder.name == f"run={run_id}"), None)

    def _local_runs(self) -> list[Location]:
        """Every run folder of a local warehouse, level by level; a folder that cannot be listed raises
        ``WarehouseError`` naming it (``Path.glob`` skipped it: the warehouse, or a model's runs, looked empty)."""
        found = [self.runs_root]
        for prefix in ("model=", "benchmark=", "run="):
            found = [parent / name for parent in found for name in storage.names_in(parent, prefix) if storage.is_dir(parent / name)]
        return found

    def _stored_runs(self, run_id: str | None = None, tagged: bool = True) -> list[RunPaths]:
        """Runs on an object store, found level by level with delimited listings (never a listing of every
        object under ``runs/``: raw rows are thousands of objects a run); each run's own objects tagged."""
        models = storage.subfolders(self.runs_root, "model=")
        # one round trip per level: the listings of a level are issued together
        benchmarks = [folder for found in storage.concurrently([partial(storage.subfolders, model, "benchmark=") for model in models]) for folder in found]
        prefix = f"run={run_id}" if run_id else "run="
        folders = [folder for found in storage.concurrently([partial(storage.subfolders, benchmark, prefix) for benchmark in benchmarks]) for folder in found]
        tags = storage.concurrently([partial(storage.tagged_listing, folder) for folder in folders]) if tagged else [None] * len(folders)
        return sorted((RunPaths(folder, tagged) for folder, tagged in zip(folders, tags)), key=lambda run: str(run.root))


def open_warehouse(path: Location | str | None, create: bool = False) -> Warehouse:
    """Open (or, with ``create``, initialise) the warehouse at ``path`` (a folder or an object-store URL).

    Refuses a path that is a file, a non-empty folder that is not a warehouse, a path with ``*``, ``?`` or ``[``
    (``warehouse_location``), and a warehouse of a newer layout than this version of attnwh understands (or of a
    layout version that is no whole number from 1). A folder that cannot be read, or a path too long for the file
    system, is one line naming it. A store that cannot be reached, or that
    refuses the credentials, is one line naming it; so is, with ``create`` (a writer), a store that
    ignores conditional puts (``probe``: asked once per machine and store).
    """
    root = warehouse_location(path)
    try:
        return _open(Warehouse(root), create)
    except WarehouseError:
        raise
    except OSError as exc:
        if storage.is_object_store(root):
            raise WarehouseError(storage.describe_error(root, exc)) from exc
        # an unreadable folder, a name too long: the file system's reason, and the path it refused when not the root
        refused = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(root) else ""
        raise WarehouseError(f"cannot open warehouse {root}: {exc.strerror or first_line(exc)}{refused}") from exc
    except Exception as exc:  # noqa: BLE001  the store's client raises its own kinds (botocore, aiohttp)
        if not storage.is_object_store(root):
            raise
        raise WarehouseError(storage.describe_error(root, exc)) from exc


def _open(warehouse: Warehouse, create: bool) -> Warehouse:
    root = warehouse.root
    if storage.is_object_store(root):
        try:
            _check_marker(warehouse.marker)  # one request where the warehouse exists
            if create:  # a writer: the store must honour conditional puts (asked once per machine)
                probe.check_conditional_puts(root)
            return warehouse
        except FileNotFoundError:
            pass
    if not storage.is_object_store(root) and root.exists() and not root.is_dir():
        raise WarehouseError(f"warehouse path {root} is a file, not a folder")
    if warehouse.marker.is_file():
        _check_marker(warehouse.marker)
        return warehouse
    if warehouse.runs_root.is_dir():
        raise WarehouseError(
            f"{warehouse.marker} is missing but {warehouse.runs_root} is there: restore it as "
            f'{{"format": "{FORMAT_NAME}", "layout_version": {LAYOUT_VERSION}}} to open this warehouse'
        )
    if not create:
        raise WarehouseError(f"no attnwh warehouse at {root} (run `attnwh extract` first, or pass --warehouse)")
    if root.is_dir() and any(root.iterdir()):
        raise WarehouseError(f"{root} is a non-empty folder without WAREHOUSE.json; refusing to write into it")
    probe.check_conditional_puts(root)  # before anything is written there
    try:
        storage.make_folders(root)
        _write_marker(warehouse.marker)
    except OSError as exc:
        if storage.is_object_store(root):
            raise WarehouseError(storage.describe_error(root, exc)) from exc
        raise WarehouseError(f"cannot create a warehouse at {root}: {exc.strerror or exc}") from exc
    return warehouse


def _write_marker(marker: Location) -> None:
    payload = json.dumps({"format": FORMAT_NAME, "layout_version": LAYOUT_VERSION}, indent=2)
    if storage.is_object_store(marker):
        storage.put_exclusively(marker, (payload + "\n").encode())  # two processes may create one warehouse at once: the first wins
        return
    tmp = marker.with_name(f".{marker.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")  # two processes may create one warehouse at once
    tmp.write_text(payload + "\n")
    os.replace(tmp, marker)


def _check_marker(marker: Location) -> None:
    try:
        content = json.loads(storage.read_tagged(marker, None))
    except (OSError, ValueError) as exc:
        if isinstance(exc, OSError) and storage.is_object_store(marker):
            raise  # missing: no warehouse there yet; anything else: the store's own error, said in one line by open_warehouse
        raise WarehouseError(f"{marker} is not readable JSON ({first_line(exc)})") from exc
    if not isinstance(content, dict) or content.get("format") != FORMAT_NAME:
        raise WarehouseError(f"{marker} does not describe an attnwh warehouse")
    if (problem := layout_version_problem(content.get("layout_version"))) is not None:
        raise WarehouseError(f"{marker} {problem}")


def layout_version_problem(version: object) -> str | None:
    """Why this attnwh cannot read a file of layout ``version`` (``WAREHOUSE.json``, a run's spec), or None."""
    if not isinstance(version, int) or isinstance(version, bool):
        return f"has layout version {version!r}, which is not a whole number (this attnwh writes {LAYOUT_VERSION}); the file is damaged"
    if version < 1:
        return f"has layout version {version!r}; layout versions start at 1, so the file is damaged"
    if version > LAYOUT_VERSION:
        return f"has layout version {version!r}; this attnwh reads up to {LAYOUT_VERSION} (upgrade attnwh)"
    return None
