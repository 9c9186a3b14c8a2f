"""The tables of one extraction part: sample rows, head metrics, logit lens, raw rows and rollups, and
how a part writes them (Parquet with the schema version in its metadata, Zarr for raw rows).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from attnwh.extract.benchmarks import Sample
from attnwh.extract.benchmarks.parsers import PARSERS
from attnwh.extract.lens import LensResult
from attnwh.extract.stats import STAT_NAMES
from attnwh.warehouse import arrays
from attnwh.warehouse.definitions import rollups
from attnwh.warehouse.layout import table_file
from attnwh.warehouse.schema import HEAD_METRICS, HEAD_METRICS_SORT, LOGIT_LENS, LOGIT_LENS_SORT, SAMPLES, with_metadata


@dataclass
class PartData:
    """Everything one part writes: sample rows, head metrics and raw rows."""

    run_id: str
    queries: tuple[str, ...]
    samples: list[dict[str, Any]] = field(default_factory=list)
    metrics: list[pa.Table] = field(default_factory=list)
    lens: list[pa.Table] = field(default_factory=list)
    rows: list[tuple[int, list[np.ndarray]]] = field(default_factory=list)  # (sample_idx, per query [layer, head, key])
    errors: int = 0

    def write(self, folder: Path) -> dict[str, int]:
        samples = pa.Table.from_pylist(self.samples, schema=SAMPLES)
        metrics = pa.concat_tables(self.metrics) if self.metrics else HEAD_METRICS.empty_table()
        metrics = metrics.sort_by(HEAD_METRICS_SORT)
        write_parquet(samples, "samples", folder)
        write_parquet(metrics, "head_metrics", folder)
        scores, ranks = rollups(metrics)
        write_parquet(scores, "head_scores", folder)
        write_parquet(ranks, "head_ranks", folder)
        if self.lens:
            write_parquet(pa.concat_tables(self.lens).sort_by(LOGIT_LENS_SORT), "logit_lens", folder)
        if self.rows:
            width = max(row.shape[-1] for _, per_query in self.rows for row in per_query)
            n_layers, n_heads = self.rows[0][1][0].shape[:2]
            attention = np.full((len(self.rows), len(self.queries), n_layers, n_heads, width), np.nan, dtype=np.float16)
            for position, (_, per_query) in enumerate(self.rows):
                for query_index, row in enumerate(per_query):
                    attention[position, query_index, :, :, : row.shape[-1]] = row
            arrays.write_rows(folder, attention, np.array([idx for idx, _ in self.rows], dtype=np.int64), list(self.queries))
        counts = {"samples": samples.num_rows, "head_metrics": metrics.num_rows, "head_scores": scores.num_rows, "head_ranks": ranks.num_rows}
        if self.lens:
            counts["logit_lens"] = sum(table.num_rows for table in self.lens)
        return counts


def write_parquet(table: pa.Table, name: str, folder: Path) -> None:
    """A part's table ``name``, with the schema version in its metadata."""
    table = table.replace_schema_metadata(with_metadata(name, table.schema).metadata)
    pq.write_table(table, table_file(folder, name), compression="zstd")


def metrics_table(run_id: str, sample_idx: int, n_image: int, statistics: dict[str, np.ndarray]) -> pa.Table:
    """Head metrics of one sample from per-query [layer, head, stat] arrays."""
    columns: dict[str, list[np.ndarray]] = {name: [] for name in ("query", "layer", "head", *STAT_NAMES)}
    for name, values in statistics.items():
        n_layers, n_heads, _ = values.shape
        layer, head = np.meshgrid(np.arange(n_layers), np.arange(n_heads), indexing="ij")
        columns["query"].append(np.full(n_layers * n_heads, name, dtype=object))
        columns["layer"].append(layer.ravel())
        columns["head"].append(head.ravel())
        for index, stat in enumerate(STAT_NAMES):
            columns[stat].append(values[:, :, index].ravel())
    data = {key: np.concatenate(parts_) for key, parts_ in columns.items()}
    n = len(data["layer"])
    argmax = data["image_argmax"].astype(np.int32)
    table = {
        "run_id": pa.array([run_id] * n, pa.string()),
        "sample_idx": pa.array(np.full(n, sample_idx, dtype=np.int64)),
        "query": pa.array(data["query"], pa.string()),
        "layer": pa.array(data["layer"].astype(np.int16)),
        "head": pa.array(data["head"].astype(np.int16)),
        "n_image": pa.array(np.full(n, n_image, dtype=np.int32)),
        "image_argmax": pa.array(argmax, mask=argmax < 0),
    }
    for stat in STAT_NAMES:
        if stat != "image_argmax":
            table[stat] = pa.array(data[stat].astype(np.float32), from_pandas=True)  # NaN (no region) -> null
    return pa.table(table).select(HEAD_METRICS.names).cast(HEAD_METRICS)


def lens_table(run_id: str, sample_idx: int, position: int, lens: dict[str, LensResult], tokenizer) -> pa.Table:
    """Logit-lens rows of one sample: one per (query, layer 0..L)."""
    columns: dict[str, list] = {name: [] for name in LOGIT_LENS.names}
    for query, result in lens.items():
        n = result.target_rank.shape[0]
        target = int(result.target_token[position])
        top = result.top_token[:, position].tolist()
        columns["run_id"] += [run_id] * n
        columns["sample_idx"] += [sample_idx] * n
        columns["query"] += [query] * n
        columns["layer"] += list(range(n))
        columns["target_token"] += [target] * n
        columns["target_text"] += [tokenizer.convert_ids_to_tokens(target)] * n
        columns["target_rank"] += result.target_rank[:, position].tolist()
        columns["target_prob"] += result.target_prob[:, position].tolist()
        columns["top_token"] += top
        columns["top_text"] += tokenizer.convert_ids_to_tokens(top)
        columns["top_prob"] += result.top_prob[:, position].tolist()
    return pa.table(columns, schema=LOGIT_LENS)


def error_row(run_id: str, sample_idx: int, sample: Sample, error: str) -> dict[str, Any]:
    return {
        **sample_fields(run_id, sample_idx, sample),
        "status": "error",
        "error": error[:1000],
        "parser": sample.parser,
        "parser_version": PARSERS[sample.parser].version if sample.parser in PARSERS else None,
    }


def sample_fields(run_id: str, sample_idx: int, sample: Sample) -> dict[str, Any]:
    """The columns of a samples row that come from the benchmark's sample itself."""
    return {
        "run_id": run_id,
        "sample_idx": sample_idx,
        "sample_key": sample.key,
        "question": sample.question,
        "hint": sample.hint,
        "choices": list(sample.choices),
        "gold": sample.gold,
        "category": sample.category,
        "group_key": sample.group,
    }


def image_sha256(image) -> str:
    """Hash of the decoded pixels (mode, size, bytes): equal images hash equal whatever their file format."""
    digest = hashlib.sha256(f"{image.mode}:{image.size[0]}x{image.size[1]}:".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()
