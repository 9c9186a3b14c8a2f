"""What a user names or a file says about a warehouse, generated (Hypothesis): run ids (``--run``), warehouse paths
and ``WAREHOUSE.json``'s layout version. Each is taken only where it works, else refused with one line
(``WarehouseError``), never an ``OSError`` or a message that contradicts itself."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attnwh.core.errors import WarehouseError
from attnwh.warehouse.layout import LAYOUT_VERSION, open_warehouse
from attnwh.warehouse.runs import MAX_RUN_ID_LENGTH, Plan, open_or_create_run, read_manifest

CASES = settings(max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck))
ODD_TEXT = st.characters(codec="utf-8", exclude_categories=("Cs",), exclude_characters="\x00")


@pytest.fixture(scope="module")
def scratch():
    folder = Path(tempfile.mkdtemp(prefix="attnwh-names-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _one_line(exc: BaseException) -> bool:
    return "\n" not in str(exc) and "\r" not in str(exc)


RUN_IDS = st.one_of(
    st.text(ODD_TEXT, max_size=40),
    # long ids of allowed characters, around the limit and past what a folder's name can hold (255 bytes)
    st.text(st.sampled_from("abcXYZ019-_.é"), min_size=MAX_RUN_ID_LENGTH - 8, max_size=300),
    st.sampled_from(["-", "-x", "--help", "-" * 200, "a" * MAX_RUN_ID_LENGTH, "a" * (MAX_RUN_ID_LENGTH + 1), "é" * MAX_RUN_ID_LENGTH]),
)


@CASES
@given(run_id=RUN_IDS)
def test_a_run_id_makes_its_folder_or_is_refused_in_one_line(scratch, run_id):
    """Before: no length limit (a 300-character id reached the file system: ``File name too long``, an internal
    error) and ids starting with '-' were taken. An id taken must make its run's folder."""
    warehouse = open_warehouse(scratch / "wh", create=True)
    try:
        run, _ = open_or_create_run(warehouse, kind="extract", model="m", benchmark="b", spec={"x": 1}, plan=Plan(["a"], 1), run_id=run_id, details={})
    except WarehouseError as exc:
        assert _one_line(exc), str(exc)
        return
    assert len(run_id) <= MAX_RUN_ID_LENGTH and not run_id.startswith(("-", "."))
    assert run.paths.root.name == f"run={run_id}" and run.paths.root.is_dir()
    assert warehouse.find_run(run_id) == run.paths
    shutil.rmtree(run.paths.root)


LAYOUT_VERSIONS = st.one_of(
    st.integers(-5, LAYOUT_VERSION + 5),
    st.integers(),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=False),
    st.text(max_size=8),
    st.sampled_from([str(LAYOUT_VERSION), float(LAYOUT_VERSION), [LAYOUT_VERSION], {"v": LAYOUT_VERSION}]),
)


@CASES
@given(version=LAYOUT_VERSIONS)
def test_a_layout_version_opens_only_when_it_is_one_this_attnwh_reads(scratch, version):
    """Before: 0, -3 and true opened silently, and "1" (a string) was refused as a newer layout than 1."""
    root = scratch / "versions"
    root.mkdir(exist_ok=True)
    (root / "WAREHOUSE.json").write_text(json.dumps({"format": "attnwh", "layout_version": version}))
    readable = type(version) is int and 1 <= version <= LAYOUT_VERSION
    try:
        open_warehouse(root)
    except WarehouseError as exc:
        message = str(exc)
        assert not readable, message
        assert _one_line(exc) and "WAREHOUSE.json" in message and repr(version)[:40] in message
        # "upgrade attnwh" only for a whole number above what this attnwh reads
        assert ("upgrade" in message) == (type(version) is int and version > LAYOUT_VERSION), message
        return
    assert readable, f"layout version {version!r} was taken"


@pytest.mark.parametrize("version", ["1", 0, True, -3])
def test_a_run_manifest_of_an_unreadable_layout_version_is_refused_by_its_value(tmp_path, version):
    warehouse = open_warehouse(tmp_path / "wh", create=True)
    run, _ = open_or_create_run(warehouse, kind="extract", model="m", benchmark="b", spec={"x": 1}, plan=Plan(["a"], 1), run_id=None, details={})
    manifest = json.loads(run.paths.manifest.read_text())
    manifest["spec"]["layout_version"] = version
    run.paths.manifest.write_text(json.dumps(manifest))
    with pytest.raises(WarehouseError, match="has layout version") as refused:
        read_manifest(run.paths)
    assert repr(version) in str(refused.value) and "upgrade" not in str(refused.value)


PATH_NAMES = st.text(ODD_TEXT.filter(lambda char: char != "/"), min_size=1, max_size=30).filter(lambda name: name not in (".", "..") and len(name.encode()) < 200)


@CASES
@given(name=PATH_NAMES, pattern=st.sampled_from("*?["), at=st.integers(0, 30))
def test_a_warehouse_path_with_a_pattern_character_is_refused_before_anything_is_created(scratch, name, pattern, at):
    """DuckDB takes a file path with * ? [ for a pattern: a warehouse at ``w*`` read ``wa``'s files (a link named so
    makes one anywhere). Refused where a warehouse is opened, before a folder is made."""
    folder = scratch / "patterns" / (name[:at] + pattern + name[at:])
    with pytest.raises(WarehouseError, match="contains") as refused:
        open_warehouse(folder, create=True)
    assert _one_line(refused.value)
    assert not folder.exists()


@CASES
@given(name=PATH_NAMES.filter(lambda name: not any(char in name for char in "*?[")))
def test_a_warehouse_path_without_one_opens(scratch, name):
    """The refusal above takes only those three characters: any other name (odd Unicode, spaces, quotes) opens."""
    folder = scratch / "plain" / name
    try:
        open_warehouse(folder, create=True)
        assert (folder / "WAREHOUSE.json").is_file()
        open_warehouse(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
