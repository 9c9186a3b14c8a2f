"""Reading helpers shared by the benchmark loaders of public formats (JSON, JSON lines, TSV, Parquet).

A file that is not in the expected format raises ``BenchmarkError``: one line naming the file, the
line (or row) and column, and what was expected. Finer problems (one bad row) are the loaders' to
turn into error samples; ``error_sample`` and ``unique_keys`` help with that. Images are found by
``ImageIndex`` and decoded only when a sample asks (``attnwh.extract.benchmarks.images``).
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import re
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from attnwh.core.errors import BenchmarkError
from attnwh.extract.benchmarks.images import ImageLoadError, file_loader, open_image_bytes, open_image_file
from attnwh.extract.benchmarks.registry import Sample

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
SEARCH_DEPTH = 2  # folders below ``--data`` searched for question files and images
CSV_FIELD_LIMIT = 2**31 - 1  # base64 images are megabytes long; the largest limit every platform accepts
_SPACE = re.compile(r"\s*")
_DECODER = json.JSONDecoder()

ImageLoader = Callable[[], Image.Image]
Located = tuple[int, Any]  # (1-based line of the item in its file, the item)


def require_data(benchmark: str, data: Path | None, data_help: str) -> Path:
    """The ``--data`` path; loaders of local formats cannot do without one."""
    if data is None:
        raise BenchmarkError(f"benchmark {benchmark} needs --data: {data_help}")
    return Path(data)


# ---------------------------------------------------------------- text, JSON and JSON lines


def read_text(path: Path) -> str:
    """The whole file as UTF-8 text (a byte order mark is dropped)."""
    try:
        data = Path(path).read_bytes().removeprefix(codecs.BOM_UTF8)
    except OSError as exc:
        raise BenchmarkError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise BenchmarkError(f"{path}: line {line}, column {column}: byte 0x{data[exc.start]:02x} is not UTF-8; expected UTF-8 text") from exc


def read_json(path: Path, expected: str, text: str | None = None) -> tuple[str, Any]:
    """The text of a JSON file (``text``: already read) and its parsed value."""
    text = read_text(path) if text is None else text
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BenchmarkError(f"{path}: line {exc.lineno}, column {exc.colno}: not valid JSON ({exc.msg}); expected {expected}") from exc
    except RecursionError as exc:
        raise BenchmarkError(f"{path}: {NESTED}; expected {expected}") from exc
    if lone_surrogate(value):
        raise BenchmarkError(f"{path}: {SURROGATE}; expected {expected}")
    return text, value


NESTED = "JSON nested too deeply to read"
SURROGATE = "a string holds a lone surrogate escape (\\ud800 to \\udfff without its pair), which is no character"


def lone_surrogate(value: Any) -> bool:
    """Whether a parsed JSON value holds a string (or key) with a lone surrogate: JSON's escapes allow one, no UTF-8 text
    (a Parquet string column, a file name) can hold it. Walked without recursion (a value may be nested deeply)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def json_list_items(path: Path, expected: str, key: str | None = None, text: str | None = None) -> tuple[Any, list[Located]]:
    """The document and the items of its list with the line each starts on: the top-level list, or ``document[key]``
    (``text``: the file's text, when the caller has read it)."""
    text, document = read_json(path, expected, text)
    if key is None and not isinstance(document, list):
        raise BenchmarkError(f"{path}: line 1: the document is a JSON {_json_kind(document)}; expected {expected}")
    if key is not None and not (isinstance(document, dict) and isinstance(document.get(key), list)):
        raise BenchmarkError(f"{path}: line 1: no list under key {key!r}; expected {expected}")
    start = _skip_space(text, 0)
    if key is not None:
        start = _member_position(text, start, key)
    return document, _array_items(text, start)


class BadLine(ValueError):
    """A line of a JSON-lines file that is not JSON, kept in place by ``read_json_lines(keep_bad_lines=True)``."""


def read_json_lines(path: Path, expected: str, keep_bad_lines: bool = False, text: str | None = None) -> list[Located]:
    """The values of a JSON-lines file (blank lines skipped), each with its line number.

    A line that is not JSON refuses the file, or with ``keep_bad_lines`` becomes a ``BadLine`` item
    (for loaders that make it an error row); a file with no good line is refused either way.
    """
    items: list[Located] = []
    first_error = None
    text = read_text(path) if text is None else text
    for number, line in enumerate(text.split("\n"), start=1):  # not splitlines: U+2028 is valid in JSON
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            problem, message = f"not JSON ({exc.msg} at column {exc.colno})", f"{path}: line {number}, column {exc.colno}: not valid JSON ({exc.msg}); expected {expected}"
        except RecursionError:
            problem, message = NESTED, f"{path}: line {number}: {NESTED}; expected {expected}"
        else:
            if not lone_surrogate(value):
                items.append((number, value))
                continue
            problem, message = SURROGATE, f"{path}: line {number}: {SURROGATE}; expected {expected}"
        if not keep_bad_lines:
            raise BenchmarkError(message)
        first_error = first_error or message
        items.append((number, BadLine(problem)))
    if not items:
        raise BenchmarkError(f"{path}: line 1: the file is empty; expected {expected}")
    if first_error is not None and all(isinstance(item, BadLine) for _, item in items):
        raise BenchmarkError(first_error)
    return items


def read_json_records(path: Path, expected: str) -> list[Located]:
    """The items of a JSON array or of a JSON-lines file, whichever the file is, each with its line.

    POPE publishes both under one suffix: its COCO files are JSON lines, its A-OKVQA and GQA files
    pretty-printed arrays.
    """
    text = read_text(path)
    if text.lstrip().startswith("["):
        _, items = json_list_items(path, expected, text=text)
        if not items:
            raise BenchmarkError(f"{path}: line 1: the list is empty; expected {expected}")
        return items
    return read_json_lines(path, expected, text=text)


def check_keys_somewhere(path: Path, items: Sequence[Located], required: Sequence[str], expected: str) -> None:
    """Refuse a file whose items never carry all ``required`` keys: it is some other format."""
    if any(isinstance(item, dict) and all(name in item for name in required) for _, item in items):
        return
    line, first = items[0] if items else (1, None)
    missing = [name for name in required if not (isinstance(first, dict) and name in first)]
    raise BenchmarkError(f"{path}: line {line}: no item has the keys {', '.join(required)} (the first lacks {', '.join(missing)}); expected {expected}")


def _json_kind(value: Any) -> str:
    return {dict: "object", list: "list", str: "string"}.get(type(value), "number, boolean or null")


def _skip_space(text: str, position: int) -> int:
    return _SPACE.match(text, position).end()


def _member_position(text: str, position: int, key: str) -> int:
    """Where the value of ``key`` starts in the object at ``position`` (the text is valid JSON)."""
    position = _skip_space(text, position + 1)
    while True:
        name, position = _DECODER.raw_decode(text, position)
        position = _skip_space(text, _skip_space(text, position) + 1)  # past the colon
        if name == key:
            return position
        _, position = _DECODER.raw_decode(text, position)
        position = _skip_space(text, _skip_space(text, position) + 1)  # past the comma


def _array_items(text: str, position: int) -> list[Located]:
    """The items of the list at ``position`` with their line numbers (the text is valid JSON)."""
    items: list[Located] = []
    line, counted_to = 1, 0
    position = _skip_space(text, position + 1)
    while text[position] != "]":
        line += text.count("\n", counted_to, position)
        counted_to = position
        value, position = _DECODER.raw_decode(text, position)
        items.append((line, value))
        position = _skip_space(text, position)
        if text[position] == ",":
            position = _skip_space(text, position + 1)
    return items


# ---------------------------------------------------------------- TSV


def read_tsv(path: Path, required: Sequence[str], expected: str) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """The header and rows (line of the row's start, cells by column) of a tab-separated file.

    Quoting follows pandas' ``to_csv(sep="\\t")``, which wrote the public TSVs. A row with another
    number of cells than the header means a truncated or differently delimited file: refused.
    """
    csv.field_size_limit(CSV_FIELD_LIMIT)
    reader = csv.reader(io.StringIO(read_text(path), newline=""), delimiter="\t")
    header = next(reader, None)
    if not header or not any(cell.strip() for cell in header):
        raise BenchmarkError(f"{path}: line 1: no header row; expected {expected}")
    header = [cell.strip() for cell in header]
    missing = [name for name in required if name not in header]
    if missing:
        raise BenchmarkError(f"{path}: line 1: column(s) {', '.join(missing)} missing from the header; expected {expected}")
    rows = []
    start = reader.line_num + 1
    try:
        for cells in reader:
            if cells and len(cells) != len(header):
                raise BenchmarkError(f"{path}: line {start}: {len(cells)} tab-separated cells, the header has {len(header)}; expected {expected}")
            if cells:
                rows.append((start, dict(zip(header, cells))))
            start = reader.line_num + 1
    except csv.Error as exc:
        raise BenchmarkError(f"{path}: line {start}: {exc}; expected {expected}") from exc
    return header, rows


# ---------------------------------------------------------------- Parquet


def read_parquet(path: Path, required: Sequence[str], expected: str) -> pa.Table:
    """A Parquet file as an Arrow table, refused unless it has the ``required`` columns."""
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        reason = " ".join(str(exc).split())  # Arrow's messages span lines; the error is one
        raise BenchmarkError(f"{path}: not a readable Parquet file ({type(exc).__name__}: {reason}); expected {expected}") from exc
    missing = [name for name in required if name not in table.column_names]
    if missing:
        raise BenchmarkError(f"{path}: column(s) {', '.join(missing)} missing (it has {', '.join(table.column_names)}); expected {expected}")
    return table


def parquet_rows(table: pa.Table, image_column: str = "image") -> list[dict[str, Any]]:
    """The rows of a table as dicts, without the (large) image column: images stay in Arrow until asked for."""
    return table.drop_columns([image_column]).to_pylist()


def check_image_column(path: Path, table: pa.Table, expected: str, column: str = "image") -> None:
    """Refuse an image column of a type no loader can decode (an image is a struct, bytes or a list of them)."""
    kind = table.schema.field(column).type
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        kind = kind.value_type
    if _is_binary(kind) or (pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0):
        return
    raise BenchmarkError(f"{path}: column {column} has type {table.schema.field(column).type}; expected {expected}")


def parquet_images(table: pa.Table, rows: list[int], column: str = "image") -> pa.ChunkedArray:
    """The image cells of the rows kept, copied out so the rest of the table (video frames, other splits) is freed."""
    return table.column(column).take(rows)


def parquet_image_loader(images: pa.ChunkedArray, position: int, label: str, folder: Path) -> ImageLoader:
    """A ``Sample.load_image`` for one image cell (decoded on call); a path-only cell is relative to ``folder``."""
    return partial(_open_parquet_image, images, position, label, folder)


def _open_parquet_image(images: pa.ChunkedArray, position: int, label: str, folder: Path) -> Image.Image:
    value = images[position].as_py()
    if isinstance(value, list):  # SEED-Bench: a list of images, one for image questions
        if not value:
            raise ImageLoadError(f"{label}: the image list is empty")
        value = value[0]
    if isinstance(value, dict):  # the datasets ``Image`` feature: {bytes, path}
        if value.get("bytes"):
            return open_image_bytes(value["bytes"], label)
        if value.get("path"):
            return open_image_file(folder / value["path"])
        raise ImageLoadError(f"{label}: the image cell has neither bytes nor a path")
    if value is None:
        raise ImageLoadError(f"{label}: the image cell is empty")
    return open_image_bytes(value, label)


def _is_binary(kind: pa.DataType) -> bool:
    return pa.types.is_binary(kind) or pa.types.is_large_binary(kind)


# ---------------------------------------------------------------- finding files


def find_files(root: Path, matches: Callable[[Path], bool]) -> list[Path]:
    """Files under ``root`` (at most ``SEARCH_DEPTH`` folders down, hidden ones skipped) that match, sorted."""
    return sorted(path for path in _walk_files(root, SEARCH_DEPTH) if matches(path))


def name_tokens(path: Path) -> list[str]:
    """The words of a file name: ``MMBench_DEV_EN.tsv`` → ``mmbench``, ``dev``, ``en``."""
    return [token for token in re.split(r"[^a-z0-9]+", path.stem.lower()) if token]


def check_file_split(path: Path, split: str, splits: Iterable[str]) -> None:
    """Refuse a single file whose name says it holds another split than the one asked for."""
    tokens = name_tokens(path)
    others = [name for name in splits if name != split and name in tokens]
    if others and split not in tokens:
        raise BenchmarkError(f"{path} holds split {others[0]}, not {split}; pass --split {others[0]}, or a folder with the {split} file")


def one_file(root: Path, files: list[Path], what: str) -> Path:
    """The single file found, or an error listing the candidates."""
    if len(files) > 1:
        names = ", ".join(str(file.relative_to(root)) for file in files)
        raise BenchmarkError(f"{root}: several {what} ({names}); pass one of them as --data")
    return files[0]


def _walk_files(root: Path, depth: int) -> Iterable[Path]:
    folders = [(Path(root), 0)]
    while folders:
        folder, level = folders.pop(0)
        try:
            entries = sorted(folder.iterdir())
        except OSError:
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                if level < depth:
                    folders.append((entry, level + 1))
            else:
                yield entry


# ---------------------------------------------------------------- images in folders


class ImageIndex:
    """Image files under a few folders, found by file name; the nearest folder wins.

    Benchmarks name an image by its file name (``COCO_val2014_000000310196.jpg``), and people unpack
    the images beside the question file or into a subfolder (``val2014/``, ``SEED-Bench-image/``).
    """

    def __init__(self, roots: Sequence[Path], depths: Sequence[int] | None = None):
        self.roots = [Path(root) for root in roots]
        self._by_name: dict[str, Path] = {}
        self._by_stem: dict[str, Path] = {}
        for root, depth in zip(self.roots, depths or [SEARCH_DEPTH] * len(self.roots)):
            for path in _walk_files(root, depth):
                self._by_name.setdefault(path.name, path)
                if path.suffix.lower() in IMAGE_SUFFIXES:
                    self._by_stem.setdefault(path.stem, path)

    @classmethod
    def near_file(cls, path: Path) -> ImageIndex:
        """Images beside a question file, below it, or directly in a sibling folder of its folder (``../val2014``)."""
        folder = Path(path).parent
        try:
            entries = sorted(folder.parent.iterdir())
        except OSError:
            entries = []
        siblings = [entry for entry in entries if entry.is_dir() and entry != folder and not entry.name.startswith(".")]
        return cls([folder, *siblings], [SEARCH_DEPTH] + [0] * len(siblings))

    def find(self, name: str) -> Path | None:
        """The file called ``name`` (a bare name, or a path relative to a root), or one named ``name`` plus an image suffix."""
        for root in self.roots:
            if "/" in name and (root / name).is_file():
                return root / name
        found = self._by_name.get(Path(name).name)
        if found is None and Path(name).suffix.lower() not in IMAGE_SUFFIXES:
            found = self._by_stem.get(Path(name).name)
        return found

    def loader(self, name: str) -> ImageLoader:
        """A ``Sample.load_image`` for the image called ``name``; a missing one fails when called."""
        found = self.find(name)
        return file_loader(found if found is not None else self.roots[0] / name)


# ---------------------------------------------------------------- samples


def failing_loader(message: str) -> ImageLoader:
    """A ``Sample.load_image`` that raises ``ImageLoadError(message)``: an image known to be unavailable."""
    return partial(_raise_image_error, message)


def _raise_image_error(message: str) -> Image.Image:
    raise ImageLoadError(message)


def error_sample(key: str, message: str, parser: str, category: str | None = None) -> Sample:
    """The sample of a malformed row: it becomes an error row of the run, which goes on."""
    return Sample(key=key, question="", load_image=failing_loader(message), category=category, parser=parser, error=message)


def unique_keys(samples: list[Sample]) -> list[Sample]:
    """Samples with a repeated key become error samples under a key of their own (keys must be unique)."""
    seen: dict[str, int] = {}
    result = []
    for sample in samples:
        count = seen.get(sample.key, 0)
        seen[sample.key] = count + 1
        if count:
            message = f"key {sample.key} repeats an earlier item's key"
            sample = error_sample(f"{sample.key}#{count + 1}", message, sample.parser, sample.category)
        result.append(sample)
    return result


def text_value(value: Any) -> str | None:
    """A non-blank string as is, else None."""
    return value if isinstance(value, str) and value.strip() else None


def id_value(value: Any) -> str | None:
    """An id (a non-blank string or an integer) as a string, else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    return value.strip() if isinstance(value, str) and value.strip() else None
