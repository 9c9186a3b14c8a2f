"""Head rankings that travel: ``attnwh heads export`` writes a run's head scores in the formats other
tools read, and ``attnwh heads import`` stores such a file as a ranking run that ``attnwh mask
--ranking-run`` can mask by.

Formats:

- ``retrieval-json``: the JSON of Retrieval_Head (Wu et al., 2024) and SparseMM (ICCV 2025), one key
  ``"layer-head"`` per query head with the head's score in each sample: ``{"0-0": [0.1, 0.3], ...}``.
  Exported: the chosen head score per sample (samples without it left out). Imported: the mean of
  each head's list.
- ``duo-tsv``: DuoAttention's ``full_attention_heads.tsv``, which kvpress's ``DuoAttentionPress``
  reads: one line per layer, one tab-separated score in [0, 1] per key-value head. Exported: each
  key-value head's score is the mean over its query heads (a KV head's cache is shared by its group)
  of their mean scores, min-max scaled over the model to [0, 1] (the order is what matters). Imported:
  every query head takes its key-value head's score.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from attnwh.errors import UsageError
from attnwh.queries.library import run_mart
from attnwh.warehouse import parts
from attnwh.warehouse.catalog import Catalog
from attnwh.warehouse.layout import open_warehouse
from attnwh.warehouse.runs import Plan, environment_info, open_or_create_run
from attnwh.warehouse.schema import IMPORTED_RANKINGS

FORMATS = ("retrieval-json", "duo-tsv")


def _check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise UsageError(f"--format takes {' or '.join(FORMATS)}; got {fmt!r}")
    return fmt


# -- export --------------------------------------------------------------------------------------


def export_heads(session: Catalog, run_id: str, fmt: str, score: str = "concentration_x_sum", query: str = "gen1") -> str:
    """The run's head scores as the text of a ``retrieval-json`` or ``duo-tsv`` file."""
    _check_format(fmt)
    rows = run_mart(session, "head_sample_scores", {"run_id": run_id, "score": score, "query": query}).to_pylist()
    if not rows:
        raise UsageError(f"run {run_id} has no head metrics for query {query} (is it an extraction run?)")
    if fmt == "retrieval-json":
        return json.dumps({f"{row['layer']}-{row['head']}": [float(value) for value in row["scores"] or []] for row in rows}) + "\n"
    n_layers, n_heads, n_kv_heads = rows[0]["n_layers"], rows[0]["n_heads"], rows[0]["n_kv_heads"] or rows[0]["n_heads"]
    group = n_heads // n_kv_heads
    means: dict[tuple[int, int], list[float]] = {}
    for row in rows:
        if row["mean_score"] is not None:
            means.setdefault((row["layer"], row["head"] // group), []).append(row["mean_score"])
    kv = {key: sum(values) / len(values) for key, values in means.items()}
    low, high = (min(kv.values()), max(kv.values())) if kv else (0.0, 0.0)
    scale = (high - low) or 1.0
    lines = ["\t".join(f"{(kv[(layer, h)] - low) / scale:.6f}" if (layer, h) in kv else "0" for h in range(n_kv_heads)) for layer in range(n_layers)]
    return "\n".join(lines) + "\n"


# -- import --------------------------------------------------------------------------------------


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


def import_heads(warehouse_path: Path | str | None, options: ImportOptions) -> ImportResult:
    """Store a ranking file as a run of kind ``ranking`` (fingerprinted by the file's hash, the model and the name)."""
    from attnwh.extract.models import load_config, model_info, resolve_source, revision
    from attnwh.extract.part_tables import write_parquet
    from attnwh.extract.toy.default import DEFAULT_MODEL, model_location

    fmt = _check_format(options.fmt)
    if not options.name or not options.name.replace("-", "").replace("_", "").isalnum():
        raise UsageError(f"--name {options.name!r} must be letters, digits, - and _")
    try:
        data = Path(options.file).read_bytes()
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {options.file}: {getattr(exc, 'strerror', None) or exc}") from exc
    label = options.model or DEFAULT_MODEL
    source = resolve_source(model_location(options.model))
    config, adapter = load_config(source)
    info = model_info(config, adapter)
    shape = (int(info["n_layers"]), int(info["n_heads"]), int(info.get("n_kv_heads") or info["n_heads"]))
    scores = (parse_retrieval_json if fmt == "retrieval-json" else parse_duo_tsv)(text, str(options.file), shape, label)
    warehouse = open_warehouse(warehouse_path, create=True)
    spec = {"format": fmt, "file_sha256": hashlib.sha256(data).hexdigest(), "name": options.name, "model": label,
            "model_revision": revision(source, config)}
    run, new_run = open_or_create_run(
        warehouse, kind="ranking", model=label, benchmark=f"imported-{options.name}", spec=spec, plan=Plan([options.name], 1), run_id=None,
        details={"model_info": info, "source_file": str(options.file), "command": options.command, "environment": environment_info()},
    )
    table = pa.Table.from_pylist(
        [{"run_id": run.run_id, "layer": layer, "head": head, "score": value} for (layer, head), value in sorted(scores.items())],
        schema=IMPORTED_RANKINGS,
    )

    def write(folder: Path) -> dict[str, int]:
        write_parquet(table, "imported_rankings", folder)
        return {"imported_rankings": table.num_rows}

    if 0 not in parts.committed_part_ids(run.paths):
        parts.commit_part(run.paths, 0, write)
    return ImportResult(run.run_id, new_run, len(scores), shape)


def _shape_error(where: str, found: str, shape: tuple[int, int, int], label: str) -> UsageError:
    layers, heads, kv_heads = shape
    return UsageError(f"{where} holds {found}, but {label} has {layers} layers × {heads} heads ({kv_heads} key-value heads)")


def parse_retrieval_json(text: str, where: str, shape: tuple[int, int, int], label: str) -> dict[tuple[int, int], float]:
    """``{"layer-head": [scores]}`` -> the mean score of every query head; every head of the model must be there."""
    try:
        content = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{where}: not JSON ({exc.msg} at line {exc.lineno})") from exc
    if not isinstance(content, dict):
        raise UsageError(f'{where}: expected an object of "layer-head": [scores, ...]')
    scores: dict[tuple[int, int], float] = {}
    for key, values in content.items():
        layer, _, head = key.partition("-")
        if not (layer.isdigit() and head.isdigit()):
            raise UsageError(f'{where}: key {key[:40]!r} is not "layer-head"')
        if not isinstance(values, list) or not values or not all(
            isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) for value in values
        ):
            raise UsageError(f"{where}: head {key} needs a non-empty list of finite numbers")
        scores[(int(layer), int(head))] = sum(values) / len(values)
    layers, heads, _ = shape
    expected = {(layer, head) for layer in range(layers) for head in range(heads)}
    if set(scores) != expected:
        n_layers = max((layer for layer, _ in scores), default=-1) + 1
        n_heads = max((head for _, head in scores), default=-1) + 1
        raise _shape_error(where, f"{len(scores)} heads (layers 0..{n_layers - 1}, heads 0..{n_heads - 1})", shape, label)
    return scores


def parse_duo_tsv(text: str, where: str, shape: tuple[int, int, int], label: str) -> dict[tuple[int, int], float]:
    """One line per layer of key-value head scores in [0, 1] -> the score of every query head (its KV head's)."""
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            values = [float(cell) for cell in line.strip().split("\t")]
        except ValueError as exc:
            raise UsageError(f"{where}:{number}: not tab-separated numbers") from exc
        if not all(math.isfinite(value) and 0 <= value <= 1 for value in values):
            raise UsageError(f"{where}:{number}: scores must be in [0, 1]")
        rows.append(values)
    layers, heads, kv_heads = shape
    widths = {len(row) for row in rows}
    if len(rows) != layers or widths != {kv_heads}:
        found = f"{len(rows)} layers × {'/'.join(map(str, sorted(widths))) or 0} key-value heads"
        raise _shape_error(where, found, shape, label)
    group = heads // kv_heads
    return {(layer, head): rows[layer][head // group] for layer in range(layers) for head in range(heads)}
