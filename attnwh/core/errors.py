"""Named errors raised by library code.

The CLI turns every ``AttnwhError`` into one line on stderr and a non-zero exit; anything else is a
bug and keeps its traceback.
"""


class AttnwhError(Exception):
    """Base class of every error a user can cause and fix."""

    exit_code = 1


class UsageError(AttnwhError):
    """A bad option value or combination."""

    exit_code = 2


class ModelError(AttnwhError):
    """A model that cannot be found, loaded or is not supported."""


class BenchmarkError(AttnwhError):
    """An unknown benchmark or benchmark data that cannot be read."""


class WarehouseError(AttnwhError):
    """A warehouse path that cannot be used, or a warehouse in an unexpected state."""


class FingerprintMismatch(WarehouseError):
    """A resume whose settings differ from the run it names."""

    def __init__(self, run_id: str, differing: dict[str, tuple[object, object]]):
        self.run_id = run_id
        self.differing = differing
        keys = ", ".join(f"{key} (run: {_short(old)}, now: {_short(new)})" for key, (old, new) in sorted(differing.items()))
        super().__init__(f"run {run_id} was made with other settings; differing keys: {keys}")


def _short(value: object, limit: int = 60) -> str:
    """A setting as a one-line error shows it: a long one (a sweep's list of conditions) cut in its middle, its start
    and its end kept (two paths differing in their last letters stay told apart), with its length."""
    text = repr(value)
    if len(text) <= limit:
        return text
    size = f"{len(value)} items: " if isinstance(value, list | tuple | dict) else ""
    keep = (limit - len(size)) // 2
    return f"{size}{text[:keep]}...{text[-keep:]}"


class IntegrityError(WarehouseError):
    """Committed files that do not match their commit record."""


class SqlRefused(AttnwhError):
    """A SQL statement that is not a read-only query over the warehouse."""

    exit_code = 2


class SqlError(AttnwhError):
    """A read-only query that DuckDB could not run (syntax, unknown column, ...)."""


def first_line(exc: BaseException, limit: int | None = None) -> str:
    """The first line of an exception's message (its type's name when it has none), cut at ``limit`` characters."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line[:limit] if limit is not None else line
