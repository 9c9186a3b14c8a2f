"""Every path inside a warehouse is built here, and only here."""

from __future__ import annotations

import json
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

from attnwh.errors import WarehouseError

LAYOUT_VERSION = 1
FORMAT_NAME = "attnwh"
DEFAULT_WAREHOUSE = "attnwh-warehouse"
ENV_WAREHOUSE = "ATTNWH_WAREHOUSE"

_SLUG_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def slug(text: str) -> str:
    """A path-safe rendering of a model or benchmark name (``org/model`` -> ``org--model``)."""
    cleaned = _SLUG_UNSAFE.sub("-", text.replace("/", "--")).strip("-.")
    return cleaned[:120] or "unnamed"


ROWS_FOLDER = "rows.zarr"  # a part's raw attention rows (a Zarr group)


def part_name(part_id: int) -> str:
    return f"part-{part_id:06d}"


def table_file(part_folder: Path, table: str) -> Path:
    """A part's Parquet file of ``table`` (``samples``, ``head_metrics``, ...)."""
    return part_folder / f"{table}.parquet"


def rows_folder(part_folder: Path) -> Path:
    """A part's Zarr group of raw attention rows."""
    return part_folder / ROWS_FOLDER


_URL = re.compile(r"\A([A-Za-z][A-Za-z0-9+.-]*)://")


def warehouse_location(path: Path | str | None) -> Path:
    """The local folder a ``--warehouse`` value (or ``$ATTNWH_WAREHOUSE``, else the default) names.

    URLs are refused before anything is created: object storage is not supported yet, and a
    ``Path`` would quietly turn ``s3://bucket/wh`` into a local folder named ``s3:``.
    """
    text = str(path) if path is not None else os.environ.get(ENV_WAREHOUSE) or DEFAULT_WAREHOUSE
    match = _URL.match(text)
    if match:
        raise WarehouseError(f"warehouse {text}: {match.group(1)}:// URLs are not supported yet (no object storage); give a local folder")
    return Path(text)


@dataclass(frozen=True)
class RunPaths:
    """The folder of one run and the paths inside it."""

    root: Path

    @property
    def manifest(self) -> Path:
        return self.root / "RUN.json"

    @property
    def plan(self) -> Path:
        return self.root / "plan.parquet"

    @property
    def commits(self) -> Path:
        return self.root / "_commits"

    @property
    def staging(self) -> Path:
        return self.root / "_staging"

    @property
    def parts(self) -> Path:
        return self.root / "parts"

    def commit_record(self, part_id: int) -> Path:
        return self.commits / f"{part_name(part_id)}.json"

    def published_part(self, part_id: int) -> Path:
        return self.parts / part_name(part_id)

    def staging_attempt(self, part_id: int, attempt: str) -> Path:
        return self.staging / f"{part_name(part_id)}.{attempt}"

    @property
    def leases(self) -> Path:
        return self.root / "_leases"

    def lease(self, part_id: int, attempt: str) -> Path:
        """The lease of an attempt: renewed (its mtime) while the attempt's writer lives."""
        return self.leases / f"{part_name(part_id)}.{attempt}"


@dataclass(frozen=True)
class Warehouse:
    """A warehouse folder: ``WAREHOUSE.json`` plus ``runs/model=.../benchmark=.../run=...``."""

    root: Path

    @property
    def marker(self) -> Path:
        return self.root / "WAREHOUSE.json"

    @property
    def runs_root(self) -> Path:
        return self.root / "runs"

    def run_paths(self, model: str, benchmark: str, run_id: str) -> RunPaths:
        return RunPaths(
            self.runs_root / f"model={slug(model)}" / f"benchmark={slug(benchmark)}" / f"run={run_id}"
        )

    def run_folders(self) -> list[RunPaths]:
        if not self.runs_root.is_dir():
            return []
        return [RunPaths(p) for p in sorted(self.runs_root.glob("model=*/benchmark=*/run=*")) if p.is_dir()]

    def find_run(self, run_id: str) -> RunPaths | None:
        if not self.runs_root.is_dir():
            return None
        matches = [p for p in self.runs_root.glob(f"model=*/benchmark=*/run={run_id}") if p.is_dir()]
        return RunPaths(matches[0]) if matches else None


def open_warehouse(path: Path | str | None, create: bool = False) -> Warehouse:
    """Open (or, with ``create``, initialise) the warehouse at ``path``.

    Refuses a path that is a file, a non-empty folder that is not a warehouse, and a warehouse of a
    newer layout than this version of attnwh understands.
    """
    root = warehouse_location(path)
    warehouse = Warehouse(root)
    if root.exists() and not root.is_dir():
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
    try:
        root.mkdir(parents=True, exist_ok=True)
        _write_marker(warehouse.marker)
    except OSError as exc:
        raise WarehouseError(f"cannot create a warehouse at {root}: {exc.strerror or exc}") from exc
    return warehouse


def _write_marker(marker: Path) -> None:
    payload = json.dumps({"format": FORMAT_NAME, "layout_version": LAYOUT_VERSION}, indent=2)
    tmp = marker.with_name(f".{marker.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")  # two processes may create one warehouse at once
    tmp.write_text(payload + "\n")
    os.replace(tmp, marker)


def _check_marker(marker: Path) -> None:
    try:
        content = json.loads(marker.read_text())
    except (OSError, ValueError) as exc:
        raise WarehouseError(f"{marker} is not readable JSON ({str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__})") from exc
    if not isinstance(content, dict) or content.get("format") != FORMAT_NAME:
        raise WarehouseError(f"{marker} does not describe an attnwh warehouse")
    version = content.get("layout_version")
    if not isinstance(version, int) or version > LAYOUT_VERSION:
        raise WarehouseError(
            f"{marker} has layout version {version}; this attnwh reads up to "
            f"{LAYOUT_VERSION} (upgrade attnwh)"
        )
