"""DuckDB's failures as one line: the statement's own (parser, binder, catalog, conversion, the user's error())
as DuckDB says them; those of reading a file's bytes (DuckDB names no file) with the hint that a committed file
may be damaged and ``attnwh verify`` finds it. The damaged files are real Parquet files with inverted bytes."""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from attnwh.core.errors import SqlError
from attnwh.warehouse.catalog import DAMAGE_HINT, sql_error, sql_errors


@pytest.mark.parametrize(
    "statement",
    ["selec 1", "select nope", "select * from nowhere", "select 'a'::int", "select error('mine')", "select 10::tinyint * 100::tinyint", "select regexp_matches('a', '(')"],
)
def test_the_statements_own_errors_are_said_as_duckdb_says_them(statement):
    with pytest.raises(duckdb.Error) as failed:
        duckdb.sql(statement).fetchall()
    said = str(sql_error(failed.value))
    assert DAMAGE_HINT not in said and "\n" not in said


def test_errors_of_reading_damaged_files_say_a_file_may_be_damaged(tmp_path):
    """Bytes inverted at offsets over a Parquet file (zstd, as parts are written): every one that fails DuckDB's read
    gets the hint: the thrift errors DuckDB raises as its bare ``Error`` ("TProtocolException: Exceeded size limit",
    before: said as is, naming nothing) and its "Invalid Input Error" of a file. A statement that does not fail is the
    other outcome (altered numbers: only ``verify``'s hashes find those)."""
    path = tmp_path / "table.parquet"
    pq.write_table(pa.table({"x": np.arange(3000, dtype=np.float64), "name": [f"row {i}" for i in range(3000)]}), path, compression="zstd")
    original = path.read_bytes()
    failures: list[str] = []
    for at in range(0, len(original), max(1, len(original) // 150)):
        damaged = bytearray(original)
        for offset in range(at, min(at + 8, len(original))):
            damaged[offset] ^= 0xFF
        path.write_bytes(bytes(damaged))
        try:
            with sql_errors():
                duckdb.sql(f"select * from read_parquet('{path}')").fetchall()
        except SqlError as exc:
            failures.append(str(exc))
    assert len(failures) > 10  # the damage is seen often enough to test what is said
    assert [said for said in failures if not said.endswith(DAMAGE_HINT) or "\n" in said] == []


def test_a_message_duckdbs_binding_cannot_decode_is_one_line_with_the_hint():
    """The binding's ``RuntimeError`` when a damaged file puts bytes that are not UTF-8 in DuckDB's message (seen with
    inverted bytes in a part's ``samples.parquet``; before: an internal error)."""
    with pytest.raises(SqlError, match="may be damaged"), sql_errors():
        raise RuntimeError("nanobind::str(): conversion error!")


def test_a_runtime_error_that_is_not_duckdbs_is_not_taken_for_damage():
    with pytest.raises(RuntimeError, match="a bug"), sql_errors():
        raise RuntimeError("a bug")


@pytest.mark.parametrize(
    ("statement", "damaged"), [("select case when i > 250000 then error('late') else i end as v from range(300000) t(i)", False), ("select * from read_parquet($path)", True)]
)
def test_errors_met_while_a_result_streams_are_one_line_too(tmp_path, statement, damaged):
    """After its first batch a result streams through Arrow, which raises DuckDB's error as an ``OSError`` (before:
    an internal error, ``attnwh sql`` printing a large result): the user's own error as DuckDB says it, a damaged
    file's with the hint. The damaged file's last row group is inverted in place (one thread: the others stream first)."""
    path = tmp_path / "table.parquet"
    pq.write_table(pa.table({"x": np.arange(400_000, dtype=np.float64)}), path, compression="zstd", row_group_size=100_000)
    if damaged:
        content = bytearray(path.read_bytes())
        last = pq.ParquetFile(path).metadata.row_group(3).column(0).data_page_offset
        for offset in range(last + 40, last + 104):
            content[offset] ^= 0xFF
        path.write_bytes(bytes(content))
    connection = duckdb.connect(config={"threads": 1})
    reader = connection.sql(statement, params={"path": str(path)} if damaged else None).fetch_record_batch(10_000)
    with pytest.raises(SqlError) as failed, sql_errors(streamed=True):
        for _ in reader:
            pass
    assert isinstance(failed.value.__cause__, OSError)
    assert str(failed.value).endswith(DAMAGE_HINT) == damaged, str(failed.value)
