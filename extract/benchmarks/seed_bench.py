"""``seed-bench``: SEED-Bench (v1) multiple choice, image questions only (dimensions 1-9).

Two public formats are read:

- ``SEED-Bench.json``: ``{"questions": [{"question_id", "question", "choice_a".."choice_d", "answer",
  "data_id", "data_type", "question_type_id", ...}], "question_type": {"Scene Understanding": 1, ...}}``
  with the images in ``SEED-Bench-image/`` (``{data_id}``, or ``{data_id}.jpg`` when the id has no suffix);
- the Parquet export (lmms-lab/SEED-Bench): the same columns, the image in ``image`` (a list of
  ``{bytes, path}`` structs, or one struct).

Video questions (``data_type`` other than ``image``) are skipped: the study's models read one image.
A sample's key is its ``question_id``; its category is the question type's name (from the JSON's own
``question_type`` table, else SEED-Bench v1's table below).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from attnwh.core.errors import BenchmarkError
from attnwh.extract.benchmarks import formats
from attnwh.extract.benchmarks.registry import Benchmark, Sample, register_benchmark

NAME = "seed-bench"
SPLITS = ("test",)
PARSER = "letter"
CHOICE_KEYS = ("choice_a", "choice_b", "choice_c", "choice_d")
REQUIRED = ("question_id", "question", *CHOICE_KEYS, "answer", "data_type", "question_type_id")
JSON_REQUIRED = (*REQUIRED, "data_id")
PARQUET_REQUIRED = (*REQUIRED, "image")
QUESTION_FILE = "SEED-Bench.json"
# SEED-Bench.json's "question_type" table (v1), for Parquet exports that dropped it
QUESTION_TYPES = {
    1: "Scene Understanding",
    2: "Instance Identity",
    3: "Instance Attributes",
    4: "Instance Location",
    5: "Instances Counting",
    6: "Spatial Relation",
    7: "Instance Interaction",
    8: "Visual Reasoning",
    9: "Text Understanding",
    10: "Action Recognition",
    11: "Action Prediction",
    12: "Procedure Understanding",
}
JSON_EXPECTED = f'SEED-Bench.json: an object with a "questions" list of objects with keys {", ".join(JSON_REQUIRED)}'
PARQUET_EXPECTED = f"SEED-Bench Parquet with columns {', '.join(PARQUET_REQUIRED)}"
DATA_HELP = (
    "a folder holding SEED-Bench.json and the SEED-Bench-image/ folder; or SEED-Bench.json itself, its images beside "
    "it or in a sibling folder; or a folder of SEED-Bench Parquet files (lmms-lab/SEED-Bench), or one of them"
)


def load(data: Path | None, split: str | None) -> list[Sample]:
    """The image questions of SEED-Bench from its JSON or Parquet files."""
    root = formats.require_data(NAME, data, DATA_HELP)
    if root.is_file():
        if root.suffix.lower() == ".parquet":
            return formats.unique_keys(_load_parquet([root]))
        return formats.unique_keys(_load_json(root, formats.ImageIndex.near_file(root)))
    question_files = formats.find_files(root, lambda path: path.name.lower() == QUESTION_FILE.lower())
    if question_files:
        return formats.unique_keys(_load_json(formats.one_file(root, question_files, QUESTION_FILE), formats.ImageIndex([root])))
    parquet_files = formats.find_files(root, lambda path: path.suffix.lower() == ".parquet")
    if parquet_files:
        return formats.unique_keys(_load_parquet(parquet_files))
    raise BenchmarkError(f"{root}: neither {QUESTION_FILE} nor Parquet files found; expected {DATA_HELP}")


def _load_json(path: Path, images: formats.ImageIndex) -> list[Sample]:
    document, items = formats.json_list_items(path, JSON_EXPECTED, key="questions")
    formats.check_keys_somewhere(path, items, JSON_REQUIRED, JSON_EXPECTED)
    names = _type_names(document.get("question_type"))
    samples = []
    for line, item in items:
        where = f"{path.name} line {line}"
        if not isinstance(item, dict):
            samples.append(formats.error_sample(f"line-{line}", f"{where}: not a JSON object", PARSER))
        elif item.get("data_type", "image") == "image":  # a row without data_type becomes an error row
            data_id = formats.id_value(item.get("data_id"))
            samples.append(_sample(where, item, names, images.loader(data_id) if data_id else None))
    return _refuse_empty(path, samples)


def _load_parquet(paths: list[Path]) -> list[Sample]:
    samples = []
    for path in paths:
        table = formats.read_parquet(path, PARQUET_REQUIRED, PARQUET_EXPECTED)
        formats.check_image_column(path, table, PARQUET_EXPECTED)
        records = formats.parquet_rows(table)
        rows = [row for row, record in enumerate(records) if record["data_type"] == "image"]
        images = formats.parquet_images(table, rows)
        for position, row in enumerate(rows):
            where = f"{path.name} row {row + 1}"
            loader = formats.parquet_image_loader(images, position, where, path.parent)
            samples.append(_sample(where, records[row], QUESTION_TYPES, loader))
    return _refuse_empty(paths[0], samples)


def _type_names(table: Any) -> dict[int, str]:
    """Question type id → name, from the file's own table when it has one."""
    if isinstance(table, dict) and table and all(isinstance(value, int) for value in table.values()):
        return {value: name for name, value in table.items()}
    return QUESTION_TYPES


def _sample(where: str, item: dict[str, Any], names: dict[int, str], load_image: formats.ImageLoader | None) -> Sample:
    """A sample from a question's fields (``load_image`` is None when the row names no image)."""
    key = formats.id_value(item.get("question_id"))
    type_id = item.get("question_type_id")
    category = names.get(type_id, f"question type {type_id}") if isinstance(type_id, int) else None
    problem = _problem(key, item) or (None if load_image is not None else "data_id (the image's name) is missing")
    if problem is not None:
        return formats.error_sample(key or where.replace(" ", "-"), f"{where}: {problem}", PARSER, category)
    choices = tuple(item[name] for name in CHOICE_KEYS)
    gold = item["answer"].strip()
    return Sample(key=key, question=item["question"], load_image=load_image, choices=choices, gold=gold, category=category, parser=PARSER)


def _problem(key: str | None, item: dict[str, Any]) -> str | None:
    if key is None:
        return "question_id is missing or not an id"
    if "data_type" not in item:
        return "data_type is missing"
    if formats.text_value(item.get("question")) is None:
        return "the question is missing or empty"
    missing = [name for name in CHOICE_KEYS if not isinstance(item.get(name), str)]
    if missing:
        return f"option(s) {', '.join(missing)} missing or not text"
    answer = item.get("answer")
    if not isinstance(answer, str) or answer.strip() not in ("A", "B", "C", "D"):
        return f"the answer is {answer!r}; expected A, B, C or D"
    return None


def _refuse_empty(path: Path, samples: list[Sample]) -> list[Sample]:
    if not samples:
        raise BenchmarkError(f"{path}: no question has data_type image; expected {JSON_EXPECTED if path.suffix == '.json' else PARQUET_EXPECTED}")
    return samples


register_benchmark(
    Benchmark(
        name=NAME,
        version="2",  # 2: the letter parser v3 (a stated "is:", a lone lower-case letter)
        description="SEED-Bench: four-option multiple choice over nine image dimensions (video questions skipped)",
        load=load,
        template="letter_choice",
        study_template="study_seed",
        splits=SPLITS,
        default_split="test",
        data_help=DATA_HELP,
    )
)
