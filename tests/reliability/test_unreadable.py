"""What the file system refuses, and paths it cannot take: one line naming the path, never an internal error, and a
warehouse never looks emptier than it is.

Permission cases run the CLI in a subprocess without the capabilities that let root read anything
(``setpriv``, as CI runs as root too); they are skipped only where ``setpriv`` is missing. Each starts from a copy
of the reliability warehouse and ends with its files unchanged.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from attnwh.face.cli import INTERNAL_ERROR_EXIT
from tests.reliability.harness import EXTRACT, digests, run_cli, run_folder

SETPRIV = shutil.which("setpriv")
WITHOUT_OVERRIDE = [SETPRIV or "setpriv", "--inh-caps=-dac_override,-dac_read_search", "--bounding-set=-dac_override,-dac_read_search"]


def unprivileged(*args: str) -> tuple[int, str, str]:
    """``attnwh ARGS`` in a process that the file system's permissions apply to, even as root."""
    done = subprocess.run([*WITHOUT_OVERRIDE, sys.executable, "-m", "attnwh.face.cli", *args], capture_output=True, text=True, timeout=300)
    return done.returncode, done.stdout, done.stderr


def assert_clear(code: int, out: str, err: str, what) -> list[str]:
    """No traceback, no internal error; a failure is exactly one ``attnwh: error:`` line (warnings may come first, and a
    command's progress bar, which a subprocess's stderr shows). The error line, if any."""
    assert "Traceback" not in out + err and code != INTERNAL_ERROR_EXIT, (what, out + err)
    errors = [line for line in err.splitlines() if line.startswith("attnwh: ") and not line.startswith("attnwh: warning: ")]
    if code != 0:
        assert len(errors) == 1 and errors[0].startswith("attnwh: error: "), (what, err)
    return errors


@pytest.fixture
def warehouse(pristine, tmp_path):
    root = tmp_path / "wh"
    shutil.copytree(pristine, root)
    return root


def _extract(root: Path) -> Path:
    return run_folder(root, "extract")


# what is made unreadable (chmod 0), from the warehouse root
UNREADABLE = {
    "a part's head_metrics.parquet": lambda root: _extract(root) / "parts" / "part-000000" / "head_metrics.parquet",
    "a run's parts folder": lambda root: _extract(root) / "parts",
    "a run's commit log": lambda root: _extract(root) / "_commits",
    "a mask run's commit log": lambda root: run_folder(root, "mask") / "_commits",
    "a model's folder": lambda root: _extract(root).parents[1],
    "runs": lambda root: root / "runs",
    "the warehouse": lambda root: root,
}


@pytest.mark.skipif(SETPRIV is None, reason="setpriv (util-linux) is needed to drop root's override of permissions")
@pytest.mark.parametrize("target", UNREADABLE)
def test_an_unreadable_file_or_folder_is_one_line_naming_it(warehouse, target):
    """Before: verify's hashing (head_metrics), ``parts`` (runs, status, verify, sql, query) and the warehouse folder
    were internal errors (PermissionError); an unreadable ``runs`` or model folder made the warehouse look empty
    (``runs``: 0 rows, verify clean, exit 0); an unreadable commit log read as parts without records."""
    path = UNREADABLE[target](warehouse)
    before = digests(warehouse)
    os.chmod(path, 0)
    try:
        outcomes = {
            " ".join(args): unprivileged(*args, "--warehouse", str(warehouse))
            for args in (["runs"], ["status"], ["verify"], ["sql", "select count(*) as n from samples"], ["query", "head_attention"])
        }
    finally:
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    for command, (code, out, err) in outcomes.items():
        assert_clear(code, out, err, (target, command))
        if not (command == "status" and path.is_file()):  # status reads no table (it checks their sizes)
            # refused naming it, the run left out (or its unrecorded parts unknown) with a warning naming it, or listed by verify
            assert path.name in out + err, (target, command, out + err)
    code, out, err = outcomes["verify"]
    assert code == 1 and path.name in out + err, (target, out + err)
    if target.startswith(("a part's", "a run's", "a mask run's")):  # one run's problem: the other is checked all the same
        other = run_folder(warehouse, "extract" if target.startswith("a mask") else "mask").name.removeprefix("run=")
        assert f"{other}: ok (" in out, (target, out + err)
    if target in ("runs", "a model's folder", "the warehouse"):  # no run can be listed: every command says so, none shows fewer runs
        assert all(code == 1 and "cannot" in err for code, _, err in outcomes.values()), outcomes
    assert digests(warehouse) == before


@pytest.mark.skipif(SETPRIV is None, reason="setpriv (util-linux) is needed to drop root's override of permissions")
def test_extract_into_a_warehouse_whose_runs_cannot_be_read_is_one_line(warehouse):
    """Before: an internal error (PermissionError on a run's RUN.json)."""
    os.chmod(warehouse / "runs", 0)
    try:
        code, out, err = unprivileged(*EXTRACT, "--warehouse", str(warehouse))
    finally:
        os.chmod(warehouse / "runs", 0o755)
    (line,) = assert_clear(code, out, err, "extract")
    assert code == 1 and "runs" in line and "Permission denied" in line, line


@pytest.mark.skipif(SETPRIV is None, reason="setpriv (util-linux) is needed to drop root's override of permissions")
def test_unreadable_raw_rows_are_one_line_for_their_readers(warehouse, tmp_path):
    """Before: verify listed each of the folder's files as missing (``Path.rglob`` skipped the folder), and ``show``
    said the run was extracted with --no-rows."""
    run = _extract(warehouse)
    rows = run / "parts" / "part-000000" / "rows.zarr"
    os.chmod(rows, 0)
    try:
        run_id = run.name.removeprefix("run=")
        outcomes = {
            "show": unprivileged("show", run_id, "0", "--out", str(tmp_path / "show.png"), "--warehouse", str(warehouse)),
            "recompute": unprivileged("recompute", run_id, "--statistic", "topk_mass", "--k", "3", "--name", "top3", "--warehouse", str(warehouse)),
            "verify": unprivileged("verify", "--warehouse", str(warehouse)),
        }
    finally:
        os.chmod(rows, 0o755)
    for command, (code, out, err) in outcomes.items():
        assert_clear(code, out, err, command)
        assert code == 1 and "rows.zarr" in out + err and "Permission denied" in out + err and "missing" not in out + err, (command, out + err)


def test_a_warehouse_path_too_long_for_the_file_system_is_one_line(tmp_path, capsys):
    """A 300-character name (over the 255 a folder's name may have): before, ``OSError: File name too long`` reached
    the top as an internal error, for readers and for ``extract`` alike."""
    too_long = tmp_path / ("w" * 300)
    for args in (["runs"], ["verify"], ["sql", "select 1"], EXTRACT):
        code, out, err = run_cli(capsys, *args, "--warehouse", str(too_long))
        (line,) = assert_clear(code, out, err, args)
        assert code == 1 and "File name too long" in line, line
    assert not os.path.exists(too_long)


def test_a_warehouse_path_with_a_pattern_character_never_reads_another_warehouse(pristine, tmp_path, capsys):
    """DuckDB read ``w*``'s files as the pattern ``w*``, which matched ``wa``'s (and a link makes such a name
    anywhere). Refused in one line before anything is read, for every character DuckDB takes for a pattern."""
    shutil.copytree(pristine, tmp_path / "wa")
    for name in ("w*", "w?", "w[a]"):
        shutil.copytree(pristine, tmp_path / name)
        for args in (["sql", "select count(*) as n from samples"], ["runs"], ["verify"]):
            code, out, err = run_cli(capsys, *args, "--warehouse", str(tmp_path / name))
            (line,) = assert_clear(code, out, err, (name, args))
            assert code == 1 and "contains" in line and name in line, line


@pytest.mark.parametrize(("run_id", "said"), [("a" * 300, "at most 128"), ("-abc", "may not start with '-'"), ("é" * 128, "too long for a folder's name")])
def test_a_run_id_that_cannot_name_a_folder_is_one_line(warehouse, capsys, run_id, said):
    """Before: a 300-character id was an internal error (File name too long) and ``-abc`` was taken."""
    before = digests(warehouse)
    code, out, err = run_cli(capsys, *EXTRACT, "--run", run_id, "--warehouse", str(warehouse))
    (line,) = assert_clear(code, out, err, run_id)
    assert code == 1 and said in line, line
    assert digests(warehouse) == before


def test_a_table_damaged_in_place_is_named_or_said_to_be_damaged(warehouse, capsys):
    """Bytes of ``samples.parquet`` inverted in place (its size kept, so readers' size check passes) at offsets over
    its first half (its data pages): the query works (verify's hashes find it), the run is left out with a warning
    naming the file (a damaged footer), or the query fails in one line that names the file or says that a committed
    file may be damaged and to run ``attnwh verify``. Before: "TProtocolException: Exceeded size limit", nothing
    more."""
    path = _extract(warehouse) / "parts" / "part-000000" / "samples.parquet"
    original = path.read_bytes()
    failed = []
    for at in range(0, len(original) // 2, max(1, len(original) // 40)):
        damaged = bytearray(original)
        for offset in range(at, at + 64):
            damaged[offset] ^= 0xFF
        path.write_bytes(bytes(damaged))
        code, out, err = run_cli(capsys, "sql", "select * from samples", "--format", "csv", "--warehouse", str(warehouse))
        errors = assert_clear(code, out, err, at)
        if code != 0:
            failed.append(errors[0])
            assert path.name in errors[0] or errors[0].endswith("a committed file may be damaged; run `attnwh verify`"), errors[0]
    path.write_bytes(original)
    assert failed, "no offset made the query fail: the test no longer reaches DuckDB's errors of a damaged page"
