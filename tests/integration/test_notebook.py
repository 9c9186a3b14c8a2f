"""The notebook API: the README's example executed as written on a fresh toy warehouse, and the
read-only guard and bound parameters through it."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import zarr

import attnwh
from attnwh.core.errors import SqlError, SqlRefused, UsageError
from attnwh.extract.mask_run import MaskOptions
from attnwh.extract.run import ExtractOptions, run_extract
from attnwh.face.workflows import mask_sweep

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_example() -> str:
    section = README.read_text(encoding="utf-8").split("## Notebook API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


@pytest.fixture(scope="module")
def toy_folder(tmp_path_factory):
    """A folder holding ./attnwh-warehouse with a toy extraction (rows) and a small mask sweep."""
    folder = tmp_path_factory.mktemp("notebook")
    warehouse = folder / "attnwh-warehouse"
    run_extract(warehouse, ExtractOptions(limit=12, part_size=6, device="cpu", command=["test"]))
    mask_sweep(warehouse, MaskOptions(limit=12, k=("0", "2"), seeds=1, device="cpu", command=["test"]))
    return folder


def test_the_readme_example_runs_as_written(toy_folder, monkeypatch):
    monkeypatch.chdir(toy_folder)
    monkeypatch.delenv("ATTNWH_WAREHOUSE", raising=False)
    namespace: dict = {}
    exec(compile(readme_example(), "README.md (Notebook API)", "exec"), namespace)
    assert len(namespace["runs"]) == 2 and list(namespace["per_layer"].layer) == [0, 1, 2, 3]
    assert len(namespace["top"]) == 32
    rows, first = namespace["rows"], namespace["first"]
    assert rows.dims == ("sample", "query", "layer", "head", "key") and rows.shape[:4] == (12, 2, 4, 8)
    assert list(rows.sample_key.values[:2]) == ["test-00000", "test-00001"]
    # the lazy array reads the same numbers as the part's Zarr group read directly
    (group,) = [zarr.open_group(path, mode="r") for path in sorted(toy_folder.glob("attnwh-warehouse/runs/*/*/run=*/parts/part-000000/rows.zarr"))]
    direct = np.asarray(group["attention"][0, list(group.attrs["queries"]).index("gen1")], dtype=np.float32)
    np.testing.assert_array_equal(np.asarray(first.values, dtype=np.float32), direct)
    assert (toy_folder / "masking-curves.svg").read_text().lstrip().startswith("<svg")


def test_reads_only_and_binds_parameters(toy_folder):
    with attnwh.open(toy_folder / "attnwh-warehouse") as wh:
        assert wh.sql("select $text as v", text="x'); drop table runs; --").df().v[0] == "x'); drop table runs; --"
        for statement in ("drop view runs", "copy runs to 'out.csv'", "select 1; select 2", "attach 'other.db'"):
            with pytest.raises((SqlRefused, SqlError)):
                wh.sql(statement)
        with pytest.raises((SqlRefused, SqlError)):
            wh.sql("select * from read_csv('/etc/passwd')").df()
        with pytest.raises(UsageError, match="parameter k of visual_heads must be at least 1"):
            wh.query("visual_heads", k=0)
        with pytest.raises(UsageError, match="unknown chart 'nope'; charts: "):
            wh.chart("nope")
        with pytest.raises(UsageError, match="no run nosuch"):
            wh.rows("nosuch")
        assert "masking_curves" in wh.charts() and wh.warnings == []
