"""Raw attention rows: one immutable Zarr group per part.

``rows.zarr/attention`` is float16 with dimensions (sample, query, layer, head, key): the row of
each captured query over the sample's keys without padding, NaN past the row's length; one chunk a
sample, all of a part's chunks in one shard (one object). Parts written before shards read alike.
``rows.zarr/sample_idx`` maps the first dimension to the plan.

``rows.zarr/gen_attention`` (runs extracted with ``--queries gen --gen-rows``) is float16 with dimensions
(sample, step, layer, head, key): the row of every generated step (step ``t`` sees the sample's keys and ``t``
generated ones), NaN past a row's end and for steps the answer did not take; one chunk and one shard a sample
(a sample's steps are megabytes, a part's gigabytes at a 7B model's shape). ``rows.zarr/gen_sample_idx`` maps
its first dimension to the plan.
"""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np
import zarr

from attnwh.core.errors import IntegrityError, WarehouseError, first_line
from attnwh.warehouse import parts, storage
from attnwh.warehouse.layout import ROWS_FOLDER, RunPaths, rows_folder

DIMENSIONS = ("sample", "query", "layer", "head", "key")
GEN_DIMENSIONS = ("sample", "step", "layer", "head", "key")


def write_rows(folder: Path, attention: np.ndarray, sample_idx: np.ndarray, queries: list[str]) -> None:
    """Write ``attention`` [sample, query, layer, head, key] (float16, NaN-padded) into ``folder/rows.zarr``."""
    if attention.ndim != 5 or attention.shape[0] != len(sample_idx):
        raise ValueError(f"attention rows must be [sample, query, layer, head, key], got {attention.shape}")
    group = zarr.open_group(rows_folder(folder), mode="a")
    group.attrs.update({"queries": list(queries), "dimension_names": list(DIMENSIONS)})
    rows = group.create_array(
        "attention",
        shape=attention.shape,
        dtype="float16",
        chunks=(1, *attention.shape[1:]),  # a sample's rows are read together
        # one object holds the part's chunks (Zarr sharding): an object-store warehouse lists a few objects a
        # part, not one per sample (30,000 a run at the study's scale, listed by every reading session)
        shards=attention.shape,
        fill_value=np.nan,
        dimension_names=DIMENSIONS,
    )
    rows[...] = attention.astype(np.float16, copy=False)
    index = group.create_array("sample_idx", shape=sample_idx.shape, dtype="int64", dimension_names=("sample",))
    index[...] = sample_idx


def write_gen_rows(folder: Path, rows: list[tuple[int, list[np.ndarray]]]) -> None:
    """Write the rows of every generated step, per sample (sample_idx, per step [layer, head, key]), into
    ``folder/rows.zarr/gen_attention`` [sample, step, layer, head, key] (float16, NaN-padded)."""
    n_steps = max(len(steps) for _, steps in rows)
    width = max(step.shape[-1] for _, steps in rows for step in steps)
    n_layers, n_heads = rows[0][1][0].shape[:2]
    group = zarr.open_group(rows_folder(folder), mode="a")
    array = group.create_array(
        "gen_attention",
        shape=(len(rows), n_steps, n_layers, n_heads, width),
        dtype="float16",
        chunks=(1, n_steps, n_layers, n_heads, width),
        shards=(1, n_steps, n_layers, n_heads, width),
        fill_value=np.nan,
        dimension_names=GEN_DIMENSIONS,
    )
    for position, (_, steps) in enumerate(rows):
        sample = np.full((n_steps, n_layers, n_heads, width), np.nan, dtype=np.float16)
        for step, row in enumerate(steps):
            sample[step, :, :, : row.shape[-1]] = row
        array[position] = sample
    index = group.create_array("gen_sample_idx", shape=(len(rows),), dtype="int64", dimension_names=("sample",))
    index[...] = np.array([sample_idx for sample_idx, _ in rows], dtype=np.int64)


def has_rows(record: parts.CommitRecord, name: str = "attention") -> bool:
    """Whether a committed part holds raw rows (runs extracted with ``--no-rows`` have none; ``name``
    ``gen_attention``: the rows of every generated step, ``--gen-rows``)."""
    return any(entry["path"].startswith(f"{ROWS_FOLDER}/{name}/") for entry in record.files)


def _damaged(run: RunPaths, location, exc: BaseException) -> IntegrityError:
    return IntegrityError(f"run {run.root.name}: the raw rows in {location} are unreadable (a damaged zarr.json: {first_line(exc, 200)})")


def open_gen_rows(run: RunPaths) -> tuple[da.Array, np.ndarray]:
    """All committed rows of every generated step of a run as one lazy Dask array [sample, step, layer, head, key],
    with its sample_idx; parts with fewer steps or keys are NaN-padded to the longest."""
    arrays, indices = [], []
    for record in parts.commit_records(run):
        if not has_rows(record, "gen_attention"):
            continue
        location = rows_folder(parts.part_folder(run, record))
        try:
            group = zarr.open_group(storage.zarr_store(location), mode="r")
            arrays.append(da.from_zarr(group["gen_attention"]))
            indices.append(np.asarray(group["gen_sample_idx"][...]))
        except Exception as exc:  # a damaged zarr.json fails in many ways (JSON, encoding, validation, missing keys)
            raise _damaged(run, location, exc) from exc
    if not arrays:
        raise WarehouseError(f"run {run.root.name} has no committed rows of generated steps (extract with --queries gen --gen-rows)")
    steps, width = max(array.shape[1] for array in arrays), max(array.shape[-1] for array in arrays)
    padded = [da.pad(array, [(0, 0), (0, steps - array.shape[1]), (0, 0), (0, 0), (0, width - array.shape[-1])], constant_values=np.nan) for array in arrays]
    return da.concatenate(padded, axis=0), np.concatenate(indices)


def open_rows(run: RunPaths) -> tuple[da.Array, np.ndarray, list[str]]:
    """All committed rows of a run as one lazy Dask array, with its sample_idx and query names.

    Parts with different key lengths are NaN-padded to the longest.
    """
    arrays, indices, queries = [], [], None
    for record in parts.commit_records(run):
        if not has_rows(record):
            continue
        location = rows_folder(parts.part_folder(run, record))
        try:
            group = zarr.open_group(storage.zarr_store(location), mode="r")
            arrays.append(da.from_zarr(group["attention"]))
            indices.append(np.asarray(group["sample_idx"][...]))
            queries = queries or list(group.attrs["queries"])
        except Exception as exc:  # a damaged zarr.json fails in many ways (JSON, encoding, validation, missing keys)
            raise _damaged(run, location, exc) from exc
    if not arrays:
        raise WarehouseError(f"run {run.root.name} has no committed raw rows")
    width = max(array.shape[-1] for array in arrays)
    padded = [da.pad(array, [(0, 0)] * 4 + [(0, width - array.shape[-1])], constant_values=np.nan) if array.shape[-1] < width else array for array in arrays]
    return da.concatenate(padded, axis=0), np.concatenate(indices), queries
