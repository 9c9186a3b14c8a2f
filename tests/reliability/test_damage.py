"""Damaged warehouses: every kind of file, damaged every way that happens, against every command.

What must hold (the README's damage table): no traceback and no internal error; ``verify`` names
the damaged file and exits non-zero; read commands refuse naming the file, or go on with a warning
naming the run they leave out; resuming a run whose manifest is damaged is refused naming it; no
committed byte changes; a new run in the same warehouse still works (except when WAREHOUSE.json
itself is damaged: then every command refuses, naming it).
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from attnwh.face.cli import INTERNAL_ERROR_EXIT
from tests.reliability.harness import EXTRACT, MASK, NEW_RUN, digests, run_cli, run_folder

# the files a warehouse holds, each found from the warehouse root
TARGETS: dict[str, Callable[[Path], Path]] = {
    "WAREHOUSE.json": lambda root: root / "WAREHOUSE.json",
    "RUN.json": lambda root: run_folder(root, "extract") / "RUN.json",
    "mask RUN.json": lambda root: run_folder(root, "mask") / "RUN.json",
    "plan.parquet": lambda root: run_folder(root, "extract") / "plan.parquet",
    "commit record": lambda root: run_folder(root, "extract") / "_commits" / "part-000000.json",
    "samples.parquet": lambda root: run_folder(root, "extract") / "parts" / "part-000000" / "samples.parquet",
    "head_metrics.parquet": lambda root: run_folder(root, "extract") / "parts" / "part-000001" / "head_metrics.parquet",
    "head_scores.parquet (rollup)": lambda root: run_folder(root, "extract") / "parts" / "part-000000" / "head_scores.parquet",
    "head_ranks.parquet (rollup)": lambda root: run_folder(root, "extract") / "parts" / "part-000001" / "head_ranks.parquet",
    "sweep_results.parquet": lambda root: run_folder(root, "mask") / "parts" / "part-000001" / "sweep_results.parquet",
    "rows.zarr metadata": lambda root: run_folder(root, "extract") / "parts" / "part-000000" / "rows.zarr" / "attention" / "zarr.json",
}


def _chunk(root: Path) -> Path:
    folder = run_folder(root, "extract") / "parts" / "part-000001" / "rows.zarr" / "attention" / "c"
    return next(path for path in sorted(folder.rglob("*")) if path.is_file())


TARGETS["rows.zarr chunk"] = _chunk


def _newer(path: Path) -> None:
    """The file as a newer attnwh would write it."""
    if path.suffix == ".parquet":
        table = pq.read_table(path)
        metadata = {**(table.schema.metadata or {}), b"attnwh.schema_version": b"99"}
        pq.write_table(table.replace_schema_metadata(metadata), path)
        return
    content = json.loads(path.read_text())
    if "layout_version" in content and "spec" not in content and "part_id" not in content:
        content["layout_version"] = 99
    elif "spec" in content:
        content["spec"]["layout_version"] = 99
    elif "schema_version" in content:
        content["schema_version"] = 99
    else:
        content["zarr_format"] = 99
    path.write_text(json.dumps(content))


def _wrong_shape(path: Path) -> None:
    """Valid content of the wrong shape: a JSON list for a JSON file, another table's Parquet for a Parquet file."""
    if path.suffix == ".parquet":
        pq.write_table(pa.table({"unrelated": pa.array([1, 2, 3])}), path)
    elif path.suffix == ".json":
        path.write_text(json.dumps([{"format": "attnwh"}, 1, "two"]))
    else:  # a chunk: valid bytes of another array
        path.write_bytes(bytes(8))


DAMAGES: dict[str, Callable[[Path], None]] = {
    "deleted": lambda path: path.unlink(),
    "truncated": lambda path: path.write_bytes(path.read_bytes()[: max(1, path.stat().st_size // 2)]),
    "emptied": lambda path: path.write_bytes(b""),
    "garbage": lambda path: path.write_bytes(random.Random(path.stat().st_size).randbytes(max(16, path.stat().st_size))),
    "wrong shape": _wrong_shape,
    "newer version": _newer,
}


CASES = [(target, damage) for target in TARGETS for damage in DAMAGES if not (damage == "newer version" and "chunk" in target)]


@pytest.mark.parametrize(("target", "damage"), CASES, ids=[f"{target}-{damage}" for target, damage in CASES])
def test_damage_gets_a_clear_outcome_from_every_command(pristine, tmp_path, capsys, target, damage):
    root = tmp_path / "wh"
    shutil.copytree(pristine, root)
    path = TARGETS[target](root)
    DAMAGES[damage](path)
    before = digests(root)
    extract_run = run_folder(pristine, "extract").name.removeprefix("run=")
    mask_run = run_folder(pristine, "mask").name.removeprefix("run=")
    damaged_run = {"RUN.json": extract_run, "mask RUN.json": mask_run, "sweep_results.parquet": mask_run}.get(target, extract_run)
    named = (path.name, damaged_run)  # an outcome names the damaged file or the run left out
    warehouse = ["--warehouse", str(root)]

    outcomes = {}
    for name, args in {
        "verify": ["verify"],
        "runs": ["runs"],
        "sql": ["sql", "select count(*) as n from samples"],
        "query": ["query", "head_attention"],
        "report": ["report", "--out", str(tmp_path / "report")],
        "extract (resume)": EXTRACT,
        "mask (resume)": MASK,
        "new run": NEW_RUN,
    }.items():
        code, out, err = run_cli(capsys, *args, *warehouse)
        outcomes[name] = (code, out + err)
        assert "Traceback" not in out + err and code != INTERNAL_ERROR_EXIT, (name, out + err)
        if code != 0:  # warnings about damaged runs may come first; then exactly one error line
            lines = [line for line in err.splitlines() if not line.startswith("attnwh: warning: ")]
            assert len(lines) == 1 and lines[0].startswith("attnwh: error: "), (name, err)

    code, text = outcomes["verify"]
    assert code != 0 and any(word in text for word in named), text
    if target == "WAREHOUSE.json":  # nothing can be trusted: every command refuses, naming the file
        for name, (code, text) in outcomes.items():
            assert code != 0 and "WAREHOUSE.json" in text, (name, text)
    else:
        sees_tables = "rows.zarr" not in target  # SQL reads no raw rows: those commands are unaffected
        for name in ("runs", "sql", "query", "report"):
            code, text = outcomes[name]
            if code != 0:
                assert path.name in text, (name, text)
            elif target == "plan.parquet":  # the tables are sound: kept, with a warning that the run cannot be resumed
                assert "attnwh: warning: run" in text and damaged_run in text and "cannot be resumed" in text, (name, text)
            elif sees_tables or target.endswith("RUN.json"):
                assert "attnwh: warning: run" in text and damaged_run in text and "left out" in text, (name, text)
        if target in ("RUN.json", "plan.parquet"):
            code, text = outcomes["extract (resume)"]
            assert code != 0 and path.name in text and "cannot resume" in text, text
        if target.startswith(("samples", "head_")):  # a part's table damaged: resuming says readers leave the run out
            code, text = outcomes["extract (resume)"]
            assert code == 0 and f"attnwh: warning: run {damaged_run} left out: " in text and path.name in text, text
        if target == "mask RUN.json":
            code, text = outcomes["mask (resume)"]
            assert code != 0 and path.name in text and "cannot resume" in text, text
        if target == "sweep_results.parquet":  # resumed, the sweep's own run is left out: an error, not an empty table (exit 0)
            code, text = outcomes["mask (resume)"]
            assert code != 0 and path.name in text and f"run {damaged_run} left out" in text, text
        assert outcomes["new run"][0] == 0, outcomes["new run"]
    after = digests(root)
    changed = [name for name, digest in before.items() if after.get(name) != digest and "_staging" not in name]
    assert changed == [], changed
