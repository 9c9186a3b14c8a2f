"""PointQA / LookTwice-QA (Mani et al. 2020, "Point and Ask"): counting questions about a pointed-at object.

Each item is a Visual Genome image, the box of one object, and its count ("How many ... are
there?") asked three ways: ``general`` ("How many of these are there?"), ``obj`` (the object named:
"How many dogs are there?") and ``super`` (its supercategory: "How many of these beings are
there?"). Six benchmarks, ``pointqa-{visual,plain}-{general,obj,super}``:

* ``visual`` draws the box on the image as ViP-LLaVA's PointQA evaluation does (a red rectangle at
  alpha 128, 3 px per 336 px of the longer side) and appends its sentence "The exemplary object is
  within the rectangle." to the question;
* ``plain`` gives the image and the question unchanged.

Both set ``Sample.boxes``, so region statistics (DESIGN §4) are computed for both. Sample keys are
the same in all six benchmarks, so their runs join on ``sample_key``.

The questions are asked as multiple choice: the true count and three distractors (distinct
non-negative integers within ±3 of it), drawn and shuffled by a ``random.Random`` seeded with a
SHA-256 of the sample key, so the options are the same on every load and in every variant; they are
stored as the sample's choices. (ViP-LLaVA's own evaluation asks for a short answer instead.)

Files read (``--data`` is the file, or a folder holding it; images are found relative to it):

* ViP-LLaVA's ``pointQA_twice_test.json`` (mucai/ViP-LLaVA-Instruct): a JSON array of objects with
  ``id``, ``image`` (a path), ``bboxes`` ([[x0, y0, x1, y1]], pixels), ``general_question``,
  ``obj_question``, ``super_question`` and ``answer``;
* Shikra's ``pointQA_twice_{val,test}.jsonl``: one object per line with ``file_path``, ``bbox``
  ([x0, y0, x1, y1]), ``point`` and the same question and answer fields;
* the first release (princetonvisualai/pointingqa, ``Datasets/LookTwiceQA``):
  ``looktwiceqa_dataset.json``, whose entries (a JSON array, or a mapping of Visual Genome image id
  to that image's entries) carry ``Img_id``, ``Obj_question`` ("How many dogs are there?"),
  ``Super_question`` ("How many of these animals are there?"), ``General_question`` ("How many of
  these are there?"), ``Ans``, ``BBox`` (a Visual Genome object: ``x``, ``y``, ``w``, ``h``,
  ``names``, ...), ``Point`` {x, y, ans}, ``Obj_type`` and ``Supercategory``; images ``<id>.jpg``.
  Its splits are the Visual Genome image ids listed in ``looktwiceqa_{train,val,test}_imgs.json``
  beside it; with those lists present, a split is exactly the entries of its images. The authors'
  generation script (``create_looktwice_initial.py``) wrote ``img_question`` (the object question),
  ``pt_question`` (the object replaced by "of these": the *general* question), ``ans``, ``bbox``,
  ``obj_type`` and an image ``id``; those names are read too.

Keys: ``id`` / ``question_id`` where an entry has one; else ``{image id}-{n}`` (the entry's place
among its image's entries) for the first release, or the line number. A repeated key is an error
row, like every malformed entry.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from attnwh.core.errors import BenchmarkError
from attnwh.extract.benchmarks import formats
from attnwh.extract.benchmarks.images import file_loader, open_image_file
from attnwh.extract.benchmarks.registry import Benchmark, Box, Sample, register_benchmark
from attnwh.extract.benchmarks.templates import LETTERS

QUESTION_TYPES = ("general", "obj", "super")
VARIANTS = ("visual", "plain")
SPLITS = ("test", "val", "train")
PARSER = "letter"
GENERAL_QUESTION = "How many of these are there?"  # LookTwice-QA's pointing question before the category is inserted
RECTANGLE_HINT = "The exemplary object is within the rectangle."  # ViP-LLaVA's PointQA prompt
RECTANGLE_RGBA = (255, 0, 0, 128)  # red at ViP-LLaVA's evaluation alpha (--alpha 128)
LINE_WIDTH_PER_ANCHOR = 3  # px per ANCHOR_SIZE px of the image's longer side (ViP-LLaVA's 'constant' style)
ANCHOR_SIZE = 336  # the CLIP crop size ViP-LLaVA scales its line width by
N_OPTIONS = 4
SPREAD = 3  # distractors lie within ±SPREAD of the true count
SPLIT_LIST = "looktwiceqa_{split}_imgs.json"  # the first release's split: a JSON list of image ids
EXPECTED = "a JSON array of PointQA entries, JSON lines, or the LookTwice-QA release (image id -> entries)"

# field name -> accepted names, first match wins (ViP-LLaVA / Shikra, then the first release, then its generation script)
FIELDS: dict[str, tuple[str, ...]] = {
    "key": ("question_id", "id"),
    "image": ("image", "file_path", "img_path", "image_path", "file_name"),
    "image_id": ("Img_id", "img_id", "genome_id", "image_id", "vg_id"),
    "boxes": ("bboxes", "bbox", "box", "BBox"),
    "answer": ("answer", "Ans", "ans", "count"),
    "general": ("general_question", "General_question", "pt_question"),
    "obj": ("obj_question", "Obj_question", "object_question", "img_question"),
    "super": ("super_question", "Super_question", "supercategory_question"),
    "split": ("div", "split"),
    "category": ("obj_type", "Obj_type", "object", "category"),
}
_GENOME_FOLDERS = (".", "VG_100K", "VG_100K_2", "images")
_SPLIT_NAMES = {"test": ("test",), "val": ("val", "validation"), "train": ("train", "trainadd")}  # values of div / split


class _RowError(ValueError):
    """A malformed row: it becomes an error sample."""


@dataclass(frozen=True)
class _Row:
    where: str  # 'line 3' / 'entry 3 (line 4)' / 'image 2414753 entry 1', for messages
    key: str  # the key when the entry has no id of its own
    fields: Any  # the decoded JSON value, or the error it failed with


def load(data: Path | None, split: str | None, *, variant: str, question_type: str) -> list[Sample]:
    """Samples of one variant and question type, in file order."""
    root = formats.require_data("PointQA", data, DATA_HELP)
    split = split or SPLITS[0]
    annotation = annotation_file(root, split)
    rows = read_rows(annotation, split)
    return formats.unique_keys([_sample(row, annotation.parent, variant, question_type) for row in rows])


def annotation_file(data: Path, split: str) -> Path:
    """The file itself, or the PointQA file of a folder: among its .json / .jsonl files (split lists
    excluded) those naming PointQA or LookTwice if any, then the one naming the split, or the only one."""
    if data.is_file():
        return data
    if not data.is_dir():
        raise BenchmarkError(f"PointQA data {data} does not exist")
    candidates = formats.find_files(data, lambda path: path.suffix.lower() in (".json", ".jsonl") and path.parent == data)
    candidates = [path for path in candidates if not _is_split_list(path)]
    candidates = [path for path in candidates if re.search(r"pointqa|looktwice", path.stem.lower())] or candidates
    named = [path for path in candidates if split in formats.name_tokens(path)]
    if len(named) == 1:
        return named[0]
    if len(candidates) == 1:
        return candidates[0]
    found = ", ".join(path.name for path in candidates) or "none"
    raise BenchmarkError(f"{data}: expected one PointQA .json / .jsonl file (or one naming split {split!r}); found {found}")


def _is_split_list(path: Path) -> bool:
    return any(path.name.lower() == SPLIT_LIST.format(split=split) for split in SPLITS)


def read_rows(path: Path, split: str) -> list[_Row]:
    """The rows of a PointQA file in any of its layouts, only those of ``split``."""
    text = formats.read_text(path)
    if not text.strip():
        raise BenchmarkError(f"{path}: the file is empty; expected {EXPECTED}")
    try:
        document = json.loads(text)
    except RecursionError as exc:
        raise BenchmarkError(f"{path}: {formats.NESTED}; expected {EXPECTED}") from exc
    except json.JSONDecodeError as exc:
        if not text.lstrip().startswith("{"):
            raise BenchmarkError(f"{path}: line {exc.lineno}, column {exc.colno}: not valid JSON ({exc.msg}); expected {EXPECTED}") from exc
        lines = formats.read_json_lines(path, "one PointQA JSON object per line", keep_bad_lines=True, text=text)
        rows = [_Row(f"line {line}", str(line), value) for line, value in lines]
    else:
        if isinstance(document, list):  # read again by json_list_items, which refuses a lone surrogate itself
            _, items = formats.json_list_items(path, EXPECTED, text=text)
            rows = [_Row(f"entry {index} (line {line})", str(index), value) for index, (line, value) in enumerate(items, 1)]
        elif formats.lone_surrogate(document):
            raise BenchmarkError(f"{path}: {formats.SURROGATE}; expected {EXPECTED}")
        elif isinstance(document, dict) and document and all(isinstance(value, list) for value in document.values()):
            rows = _genome_mapping(document)
        elif isinstance(document, dict):
            rows = [_Row("line 1", "1", document)]  # JSON lines with a single line
        else:
            raise BenchmarkError(f"{path}: line 1: the top level is a JSON {type(document).__name__}; expected {EXPECTED}")
    if rows and all(not isinstance(row.fields, (dict, formats.BadLine)) for row in rows):
        raise BenchmarkError(f"{path}: {rows[0].where}: not a JSON object; expected PointQA entries (objects with a question, box and answer)")
    rows = _release_keys(rows)
    return _split_rows(path, rows, split)


def _genome_mapping(document: dict[str, list]) -> list[_Row]:
    """The release as image id -> entries: the image id names the image."""
    rows = []
    for image_id, entries in document.items():
        for index, entry in enumerate(entries, 1):
            if isinstance(entry, dict):
                entry = {"Img_id": image_id, **{name: value for name, value in entry.items() if name != "id"}}
            rows.append(_Row(f"image {image_id} entry {index}", f"{image_id}-{index}", entry))
    return rows


def _release_keys(rows: list[_Row]) -> list[_Row]:
    """Entries of the release listed flat (``Img_id``, no id): keyed ``{image id}-{n}`` as in the mapping layout."""
    counts: dict[str, int] = {}
    keyed = []
    for row in rows:
        fields = row.fields
        if isinstance(fields, dict) and _field(fields, "key") is None and _field(fields, "image_id") is not None and "image " not in row.where:
            image_id = str(_field(fields, "image_id")).strip()
            counts[image_id] = counts.get(image_id, 0) + 1
            row = _Row(row.where, f"{image_id}-{counts[image_id]}", fields)
        keyed.append(row)
    return keyed


def _split_rows(path: Path, rows: list[_Row], split: str) -> list[_Row]:
    """The rows of ``split``: by the release's image-id lists when present, else by an entry's div / split field."""
    lists = {name: path.parent / SPLIT_LIST.format(split=name) for name in SPLITS}
    present = {name: file for name, file in lists.items() if file.is_file()}
    if present:
        if split not in present:
            raise BenchmarkError(f"{path.parent}: the split lists are {', '.join(file.name for file in present.values())}; {lists[split].name} is missing")
        images = _image_ids(present[split])
        return [row for row in rows if not isinstance(row.fields, dict) or _image_id(row.fields) in images]
    return [row for row in rows if _in_split(row.fields, split)]


def _image_ids(path: Path) -> set[str]:
    _, items = formats.json_list_items(path, 'a JSON list of Visual Genome image ids like ["2414753", ...]')
    ids = {formats.id_value(value) for _, value in items}
    if None in ids:
        line = next(line for line, value in items if formats.id_value(value) is None)
        raise BenchmarkError(f"{path}: line {line}: not an image id; expected a JSON list of Visual Genome image ids")
    return ids


def _image_id(fields: dict) -> str | None:
    return formats.id_value(_field(fields, "image_id"))


def _in_split(fields: Any, split: str) -> bool:
    if not isinstance(fields, dict):
        return True
    value = _field(fields, "split")
    return value is None or str(value).lower() in _SPLIT_NAMES[split]


def _field(fields: dict, name: str) -> Any:
    for alias in FIELDS[name]:
        if fields.get(alias) is not None:
            return fields[alias]
    return None


def _sample(row: _Row, root: Path, variant: str, question_type: str) -> Sample:
    fields = row.fields
    try:
        if isinstance(fields, formats.BadLine):
            raise _RowError(str(fields))
        if not isinstance(fields, dict):
            raise _RowError(f"a JSON {type(fields).__name__}, expected an object")
        return _parse(fields, _key(fields, row.key), root, variant, question_type)
    except _RowError as exc:
        return formats.error_sample(_error_key(fields, row.key), f"{row.where}: {exc}", PARSER)


def _error_key(fields: Any, fallback: str) -> str:
    """The key an error row is stored under: its id where usable, else its position."""
    try:
        return _key(fields, fallback) if isinstance(fields, dict) else fallback
    except _RowError:
        return fallback


def _parse(fields: dict, key: str, root: Path, variant: str, question_type: str) -> Sample:
    boxes = parse_boxes(_field(fields, "boxes"))
    count = parse_count(_field(fields, "answer"))
    question = _question(fields, question_type)
    image = _image_loader(fields, root)
    note = None
    if variant == "visual":
        note = RECTANGLE_HINT
        image = partial(draw_rectangles, image, boxes)
    choices, gold = count_options(count, key)
    category = _field(fields, "category")
    return Sample(
        key=key, question=question, load_image=image, choices=choices, gold=gold, category=str(category) if category is not None else None, parser=PARSER, note=note, boxes=boxes
    )


def _key(fields: dict, fallback: str) -> str:
    value = _field(fields, "key")
    if value is None:
        return fallback
    if not isinstance(value, (str, int)) or isinstance(value, bool) or not str(value).strip():
        raise _RowError(f"id {value!r} is not a string or integer")
    return str(value).strip()


def parse_boxes(value: Any) -> tuple[Box, ...]:
    """Boxes as (x0, y0, x1, y1) pixels from a list of 4 numbers (x0, y0, x1, y1), a list of such lists,
    or a Visual Genome object ``{"x", "y", "w", "h"}`` (or a list of those)."""
    if value is None:
        raise _RowError(f"no box (expected one of {', '.join(FIELDS['boxes'])})")
    items = value if isinstance(value, list) and value and isinstance(value[0], (list, dict)) else [value]
    return tuple(_box(item) for item in items)


def _box(item: Any) -> Box:
    if isinstance(item, dict):
        try:
            x, y, w, h = (_number(item[name]) for name in ("x", "y", "w", "h"))
        except KeyError as exc:
            raise _RowError(f"box {item!r} lacks {exc.args[0]!r}; expected x, y, w, h") from None
        if w < 0 or h < 0:
            raise _RowError(f"box {item!r} has a negative size")
        return (x, y, x + w, y + h)
    if not isinstance(item, list) or len(item) != 4:
        raise _RowError(f"box {item!r} is not [x0, y0, x1, y1] or {{x, y, w, h}}")
    x0, y0, x1, y1 = (_number(number) for number in item)
    if x1 < x0 or y1 < y0:
        raise _RowError(f"box {item!r} has x1 < x0 or y1 < y0; expected [x0, y0, x1, y1]")
    return (x0, y0, x1, y1)


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _RowError(f"box coordinate {value!r} is not a finite number")
    return float(value)


def parse_count(value: Any) -> int:
    """The answer: a non-negative integer, or a string of digits."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    if value is None:
        raise _RowError(f"no answer (expected one of {', '.join(FIELDS['answer'])})")
    raise _RowError(f"answer {value!r} is not a count")


def _question(fields: dict, question_type: str) -> str:
    value = _field(fields, question_type)
    if value is None and question_type == "general":
        return GENERAL_QUESTION
    if not isinstance(value, str) or not value.strip():
        raise _RowError(f"no {question_type} question (expected one of {', '.join(FIELDS[question_type])})")
    return value.strip()


def count_options(count: int, key: str) -> tuple[tuple[str, ...], str]:
    """Four options (the count and three distinct nearby non-negative integers), shuffled; and the gold letter.

    Seeded by a SHA-256 of the key (not Python's salted ``hash``): the same on every load and machine.
    """
    rng = random.Random(int.from_bytes(hashlib.sha256(f"pointqa:{key}".encode()).digest()[:8], "big"))
    nearby = [number for number in range(max(0, count - SPREAD), count + SPREAD + 1) if number != count]
    options = [count, *rng.sample(nearby, N_OPTIONS - 1)]
    rng.shuffle(options)
    return tuple(str(number) for number in options), LETTERS[options.index(count)]


def _image_loader(fields: dict, root: Path) -> Callable[[], Image.Image]:
    path = _field(fields, "image")
    if isinstance(path, str) and path.strip():
        return file_loader(root / path.strip())
    image_id = _field(fields, "image_id")
    if isinstance(image_id, (str, int)) and not isinstance(image_id, bool) and str(image_id).strip():
        return partial(open_genome_image, root, str(image_id).strip())
    raise _RowError(f"no image (expected one of {', '.join(FIELDS['image'] + FIELDS['image_id'])})")


def open_genome_image(root: Path, image_id: str) -> Image.Image:
    """Visual Genome image ``<id>.jpg`` in the data folder or its VG_100K, VG_100K_2 or images folders."""
    candidates = [root / folder / f"{image_id}.jpg" for folder in _GENOME_FOLDERS]
    return open_image_file(next((path for path in candidates if path.is_file()), candidates[0]))


def draw_rectangles(load_image: Callable[[], Image.Image], boxes: tuple[Box, ...]) -> Image.Image:
    """The image with each box outlined as ViP-LLaVA draws its PointQA visual prompt."""
    image = load_image().convert("RGBA")
    width = max(int(LINE_WIDTH_PER_ANCHOR * max(image.size) / ANCHOR_SIZE), 1)
    overlay = Image.new("RGBA", image.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    for x0, y0, x1, y1 in boxes:
        draw.rectangle([(x0, y0), (x1, y1)], outline=RECTANGLE_RGBA, width=width)
    return Image.alpha_composite(image, overlay).convert("RGB")


DATA_HELP = (
    "a LookTwice-QA file, or a folder holding one (the file naming the split if several): ViP-LLaVA's "
    "pointQA_twice_test.json (JSON array: image, bboxes [[x0,y0,x1,y1]], general_question, obj_question, "
    "super_question, answer), Shikra's pointQA_twice_<split>.jsonl (file_path, bbox [x0,y0,x1,y1], the same "
    "questions and answer), or the first release's looktwiceqa_dataset.json (Img_id, General_question, "
    "Obj_question, Super_question, Ans, BBox {x,y,w,h}) with looktwiceqa_<split>_imgs.json beside it; image "
    "paths are relative to the file's folder, Visual Genome ids are found as <id>.jpg there or in VG_100K / "
    "VG_100K_2 / images"
)
_QUESTION_TEXT = {
    "general": "'How many of these are there?'",
    "obj": "the object named ('How many dogs are there?')",
    "super": "its supercategory ('How many of these beings are there?')",
}
_VARIANT_TEXT = {"visual": "box drawn as a red rectangle", "plain": "image unmarked"}

for _variant in VARIANTS:
    for _question_type in QUESTION_TYPES:
        register_benchmark(
            Benchmark(
                name=f"pointqa-{_variant}-{_question_type}",
                version="3",  # 3: the letter parser v3 (a stated "is:", a lone lower-case letter)
                description=(f"LookTwice-QA counting, {_QUESTION_TEXT[_question_type]}, {_VARIANT_TEXT[_variant]}; 4 count options; region = the box"),
                load=partial(load, variant=_variant, question_type=_question_type),
                template="letter_choice",
                study_template="study_letter_choice",
                max_new_tokens=8,  # as the other letter-choice benchmarks
                splits=SPLITS,
                default_split="test",
                data_help=DATA_HELP,
            )
        )
