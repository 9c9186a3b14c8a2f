"""Where a benchmark's files come from: a local file or folder, or a dataset id on the Hugging Face hub."""

from __future__ import annotations

import re
from pathlib import Path

from attnwh.core.errors import BenchmarkError, UsageError
from attnwh.extract.benchmarks.registry import Benchmark

_DATASET_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_data(benchmark: Benchmark, data: Path | str | None) -> Path | None:
    """A local path as given (resolved), or a hub dataset id downloaded into the hub cache.

    Hub datasets go through ``huggingface_hub.snapshot_download`` and then the same loaders as local
    files, so a dataset id works wherever its files are in one of the formats the loader reads.
    """
    if data is None:
        if benchmark.data_required:
            raise UsageError(f"benchmark {benchmark.name} needs --data: {benchmark.data_help}")
        return None
    if not benchmark.data_required:  # built in: the files would be silently not read
        raise UsageError(f"benchmark {benchmark.name} is built in and reads no files: --data does not apply")
    path = Path(data).expanduser()
    try:
        exists = path.exists()
    except OSError as exc:  # a name too long for the file system, a folder that cannot be read
        text = str(data)
        raise BenchmarkError(f"cannot read --data {text[:80]}{'...' if len(text) > 80 else ''}: {exc.strerror or exc}") from exc
    if exists:
        return path.resolve()
    text = str(data)
    if text.startswith((".", "/", "~")) or not _DATASET_ID.match(text):
        raise BenchmarkError(f"benchmark data {text} does not exist")
    return _download_dataset(text)


def _download_dataset(dataset_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError
    except ImportError as exc:  # pragma: no cover  (a dependency of transformers)
        raise BenchmarkError(f"{dataset_id} is not a local path, and huggingface_hub is not installed") from exc
    try:
        return Path(snapshot_download(repo_id=dataset_id, repo_type="dataset"))
    except RepositoryNotFoundError as exc:
        raise BenchmarkError(f"{dataset_id} is neither a local path nor a dataset on the hub") from exc
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as exc:
        raise BenchmarkError(f"{dataset_id} is not a local path, and the hub cannot be reached to fetch it ({type(exc).__name__})") from exc
