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
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

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


def _flip_in_place(path: Path) -> None:
    """Bytes of the first sample's chunk inverted, the file's size kept: only a checksum can tell (a shard holds its
    chunks in order from its start, its index at its end)."""
    content = bytearray(path.read_bytes())
    for at in range(16, 80):
        content[at] ^= 0xFF
    path.write_bytes(bytes(content))


ROWS_DAMAGES: dict[str, Callable[[Path], None]] = {"deleted": DAMAGES["deleted"], "truncated": DAMAGES["truncated"], "flipped in place": _flip_in_place}


@pytest.mark.parametrize("damage", ROWS_DAMAGES)
def test_damaged_rows_are_said_by_every_reader_of_rows(pristine, tmp_path, capsys, damage):
    """The readers of raw rows on a run whose first part's attention chunks are damaged: ``show`` and ``recompute``
    refuse in one line naming the part's rows and pointing to ``verify`` (before: deleted drew "image nan%" panels and
    recompute committed a derived run of NULLs; truncated and flipped were internal errors or silently other numbers),
    recompute commits no derived part, ``report`` lists the run among those without pictures, and the notebook's
    lazy rows raise ``IntegrityError`` when computed. The chunk of part 0 is the one the report draws."""
    from attnwh.core.errors import IntegrityError
    from attnwh.face.notebook import open as open_notebook

    root = tmp_path / "wh"
    shutil.copytree(pristine, root)
    run = run_folder(root, "extract")
    run_id = run.name.removeprefix("run=")
    chunks = run / "parts" / "part-000000" / "rows.zarr" / "attention" / "c"
    chunk = next(path for path in sorted(chunks.rglob("*")) if path.is_file())
    ROWS_DAMAGES[damage](chunk)
    before = digests(root)
    warehouse = ["--warehouse", str(root)]
    for name, args in {
        "show": ["show", run_id, "0", "--out", str(tmp_path / "show.png")],
        "recompute": ["recompute", run_id, "--statistic", "topk_mass", "--k", "3", "--name", "top3"],
    }.items():
        code, out, err = run_cli(capsys, *args, *warehouse)
        lines = [line for line in err.splitlines() if line.startswith("attnwh: ")]
        assert code == 1 and len(lines) == 1 and lines[0].startswith("attnwh: error: "), (name, damage, err)
        assert "part-000000/rows.zarr" in lines[0] and run_id in lines[0] and "attnwh verify" in lines[0], (name, lines[0])
        if damage != "flipped in place":  # the file itself is named
            assert str(chunk.relative_to(run)) in lines[0], lines[0]
    derived_commits = [path for path in root.glob("runs/*/*/run=*/_commits/part-*.json") if json.loads((path.parents[1] / "RUN.json").read_text())["kind"] == "derived"]
    assert derived_commits == [], "recompute committed a derived part from damaged rows"
    assert not (tmp_path / "show.png").exists()

    code, out, err = run_cli(capsys, "report", "--out", str(tmp_path / "report"), *warehouse)
    assert code == 0 and "Traceback" not in err and INTERNAL_ERROR_EXIT != code, err
    samples_page = "".join(path.read_text() for path in (tmp_path / "report").rglob("*.html") if "runs without pictures" in path.read_text())
    assert run_id in samples_page and "rows.zarr" in samples_page, "the report does not say why the run has no pictures"

    with open_notebook(root) as notebook, pytest.raises(IntegrityError, match="part-000000/rows.zarr"):
        notebook.rows(run_id).compute(scheduler="threads")
    after = digests(root)
    assert [name for name, digest in before.items() if after.get(name) != digest and "_staging" not in name] == []


# a field of RUN.json that readers put in the runs table, and values of another type than the field's (the run id:
# another run's, so that the folder and its manifest disagree)
MISTYPED_FIELDS = ("created", "device", "model_info", "model_info.architecture", "model_info.n_layers", "model_info.n_heads", "run_id")
WRONG_VALUES = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70), st.floats(allow_nan=False, allow_infinity=False), st.lists(st.integers(), max_size=2), st.text(max_size=8), st.booleans()
)


def _wrong_for(field: str, value) -> bool:
    """Whether ``value`` is wrong for ``field`` (a count must be an int from 0 to int32's largest; a text a str; model_info a dict)."""
    name = field.removeprefix("model_info.")
    if name in ("n_layers", "n_heads"):
        return not (isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**31)
    if name == "model_info":
        return not isinstance(value, dict)
    return not isinstance(value, str) or field == "run_id"


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(MISTYPED_FIELDS), value=WRONG_VALUES)
def test_a_mistyped_manifest_field_leaves_its_run_out_and_verify_names_it(pristine, tmp_path_factory, capsys, field, value):
    """One field of RUN.json of the wrong type (or another run's id) used to make every reader exit with an internal
    error while ``verify`` said ok: now readers leave the run out with a warning and ``verify`` names the file."""
    assume(_wrong_for(field, value))
    root = tmp_path_factory.mktemp("mistyped") / "wh"
    shutil.copytree(pristine, root)
    path = run_folder(root, "extract") / "RUN.json"
    manifest = json.loads(path.read_text())
    holder, name = (manifest["model_info"], field.split(".")[1]) if field.startswith("model_info.") else (manifest, field)
    holder[name] = value if field != "run_id" else f"other{value}"
    path.write_text(json.dumps(manifest))
    run_id = run_folder(pristine, "extract").name.removeprefix("run=")
    code, out, err = run_cli(capsys, "verify", "--warehouse", str(root))
    assert code != 0 and "RUN.json" in out + err and "Traceback" not in out + err, out + err
    for args in (["runs"], ["sql", "select count(*) as n from samples"], ["query", "head_attention"]):
        code, out, err = run_cli(capsys, *args, "--warehouse", str(root))
        assert code == 0 and f"attnwh: warning: run {run_id} left out" in err and "RUN.json" in err, (args, out + err)


def _record_edit(edit: str, table: str, rows: int) -> Callable[[dict], None]:
    """A commit record's ``tables`` and file entries edited as a hand or a buggy tool would: every result is still
    a well-formed record of the right types."""

    def apply(content: dict) -> None:
        entry = next(entry for entry in content["files"] if entry["path"] == f"{table}.parquet")
        if edit == "table uncounted":
            del content["tables"][table]
        elif edit == "table and its file's count dropped":
            del content["tables"][table]
            entry.pop("rows", None)
        elif edit == "both counts changed":
            content["tables"][table] = entry["rows"] = rows
        else:  # "one count changed"
            content["tables"][table] = rows

    return apply


RECORD_EDITS = ("table uncounted", "table and its file's count dropped", "both counts changed", "one count changed")


@settings(max_examples=16, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edit=st.sampled_from(RECORD_EDITS), table=st.sampled_from(("samples", "head_metrics")), rows=st.integers(min_value=0, max_value=2**40))
def test_a_commit_record_that_miscounts_its_tables_is_named_and_hides_no_rows(pristine, tmp_path_factory, capsys, edit, table, rows):
    """A record whose ``tables`` leaves out a table it lists the file of would hide that file's rows from every
    view while ``verify`` said ok; one whose counts are not the file's would pass ``verify``. Now the record is
    refused (readers leave the run out, naming it) or, where its counts agree with each other but not with the
    file, ``verify`` names the file, its rows and the record's count; no view loses rows without a word."""
    root = tmp_path_factory.mktemp("miscounted") / "wh"
    shutil.copytree(pristine, root)
    run = run_folder(root, "extract")
    record = run / "_commits" / "part-000000.json"
    content = json.loads(record.read_text())
    held = pq.read_metadata(run / "parts" / "part-000000" / f"{table}.parquet").num_rows
    assume(edit.endswith("dropped") or edit == "table uncounted" or rows != held)
    _record_edit(edit, table, rows)(content)
    record.write_text(json.dumps(content))
    warehouse = ["--warehouse", str(root)]
    run_id = run.name.removeprefix("run=")

    code, out, err = run_cli(capsys, "verify", *warehouse)
    assert code != 0 and "Traceback" not in out + err, out + err
    if edit == "both counts changed":
        assert f"{table}.parquet holds {held} rows, commit says {rows}" in out + err, out + err
    else:
        assert "part-000000.json" in out + err, out + err
    code, out, err = run_cli(capsys, "sql", f"select count(*) as n from {table}", "--format", "json", *warehouse)
    assert "Traceback" not in out + err and code != INTERNAL_ERROR_EXIT, out + err
    if edit == "both counts changed":  # the record agrees with itself: the file's rows are all there
        total = sum(pq.read_metadata(path).num_rows for path in run.glob(f"parts/*/{table}.parquet"))
        assert code == 0 and json.loads(out)[0]["n"] == total, out + err
    else:
        assert f"run {run_id} left out" in err and "part-000000.json" in err, err


@pytest.mark.parametrize("lost", ["the commit log", "one record"])
def test_resuming_over_published_parts_without_records_is_refused_naming_them(pristine, tmp_path, capsys, lost):
    """Published parts whose records are gone (the ``_commits`` folder deleted, or one record): resuming used to
    end with "could not write part-000000 ...: No such file or directory", or commit anew beside files no record
    vouches for. Now it is refused in one line naming the parts and the commit log; nothing changes."""
    root = tmp_path / "wh"
    shutil.copytree(pristine, root)
    run = run_folder(root, "extract")
    if lost == "the commit log":
        shutil.rmtree(run / "_commits")
    else:
        (run / "_commits" / "part-000001.json").unlink()
    before = digests(root)
    code, out, err = run_cli(capsys, *EXTRACT, "--warehouse", str(root))
    lines = [line for line in err.splitlines() if not line.startswith("attnwh: warning: ")]
    assert code not in (0, INTERNAL_ERROR_EXIT) and len(lines) == 1, out + err
    missing = "part-000000, part-000001" if lost == "the commit log" else "part-000001"
    assert f"cannot resume run {run.name.removeprefix('run=')}: " in lines[0] and f"({missing}) have no commit record in {run / '_commits'}" in lines[0], lines
    assert digests(root) == before
    code, out, err = run_cli(capsys, "verify", "--warehouse", str(root))
    assert code != 0 and "published without a commit record" in out + err, out + err
    # the way out the line names: those folders moved away, the same command computes them again
    for name in missing.split(", "):
        shutil.move(run / "parts" / name, tmp_path / name)
    code, out, err = run_cli(capsys, *EXTRACT, "--warehouse", str(root))
    assert code == 0, out + err
    code, out, err = run_cli(capsys, "verify", "--warehouse", str(root))
    assert code == 0, out + err


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(version=st.one_of(st.none(), st.booleans(), st.text(max_size=3), st.lists(st.integers(0, 3), max_size=2), st.floats(allow_nan=False, allow_infinity=False)))
def test_a_commit_record_whose_schema_version_is_no_number_is_called_damaged(pristine, tmp_path_factory, capsys, version):
    """``"schema_version": [2]`` was told as "has schema version [2]; this attnwh reads up to 2" (as if attnwh were too
    old); it is a damaged record, and ``verify`` says so."""
    root = tmp_path_factory.mktemp("version") / "wh"
    shutil.copytree(pristine, root)
    record = run_folder(root, "extract") / "_commits" / "part-000000.json"
    content = json.loads(record.read_text())
    content["schema_version"] = version
    record.write_text(json.dumps(content))
    code, out, err = run_cli(capsys, "verify", "--warehouse", str(root))
    assert code != 0 and f"{record} is damaged: its schema_version is {json.dumps(version)[:40]}, not a whole number" in out + err, out + err
