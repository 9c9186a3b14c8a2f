"""``attnwh recompute``: new per-(sample, query, layer, head) statistics from a run's raw rows, without a model.

A recomputation is a *derived run* (kind ``derived``) over the same plan as its extraction run: its
part N reads the rows of the source's part N (``rows.zarr``) and the part's sample rows (where the
image tokens are), computes one statistic, and commits ``derived_metrics`` (and, for sinks,
``derived_sinks``) through the commit protocol, so it resumes, runs on Dask workers
(``--scheduler``) and commits each part once. SQL reads it through a view named by the user
(``--name``), with the source run's id as ``run_id`` so that it joins ``head_metrics``.

Statistics (computed in float32 from the stored float16 rows; ``img`` is a row's image part, the
keys ``image_start .. image_end`` of the sample):

- ``topk_mass`` (``--k``): the share of the head's image attention on its k most-attended image
  tokens, ``sum(top_k(img)) / sum(img)``; 1 when k ≥ the image tokens; null when ``sum(img) = 0``.
- ``image_sum_without_sinks`` (``--tau``, ``--share``): the image attention outside the sample's
  sink tokens. For each sample and query, a head *votes* for an image token when the token holds
  more than τ of that head's image attention (``img_i / sum(img) > τ``); a token is a *sink* when at
  least the share s of all the sample's heads (every layer × head) vote for it. Sink positions
  (indices among the image tokens) are stored per sample and query in ``derived_sinks``.
- ``region`` (``--regions FILE``): ``region_sum`` and ``region_entropy`` (as extraction defines them,
  ``extract.stats``) for boxes given in a JSON-lines file of ``{"sample_key": ..., "boxes": [[x0, y0,
  x1, y1], ...]}`` in pixels of the original image, mapped to image tokens by the model's own
  processor exactly as extraction maps a question's boxes (``extract.regions``); null for samples
  without boxes.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from attnwh.core.errors import IntegrityError, UsageError, WarehouseError
from attnwh.extract.executors import parse_scheduler
from attnwh.extract.part_tables import write_parquet
from attnwh.extract.stats import mass_and_entropy
from attnwh.warehouse import parts, storage
from attnwh.warehouse.arrays import has_rows, part_rows_at, rows_file_problem
from attnwh.warehouse.derived import SINKS_SUFFIX, check_view_name
from attnwh.warehouse.layout import RunPaths, open_warehouse, table_file
from attnwh.warehouse.runs import Run, environment_info, load_run, open_or_create_run, read_manifest
from attnwh.warehouse.schema import DERIVED_METRICS, DERIVED_SINKS, DERIVED_VALUE_COLUMNS

ProgressCallback = Callable[[int, int], None]  # (parts done, parts to do)
KEY_COLUMNS = ("sample_idx", "query", "layer", "head")


@dataclass(frozen=True)
class Statistic:
    name: str
    columns: tuple[str, ...]  # its columns in derived_metrics (and in the user's view)
    parameters: tuple[str, ...]  # the options it needs
    sinks: bool = False  # also writes derived_sinks


STATISTICS = {
    statistic.name: statistic
    for statistic in (
        Statistic("topk_mass", ("topk_mass",), ("k",)),
        Statistic("image_sum_without_sinks", ("image_sum_without_sinks",), ("tau", "share"), sinks=True),
        Statistic("region", ("region_sum", "region_entropy"), ("regions",)),
    )
}


@dataclass
class RecomputeOptions:
    source_run: str  # the extraction run whose rows are read
    statistic: str
    name: str  # the view the derived table is read through
    k: int | None = None
    tau: float | None = None
    share: float | None = None
    regions: Path | None = None  # JSON lines of sample_key and boxes
    data: Path | None = None  # the benchmark's data, if it moved since extraction (regions need the images' sizes)
    model: str | None = None  # the model folder or id, if it moved since extraction (regions need its processor)
    scheduler: str | None = None
    threads_per_worker: int = 1
    max_parts: int | None = None
    command: list[str] = field(default_factory=lambda: list(sys.argv))
    reserved_names: frozenset[str] = frozenset()  # view names attnwh's queries use (``workflows.recompute`` fills them)


@dataclass
class RecomputeResult:
    run_id: str
    source_run_id: str
    name: str
    new_run: bool
    parts_total: int  # parts of the source with committed rows
    parts_skipped: int  # already recomputed
    parts_written: int = 0
    rows_written: int = 0
    dashboard: str | None = None


@dataclass(frozen=True)
class Task:
    """What computing one derived part needs; small and picklable (it travels to Dask workers)."""

    statistic: str
    name: str
    parameters: dict[str, Any]
    source_root: str
    derived_root: str
    derived_run_id: str
    source_run_id: str
    regions: dict[str, np.ndarray] | None = None  # sample_key -> [n_image] bool, for this part's samples


def run_recompute(warehouse_path: Path | str | None, options: RecomputeOptions, on_progress: ProgressCallback | None = None) -> RecomputeResult:
    statistic = STATISTICS.get(options.statistic)
    if statistic is None:
        raise UsageError(f"unknown statistic {options.statistic!r}; choose {', '.join(STATISTICS)}")
    parameters = _check_parameters(statistic, options)
    scheduler = parse_scheduler(options.scheduler)
    warehouse = open_warehouse(warehouse_path)
    paths = warehouse.find_run(options.source_run)
    if paths is None:
        raise UsageError(f"no run {options.source_run} in {warehouse.root}")
    source = load_run(paths)
    if source.manifest["kind"] != "extract" or not source.manifest["spec"].get("rows"):
        raise UsageError(f"run {options.source_run} is not an extraction with raw rows (extract it with --rows)")
    spec = {
        "source_run_id": source.run_id,
        "source_fingerprint": source.manifest["fingerprint"],
        "statistic": statistic.name,
        "name": options.name,
        "parameters": parameters,
        "columns": list(statistic.columns),
        "sinks": statistic.sinks,
    }
    if options.regions is not None:  # the rule the boxes' tokens are found by (a run made by an earlier one is not resumed)
        from attnwh.extract.regions import REGION_RULE

        spec["regions"] = REGION_RULE
    _check_name(warehouse, spec, statistic, options.reserved_names)
    n_image = _check_source(source)
    boxes = read_regions(options.regions) if options.regions is not None else None
    # a new run's masks before it is created: a sample, image or model they cannot be made from leaves no empty run behind
    masks = region_masks(source, boxes, options) if boxes is not None and not _derived_run_exists(warehouse, spec) else None
    for key, mask in (masks or {}).items():
        if key in n_image and mask.any() and len(mask) != n_image[key]:
            raise UsageError(f"sample {key}: its boxes map to {len(mask)} image tokens, but run {source.run_id} has {n_image[key]}; give --model the run's model")
    run, new_run = open_or_create_run(
        warehouse,
        kind="derived",
        model=source.manifest["model"],
        benchmark=source.manifest["benchmark"],
        spec=spec,
        plan=source.plan,
        run_id=None,
        details={"model_info": source.manifest.get("model_info"), "command": options.command, "environment": environment_info()},
    )
    parts.recover(run.paths)
    source_records = {record.part_id: record for record in parts.commit_records(source.paths) if has_rows(record)}
    done = parts.committed_part_ids(run.paths)
    pending = [part_id for part_id in sorted(source_records) if part_id not in done]
    if options.max_parts is not None:
        pending = pending[: options.max_parts]
    result = RecomputeResult(run.run_id, source.run_id, options.name, new_run, len(source_records), len(done & set(source_records)))
    if not pending:
        return result
    if boxes is not None and masks is None:  # a resumed run (its folder exists): masks only when parts are left to compute
        masks = region_masks(source, boxes, options)
    tasks = {part_id: _task(statistic, options.name, parameters, source, run, part_id, masks) for part_id in pending}
    if on_progress:
        on_progress(0, len(pending))
    if scheduler.in_process:
        for count, (part_id, task) in enumerate(tasks.items(), start=1):
            written, rows = compute_and_commit(task, part_id)
            result.parts_written += written
            result.rows_written += rows
            if on_progress:
                on_progress(count, len(pending))
        return result
    return _recompute_on_dask(scheduler, options, run, tasks, result, on_progress)


def _check_source(source: Run) -> dict[str, int]:
    """Before the derived run is created: every committed part's raw rows are the files its commit record lists
    (``rows_file_problem``: a chunk missing or cut is said now, not after an empty derived run exists); and the
    statistics read a sample's image tokens as its span ``image_start:image_end`` of the stored rows, so a run whose
    images are split by text tokens (Idefics3's tile markers, Pixtral's row breaks), where the span holds more than
    the image tokens (the rows keep no token types to tell them apart), is refused. Returns the image tokens of each
    sample with rows."""
    n_image: dict[str, int] = {}
    for record in parts.commit_records(source.paths):
        if has_rows(record) and (problem := rows_file_problem(source.paths, record, ("attention", "sample_idx"))) is not None:
            raise IntegrityError(f"run {source.run_id}: {problem}; run `attnwh verify`")
        source_file, filesystem = storage.arrow_source(table_file(parts.part_folder(source.paths, record), "samples"))
        samples = pq.read_table(source_file, filesystem=filesystem, columns=["sample_key", "status", "n_image", "image_start", "image_end"])
        for row in samples.to_pylist():
            if row["status"] == "ok" and row["image_start"] is not None and row["image_end"] - row["image_start"] != row["n_image"]:
                raise UsageError(
                    f"run {source.run_id}: sample {row['sample_key']}'s {row['n_image']} image tokens lie split over a span of "
                    f"{row['image_end'] - row['image_start']} (text tokens between tiles or rows); recompute reads the span and would count them"
                )
            if row["status"] == "ok" and row["image_start"] is not None:
                n_image[row["sample_key"]] = row["image_end"] - row["image_start"]
    return n_image


def _recompute_on_dask(scheduler, options: RecomputeOptions, run: Run, tasks: dict[int, Task], result: RecomputeResult, on_progress) -> RecomputeResult:
    from distributed import as_completed

    from attnwh.extract.executors import dask_client

    with dask_client(scheduler, options.threads_per_worker) as client:
        result.dashboard = client.dashboard_link
        futures = [client.submit(recompute_part_task, task, part_id, key=f"attnwh-{run.run_id}-{part_id}", pure=False) for part_id, task in tasks.items()]
        for count, future in enumerate(as_completed(futures, loop=client.loop), start=1):  # the client is not the default one
            written, rows = future.result()
            result.parts_written += written
            result.rows_written += rows
            if on_progress:
                on_progress(count, len(tasks))
    parts.recover(run.paths)
    return result


def recompute_part_task(task: Task, part_id: int) -> tuple[int, int]:
    """On a Dask worker: compute one part and commit it, beside the worker's next task."""
    from attnwh.extract.executors import commit_beside_next_task, worker_address, worker_cache

    return compute_and_commit(task, part_id, lambda: commit_beside_next_task(worker_cache()), {"worker": worker_address()})


def compute_and_commit(task: Task, part_id: int, commit_context=nullcontext, writer: dict[str, Any] | None = None) -> tuple[int, int]:
    """Compute a derived part from its source part and commit it: (parts written, rows written)."""
    source = RunPaths(storage.location(task.source_root))
    record = parts.CommitRecord.load(source.commit_record(part_id))
    tables = compute_part(task, parts.part_folder(source, record))

    def write(folder: Path) -> dict[str, int]:
        for name, table in tables.items():
            write_parquet(table, name, folder)
        return {name: table.num_rows for name, table in tables.items()}

    with commit_context():
        committed = parts.commit_part(RunPaths(storage.location(task.derived_root)), part_id, write, writer)
    return (1, tables["derived_metrics"].num_rows) if committed is not None else (0, 0)


# -- the statistics ------------------------------------------------------------------------------


def topk_mass(image: np.ndarray, k: int) -> np.ndarray:
    """[..., n_image] -> [...]: the share of the image attention on the k largest image keys (NaN without any)."""
    total = image.sum(-1)
    if k >= image.shape[-1]:
        top = total
    else:
        top = np.partition(image, image.shape[-1] - k, axis=-1)[..., image.shape[-1] - k :].sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, top / total, np.nan)


def sink_tokens(image: np.ndarray, tau: float, share: float) -> np.ndarray:
    """[query, layer, head, n_image] -> [query, n_image] bool: image tokens that hold more than ``tau`` of
    the image attention in at least ``share`` of the sample's heads (all layers × heads)."""
    total = image.sum(-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        shares = np.where(total > 0, image / total, 0.0)
    votes = (shares > tau).sum(axis=(1, 2))
    heads = image.shape[1] * image.shape[2]
    return votes >= share * heads


def image_sum_without_sinks(image: np.ndarray, sinks: np.ndarray) -> np.ndarray:
    """[query, layer, head, n_image], [query, n_image] -> [query, layer, head]."""
    return (image * ~sinks[:, None, None, :]).sum(-1)


def region_statistics(image: np.ndarray, region: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """region_sum and region_entropy as extraction defines them (``extract.stats.mass_and_entropy``)."""
    rows = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
    mass, entropy = mass_and_entropy(rows, torch.from_numpy(region))
    return mass.numpy(), entropy.numpy()


def compute_part(task: Task, source_part: Path) -> dict[str, pa.Table]:
    """The derived tables of one part from the source part's rows and samples."""
    source, filesystem = storage.arrow_source(table_file(source_part, "samples"))
    samples = pq.read_table(source, filesystem=filesystem, columns=["sample_idx", "sample_key", "status", "image_start", "image_end"])
    where = {row["sample_idx"]: row for row in samples.to_pylist()}
    # checked against the part's commit record: a missing chunk would read as NaN and commit a part of NULLs
    attention, sample_idx, attributes = part_rows_at(RunPaths(storage.location(task.source_root)), source_part)
    queries = list(attributes["queries"])
    n_layers, n_heads = attention.shape[2], attention.shape[3]
    columns: dict[str, list[np.ndarray]] = {name: [] for name in (*KEY_COLUMNS, *DERIVED_VALUE_COLUMNS)}
    sinks_rows: list[dict[str, Any]] = []
    layer, head = np.meshgrid(np.arange(n_layers, dtype=np.int16), np.arange(n_heads, dtype=np.int16), indexing="ij")
    for position, idx in enumerate(sample_idx.tolist()):
        sample = where.get(idx)
        if sample is None or sample["status"] != "ok" or sample["image_start"] is None:
            continue
        image = np.asarray(attention[position], dtype=np.float32)[..., sample["image_start"] : sample["image_end"]]  # [query, layer, head, n_image]
        values = {name: np.full(image.shape[:3], np.nan, dtype=np.float32) for name in DERIVED_VALUE_COLUMNS}
        if task.statistic == "topk_mass":
            values["topk_mass"] = topk_mass(image, task.parameters["k"])
        elif task.statistic == "image_sum_without_sinks":
            sinks = sink_tokens(image, task.parameters["tau"], task.parameters["share"])
            values["image_sum_without_sinks"] = image_sum_without_sinks(image, sinks)
            for query, flags in zip(queries, sinks):
                positions = np.flatnonzero(flags).astype(np.int32).tolist()
                sinks_rows.append({"sample_idx": idx, "query": query, "n_sinks": len(positions), "sink_positions": positions})
        elif task.statistic == "region":
            region = (task.regions or {}).get(sample["sample_key"])
            if region is not None and region.any():
                if len(region) != image.shape[-1]:
                    raise UsageError(
                        f"sample {sample['sample_key']}: its boxes map to {len(region)} image tokens, but run {task.source_run_id} has "
                        f"{image.shape[-1]}; give --model the run's model"
                    )
                values["region_sum"], values["region_entropy"] = region_statistics(image, region)
        count = n_layers * n_heads
        for query_index, query in enumerate(queries):
            columns["sample_idx"].append(np.full(count, idx, dtype=np.int64))
            columns["query"].append(np.full(count, query, dtype=object))
            columns["layer"].append(layer.ravel())
            columns["head"].append(head.ravel())
            for name, array in values.items():
                columns[name].append(array[query_index].ravel())
    return _tables(task, columns, sinks_rows)


def _tables(task: Task, columns: dict[str, list[np.ndarray]], sinks_rows: list[dict[str, Any]]) -> dict[str, pa.Table]:
    data = {name: (np.concatenate(chunks) if chunks else np.array([])) for name, chunks in columns.items()}
    n = len(data["sample_idx"])
    table = {
        "run_id": pa.array([task.derived_run_id] * n, pa.string()),
        "source_run_id": pa.array([task.source_run_id] * n, pa.string()),
        "name": pa.array([task.name] * n, pa.string()),
    }
    for name in (*KEY_COLUMNS, *DERIVED_VALUE_COLUMNS):
        table[name] = pa.array(data[name], type=DERIVED_METRICS.field(name).type, from_pandas=True)  # NaN -> null
    tables = {"derived_metrics": pa.table(table).select(DERIVED_METRICS.names).cast(DERIVED_METRICS)}
    if STATISTICS[task.statistic].sinks:
        rows = [{"run_id": task.derived_run_id, "source_run_id": task.source_run_id, "name": task.name, **row} for row in sinks_rows]
        tables["derived_sinks"] = pa.Table.from_pylist(rows, schema=DERIVED_SINKS)
    return tables


# -- options, names and regions ------------------------------------------------------------------


def _check_parameters(statistic: Statistic, options: RecomputeOptions) -> dict[str, Any]:
    given = {"k": options.k, "tau": options.tau, "share": options.share, "regions": options.regions}
    for name, value in given.items():
        if name in statistic.parameters and value is None:
            raise UsageError(f"--statistic {statistic.name} needs --{name}")
        if name not in statistic.parameters and value is not None:
            raise UsageError(f"--{name} does not apply to --statistic {statistic.name}")
    if options.k is not None and options.k < 1:
        raise UsageError(f"--k must be at least 1; got {options.k}")
    for name in ("tau", "share"):
        value = given[name]
        if value is not None and not 0 < value <= 1:
            raise UsageError(f"--{name} must be in (0, 1]; got {value}")
    if options.threads_per_worker < 1 or (options.max_parts is not None and options.max_parts < 1):
        raise UsageError("--threads-per-worker and --max-parts must be at least 1")
    parameters: dict[str, Any] = {name: given[name] for name in statistic.parameters if name != "regions"}
    if options.regions is not None:
        parameters["regions_sha256"] = _file_sha256(options.regions)
    return parameters


def _check_name(warehouse, new: dict[str, Any], statistic: Statistic, reserved: frozenset[str]) -> None:
    """The derived run's name (``new``: its spec) is free, holds the same statistic and parameters over other runs, or
    holds this very run (resumed). A name holding the same source run made otherwise (another regions file, boxes
    found by an earlier rule) is refused: the view would hold both runs' rows, each source row twice."""
    name, parameters = new["name"], new["parameters"]
    check_view_name(name, reserved)
    if statistic.sinks:
        check_view_name(name + SINKS_SUFFIX, reserved)
    for paths in warehouse.run_folders():
        try:
            manifest = read_manifest(paths)
        except WarehouseError:
            continue
        spec = manifest["spec"]
        if manifest["kind"] != "derived":
            continue
        if (spec.get("sinks") and name == f"{spec.get('name')}{SINKS_SUFFIX}") or (statistic.sinks and spec.get("name") == name + SINKS_SUFFIX):
            raise UsageError(f"--name {name} would clash with the views of derived table {spec.get('name')} (run {manifest['run_id']}); choose another name")
        if spec.get("name") == name:
            if spec.get("statistic") != statistic.name or _comparable(spec.get("parameters")) != _comparable(parameters):
                raise UsageError(
                    f"--name {name} already holds {spec.get('statistic')} {json.dumps(spec.get('parameters'), sort_keys=True)} (run {manifest['run_id']}); choose another name"
                )
            differing = sorted(key for key in new if spec.get(key) != new[key])  # the stored spec has the run's own keys besides
            if spec.get("source_run_id") == new["source_run_id"] and differing:
                raise UsageError(
                    f"--name {name} already holds run {new['source_run_id']} made with other settings (run {manifest['run_id']}; differing: {', '.join(differing)}; "
                    "a regions file's, or the rule boxes are found by); choose another name"
                )


def _derived_run_exists(warehouse, spec: dict[str, Any]) -> bool:
    """Whether a derived run of these settings is in the warehouse already (the command resumes it)."""
    for paths in warehouse.run_folders():
        try:
            manifest = read_manifest(paths)
        except WarehouseError:
            continue
        if manifest["kind"] == "derived" and all(manifest["spec"].get(key) == value for key, value in spec.items()):
            return True
    return False


def _comparable(parameters: dict[str, Any] | None) -> dict[str, Any]:
    return {key: value for key, value in (parameters or {}).items() if key != "regions_sha256"}


def _task(statistic: Statistic, name: str, parameters: dict[str, Any], source: Run, run: Run, part_id: int, masks) -> Task:
    regions = None
    if masks is not None:
        keys = {source.plan.sample_keys[i] for i in source.plan.part_range(part_id)}
        regions = {key: mask for key, mask in masks.items() if key in keys}
    return Task(statistic.name, name, parameters, str(source.paths.root), str(run.paths.root), run.run_id, source.run_id, regions)


def _file_sha256(path: Path) -> str:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError as exc:
        raise UsageError(f"cannot read --regions {path}: {exc.strerror or exc}") from exc


def read_regions(path: Path) -> dict[str, list[tuple[float, float, float, float]]]:
    """A regions file: one JSON object per line, ``{"sample_key": "...", "boxes": [[x0, y0, x1, y1], ...]}``."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read --regions {path}: {getattr(exc, 'strerror', None) or exc}") from exc
    boxes: dict[str, list[tuple[float, float, float, float]]] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{where}: not JSON ({exc.msg})") from exc
        if not isinstance(entry, dict) or not isinstance(entry.get("sample_key"), str) or not isinstance(entry.get("boxes"), list):
            raise UsageError(f'{where}: expected {{"sample_key": "...", "boxes": [[x0, y0, x1, y1], ...]}}')
        parsed = []
        for box in entry["boxes"]:
            if not isinstance(box, list) or len(box) != 4 or not all(_finite_number(value) for value in box) or box[2] < box[0] or box[3] < box[1]:
                raise UsageError(f"{where}: a box is four finite numbers x0, y0, x1, y1 with x0 ≤ x1 and y0 ≤ y1; got {json.dumps(box)[:80]}")
            parsed.append(tuple(float(value) for value in box))
        if entry["sample_key"] in boxes:
            raise UsageError(f"{where}: sample {entry['sample_key']} appears twice")
        boxes[entry["sample_key"]] = parsed
    if not boxes:
        raise UsageError(f"--regions {path} has no boxes")
    return boxes


def _finite_number(value: Any) -> bool:
    """A JSON number a float can hold: not a bool, NaN or infinite (1e999 reads as inf), nor an integer past float's range."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer of 309 digits or more
        return False


def region_masks(source: Run, boxes: dict[str, list], options: RecomputeOptions) -> dict[str, np.ndarray]:
    """[n_image] bool per sample with boxes, from the benchmark's own images and the model's processor."""
    from attnwh.extract.regions import region_mask
    from attnwh.extract.sample_images import read_image, run_geometry, run_samples

    unknown = sorted(set(boxes) - set(source.plan.sample_keys))
    if unknown:
        raise UsageError(f"--regions names {len(unknown)} sample(s) not in run {source.run_id}: {', '.join(unknown[:3])}")
    spec = source.manifest["spec"]
    by_key = run_samples(spec, options.data)
    missing = sorted(key for key in boxes if key not in by_key)
    if missing:
        raise UsageError(f"samples {', '.join(missing[:3])} are not in the benchmark's data any more; give --data")
    loaded = run_geometry(spec, options.model)
    return {key: region_mask(loaded, read_image(by_key[key]), sample_boxes).numpy() for key, sample_boxes in boxes.items()}
