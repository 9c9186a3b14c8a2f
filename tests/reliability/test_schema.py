"""Schema evolution: a part with an extra nullable column is read; a changed type is refused clearly."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from attnwh.queries.library import open_session
from attnwh.warehouse import parts
from attnwh.warehouse.layout import open_warehouse
from attnwh.warehouse.runs import Plan, open_or_create_run
from attnwh.warehouse.schema import SAMPLES, with_metadata


def _warehouse_with(root, samples: pa.Table):
    warehouse = open_warehouse(root, create=True)
    run, _ = open_or_create_run(warehouse, kind="extract", model="m", benchmark="b", spec={}, plan=Plan(["a"], 1), run_id=None, details={})

    def write(folder):
        table = samples.append_column("run_id", pa.array([run.run_id])) if "run_id" not in samples.column_names else samples
        pq.write_table(table.replace_schema_metadata(with_metadata("samples", table.schema).metadata), folder / "samples.parquet")
        return {"samples": 1}

    parts.commit_part(run.paths, 0, write)
    return root


def test_extra_nullable_column_is_read(tmp_path):
    row = {"sample_idx": 0, "sample_key": "a", "status": "ok"}
    table = pa.Table.from_pylist([row], schema=SAMPLES.remove(SAMPLES.get_field_index("run_id"))).append_column("future_column", pa.array([None], pa.string()))
    root = _warehouse_with(tmp_path / "wh", table)
    with open_session(root) as session:
        rows = session.query("select sample_key, status, future_column from samples").to_pylist()
    assert rows == [{"sample_key": "a", "status": "ok", "future_column": None}]


def test_changed_type_leaves_the_run_out_naming_file_and_column(tmp_path):
    table = pa.table({"sample_idx": pa.array(["zero"]), "sample_key": ["a"], "status": ["ok"]})
    root = _warehouse_with(tmp_path / "wh", table)
    with open_session(root) as session:
        assert session.query("select count(*) as n from samples").to_pylist() == [{"n": 0}]
        assert session.query("select count(*) as n from runs").to_pylist() == [{"n": 0}]
        [message] = session.warnings
    assert "left out" in message and "samples.parquet" in message and "column sample_idx is string, expected int64" in message
