"""Where a warehouse lives: a local folder, or a prefix of an object store reached through fsspec.

Locations are paths: ``pathlib.Path`` for a local folder, ``upath.UPath`` (universal_pathlib, over
the fsspec filesystem of the URL's protocol) for ``s3://bucket/prefix`` and any other fsspec store.
Reading code treats both alike (``/``, ``read_text``, ``glob``, ``stat``). What differs lives here:

- an object store has no rename and no hard link, so a file appears exclusively through a
  **conditional put** (``If-None-Match: *``: exactly one writer wins), and a part's files are
  uploaded once, complete, from a local staging folder;
- DuckDB, pyarrow and Zarr are handed the store's fsspec filesystem explicitly;
- credentials come from the standard places of the store's client (for S3: ``AWS_*`` variables,
  ``~/.aws/config`` and ``credentials``, ``AWS_ENDPOINT_URL`` for S3-compatible stores) and are never
  written anywhere by attnwh.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, Union

from fsspec import AbstractFileSystem
from fsspec.spec import AbstractBufferedFile

from attnwh.core.errors import WarehouseError, first_line

if TYPE_CHECKING:
    from upath import UPath

Location = Union[Path, "UPath"]
T = TypeVar("T")

MAX_CONCURRENT_REQUESTS = 16  # listings in flight at once (s3fs's own default for a batch of reads is 32)

# stores whose fsspec driver makes ``pipe_file(mode="create")`` a conditional put (If-None-Match: *)
CONDITIONAL_PUT_PROTOCOLS = ("s3", "s3a")

_URL = re.compile(r"\A([A-Za-z][A-Za-z0-9+.-]*)://")


def location(text: str) -> Location:
    """The location a warehouse path or URL names: a local ``Path``, or a ``UPath`` on an object store.

    Listings are not cached (other processes commit parts while this one runs); an unknown protocol,
    or one whose fsspec driver is not installed, is one clear line.
    """
    match = _URL.match(text)
    if match is None:
        return Path(text)
    shown = text if text.isprintable() else repr(text)  # an error names it on one line
    protocol = match.group(1).lower()
    if protocol == "file":
        return Path(text[len("file://") :])
    if protocol not in CONDITIONAL_PUT_PROTOCOLS:
        raise WarehouseError(
            f"warehouse {shown}: {protocol}:// is not supported: attnwh commits parts by a conditional put "
            f"(If-None-Match), and supports {', '.join(p + '://' for p in CONDITIONAL_PUT_PROTOCOLS)} (any S3-compatible store, through AWS_ENDPOINT_URL) or a local folder"
        )
    import fsspec
    from upath import UPath

    try:
        fsspec.get_filesystem_class(protocol)
    except (ImportError, ValueError) as exc:
        raise WarehouseError(f"warehouse {shown}: {protocol}:// cannot be opened ({first_line(exc)}); pip install 'attnwh[s3]'") from exc
    if not text[match.end() :].strip("/"):
        raise WarehouseError(f"warehouse {shown}: name a bucket (and a prefix), like {protocol}://bucket/attnwh")
    try:
        return UPath(f"{protocol}://{text[match.end() :]}".rstrip("/"), use_listings_cache=False)
    except ValueError as exc:
        raise WarehouseError(f"warehouse {shown}: not a usable {protocol}:// URL ({first_line(exc)})") from exc


def is_object_store(where: Location) -> bool:
    """Whether ``where`` is on an object store (no rename, no hard links, no fsync). ``str(where)`` is
    what another process (a cluster worker) reopens it from with ``location``."""
    return not isinstance(where, Path)


def unreadable(path: Location, exc: OSError) -> WarehouseError:
    """The one line for a path the file system refuses to show (permissions, a name too long, an I/O error)."""
    return WarehouseError(f"cannot read {path}: {exc.strerror or first_line(exc)}")


def is_dir(path: Location) -> bool:
    """``path.is_dir()``, but a path that cannot be looked at (a folder above it unreadable, a name too long)
    raises ``WarehouseError`` naming it, where ``Path.is_dir`` raises the bare ``OSError``."""
    try:
        return path.is_dir()
    except OSError as exc:
        raise unreadable(path, exc) from exc


def is_file(path: Location) -> bool:
    """``path.is_file()``, with ``is_dir``'s ``WarehouseError`` for a path that cannot be looked at."""
    try:
        return path.is_file()
    except OSError as exc:
        raise unreadable(path, exc) from exc


def names_in(folder: Location, prefix: str = "") -> list[str]:
    """The names in ``folder`` that start with ``prefix``, sorted; [] where there is no such folder. A local
    folder that cannot be listed raises ``WarehouseError`` naming it: ``Path.glob`` skips it silently, and
    what it holds (runs, commit records) would look absent."""
    if is_object_store(folder):
        return sorted(path.name for path in folder.glob(f"{prefix}*")) if folder.is_dir() else []
    try:
        with os.scandir(folder) as entries:
            return sorted(entry.name for entry in entries if entry.name.startswith(prefix))
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as exc:
        raise unreadable(folder, exc) from exc


def arrow_source(where: Location) -> tuple[str, Any]:
    """``(path, filesystem)`` for pyarrow's readers (``pq.read_table(path, filesystem=...)``)."""
    if not is_object_store(where):
        return str(where), None
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    return where.path, PyFileSystem(FSSpecHandler(where.fs))


def zarr_store(where: Location, read_only: bool = True):
    """What ``zarr.open_group`` opens: the folder's path, or an fsspec store of the object."""
    if not is_object_store(where):
        return str(where)
    from zarr.storage import FsspecStore

    return FsspecStore.from_url(str(where), storage_options=dict(where.storage_options), read_only=read_only)


def make_folders(*folders: Location) -> None:
    """Create local folders (an object store has no folders: a prefix exists once an object is under it)."""
    for folder in folders:
        if not is_object_store(folder):
            folder.mkdir(parents=True, exist_ok=True)


def put_exclusively(target: Location, content: bytes) -> bool:
    """Make an object-store ``target`` appear with ``content``, or return False if it already exists
    (a conditional put: ``If-None-Match: *``; ``probe`` checks once per machine that the store honours it).
    Local files use ``commit._create_exclusively``."""
    try:
        target.fs.pipe_file(target.path, content, mode="create")
    except FileExistsError:
        return False
    return True


def put(target: Location, content: bytes) -> None:
    """Write ``content`` to ``target``, replacing it (a local file through a temporary and a rename)."""
    if is_object_store(target):
        target.fs.pipe_file(target.path, content)
        return
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")  # a process's threads (a Dask worker's) write apart
    with open(tmp, "wb") as handle:
        handle.write(content)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, target)


def renew(target: Location) -> None:
    """Make an existing file's (object's) modification time now; ``FileNotFoundError`` when it is gone: a
    lease is renewed, never recreated (recovery removes it when it takes an attempt over)."""
    if not is_object_store(target):
        os.utime(target)
        return
    target.fs.info(target.path)
    target.fs.pipe_file(target.path, b"")


OBJECT_CACHE_ENV = "ATTNWH_OBJECT_CACHE"  # a folder, or "off"


def object_cache() -> Path | None:
    """Where immutable object-store content is kept on this machine between sessions: ``$ATTNWH_OBJECT_CACHE``,
    else ``$ATTNWH_HOME/cache/objects``; None when ``$ATTNWH_OBJECT_CACHE`` is ``off``.

    Only what cannot change is kept: the tails of committed files, by the sha256 their commit record
    holds; commit records and manifests, by their key and ETag (an overwritten record has another ETag); each
    run's footer metadata, by its files' hashes; and each run's rollups added up over its parts, by the parts'
    hashes and the definitions, or computed from its rows where its rollups are of other definitions, by the rows'
    hashes and the definitions (any warehouse, local ones too). Removing the folder at any time is safe."""
    from attnwh.core.home import attnwh_home

    setting = os.environ.get(OBJECT_CACHE_ENV)
    if setting == "off":
        return None
    return Path(setting) if setting else attnwh_home() / "cache" / "objects"


CHECK_BYTES = 4  # each kept content ends with its CRC-32: a damaged entry is read from the store again, never trusted


def _cache_file(cache: Path, name: str) -> Path:
    return cache / name[:2] / name


def cached_content(cache: Path | None, name: str) -> bytes | None:
    """What the cache keeps under ``name``; None when nothing is kept, or what is kept is damaged."""
    if cache is None:
        return None
    try:
        kept = _cache_file(cache, name).read_bytes()
    except OSError:
        return None
    content, check = kept[:-CHECK_BYTES], kept[-CHECK_BYTES:]
    return content if len(kept) >= CHECK_BYTES and zlib.crc32(content).to_bytes(CHECK_BYTES, "big") == check else None


def cached_size(cache: Path | None, name: str) -> int | None:
    """The size of what the cache keeps under ``name`` (None: nothing), without reading it."""
    if cache is None:
        return None
    try:
        return _cache_file(cache, name).stat().st_size - CHECK_BYTES
    except OSError:
        return None


def keep_content(cache: Path | None, name: str, content: bytes) -> None:
    """Keep ``content`` under ``name`` (written whole, then renamed into place; followed by its CRC-32)."""
    if cache is None:
        return
    target = _cache_file(cache, name)
    content = content + zlib.crc32(content).to_bytes(CHECK_BYTES, "big")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_bytes(content)
        os.replace(tmp, target)
    except OSError:
        pass  # a cache that cannot be written is only slower


def read_all(paths: list[Location], tags: list[str | None] | None = None) -> list[bytes | BaseException]:
    """The content of every object in ``paths`` (on one store), read concurrently; an exception in place
    of one that failed. An object with a tag (its ETag) is taken from the local cache when it is there.
    Local files are read in turn, an ``OSError`` in place of one that cannot be read."""
    if not paths:
        return []
    if not is_object_store(paths[0]):
        found: list[bytes | BaseException] = []
        for path in paths:
            try:
                found.append(path.read_bytes())
            except OSError as exc:
                found.append(exc)
        return found
    import hashlib

    cache = object_cache() if tags is not None else None
    names = [hashlib.sha256(f"{path}\n{tag}".encode()).hexdigest() if tag else None for path, tag in zip(paths, tags or [None] * len(paths))]
    found: dict[int, bytes | BaseException] = {i: content for i, name in enumerate(names) if name and (content := cached_content(cache, name)) is not None}
    missing = [i for i in range(len(paths)) if i not in found]
    if missing:
        fs = paths[0].fs
        # s3fs asks for an object's size first (a HEAD) to split large reads; these are small: one GET each
        whole = {"max_concurrency": 1} if hasattr(fs, "max_concurrency") else {}
        fetched = fs.cat([paths[i].path for i in missing], on_error="return", **whole)
        for i in missing:
            content = fetched.get(paths[i].path, FileNotFoundError(paths[i].path))
            found[i] = content
            if isinstance(content, bytes) and names[i]:
                keep_content(cache, names[i], content)
    return [found[i] for i in range(len(paths))]


def concurrently(calls: list[Callable[[], T]]) -> list[T]:
    """The results of ``calls``, run in threads (requests to a store overlap: a session's listings take one
    round trip per level, not one per run). An exception in a call is raised here."""
    if len(calls) < 2:
        return [call() for call in calls]
    with ThreadPoolExecutor(max_workers=min(len(calls), MAX_CONCURRENT_REQUESTS)) as pool:
        return list(pool.map(lambda call: call(), calls))


def _listing(folder: Location) -> list[tuple[str, dict]]:
    """(name, fsspec entry) of everything directly under an object-store ``folder`` (one delimited listing)."""
    try:
        entries = folder.fs.ls(folder.path, detail=True)
    except FileNotFoundError:
        return []
    return [(entry["name"].rstrip("/").rsplit("/", 1)[-1], entry) for entry in entries]


def subfolders(folder: Location, prefix: str = "") -> list[Location]:
    """The folders (common prefixes) directly under an object-store ``folder`` whose names start with ``prefix``."""
    return [folder / name for name, entry in sorted(_listing(folder), key=lambda item: item[0]) if entry.get("type") == "directory" and name.startswith(prefix)]


def read_tagged(path: Location, tags: dict[str, str | None] | None) -> bytes:
    """The content of ``path``: on an object store, from the local cache when ``tags`` (its folder's
    listing) gives its ETag and it was read before; raises ``FileNotFoundError`` when it is not there."""
    if not is_object_store(path):
        return path.read_bytes()
    if tags is not None and path.name not in tags:
        raise FileNotFoundError(str(path))
    (content,) = read_all([path], [tags.get(path.name) if tags else None])
    if isinstance(content, BaseException):
        raise content
    return content


def tagged_listing(folder: Location) -> dict[str, str | None]:
    """The objects directly under an object-store ``folder``: name -> ETag."""
    return {name: entry.get("ETag") or entry.get("etag") for name, entry in _listing(folder) if entry.get("type") != "directory"}


def upload_folder(folder: Path, target: Location) -> None:
    """Copy every file under the local ``folder`` to the object-store prefix ``target`` (concurrently)."""
    files = sorted(path for path in folder.rglob("*") if path.is_file())
    if files:
        target.fs.put([str(path) for path in files], [f"{target.path}/{path.relative_to(folder).as_posix()}" for path in files])


def remove_tree(where: Location) -> None:
    """Remove a folder (or every object under a prefix); gone already is fine."""
    if not is_object_store(where):
        shutil.rmtree(where, ignore_errors=True)
        return
    try:
        where.fs.rm(where.path, recursive=True)
    except FileNotFoundError:
        pass


def remove_file(where: Location) -> None:
    try:
        where.unlink() if not is_object_store(where) else where.fs.rm_file(where.path)
    except FileNotFoundError:
        pass


def objects_under(folder: Location) -> dict[str, tuple[int, str | None]]:
    """Every object under an object-store ``folder`` (at any depth): path relative to it -> (size, ETag),
    from one listing (S3 returns 1,000 keys a page; a part is 5 objects, 11 with raw rows: a run of the study's
    ~120 parts is one or two pages)."""
    try:
        found = folder.fs.find(folder.path, detail=True)
    except FileNotFoundError:
        return {}
    prefix = folder.path.rstrip("/") + "/"
    return {name.removeprefix(prefix): (int(info.get("size") or 0), info.get("ETag") or info.get("etag")) for name, info in found.items() if info.get("type") != "directory"}


def names_under_tree(folder: Location) -> list[str]:
    """Every file under ``folder`` (at any depth), by path relative to it; one listing on an object store. Files and
    folders that another process removes while the tree is walked are left out, not an error."""
    if is_object_store(folder):
        return sorted(objects_under(folder))
    found, pending = [], [(folder, "")]
    while pending:
        where, prefix = pending.pop()
        try:
            entries = list(os.scandir(where))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    pending.append((entry.path, f"{prefix}{entry.name}/"))
                elif entry.is_file(follow_symlinks=False):
                    found.append(prefix + entry.name)
            except FileNotFoundError:
                continue
    return sorted(found)


def sizes_under(folder: Location) -> dict[str, int]:
    """Size of every file under ``folder``, by path relative to it (one listing on an object store). A local folder
    under it that cannot be listed raises ``WarehouseError`` naming it (``Path.rglob`` skipped it: its files looked
    missing to ``verify``, and a part's folder looked empty); one that is not there (any more) is empty."""
    if is_object_store(folder):
        return {name: size for name, (size, _) in objects_under(folder).items()}

    def refuse(exc: OSError) -> None:
        if not isinstance(exc, (FileNotFoundError, NotADirectoryError)):
            raise unreadable(Path(exc.filename or folder), exc) from exc

    found = {}
    for where, _, names in os.walk(folder, onerror=refuse):
        for name in names:
            path = Path(where) / name
            try:
                if path.is_file():
                    found[path.relative_to(folder).as_posix()] = path.stat().st_size
            except FileNotFoundError:
                continue  # removed while the tree is walked
            except OSError as exc:
                raise unreadable(path, exc) from exc
    return found


@contextmanager
def local_staging(prefix: str) -> Iterator[Path]:
    """A local temporary folder a part is written into before it is uploaded; removed afterwards."""
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def describe_error(where: Location, exc: BaseException) -> str:
    """One line for a failure to reach or use a store (never its credentials)."""
    name = type(exc).__name__
    text = first_line(exc)
    if isinstance(exc, PermissionError) or "AccessDenied" in text or "InvalidAccessKeyId" in text or "SignatureDoesNotMatch" in text or "Forbidden" in text:
        return f"warehouse {where}: access denied ({text}); check the store's credentials (for S3: AWS_ACCESS_KEY_ID / AWS_PROFILE)"
    if "Could not connect" in text or "Connect" in name or "EndpointConnection" in name or "connect" in text.lower():
        return f"warehouse {where}: the store cannot be reached ({text}); check its endpoint (for S3: AWS_ENDPOINT_URL)"
    if isinstance(exc, FileNotFoundError) and "bucket" in text.lower():
        return f"warehouse {where}: {text}"
    return f"warehouse {where}: {name}: {text}"


TAIL_BYTES = 128 * 1024  # read ahead at the end of each committed file: its footer, or all of a small file


class CommittedFile(AbstractBufferedFile):
    """A committed object read through ``CommittedObjects`` (its tail from memory)."""

    def _fetch_range(self, start: int, end: int) -> bytes:
        return self.fs.read_range(self.path, start, end)


class CommittedObjects(AbstractFileSystem):
    """What DuckDB reads an object-store warehouse through in one session. Committed objects never
    change (their commit records hold their sizes and hashes), so this answers DuckDB's size and
    modification-time questions from the records, without a request, and serves the end of every
    file (Parquet footers; whole rollup and sample files) from the local cache, or from one concurrent
    read of those not cached yet (``prefetch``). Other reads go to the store; writes are refused."""

    cachable = False

    def __init__(self, fs, files: dict[str, tuple[int, str]]):
        super().__init__()
        self.fs = fs
        self.protocol = fs.protocol
        self.sizes = {fs._strip_protocol(path): size for path, (size, _) in files.items()}
        self.hashes = {fs._strip_protocol(path): sha256 for path, (_, sha256) in files.items()}
        self.starts = {path: max(0, size - TAIL_BYTES) for path, size in self.sizes.items()}
        self.names = {path: f"tail-{self.hashes[path]}-{start}" for path, start in self.starts.items()}
        self.cache = object_cache()
        self.tails: dict[str, tuple[int, bytes]] = {}

    def _strip_protocol(self, path):
        return self.fs._strip_protocol(path)

    def prefetch(self) -> None:
        """The last ``TAIL_BYTES`` of every known file not in the local cache (by the file's sha256), read
        concurrently; cached ones are read when DuckDB first asks (a query reads a few tables' footers)."""
        missing = sorted(path for path in self.sizes if cached_size(self.cache, self.names[path]) != self.sizes[path] - self.starts[path])
        if not missing:
            return
        found = self.fs.cat_ranges(missing, [self.starts[path] for path in missing], [self.sizes[path] for path in missing], on_error="return")
        for path, content in zip(missing, found):
            if isinstance(content, bytes) and len(content) == self.sizes[path] - self.starts[path]:
                self.tails[path] = (self.starts[path], content)
                keep_content(self.cache, self.names[path], content)

    def _tail(self, path: str) -> tuple[int, bytes] | None:
        tail = self.tails.get(path)
        if tail is None and path in self.sizes:
            start, length = self.starts[path], self.sizes[path] - self.starts[path]
            content = cached_content(self.cache, self.names[path])
            if content is None or len(content) != length:  # damaged (or removed) since ``prefetch`` looked: read again
                content = self.fs.cat_file(path, start=start, end=self.sizes[path])
                if len(content) != length:
                    return None
                keep_content(self.cache, self.names[path], content)
            tail = self.tails[path] = (start, content)
        return tail

    def read_range(self, path: str, start: int, end: int) -> bytes:
        tail = self._tail(path)
        if tail is not None and start >= tail[0]:
            return tail[1][start - tail[0] : end - tail[0]]
        return self.fs.cat_file(path, start=start, end=end)

    def info(self, path, **kwargs):
        path = self._strip_protocol(path)
        if path in self.sizes:
            return {"name": path, "size": self.sizes[path], "type": "file"}
        return self.fs.info(path, **kwargs)

    def modified(self, path):
        path = self._strip_protocol(path)
        if path in self.sizes:
            return datetime(2000, 1, 1, tzinfo=timezone.utc)  # immutable: any fixed time keeps DuckDB's footer cache valid
        return self.fs.modified(path)

    def ls(self, path, detail=True, **kwargs):
        return self.fs.ls(path, detail=detail, **kwargs)

    def _open(self, path, mode="rb", block_size=None, autocommit=True, cache_options=None, **kwargs):
        if mode != "rb":
            raise PermissionError(f"{path}: the warehouse is read-only here")
        path = self._strip_protocol(path)
        return CommittedFile(self, path, mode, block_size=block_size or 8 * 2**20, cache_type="readahead", size=self.info(path)["size"])


def committed_objects(where: Location, files: dict[str, tuple[int, str]]) -> CommittedObjects:
    """The filesystem DuckDB reads an object-store warehouse through in one session, its tails prefetched."""
    fs = CommittedObjects(where.fs, files)
    fs.prefetch()
    return fs
