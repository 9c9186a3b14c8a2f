"""Runs: fingerprints, ``RUN.json`` manifests and plans.

A run is identified by the fingerprint of everything that changes its results (model and revision,
dtype, capture spec, prompt template, benchmark and split, the plan's hash, layout version). The
same settings resume the same run; other settings make another run, and naming an existing run
with other settings is refused with the differing keys.
"""

from __future__ import annotations

import hashlib
import json
import socket
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from attnwh.core.errors import FingerprintMismatch, WarehouseError, first_line
from attnwh.warehouse import storage
from attnwh.warehouse.layout import LAYOUT_VERSION, RunPaths, Warehouse, layout_version_problem
from attnwh.warehouse.records import unrecorded_parts
from attnwh.warehouse.schema import META_VERSION, PLAN, RUNS, SCHEMA_VERSION, unreadable_version

RUN_ID_LENGTH = 12
MAX_RUN_ID_LENGTH = 128  # a run id named with --run: its folder's name, in every path and line that names the run
MAX_NAME_BYTES = 255  # the longest name of a folder on common file systems (ext4, XFS, APFS, NTFS)


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def fingerprint(spec: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(spec).encode()).hexdigest()


def plan_hash(sample_keys: list[str], part_size: int) -> str:
    digest = hashlib.sha256(f"part_size={part_size}\n".encode())
    for key in sample_keys:
        digest.update(key.encode())
        digest.update(b"\n")
    return digest.hexdigest()


@dataclass(frozen=True)
class Plan:
    """Every planned sample of a run and the part it belongs to."""

    sample_keys: list[str]
    part_size: int

    @property
    def n_parts(self) -> int:
        return (len(self.sample_keys) + self.part_size - 1) // self.part_size

    def part_range(self, part_id: int) -> range:
        start = part_id * self.part_size
        return range(start, min(start + self.part_size, len(self.sample_keys)))

    def to_table(self) -> pa.Table:
        n = len(self.sample_keys)
        return pa.table(
            {
                "sample_idx": pa.array(range(n), pa.int64()),
                "sample_key": pa.array(self.sample_keys, pa.string()),
                "part_id": pa.array([i // self.part_size for i in range(n)], pa.int32()),
            },
            schema=PLAN,
        )


@dataclass(frozen=True)
class Run:
    """An opened run: its folder, manifest and plan."""

    paths: RunPaths
    manifest: dict[str, Any]
    plan: Plan

    @property
    def run_id(self) -> str:
        return self.manifest["run_id"]


def environment_info(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Where and with what a run was made: host, package versions, git commit."""
    from importlib import metadata

    versions = {}
    for package in ("attnwh", "torch", "transformers", "accelerate", "pyarrow", "duckdb", "zarr", "numpy"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    info = {"host": socket.gethostname(), "python": _python_version(), "packages": versions, "git_commit": _git_commit()}
    info.update(extra or {})
    return info


def _python_version() -> str:
    import platform

    return platform.python_version()


def _git_commit() -> str | None:
    """The commit of the attnwh checkout this code runs from, if it is one."""
    import subprocess

    source = Path(__file__).resolve().parent.parent
    try:
        result = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def open_or_create_run(
    warehouse: Warehouse,
    *,
    kind: str,
    model: str,
    benchmark: str,
    spec: dict[str, Any],
    plan: Plan,
    run_id: str | None,
    details: dict[str, Any],
    create: bool = True,
    wait_seconds: float = 0.0,
) -> tuple[Run, bool]:
    """Resume the run these settings name, or create it. Returns the run and whether it was new.

    ``spec`` holds every fingerprinted setting; ``details`` is recorded but not fingerprinted
    (environment, command line, model shape). With ``create`` false (a rank other than 0) a missing
    run is waited for, up to ``wait_seconds``, while rank 0 creates it.
    """
    spec = {**spec, "kind": kind, "plan_hash": plan_hash(plan.sample_keys, plan.part_size), "layout_version": LAYOUT_VERSION}
    digest = fingerprint(spec)
    if run_id is not None:
        _check_run_id(run_id)
        existing = warehouse.find_run(run_id)
        if existing is not None:
            return _resume(existing, spec, digest, run_id), False
    else:
        run_id = digest[:RUN_ID_LENGTH]
    paths = warehouse.run_paths(model, benchmark, run_id)
    if not create:
        _wait_for(paths, run_id, wait_seconds)
    if storage.is_file(paths.manifest) or _has_commits(paths):  # a run with committed parts is resumed, never made anew
        return _resume(paths, spec, digest, run_id), False
    manifest = {
        "run_id": run_id,
        "kind": kind,
        "model": model,
        "benchmark": benchmark,
        "fingerprint": digest,
        "spec": spec,
        "n_samples": len(plan.sample_keys),
        "part_size": plan.part_size,
        "n_parts": plan.n_parts,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **details,
    }
    try:
        storage.make_folders(paths.root, paths.commits, paths.staging, paths.parts)
        storage.put(paths.plan, parquet_bytes(plan.to_table()))
        storage.put(paths.manifest, (json.dumps(manifest, indent=2, default=str) + "\n").encode())
    except OSError as exc:
        raise WarehouseError(f"cannot create run folder {paths.root}: {exc.strerror or exc}") from exc
    return Run(paths, manifest, plan), True


# what a RUN.json must hold, and of which types, for attnwh to trust it
MANIFEST_FIELDS: dict[str, type | tuple[type, ...]] = {
    "run_id": str,
    "kind": str,
    "model": str,
    "benchmark": str,
    "fingerprint": str,
    "spec": dict,
    "n_samples": int,
    "part_size": int,
    "n_parts": int,
}
# fields a reader puts in the runs table when present (each a column of ``schema.RUNS``): absent or null, or of this type
OPTIONAL_MANIFEST_FIELDS: dict[str, type] = {"created": str, "device": str, "model_info": dict}
MODEL_INFO_FIELDS: dict[str, type] = {"architecture": str, "n_layers": int, "n_heads": int, "n_kv_heads": int, "n_decoder_layers": int}
INT32_MAX = 2**31 - 1
# what one part of a run of each kind holds: a part of samples (an extraction, a derived run) or one condition of a
# sweep; a heads import (``ranking``) has neither. ``attnwh status``'s rate and ``attnwh runs``' counts read it
PART_UNITS: dict[str, str] = {"extract": "sample", "derived": "sample", "mask": "condition", "prune": "condition", "attribution": "condition"}


def _mistyped(content: dict[str, Any], kinds: dict[str, type], prefix: str = "") -> list[str]:
    """The fields of ``content`` present (not null) but not of their kind (a bool is no int; an int past int32 none of the counts)."""
    wrong = []
    for name, kind in kinds.items():
        value = content.get(name)
        if value is None:
            continue
        if not isinstance(value, kind) or isinstance(value, bool) or (kind is int and not 0 <= value <= INT32_MAX):
            wrong.append(prefix + name)
    return wrong


def load_run(paths: RunPaths) -> Run:
    """The run's manifest and plan, both checked; a damaged one raises ``WarehouseError`` naming the file."""
    manifest = read_manifest(paths)
    return Run(paths, manifest, read_plan(paths, manifest))


def read_manifest(paths: RunPaths) -> dict[str, Any]:
    """``RUN.json``, refused (``WarehouseError`` naming it) when unreadable, of the wrong shape or newer than this attnwh."""
    try:
        content = json.loads(storage.read_tagged(paths.manifest, paths.tags))
    except FileNotFoundError as exc:
        raise WarehouseError(f"{paths.manifest} is missing") from exc
    except (OSError, ValueError) as exc:
        raise WarehouseError(f"{paths.manifest} is not readable JSON ({first_line(exc)})") from exc
    if not isinstance(content, dict):
        raise WarehouseError(f"{paths.manifest} holds a JSON {type(content).__name__}, not a run manifest")
    wrong = [name for name, kind in MANIFEST_FIELDS.items() if not isinstance(content.get(name), kind) or isinstance(content.get(name), bool)]
    if wrong:
        raise WarehouseError(f"{paths.manifest} lacks or mistypes {', '.join(wrong)}; not a run manifest")
    wrong = _mistyped(content, OPTIONAL_MANIFEST_FIELDS)
    wrong += _mistyped(content.get("model_info") or {}, MODEL_INFO_FIELDS, "model_info.") if isinstance(content.get("model_info"), dict) else []
    wrong += [name for name in ("n_samples", "part_size", "n_parts") if not 0 <= content[name] < 2**63]
    if wrong:
        raise WarehouseError(f"{paths.manifest} mistypes {', '.join(wrong)}; not a run manifest")
    folder = getattr(paths.root, "name", "")
    if folder.startswith("run=") and folder != f"run={content['run_id']}":
        raise WarehouseError(f"{paths.manifest} names run {content['run_id']!r} but lies in {folder}; not this folder's manifest")
    if (problem := layout_version_problem(content["spec"].get("layout_version"))) is not None:
        raise WarehouseError(f"{paths.manifest} {problem}")
    if content["part_size"] < 1 or content["n_parts"] != -(-content["n_samples"] // content["part_size"]):
        raise WarehouseError(f"{paths.manifest}: n_parts {content['n_parts']} does not fit {content['n_samples']} samples in parts of {content['part_size']}")
    if fingerprint(content["spec"]) != content["fingerprint"]:
        raise WarehouseError(f"{paths.manifest}: its settings do not match its fingerprint (edited after the run was made)")
    return content


def read_plan(paths: RunPaths, manifest: dict[str, Any]) -> Plan:
    """``plan.parquet``, checked against the manifest (sample count and the plan's hash)."""
    try:
        source, filesystem = storage.arrow_source(paths.plan)
        table = pq.read_table(source, filesystem=filesystem)
        keys = table.column("sample_key").to_pylist()
    except FileNotFoundError as exc:
        raise WarehouseError(f"{paths.plan} is missing") from exc
    except (OSError, KeyError, pa.ArrowException) as exc:
        raise WarehouseError(f"{paths.plan} is not a readable plan ({first_line(exc)})") from exc
    version = (table.schema.metadata or {}).get(META_VERSION)
    if unreadable_version(version):
        raise WarehouseError(f"{paths.plan} has schema version {version.decode(errors='replace')}; this attnwh reads up to {SCHEMA_VERSION}")
    plan = Plan([str(key) for key in keys], manifest["part_size"])
    if len(keys) != manifest["n_samples"] or plan_hash(plan.sample_keys, plan.part_size) != manifest["spec"].get("plan_hash"):
        raise WarehouseError(f"{paths.plan} does not match the plan recorded in {paths.manifest.name} ({len(keys)} samples)")
    return plan


def check_plan_footer(paths: RunPaths, manifest: dict[str, Any]) -> None:
    """A cheap check of ``plan.parquet`` for readers (its footer only: a readable Parquet file of the
    manifest's sample count, with a ``sample_key`` column, of a version this attnwh reads); resuming
    a run reads the whole plan (``read_plan``) and checks its hash too."""
    try:
        if storage.is_object_store(paths.plan):  # one cached read, not a HEAD and two range reads
            metadata = pq.read_metadata(pa.BufferReader(storage.read_tagged(paths.plan, paths.tags)))
        else:
            metadata = pq.read_metadata(paths.plan)
    except FileNotFoundError as exc:
        raise WarehouseError(f"{paths.plan} is missing") from exc
    except (OSError, pa.ArrowException) as exc:
        raise WarehouseError(f"{paths.plan} is not a readable plan ({first_line(exc)})") from exc
    version = (metadata.metadata or {}).get(META_VERSION)
    if unreadable_version(version):
        raise WarehouseError(f"{paths.plan} has schema version {version.decode(errors='replace')}; this attnwh reads up to {SCHEMA_VERSION}")
    if "sample_key" not in metadata.schema.names or metadata.num_rows != manifest["n_samples"]:
        raise WarehouseError(f"{paths.plan} does not match the plan recorded in {paths.manifest.name} ({metadata.num_rows} samples)")


def _resume(paths: RunPaths, spec: dict[str, Any], digest: str, run_id: str) -> Run:
    try:
        run = load_run(paths)
    except WarehouseError as exc:
        raise WarehouseError(
            f"cannot resume run {run_id}: {exc}. Committed parts are untouched; restore the file from a copy, or start a new run with --run NEW_ID (or move {paths.root} away)"
        ) from exc
    # published parts with no record: the commit log was damaged (a record or the whole _commits folder deleted);
    # writing on would fail at the first commit, or commit over parts readers cannot see
    if not storage.is_object_store(paths.root) and (unrecorded := unrecorded_parts(paths)):
        raise WarehouseError(
            f"cannot resume run {run_id}: {len(unrecorded)} published part(s) ({', '.join(unrecorded[:3])}{', ...' if len(unrecorded) > 3 else ''}) have no commit record"
            f" in {paths.commits}. Committed parts are untouched; restore the commit log from a copy, move those folders out of {paths.parts} to compute them again,"
            f" or start a new run with --run NEW_ID (or move {paths.root} away)"
        )
    try:  # a commit log (or staging folder) removed while no part is published: the run goes on from nothing committed
        storage.make_folders(paths.commits, paths.staging, paths.parts)
    except OSError as exc:
        raise WarehouseError(f"cannot resume run {run_id}: cannot create its folders under {paths.root}: {exc.strerror or exc}") from exc
    if run.manifest["fingerprint"] != digest:
        old = run.manifest["spec"]
        if old.get("kind") != spec.get("kind"):  # --run naming a run of another kind: say that, not every key its kind sets
            raise WarehouseError(
                f"run {run_id} is {_a(old.get('kind'))} run, not {_a(spec.get('kind'))} run; name a new run with --run NEW_ID, or leave --run out"
                f" ({spec.get('kind')} names its run from its settings)"
            )
        differing = {key: (old.get(key), spec.get(key)) for key in sorted(set(old) | set(spec)) if canonical_json(old.get(key)) != canonical_json(spec.get(key))}
        raise FingerprintMismatch(run_id, differing)
    return run


def _a(kind: object) -> str:
    return f"an {kind}" if str(kind)[:1] in "aeiou" else f"a {kind}"


def _wait_for(paths: RunPaths, run_id: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not storage.is_file(paths.manifest):
        if time.monotonic() >= deadline:
            raise WarehouseError(f"run {run_id} does not exist after waiting {seconds:g} s for rank 0 to create it; start rank 0 (or raise $ATTNWH_RANK_WAIT_SECONDS)")
        time.sleep(0.2)


def _has_commits(paths: RunPaths) -> bool:
    return any(name.endswith(".json") for name in storage.names_in(paths.commits, "part-"))


def _check_run_id(run_id: str) -> None:
    """A run id the user named (``--run``) becomes a folder's name: refused in one line unless it makes one."""
    if not run_id:
        raise WarehouseError("a run id may not be empty")
    if len(run_id) > MAX_RUN_ID_LENGTH:
        raise WarehouseError(f"run id {run_id[:24]!r}... has {len(run_id)} characters; a run id has at most {MAX_RUN_ID_LENGTH}")
    if not all(c.isalnum() or c in "-_." for c in run_id):
        raise WarehouseError(f"run id {run_id!r} may only contain letters, digits, '-', '_' and '.'")
    if run_id.startswith("."):
        raise WarehouseError(f"run id {run_id!r} may not start with '.' (a hidden folder, or '.' and '..')")
    if run_id.startswith("-"):
        raise WarehouseError(f"run id {run_id!r} may not start with '-' (a command would read it as an option)")
    if len(f"run={run_id}".encode()) > MAX_NAME_BYTES:  # letters outside ASCII take up to 4 bytes of a folder's name
        raise WarehouseError(f"run id {run_id!r} is too long for a folder's name ({MAX_NAME_BYTES} bytes with its 'run=')")


def parquet_bytes(table: pa.Table) -> bytes:
    """A table as the bytes of a Parquet file (small files written whole: plans, imported rankings)."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def runs_table(runs: list[tuple[RunPaths, Any]]) -> pa.Table:
    """One row per run (the runs given, each with its ``parts.ReadableRun``: those whose manifest and commit records were checked)."""
    rows = []
    for run, readable in runs:
        manifest = readable.manifest
        model_info = manifest.get("model_info") or {}
        spec = manifest.get("spec") or {}
        committed = len(readable.records)
        rows.append(
            {
                "run_id": manifest.get("run_id"),
                "kind": manifest.get("kind"),
                "model": manifest.get("model"),
                "benchmark": manifest.get("benchmark"),
                "split": spec.get("split"),
                "created": manifest.get("created"),
                "fingerprint": manifest.get("fingerprint"),
                "n_samples": manifest.get("n_samples"),
                "n_parts": manifest.get("n_parts"),
                "parts_committed": committed,
                "complete": committed >= int(manifest.get("n_parts") or 0),
                "architecture": model_info.get("architecture"),
                "n_layers": model_info.get("n_layers"),
                "n_heads": model_info.get("n_heads"),
                "n_kv_heads": model_info.get("n_kv_heads"),
                "n_decoder_layers": model_info.get("n_decoder_layers") or model_info.get("n_layers"),
                "dtype": spec.get("dtype"),
                "prompt_format": spec.get("prompt_format"),
                "prompt_style": spec.get("prompt_style"),
                "device": manifest.get("device"),
                "spec": json.dumps(spec, sort_keys=True),
                "path": str(run.root),
                "part_unit": PART_UNITS.get(manifest.get("kind")),
            }
        )
    return pa.Table.from_pylist(rows, schema=RUNS)
