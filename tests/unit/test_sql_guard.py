"""User SQL is read-only and cannot leave the warehouse."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from attnwh.core.errors import SqlError, SqlRefused
from attnwh.queries.library import open_session
from attnwh.warehouse.layout import open_warehouse


@pytest.fixture
def session(tmp_path):
    open_warehouse(tmp_path / "wh", create=True)
    outside = tmp_path / "outside.parquet"
    pq.write_table(pa.table({"secret": [42]}), outside)
    (tmp_path / "outside.csv").write_text("secret\n42\n")
    with open_session(tmp_path / "wh") as opened:
        yield opened, tmp_path


REFUSED = [
    "COPY (SELECT 1) TO 'x.csv'",
    "COPY head_metrics TO '{wh}/dump.parquet'",
    "ATTACH '{wh}/other.db' AS other",
    "INSTALL httpfs",
    "LOAD httpfs",
    "SET threads = 1",
    "PRAGMA enable_profiling",
    "CREATE TABLE t AS SELECT 1",
    "CREATE VIEW v AS SELECT 1",
    "DROP VIEW head_metrics",
    "INSERT INTO samples SELECT * FROM samples",
    "SELECT 1; DROP VIEW head_metrics",
    "SELECT 1; /* hidden */ COPY (SELECT 1) TO 'x.csv'",
    "SELECT 1 -- fine\n; SET threads = 1",
    "EXPLAIN ANALYZE COPY (SELECT 1) TO 'x.csv'",
    "DETACH memory",
    "USE memory",
    "CALL pragma_version()",
    "",
]


@pytest.mark.parametrize("statement", REFUSED)
def test_statements_that_do_more_than_read_are_refused(session, statement):
    opened, tmp_path = session
    with pytest.raises(SqlRefused):
        opened.user_query(statement.format(wh=tmp_path / "wh"))
    assert not (tmp_path / "wh" / "dump.parquet").exists()
    assert opened.query("select count(*) as n from head_metrics").column("n").to_pylist() == [0]


@pytest.mark.parametrize(
    "statement",
    [
        "SELECT * FROM read_parquet('{tmp}/outside.parquet')",
        "SELECT * FROM read_csv('{tmp}/outside.csv')",
        "SELECT * FROM '{tmp}/outside.csv'",
        "SELECT * FROM read_text('/etc/hostname')",
    ],
)
def test_files_outside_the_warehouse_cannot_be_read(session, statement):
    opened, tmp_path = session
    with pytest.raises(SqlRefused, match="only files inside the warehouse can be read"):  # refused SQL (exit 2), as a write is
        opened.user_query(statement.format(tmp=tmp_path))


def test_configuration_is_locked_even_through_functions(session):
    opened, _ = session
    with pytest.raises((SqlError, SqlRefused)):
        opened.user_query("SELECT * FROM query('COPY (SELECT 1) TO ''x.csv''')")


@pytest.mark.parametrize(
    "statement", ["SELECT count(*) FROM head_metrics", "  -- a comment\nWITH a AS (SELECT 1 AS x) SELECT * FROM a", "EXPLAIN SELECT * FROM samples", "FROM runs", "SELECT 1;"]
)
def test_reads_run(session, statement):
    opened, _ = session
    assert isinstance(opened.user_query(statement), pa.Table)
