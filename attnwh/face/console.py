"""What every ``attnwh`` command shares: one-line errors, warnings, the query session of read
commands, the progress bar and the option types. Library code raises ``AttnwhError`` subclasses;
``handles_errors`` turns them into one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import functools
import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer

from attnwh.core.errors import AttnwhError, UsageError

WarehouseOption = Annotated[str | None, typer.Option("--warehouse", "-w", help="Warehouse folder (default: $ATTNWH_WAREHOUSE, else ./attnwh-warehouse).")]
FormatOption = Annotated[str, typer.Option("--format", help="Output format: table, csv or json.")]


SCORE_HELP = "a head score of the warehouse's definitions (`attnwh query --list` shows them as head_ranking's score choices)"


def head_score(value: str) -> str:
    """A ``--score`` value, checked against the warehouse's definitions (read when a value is given, so
    a new score needs no edit here and commands that take no score never load them)."""
    from attnwh.warehouse.definitions import head_score_names

    names = head_score_names()
    if value not in names:
        raise typer.BadParameter(f"{value!r} is not a head score; choose {', '.join(names)}")
    return value


def stack_size(value: str | int | None) -> int | None:
    """A ``--stack`` value: ``auto`` (None: extract.reuse.StackSize chooses) or a number of conditions per pass."""
    if value is None or isinstance(value, int):
        return value
    if value.strip() == "auto":
        return None
    digits = value.strip()
    if not (digits.isascii() and digits.isdigit()):  # int() would take other scripts' digits and "+4" too
        raise typer.BadParameter(f"{value!r} is neither auto nor a number of conditions per pass")
    return int(digits)


def output_path(value: str | Path | None) -> Path | None:
    """An ``--out`` value: a path, never an empty one (``Path("")`` is the current folder: a report's pages or a model
    would be written among whatever is there)."""
    if value is None or isinstance(value, Path):
        return value
    if not value.strip():
        raise typer.BadParameter("is empty; name the folder or file to write")
    return Path(value)


def check_outside_warehouse(path: Path, warehouse: str | None, option: str = "--out") -> None:
    """Refuse an output path inside the warehouse (a local one): a file written there replaces or adds to what its
    commits recorded, and the readers then leave the run out."""
    from attnwh.warehouse.layout import warehouse_location
    from attnwh.warehouse.storage import is_object_store

    root = warehouse_location(warehouse)
    if is_object_store(root):
        return
    inside, target = Path(root).resolve(), Path(path).resolve()
    if target == inside or inside in target.parents:
        raise UsageError(f"{option} {path} is inside the warehouse {root}: attnwh writes there only through its commits; choose a path outside it")


def check_new_folder(folder: Path, option: str) -> None:
    """Refuse a folder a command would write into only after its work (training, extraction) when it cannot be made there:
    a file by that name, a file among its parents, or a parent this process may not write in."""
    try:
        if folder.exists() and not folder.is_dir():
            raise UsageError(f"{option} {folder} is a file, not a folder; give a folder")
        existing = folder if folder.exists() else next((parent for parent in folder.parents if parent.exists()), Path("."))
        if not existing.is_dir():
            raise UsageError(f"{option} {folder}: {existing} is a file, so no folder can be made under it")
        # what writing there needs: a folder made and removed (os.access says yes to root on read-only or virtual file systems)
        tempfile.TemporaryDirectory(dir=existing, prefix=".attnwh-probe-").cleanup()
    except OSError as exc:  # a name too long, a permission denied
        raise UsageError(f"{option} {folder}: cannot write there ({exc.strerror or exc})") from exc


def one_line(text: str) -> str:
    """``text`` with every line break and control character escaped (``\\x1e``): a message is one line
    on any terminal and for ``str.splitlines``, whatever user input it quotes."""
    return "".join(char if char.isprintable() or char == " " else repr(char)[1:-1] for char in text)


def fail(message: str, code: int) -> None:
    typer.echo(f"attnwh: error: {one_line(message)}", err=True)
    raise typer.Exit(code)


def handles_errors(command):
    """Turn library errors into one line on stderr and a non-zero exit."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except AttnwhError as exc:
            fail(str(exc), exc.exit_code)
        except KeyboardInterrupt:
            fail("interrupted; committed parts are kept, run the same command again to resume", 130)

    return wrapper


def warn(lines: list[str]) -> None:
    for line in lines:
        typer.echo(f"attnwh: warning: {one_line(line)}", err=True)


def warn_reuse_off(reuse_off: str | None) -> None:
    """Say (on one line) that a sweep's first-batch check turned reuse off, and why."""
    if reuse_off:
        warn([f"{reuse_off}: evaluated each condition on its own (results are those of the plain path)"])


class read_session:
    """The query session of a read command; runs left out of it are named on stderr, never dropped silently."""

    def __init__(self, warehouse: str | None):
        self.warehouse = warehouse

    def __enter__(self):
        from attnwh.queries.library import open_session

        self.catalog = open_session(self.warehouse)
        warn(self.catalog.warnings)
        return self.catalog

    def __exit__(self, *exc_info) -> None:
        self.catalog.close()


def check_format(fmt: str) -> str:
    from attnwh.core.output import FORMATS

    if fmt not in FORMATS:
        raise UsageError(f"unknown format {fmt!r}; choose {', '.join(FORMATS)}")
    return fmt


class progress:
    """A progress bar on stderr showing items and items/s; shown from the first finished part."""

    def __init__(self, label: str = "extract", unit: str = "samples"):
        self.label, self.unit = label, unit

    def __enter__(self):
        self.progress = None
        return self.update

    def update(self, done: int, total: int) -> None:
        if self.progress is None:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(
                TextColumn(self.label), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]} " + self.unit + "/s"), TimeElapsedColumn(), console=Console(stderr=True)
            )
            self.started = time.perf_counter()
            self.task = self.progress.add_task(self.label, total=total, rate="-")
            self.progress.start()
        elapsed = time.perf_counter() - self.started
        self.progress.update(self.task, completed=done, rate=f"{done / elapsed:.1f}" if elapsed > 0 else "-")

    def __exit__(self, *exc_info) -> None:
        if self.progress is not None:
            self.progress.stop()
