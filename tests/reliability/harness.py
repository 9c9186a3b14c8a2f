"""Helpers of the reliability tests: the console entry point in-process, run folders, warehouse digests."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from attnwh.face.cli import main

EXTRACT = ["extract", "--limit", "8", "--part-size", "4", "--batch-size", "4"]
MASK = ["mask", "--limit", "8", "--k", "0,1", "--seeds", "1", "--batch-size", "4"]
NEW_RUN = ["extract", "--limit", "2", "--part-size", "2", "--no-rows", "--no-lens", "--benchmark", "toy-shapes-yesno"]


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    """``attnwh ARGS`` in this process, through the console entry point: (exit code, stdout, stderr)."""
    try:
        main(list(args))
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_folder(root: Path, kind: str) -> Path:
    for manifest in root.glob("runs/*/*/run=*/RUN.json"):
        if json.loads(manifest.read_text())["kind"] == kind:
            return manifest.parent
    raise AssertionError(f"no {kind} run")


def digests(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root``, by relative path."""
    return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(root.rglob("*")) if path.is_file()}


def write_part(value: int, during=None):
    """A part's ``write``: a two-row ``samples.parquet`` of ``value``; ``during(folder)`` runs after it is written."""

    def write(folder: Path) -> dict[str, int]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"v": [value, value + 1]}), folder / "samples.parquet")
        if during is not None:
            during(folder)
        return {"samples": 2}

    return write
