"""Attempt leases: how a writer shows it still works on a part, and how others know when it no longer does.

An attempt's lease is a file (an object on a store) ``_leases/part-N.<attempt>`` whose modification
time its writer renews every lease time / 5 (at most 30 s) while it works. Any process may take over an
attempt whose lease is older than the lease time (``$ATTNWH_LEASE_SECONDS``, else 300 s), or whose
writer is a process of its own host that no longer runs; it never takes over a fresh one.

The guarantee, and what it assumes (``commit`` holds the other half):

- A failed renewal is retried (backoff from lease time / 40 up to the renewal interval). The lease is
  **lost** when renewals have failed for longer than the lease time, or when a renewal finds the lease
  gone (recovery removes it first when it takes an attempt over); a renewal never recreates it.
- Before its commit record is written, the writer stops renewing and **confirms** its lease: one more
  renewal, which must succeed within half a lease time of the last successful one (else: lost). So a
  writer writes its record at most L/2 after a renewal its own monotonic clock timed, and recovery
  removes an attempt only when the lease's timestamp (the filesystem's or the store's clock) is more
  than L old by the recovering machine's clock. With the clocks of writers, recovering machines and the
  store within L/2 of each other (150 s by default) and a record put that takes less than the rest of
  that half, no recovery removes the files of an attempt that commits. Beyond that, the writer checks
  its files after its record is written (a local part: publishes it) and withdraws a record that names
  removed files, and recovery does the same after it removes an attempt; ``verify`` names anything left.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid

from attnwh.core.errors import WarehouseError, first_line
from attnwh.warehouse import storage
from attnwh.warehouse.layout import RunPaths
from attnwh.warehouse.storage import Location

LEASE_ENV = "ATTNWH_LEASE_SECONDS"
DEFAULT_LEASE_SECONDS = 300.0
COMMIT_WINDOW = 0.5  # a writer writes its record only within this share of the lease time after a renewal

_HELD: set[str] = set()  # attempts whose lease this process holds now (its writer threads are alive)
_HELD_LOCK = threading.Lock()


def lease_timeout() -> float:
    """How long an attempt's lease lasts without renewal: ``$ATTNWH_LEASE_SECONDS``, else 300 s."""
    text = os.environ.get(LEASE_ENV)
    try:
        return float(text) if text else DEFAULT_LEASE_SECONDS
    except ValueError as exc:
        raise WarehouseError(f"{LEASE_ENV} must be a number of seconds, got {text!r}") from exc


def new_attempt_id() -> str:
    """Names an attempt by host and process, so recovery knows whether its writer may still live."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def attempt_writer(attempt: str) -> tuple[str, int] | None:
    """(host, pid) of the process an attempt id names (``new_attempt_id``); None for another kind of name.
    Host names may contain '-': the pid is the second-to-last field."""
    fields = attempt.rsplit("-", 2)
    if len(fields) != 3 or not fields[1].isdigit():
        return None
    return fields[0], int(fields[1])


def writer_alive(attempt: str) -> bool:
    """Whether the attempt's writer may still run: a live process of this host (in this process: one
    that holds the attempt's lease now), or any process of another host (it cannot be told from here)."""
    writer = attempt_writer(attempt)
    if writer is None:
        return False
    host, pid = writer
    if host != socket.gethostname():
        return True
    if pid == os.getpid():
        with _HELD_LOCK:
            return attempt in _HELD
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # no such process (a number past any process id is none either)
        return False
    except PermissionError:
        return True
    return True


def dead_here(attempt: str) -> bool:
    """The attempt's writer was a process of this host that no longer runs (or no longer works on it)."""
    writer = attempt_writer(attempt)
    return writer is not None and writer[0] == socket.gethostname() and not writer_alive(attempt)


def lease_age(run: RunPaths, part_id: int | None, attempt: str) -> float | None:
    """Seconds since the attempt's lease was last renewed (None: it has no lease)."""
    if part_id is None:
        return None
    try:
        return max(0.0, time.time() - run.lease(part_id, attempt).stat().st_mtime)
    except OSError:
        return None


def expired(run: RunPaths, part_id: int | None, attempt: str, lease_seconds: float) -> bool:
    """Whether an attempt may be taken over: its writer is gone, or its lease ran out."""
    if dead_here(attempt):
        return True
    age = lease_age(run, part_id, attempt)
    if age is None:
        return not writer_alive(attempt)
    return age > lease_seconds


class LeaseLost(Exception):
    """The writer no longer holds its attempt's lease (the reason is the message): it must not commit."""


class Lease:
    """An attempt's lease, renewed by a background thread while the attempt's writer works."""

    def __init__(self, path: Location, attempt: str, seconds: float | None = None):
        self.path = path
        self.attempt = attempt
        self.seconds = lease_timeout() if seconds is None else seconds
        self.interval = max(0.05, min(30.0, self.seconds / 5))
        self.stop = threading.Event()
        self.renewed = time.monotonic()  # when the last successful renewal was sent (this process's clock)
        self.lost: str | None = None  # why the lease was lost, once it is
        self.thread: threading.Thread | None = None

    def __enter__(self) -> "Lease":
        storage.make_folders(self.path.parent)
        sent = time.monotonic()
        if storage.is_object_store(self.path):
            storage.put(self.path, b"")  # an object's modification time is its last put
        else:
            self.path.touch()
        self.renewed = sent
        with _HELD_LOCK:
            _HELD.add(self.attempt)
        self.thread = threading.Thread(target=self._keep, name="attnwh-lease", daemon=True)
        self.thread.start()
        return self

    def renew(self) -> None:
        """Renew once: ``FileNotFoundError`` when the lease is gone (taken over), another error when the renewal failed."""
        sent = time.monotonic()
        storage.renew(self.path)
        self.renewed = max(self.renewed, sent)

    def _keep(self) -> None:
        delay = self.interval
        while not self.stop.wait(delay):
            try:
                self.renew()
                delay = self.interval
            except FileNotFoundError:
                self.lost = "its lease was removed: another process took its attempt over"
                return
            except Exception as exc:  # noqa: BLE001  a store's client raises its own kinds: each is a failed renewal
                if time.monotonic() - self.renewed > self.seconds:
                    self.lost = f"its lease could not be renewed for {self.seconds:g} s ({first_line(exc)})"
                    return
                delay = min(self.interval, delay / 8 if delay == self.interval else delay * 2)

    def confirm(self) -> None:
        """Stop renewing, and renew once more right before the commit record is written; ``LeaseLost`` when
        the lease is gone, expired, or cannot be renewed within half a lease time of the last renewal."""
        self._stop_renewing()
        if self.lost:
            raise LeaseLost(self.lost)
        if time.monotonic() - self.renewed > self.seconds:
            raise LeaseLost(f"its lease expired: not renewed for {time.monotonic() - self.renewed:.1f} s (lease time {self.seconds:g} s)")
        deadline = self.renewed + self.seconds * COMMIT_WINDOW
        retry = self.interval / 8
        while True:
            try:
                self.renew()
                return
            except FileNotFoundError:
                raise LeaseLost("its lease was removed: another process took its attempt over") from None
            except Exception as exc:  # noqa: BLE001
                if time.monotonic() + retry > deadline:
                    raise LeaseLost(f"its lease could not be renewed before the commit ({first_line(exc)})") from None
                time.sleep(retry)
                retry = min(self.interval, retry * 2)

    def _stop_renewing(self) -> None:
        self.stop.set()
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join()

    def __exit__(self, *exc_info) -> None:
        self._stop_renewing()
        with _HELD_LOCK:
            _HELD.discard(self.attempt)
        storage.remove_file(self.path)
