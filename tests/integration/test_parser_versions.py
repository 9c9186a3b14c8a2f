"""A run is never resumed by an attnwh whose parser of its answers has another version: its parts would count answers
by two rules (a parser's version is stored on every row but is not part of the run's fingerprint)."""

from __future__ import annotations

import dataclasses
import shutil

import pyarrow.parquet as pq

from attnwh.extract.benchmarks.parsers import PARSERS
from attnwh.face.cli import INTERNAL_ERROR_EXIT
from tests.reliability.harness import digests, run_cli, run_folder

EXTRACT = ["extract", "--limit", "4", "--part-size", "2", "--batch-size", "2", "--no-rows", "--no-lens", "--benchmark", "toy-shapes-choice"]
MASK = ["mask", "--limit", "2", "--k", "1", "--strategy", "top", "--stage", "late", "--seeds", "1", "--batch-size", "2", "--benchmark", "toy-shapes-choice"]


def _versions(folder, table: str) -> set[tuple[str, str]]:
    return {
        (row["parser"], row["parser_version"]) for path in folder.glob(f"parts/*/{table}.parquet") for row in pq.read_table(path, columns=["parser", "parser_version"]).to_pylist()
    }


def test_resuming_under_another_parser_version_is_refused(tmp_path, capsys, monkeypatch):
    root = tmp_path / "wh"
    warehouse = ["--warehouse", str(root)]
    for args in (EXTRACT, MASK):
        code, out, err = run_cli(capsys, *args, *warehouse)
        assert code == 0, out + err
    run, sweep = run_folder(root, "extract"), run_folder(root, "mask")
    assert _versions(run, "samples") == {("letter", PARSERS["letter"].version)}
    newer = dataclasses.replace(PARSERS["letter"], version=PARSERS["letter"].version + "1")
    monkeypatch.setitem(PARSERS, "letter", newer)
    # the sweep's, then the extraction's last part as if it were never committed (its record and part moved away): the
    # sweep first, since a sweep ranks heads by a complete extraction
    for args, folder, table in ((MASK, sweep, "sweep_results"), (EXTRACT, run, "samples")):
        last = sorted((folder / "_commits").glob("part-*.json"))[-1]
        shutil.move(last, tmp_path / f"{folder.name}-{last.name}")
        shutil.move(folder / "parts" / last.stem, tmp_path / f"{folder.name}-{last.stem}")
        before = digests(root)
        code, out, err = run_cli(capsys, *args, *warehouse)
        lines = err.strip().splitlines()
        assert code not in (0, INTERNAL_ERROR_EXIT) and len(lines) == 1, out + err
        old = [version for name, version in _versions(folder, table) if name == "letter"][0]
        assert lines[0] == (
            f"attnwh: error: cannot resume run {folder.name.removeprefix('run=')}: its answers were parsed by letter v{old}, this attnwh parses by "
            f"v{newer.version}; its parts would count answers by two rules. Start a new run with --run NEW_ID"
        ), lines
        assert digests(root) == before
    # a new run under the new version goes on
    code, out, err = run_cli(capsys, *EXTRACT, "--run", "newer", *warehouse)
    assert code == 0, out + err
