"""What a session checks of every committed Parquet file before a view reads it: the table its footer says
it holds, its schema version, and the types of the columns it shares with the table's schema; and the
local cache of footers and compacted rollups (immutable content, by committed hashes) that spares an
object-store session from reading them again."""

from __future__ import annotations

import base64
import json

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from attnwh.core.errors import WarehouseError, first_line
from attnwh.warehouse import storage
from attnwh.warehouse.schema import META_DEFINITIONS, META_TABLE, META_VERSION, SCHEMA_VERSION, TABLES, unreadable_version
from attnwh.warehouse.storage import Location


def check_file_schema(path: Location, expected: pa.Schema) -> None:
    """A committed Parquet file may carry extra (newer, nullable) columns or lack newer ones, but a
    column it shares with the schema must have the schema's type."""
    try:
        source, filesystem = storage.arrow_source(path)
        found = pq.read_schema(source, filesystem=filesystem)
    except (OSError, pa.ArrowInvalid) as exc:
        raise WarehouseError(f"{path}: not a readable Parquet file ({first_line(exc)})") from exc
    version = (found.metadata or {}).get(META_VERSION)
    if unreadable_version(version):
        raise WarehouseError(f"{path}: schema version {version.decode(errors='replace')}; this attnwh reads up to {SCHEMA_VERSION}")
    problem = type_problem(str(path), found, expected)
    if problem is not None:
        raise WarehouseError(problem)


def type_problem(path: str, found: pa.Schema, expected: pa.Schema) -> str | None:
    for field in expected:
        index = found.get_field_index(field.name)
        if index >= 0 and not found.field(index).type.equals(field.type):
            return f"{path}: column {field.name} is {found.field(index).type}, expected {field.type}"
    return None


ARROW_SCHEMA_KEY = "ARROW:schema"  # where pyarrow keeps a file's Arrow schema (base64 IPC) in the Parquet footer
# what a session reads of every committed file's footer (``Catalog._table_file_problems``)
FOOTER_KEYS = {"table_key": META_TABLE.decode(), "version_key": META_VERSION.decode(), "definitions_key": META_DEFINITIONS.decode(), "arrow_key": ARROW_SCHEMA_KEY}


def arrow_schema(serialized: str) -> pa.Schema | None:
    """The Arrow schema pyarrow stored in a file's footer, or None if it cannot be read."""
    try:
        return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(serialized)))
    except (ValueError, pa.ArrowException):
        return None


def metadata_problem(path: str, table: str, metadata: dict[str, str]) -> str | None:
    """What is wrong with a committed file, from its attnwh metadata (the table it holds, its schema version)."""
    holds = metadata.get(META_TABLE.decode())
    if holds != table:
        return f"{path}: holds table {holds}, expected {table}"
    version = metadata.get(META_VERSION.decode())
    if unreadable_version(version):
        return f"{path}: schema version {version}; this attnwh reads up to {SCHEMA_VERSION}"
    return None


def read_compacted(cache, key: str, schema: pa.Schema) -> pa.Table | None:
    content = storage.cached_content(cache, key)
    if content is None:
        return None
    try:
        table = pq.read_table(pa.BufferReader(content))
        return table.select(schema.names).cast(schema)
    except (pa.ArrowException, KeyError, ValueError):
        return None  # damaged: added up again and kept anew


def keep_compacted(cache, key: str, table: pa.Table) -> None:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    storage.keep_content(cache, key, sink.getvalue().to_pybytes())


def read_footers(cache, name: str) -> dict[str, dict[str, str]] | None:
    """Footer metadata kept by ``keep_footers``: sha256 -> key -> value; None when absent or damaged."""
    content = storage.cached_content(cache, name)
    try:
        kept = json.loads(content) if content is not None else None
        values, files = kept["values"], kept["files"]
        if not (
            isinstance(values, list)
            and all(isinstance(value, str) for value in values)
            and isinstance(files, dict)
            and all(
                isinstance(metadata, dict) and all(isinstance(key, str) and type(index) is int and 0 <= index < len(values) for key, index in metadata.items())
                for metadata in files.values()
            )
        ):
            return None  # damaged (a JSON of another shape): read from the store again
        return {sha256: {key: values[index] for key, index in metadata.items()} for sha256, metadata in files.items()}
    except (TypeError, KeyError, ValueError, RecursionError):
        return None


def keep_footers(cache, key: str, metadata: dict[str, dict[str, str]]) -> None:
    """Keep files' footer metadata (sha256 -> key -> value), each distinct value once (files of a table share their schema)."""
    values: dict[str, int] = {}
    files = {sha256: {key: values.setdefault(value, len(values)) for key, value in found.items()} for sha256, found in metadata.items()}
    storage.keep_content(cache, key, json.dumps({"values": list(values), "files": files}).encode())


def file_problems(runs: list[dict[str, list[str]]], found: dict[str, dict[str, str]]) -> list[str | None]:
    """Per run (its committed files by table), the first problem of a file, or None, from every file's footer
    metadata (``found``: path -> key -> value). Each distinct Arrow schema is parsed once and its column types
    checked; a file without that metadata gets the full per-file check (``check_file_schema``), which names it."""
    schemas: dict[str, pa.Schema | None] = {}  # distinct serialised schemas, read once (files of one table share theirs)
    wrong_types: dict[tuple[str, str], bool] = {}  # (schema, table) -> whether its types are wrong, checked once

    def problem_of(path: str, table: str) -> str | None:
        metadata = found.get(path, {})
        serialized = metadata.get(ARROW_SCHEMA_KEY)
        if serialized is not None and serialized not in schemas:
            schemas[serialized] = arrow_schema(serialized)
        schema = schemas.get(serialized)
        if META_TABLE.decode() not in metadata or schema is None:
            try:
                check_file_schema(storage.location(path), TABLES[table])
            except WarehouseError as exc:
                return str(exc)
            return None
        if (serialized, table) not in wrong_types:
            wrong_types[(serialized, table)] = type_problem(path, schema, TABLES[table]) is not None
        return metadata_problem(path, table, metadata) or (type_problem(path, schema, TABLES[table]) if wrong_types[(serialized, table)] else None)

    return [next((problem for table, table_paths in run_files.items() for path in table_paths if (problem := problem_of(path, table))), None) for run_files in runs]


def files_of_definitions(connection: duckdb.DuckDBPyConnection, files: list[str], version: str) -> set[str]:
    """The files whose ``definitions`` column holds ``version`` in every row (files without rows count as such)."""
    if not files:
        return set()
    rows = connection.sql(
        "select f.file_name, f.num_rows, "
        "bool_and(m.stats_null_count = 0 and m.stats_min_value = $version and m.stats_max_value = $version) as current "
        "from parquet_file_metadata($files) as f "
        "left join (select * from parquet_metadata($files) where path_in_schema = 'definitions') as m using (file_name) "
        "group by f.file_name, f.num_rows",
        params={"files": files, "version": version},
    ).fetchall()
    return {name for name, n_rows, is_current in rows if n_rows == 0 or is_current}
