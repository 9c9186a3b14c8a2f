"""Whether an object store honours conditional puts, asked once per machine and store.

attnwh commits a part by creating its record exclusively (``If-None-Match: *``); fsspec documents that
header as known to work on AWS S3, and a store that ignores it lets two writers both "win" one part.
So before a warehouse is created on a store, or first written from a machine, attnwh creates a probe
object exclusively twice: the second create must fail. A store where it does not is refused in one line
naming it. A store that holds is remembered in this machine's object cache (``storage.object_cache``;
remove the folder to ask again); with that cache off (``ATTNWH_OBJECT_CACHE=off``) every commit asks
again (three requests), as nothing else of a process outlives one call.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from datetime import datetime, timezone

from attnwh.core.errors import WarehouseError
from attnwh.warehouse import storage
from attnwh.warehouse.storage import Location


def store_name(where: Location) -> str:
    """The store ``where`` is on, as a user names it: ``s3://BUCKET at ENDPOINT`` (``AWS S3`` without an endpoint)."""
    fs = where.fs
    endpoint = (
        getattr(fs, "endpoint_url", None)
        or (getattr(fs, "client_kwargs", None) or {}).get("endpoint_url")
        or os.environ.get("AWS_ENDPOINT_URL_S3")
        or os.environ.get("AWS_ENDPOINT_URL")
        or "AWS S3"
    )
    bucket = where.path.split("/", 1)[0]
    return f"{where.protocol if isinstance(where.protocol, str) else where.protocol[0]}://{bucket} at {endpoint}"


def check_conditional_puts(where: Location) -> None:
    """Refuse (``WarehouseError``, one line naming the store) a store that lets a second exclusive create
    of one object succeed. A local folder always holds (a hard link is exclusive)."""
    if not storage.is_object_store(where):
        return
    store = store_name(where)
    cache = storage.object_cache()
    entry = "store-" + hashlib.sha256(store.encode()).hexdigest()
    if storage.cached_content(cache, entry) is not None:
        return
    probe = where / f".attnwh-probe-{uuid.uuid4().hex}"
    try:
        first = storage.put_exclusively(probe, b"first")
        second = storage.put_exclusively(probe, b"second") if first else None
    finally:
        storage.remove_file(probe)
    if not first:
        raise WarehouseError(f"warehouse {where}: the store {store} refused the exclusive create of a new object {probe.name}; attnwh cannot commit parts there")
    if second:
        raise WarehouseError(
            f"warehouse {where}: the store {store} ignores conditional puts (If-None-Match: *): a second exclusive create "
            f"of one object succeeded, so two writers could both commit one part; attnwh refuses to write there (use a store that honours If-None-Match)"
        )
    storage.keep_content(cache, entry, f"{store} honours If-None-Match (probed {datetime.now(timezone.utc).isoformat(timespec='seconds')})\n".encode())
