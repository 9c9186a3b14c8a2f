"""What a session checks of every committed Parquet file before a view reads it: the table its footer says
it holds, its schema version, and the types of the columns it shares with the table's schema; and the
local cache of footers and compacted rollups (immutable content, by committed hashes) that spares an
object-store session from reading them again."""

from __future__ import annotations

import base64
import json

import pyarrow as pa
import pyarrow.parquet as pq

from attnwh.core.errors import WarehouseError, first_line
from attnwh.warehouse import storage
from attnwh.warehouse.schema import META_DEFINITIONS, META_TABLE, META_VERSION, SCHEMA_VERSION, unreadable_version
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
        if not (isinstance(values, list) and all(isinstance(value, str) for value in values) and isinstance(files, dict)
                and all(isinstance(metadata, dict) and all(isinstance(key, str) and type(index) is int and 0 <= index < len(values)
                                                           for key, index in metadata.items()) for metadata in files.values())):
            return None  # damaged (a JSON of another shape): read from the store again
        return {sha256: {key: values[index] for key, index in metadata.items()} for sha256, metadata in files.items()}
    except (TypeError, KeyError, ValueError, RecursionError):
        return None


def keep_footers(cache, key: str, metadata: dict[str, dict[str, str]]) -> None:
    """Keep files' footer metadata (sha256 -> key -> value), each distinct value once (files of a table share their schema)."""
    values: dict[str, int] = {}
    files = {sha256: {key: values.setdefault(value, len(values)) for key, value in found.items()} for sha256, found in metadata.items()}
    storage.keep_content(cache, key, json.dumps({"values": list(values), "files": files}).encode())
