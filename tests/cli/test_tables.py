"""What ad-hoc SQL users see first: every table, view and mart a query may name is listed by ``show
tables``, ``information_schema.tables`` and ``duckdb_views()`` (with a description), while views are
still bound only when a query first names them; and ``attnwh status --format json`` gives a part's
writer as fields (issue 27, finding 7)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from attnwh.face.cli import app
from attnwh.queries.library import STAGING_ORDER, marts, open_session
from attnwh.warehouse.listing import leading_comment, one_line
from attnwh.warehouse.schema import TABLES

runner = CliRunner()
RAW = ["runs", *TABLES, "definitions_info", "rolled_up_runs", "head_metrics_not_rolled_up", "gen_metrics_not_rolled_up"]


def invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tables") / "wh"
    result = invoke("extract", "--warehouse", str(path), "--limit", "8", "--batch-size", "4", "--part-size", "4", "--no-rows")
    assert result.exit_code == 0, result.output
    return path


def queryable() -> list[str]:
    """Every name a query may use: raw tables, staging views and the marts without parameters."""
    return [*RAW, *STAGING_ORDER, *(name for name, mart in marts().items() if not mart.parameters)]


def sql_json(warehouse: Path, statement: str) -> list[dict]:
    result = invoke("sql", statement, "--warehouse", str(warehouse), "--format", "json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_show_tables_lists_every_name_a_query_may_use(warehouse):
    listed = {row["name"] for row in sql_json(warehouse, "show tables")}
    assert set(queryable()) <= listed
    assert {"head_metrics", "samples", "stg_head_metrics", "head_attention", "run_overview"} <= listed


def test_information_schema_and_duckdb_views_list_them_with_a_description(warehouse):
    tables = {row["table_name"]: row for row in sql_json(warehouse, "select table_name, table_type, table_comment as description from information_schema.tables")}
    views = {row["view_name"]: row["comment"] for row in sql_json(warehouse, "select view_name, comment from duckdb_views() where not internal")}
    assert set(queryable()) <= set(tables)
    assert set(queryable()) - {"definitions_info"} <= set(views)  # definitions_info is a table
    for name in queryable():
        comment = tables[name]["description"]
        assert comment and "\n" not in comment, name  # a one-line description of every name
    assert views["head_metrics"] == tables["head_metrics"]["description"]
    mart = marts()["head_attention"]  # the mart's own description: its sidecar's where the library passes it, else its SQL's comment
    assert tables["head_attention"]["description"] in (one_line(mart.description), one_line(leading_comment(mart.sql)))
    assert tables["head_attention"]["description"]
    assert "one row per" in tables["stg_samples"]["description"]


def test_listing_binds_nothing_and_a_listed_view_answers_when_named(warehouse):
    with open_session(warehouse) as session:
        pending = set(session._on_demand)
        assert {"head_metrics", "samples", "head_attention", "stg_head_metrics"} <= pending  # bound only when named
        # a session whose statements list nothing makes no placeholders (its open time does not grow)
        placeholders = "select count(*) as n from duckdb_views() where sql like '%attnwh_bound_when_first_named%'"
        assert session.query(placeholders).to_pylist() == [{"n": 0}]
        session.user_query("show tables")
        session.user_query("select * from information_schema.tables")
        session.user_query("select * from duckdb_views()")
        assert set(session._on_demand) == pending  # listing bound nothing
        assert session.user_query("select count(*) as n from samples").to_pylist() == [{"n": 8}]
        assert session.user_query("select count(*) as n from head_attention where query = 'gen1'").to_pylist() == [{"n": 32}]
        assert "samples" not in session._on_demand and "stg_head_summary" not in session._on_demand
        # the description stays once the view is bound; its columns are then the real ones
        comment = session.user_query("select comment from duckdb_views() where view_name = 'samples'").to_pylist()[0]["comment"]
        assert comment and "sample" in comment
        columns = session.user_query("select column_name from information_schema.columns where table_name = 'samples'").column("column_name").to_pylist()
        assert {"sample_key", "output_text", "correct"} <= set(columns)


def test_describe_and_unknown_names(warehouse):
    described = sql_json(warehouse, "describe head_attention")
    assert "mean_image_sum" in {row["column_name"] for row in described}
    result = invoke("sql", "select * from head_metric", "--warehouse", str(warehouse))
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1
    assert "head_metric" in result.output and "placeholder" not in result.output and "attnwh_" not in result.output


def test_status_json_gives_the_writer_as_fields(warehouse):
    import socket

    result = invoke("status", "--format", "json", "--warehouse", str(warehouse))
    assert result.exit_code == 0, result.output
    [status] = json.loads(result.output)
    for part in status["parts"]:
        assert part["host"] == socket.gethostname() and isinstance(part["pid"], int)
        assert (part["rank"], part["world_size"], part["worker"]) == (0, 1, None)
    table = invoke("status", "--warehouse", str(warehouse)).output
    assert re.search(r"rank 0/1 \(2\)", table)  # the table stays readable


def test_status_names_a_truncated_table(warehouse, tmp_path):
    """A committed table cut short (its size no longer its commit record's): `attnwh status` shows the run's problem
    as readers see it, where it showed the run as sound."""
    import shutil

    copy = tmp_path / "wh"
    shutil.copytree(warehouse, copy)
    [table] = sorted(copy.glob("runs/*/*/run=*/parts/part-000000/head_metrics.parquet"))
    size = table.stat().st_size
    table.write_bytes(table.read_bytes()[:500])
    result = invoke("status", "--format", "json", "--warehouse", str(copy))
    assert result.exit_code == 0, result.output
    [status] = json.loads(result.output)
    assert status["problem"].endswith(f"part-000000/head_metrics.parquet has 500 bytes, its commit record says {size}") and "kind" not in status
    shown = invoke("show", status["run_id"], "0", "--out", str(tmp_path / "x.png"), "--warehouse", str(copy))
    assert shown.exit_code != 0 and shown.output.strip().splitlines()[-1].startswith(f"attnwh: error: run {status['run_id']} is damaged: ")
    again = invoke("extract", "--warehouse", str(copy), "--limit", "8", "--batch-size", "4", "--part-size", "4", "--no-rows")
    assert again.exit_code == 0 and "2 of 2 part(s) were already committed" in again.output
    assert f"attnwh: warning: run {status['run_id']} left out: " in again.output and "has 500 bytes" in again.output


def test_a_dask_workers_fields():
    from attnwh.warehouse.status import writer_fields

    assert writer_fields({"host": "node-3", "pid": 4242, "worker": "tcp://10.0.0.3:40123"}, "node-3-4242-abcdef12") == {
        "host": "node-3",
        "pid": 4242,
        "rank": None,
        "world_size": None,
        "worker": "tcp://10.0.0.3:40123",
    }
    assert writer_fields(None, "node-4-77-abcdef12") == {"host": "node-4", "pid": 77, "rank": None, "world_size": None, "worker": None}


def test_sql_streams_its_rows_batch_by_batch(warehouse):
    """`attnwh sql` writes CSV and JSON batch by batch (a result larger than memory streams through) and a terminal
    table shows its first rows with the total counted; every row and value as the statement gives them, checked
    against Python's own numbers."""
    from attnwh.core.output import TABLE_ROWS
    from attnwh.queries.library import open_session

    n = 3 * 65_536 + 17  # more than two of the catalog's batches
    statement = f"select range as i, range * 0.5 as half, 'r' || range as name from range({n})"
    result = invoke("sql", statement, "--warehouse", str(warehouse), "--format", "csv")
    assert result.exit_code == 0
    lines = result.output.split("\n")
    assert lines[0] == "i,half,name" and lines[-1] == "" and len(lines) == n + 2
    assert all(line == f"{i},{i * 0.5!r},r{i}" for i, line in enumerate(lines[1:-1]))
    assert [row["i"] for row in json.loads(invoke("sql", statement, "--warehouse", str(warehouse), "--format", "json").output)] == list(range(n))
    table = invoke("sql", statement, "--warehouse", str(warehouse)).output.rstrip("\n").split("\n")
    assert table[-1] == f"({n} rows, {TABLE_ROWS} shown)" and len(table) == TABLE_ROWS + 3
    with open_session(warehouse) as session:
        schema, batches = session.user_batches(statement, rows=1000)
        sizes = [batch.num_rows for batch in batches]
    assert schema.names == ["i", "half", "name"] and sum(sizes) == n and max(sizes) <= 1000 and len(sizes) > 1
    empty = invoke("sql", "select 1 as a where false", "--warehouse", str(warehouse), "--format", "json")
    assert json.loads(empty.output) == []
    failed = invoke("sql", "select error('boom')", "--warehouse", str(warehouse), "--format", "csv")
    assert failed.exit_code != 0 and "attnwh: error:" in failed.output and "boom" in failed.output


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    value=st.sampled_from(["'infinity'::date", "'-infinity'::date", "'infinity'::timestamp", "'-5000-01-01'::date", "'294247-01-10'::timestamp", "'10000-01-01'::date"]),
    fmt=st.sampled_from(["table", "csv", "json"]),
)
def test_dates_python_cannot_hold_are_text_not_an_internal_error(warehouse, value, fmt):
    """The audit of helper-36: a read-only SELECT of a date past Python's (DuckDB's infinity, a year past 9999 or
    before 1) ended with an internal error in every format; now its column is text as Arrow writes it, and a
    date Python holds beside it in another statement stays as before."""
    result = invoke("sql", f"select {value} as d, 1 as i", "--warehouse", str(warehouse), "--format", fmt)
    assert result.exit_code == 0 and "internal error" not in result.output, result.output
    if fmt == "json":
        (row,) = json.loads(result.output)
        assert row["i"] == 1 and isinstance(row["d"], str)
    ordinary = invoke("sql", "select '2026-01-02'::date as d", "--warehouse", str(warehouse), "--format", fmt)
    assert "2026-01-02" in ordinary.output
