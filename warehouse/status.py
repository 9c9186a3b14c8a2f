"""Where a run stands while processes (ranks, cluster workers) write into it: parts committed and
planned, who committed each (host, pid, rank and world size, Dask worker: fields in JSON, one label
in the table), the rate (samples per second; a sweep's conditions per second since it began) and an ETA from the commit times, attempts in flight with the age of
their lease, and a sweep's batches kept for parts not committed yet. Read from the commit log, the staging and
progress folders only: it never blocks a writer.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Any

from attnwh.core.errors import WarehouseError
from attnwh.warehouse import parts
from attnwh.warehouse.commit import names_under
from attnwh.warehouse.layout import RunPaths, is_progress_batch, progress_listing
from attnwh.warehouse.runs import PART_UNITS


def run_status(run: RunPaths) -> dict[str, Any]:
    """One run's progress; a damaged run says what is wrong instead (as readers see it: its manifest, its commit log
    and the sizes of its committed tables against their records, ``parts.readable_run``)."""
    name = run.root.name.removeprefix("run=")
    try:
        readable = parts.readable_run(run)
    except WarehouseError as exc:
        return {"run_id": name, "problem": str(exc)}
    manifest, records = readable.manifest, readable.records
    times = sorted(_time(record.created) for record in records if _time(record.created) is not None)
    unit = PART_UNITS.get(manifest["kind"])  # a heads import (``ranking``) has no rate
    by_samples = unit == "sample"
    if by_samples:  # parts of samples, committed one after another: the rate between the first and the last commit
        per_second = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else None
    elif unit == "condition":  # a sweep's parts are its conditions, committed a group at a time (a burst at the group's end): since the run began
        began = _time(manifest.get("created"))
        per_second = len(times) / (times[-1] - began) if times and began is not None and times[-1] > began else None
    else:
        per_second = None
    remaining = manifest["n_parts"] - len(records)
    writers = Counter(_writer_label(record.writer, record.attempt) for record in records)
    return {
        "run_id": manifest["run_id"],
        "kind": manifest["kind"],
        "model": manifest["model"],
        "benchmark": manifest["benchmark"],
        "parts_committed": len(records),
        "parts_planned": manifest["n_parts"],
        "samples_per_second": per_second * manifest["part_size"] if per_second and by_samples else None,
        "conditions_per_second": per_second if per_second and not by_samples else None,  # mask, prune, attribution: a part is a condition
        "eta_seconds": remaining / per_second if per_second and remaining else (0.0 if not remaining else None),
        "writers": dict(sorted(writers.items())),
        "parts": [
            {"part_id": record.part_id, "created": record.created, "writer": _writer_label(record.writer, record.attempt), **writer_fields(record.writer, record.attempt)}
            for record in records
        ],
        "in_flight": in_flight(run, {record.part_id for record in records}),
        # a sweep's batches finished by a group whose parts are not committed yet (extract.batch_journal)
        "batches_kept": sum(is_progress_batch(name) for names in progress_listing(run).values() for name in names),
    }


def in_flight(run: RunPaths, committed: set[int]) -> list[dict[str, Any]]:
    """Attempts of parts not committed yet, with the host and process that work on them and their lease's age."""
    attempts = []
    for folder_name in names_under(run.staging):  # on a store, a prefix whose last attempt just went is empty, not an error
        name, _, attempt = folder_name.partition(".")
        part_id = parts.part_id_of(name)
        if part_id is None or part_id in committed:
            continue
        host, pid = parts.attempt_writer(attempt) or (attempt, None)
        age = parts.lease_age(run, part_id, attempt)
        attempts.append({"part_id": part_id, "host": host, "pid": pid, "lease_age_seconds": round(age, 1) if age is not None else None})
    return attempts


def writer_fields(writer: dict[str, Any] | None, attempt: str) -> dict[str, Any]:
    """Who committed a part, as fields: host, pid, rank and world size (ranks), the Dask worker's address
    (None where not known: records written before the writer was recorded name host and pid by their attempt)."""
    writer = writer or {}
    host, pid = parts.attempt_writer(attempt) or (None, None)
    return {"host": writer.get("host", host), "pid": writer.get("pid", pid), "rank": writer.get("rank"), "world_size": writer.get("world_size"), "worker": writer.get("worker")}


def _writer_label(writer: dict[str, Any] | None, attempt: str) -> str:
    """The same on one line, for the table: ``host:pid rank r/n`` or ``host:pid worker tcp://...``."""
    if writer:
        rank = f" rank {writer['rank']}/{writer['world_size']}" if "rank" in writer else ""
        worker = f" worker {writer['worker']}" if writer.get("worker") else ""
        return f"{writer.get('host')}:{writer.get('pid')}{rank}{worker}"
    host, pid = parts.attempt_writer(attempt) or (attempt, None)
    return f"{host}:{pid}"


def _time(text: str | None) -> float | None:
    try:
        return datetime.fromisoformat(text).timestamp() if text else None
    except ValueError:
        return None
