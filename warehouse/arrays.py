"""Raw attention rows: one immutable Zarr group per part.

``rows.zarr/attention`` is float16 with dimensions (sample, query, layer, head, key): the row of
each captured query over the sample's keys without padding, NaN past the row's length; one chunk a
sample, all of a part's chunks in one shard (one object). Parts written before shards read alike.
``rows.zarr/sample_idx`` maps the first dimension to the plan.
"""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np
import zarr

from attnwh.core.errors import WarehouseError
from attnwh.warehouse import parts, storage
from attnwh.warehouse.layout import ROWS_FOLDER, RunPaths, rows_folder

DIMENSIONS = ("sample", "query", "layer", "head", "key")


def write_rows(folder: Path, attention: np.ndarray, sample_idx: np.ndarray, queries: list[str]) -> None:
    """Write ``attention`` [sample, query, layer, head, key] (float16, NaN-padded) into ``folder/rows.zarr``."""
    if attention.ndim != 5 or attention.shape[0] != len(sample_idx):
        raise ValueError(f"attention rows must be [sample, query, layer, head, key], got {attention.shape}")
    group = zarr.open_group(rows_folder(folder), mode="w")
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


def has_rows(record: parts.CommitRecord) -> bool:
    """Whether a committed part holds raw rows (runs extracted with ``--no-rows`` have none)."""
    return any(entry["path"].startswith(ROWS_FOLDER + "/") for entry in record.files)


def open_rows(run: RunPaths) -> tuple[da.Array, np.ndarray, list[str]]:
    """All committed rows of a run as one lazy Dask array, with its sample_idx and query names.

    Parts with different key lengths are NaN-padded to the longest.
    """
    arrays, indices, queries = [], [], None
    for record in parts.commit_records(run):
        location = rows_folder(parts.part_folder(run, record))
        if not has_rows(record):
            continue
        group = zarr.open_group(storage.zarr_store(location), mode="r")
        arrays.append(da.from_zarr(group["attention"]))
        indices.append(np.asarray(group["sample_idx"][...]))
        queries = queries or list(group.attrs["queries"])
    if not arrays:
        raise WarehouseError(f"run {run.root.name} has no committed raw rows")
    width = max(array.shape[-1] for array in arrays)
    padded = [da.pad(array, [(0, 0)] * 4 + [(0, width - array.shape[-1])], constant_values=np.nan) if array.shape[-1] < width else array for array in arrays]
    return da.concatenate(padded, axis=0), np.concatenate(indices), queries
