"""``attnwh heads import``: a head-ranking file another tool wrote (``warehouse.head_files``), checked against
the shape of the model it is for, stored as a run of kind ``ranking`` that ``attnwh mask --ranking-run`` and
``attnwh prune --ranking-run`` can follow."""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from attnwh.core.errors import UsageError
from attnwh.extract.models import load_config, resolve_source, revision
from attnwh.extract.part_tables import write_parquet
from attnwh.extract.toy.default import model_label, model_location
from attnwh.warehouse import parts
from attnwh.warehouse.head_files import check_format, parse_heads
from attnwh.warehouse.layout import open_warehouse
from attnwh.warehouse.runs import Plan, environment_info, open_or_create_run
from attnwh.warehouse.schema import IMPORTED_RANKINGS


@dataclass
class ImportOptions:
    file: Path
    fmt: str
    model: str | None  # the model the ranking is for (its shape is checked against the file)
    name: str
    command: list[str] = field(default_factory=lambda: list(sys.argv))


@dataclass
class ImportResult:
    run_id: str
    new_run: bool
    n_heads: int
    shape: tuple[int, int, int]  # layers, query heads, key-value heads
    clipped: int = 0  # values of the file outside [0, 1], clipped as the tool that wrote it clips them (DuoAttention)


def import_heads(warehouse_path: Path | str | None, options: ImportOptions) -> ImportResult:
    """Store a ranking file as a run of kind ``ranking`` (fingerprinted by the file's hash, the model and the name)."""
    fmt = check_format(options.fmt)
    if not options.name or not options.name.replace("-", "").replace("_", "").isalnum():
        raise UsageError(f"--name {options.name!r} must be letters, digits, - and _")
    try:
        data = Path(options.file).read_bytes()
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {options.file}: {getattr(exc, 'strerror', None) or exc}") from exc
    label = model_label(options.model)
    source = resolve_source(model_location(options.model))
    config, model_spec = load_config(source)
    info = model_spec.info
    shape = (int(info["n_layers"]), int(info["n_heads"]), int(info.get("n_kv_heads") or info["n_heads"]))
    scores, clipped = parse_heads(text, fmt, str(options.file), shape, label)
    warehouse = open_warehouse(warehouse_path, create=True)
    spec = {"format": fmt, "file_sha256": hashlib.sha256(data).hexdigest(), "name": options.name, "model": label, "model_revision": revision(source, config)}
    run, new_run = open_or_create_run(
        warehouse,
        kind="ranking",
        model=label,
        benchmark=f"imported-{options.name}",
        spec=spec,
        plan=Plan([options.name], 1),
        run_id=None,
        details={"model_info": info, "source_file": str(options.file), "command": options.command, "environment": environment_info()},
    )
    table = pa.Table.from_pylist(
        [{"run_id": run.run_id, "layer": layer, "head": head, "score": value} for (layer, head), value in sorted(scores.items())], schema=IMPORTED_RANKINGS
    )

    def write(folder: Path) -> dict[str, int]:
        write_parquet(table, "imported_rankings", folder)
        return {"imported_rankings": table.num_rows}

    if 0 not in parts.committed_part_ids(run.paths):
        parts.commit_part(run.paths, 0, write)
    return ImportResult(run.run_id, new_run, len(scores), shape, clipped)
