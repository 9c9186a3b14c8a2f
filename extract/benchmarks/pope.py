"""``pope``: POPE object-hallucination questions on COCO val2014 ("Is there a <object> in the image?").

Two public formats are read:

- the original question files, ``coco_pope_{adversarial,popular,random}.json``: JSON lines (despite
  the name) ``{"question_id": 1, "image": "COCO_val2014_....jpg", "text": "Is there ...?", "label":
  "yes"}``, with the COCO images beside them or in a subfolder / sibling folder (``val2014/``);
- the Parquet export (lmms-lab/POPE): columns ``question_id``, ``question``, ``answer``,
  ``image`` (a ``{bytes, path}`` struct or bytes), ``category``; one or several files.

Splits are POPE's three negative-sampling settings; ``all`` is the three together. The default is
``adversarial`` (negatives are the objects that co-occur most with the image's own, the setting
that best separates models). A sample's key is its ``question_id``, which POPE numbers per setting,
so in ``all`` keys are ``{setting}-{question_id}``; its category is the setting.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from attnwh.errors import BenchmarkError
from attnwh.extract.benchmarks import formats
from attnwh.extract.benchmarks.registry import Benchmark, Sample, register_benchmark

NAME = "pope"
SETTINGS = ("adversarial", "popular", "random")
SPLITS = (*SETTINGS, "all")
DEFAULT_SPLIT = "adversarial"
PARSER = "yes_no"
LINE_KEYS = ("question_id", "image", "text", "label")
PARQUET_COLUMNS = ("question_id", "question", "answer", "image", "category")
LINES_EXPECTED = 'POPE question lines like {"question_id": 1, "image": "COCO_val2014_....jpg", "text": "Is there ...?", "label": "yes"}'
PARQUET_EXPECTED = f"POPE Parquet with columns {', '.join(PARQUET_COLUMNS)}"
DATA_HELP = (
    "a folder holding coco_pope_{adversarial,popular,random}.json (JSON lines) and the COCO val2014 images "
    "(directly or in a subfolder such as val2014/); or one such question file with its images beside it or in "
    "a sibling folder; or a folder of POPE Parquet files (lmms-lab/POPE), or one of them"
)


def load(data: Path | None, split: str | None) -> list[Sample]:
    """The samples of one setting (or ``all``) from question files or Parquet."""
    root = formats.require_data(NAME, data, DATA_HELP)
    split = split or DEFAULT_SPLIT
    if root.is_file():
        if root.suffix.lower() == ".parquet":
            return formats.unique_keys(_load_parquet([root], split))
        formats.check_file_split(root, split, SPLITS)
        setting = next((name for name in SETTINGS if name in formats.name_tokens(root)), split)
        return formats.unique_keys(_load_lines(root, setting, split, formats.ImageIndex.near_file(root)))
    question_files = _question_files(root, split)
    if question_files:
        images = formats.ImageIndex([root])
        samples = [sample for setting, path in question_files for sample in _load_lines(path, setting, split, images)]
        return formats.unique_keys(samples)
    parquet_files = formats.find_files(root, lambda path: path.suffix.lower() == ".parquet")
    if parquet_files:
        return formats.unique_keys(_load_parquet(parquet_files, split))
    raise BenchmarkError(f"{root}: neither coco_pope_{split}.json nor Parquet files found; expected {DATA_HELP}")


def _question_files(root: Path, split: str) -> list[tuple[str, Path]]:
    """(setting, file) for each setting of the split whose question file is in the folder (COCO's first)."""
    found = []
    for setting in SETTINGS if split == "all" else (split,):
        files = formats.find_files(root, lambda path, setting=setting: path.name.lower().endswith(f"_pope_{setting}.json"))
        files = [path for path in files if path.name.lower().startswith("coco_")] or files  # POPE's A-OKVQA / GQA files: only on request
        if files:
            found.append((setting, formats.one_file(root, files, f"POPE {setting} question files")))
    if split == "all" and found and len(found) < len(SETTINGS):
        missing = sorted(set(SETTINGS) - {setting for setting, _ in found})
        raise BenchmarkError(f"{root}: split all needs the question files of every setting; coco_pope_{missing[0]}.json is missing")
    return found


def _load_lines(path: Path, setting: str, split: str, images: formats.ImageIndex) -> list[Sample]:
    items = formats.read_json_lines(path, LINES_EXPECTED)
    formats.check_keys_somewhere(path, items, LINE_KEYS, LINES_EXPECTED)
    return [_line_sample(path, line, item, setting, split, images) for line, item in items]


def _line_sample(path: Path, line: int, item: Any, setting: str, split: str, images: formats.ImageIndex) -> Sample:
    where = f"{path.name} line {line}"
    if not isinstance(item, dict):
        return formats.error_sample(f"line-{line}", f"{where}: not a JSON object", PARSER, setting)
    question_id = formats.id_value(item.get("question_id"))
    key = _key(question_id or f"line-{line}", setting, split)
    problem = _problem(question_id, item.get("text"), item.get("label"))
    if problem is None and formats.text_value(item.get("image")) is None:
        problem = "the image name is missing"
    if problem:
        return formats.error_sample(key, f"{where}: {problem}", PARSER, setting)
    gold = item["label"].strip().lower()
    return Sample(key=key, question=item["text"], load_image=images.loader(item["image"]), gold=gold, category=setting, parser=PARSER)


def _load_parquet(paths: list[Path], split: str) -> list[Sample]:
    samples = []
    for path in paths:
        table = formats.read_parquet(path, PARQUET_COLUMNS, PARQUET_EXPECTED)
        formats.check_image_column(path, table, PARQUET_EXPECTED)
        records = formats.parquet_rows(table)
        rows = [row for row, record in enumerate(records) if split == "all" or record["category"] == split]
        images = formats.parquet_images(table, rows)
        for position, row in enumerate(rows):
            where = f"{path.name} row {row + 1}"
            loader = formats.parquet_image_loader(images, position, where, path.parent)
            samples.append(_parquet_sample(where, records[row], loader, split))
    if not samples:
        raise BenchmarkError(f"{paths[0]}: no rows of category {split}; expected {PARQUET_EXPECTED} and category one of {', '.join(SETTINGS)}")
    return samples


def _parquet_sample(where: str, record: dict[str, Any], load_image: formats.ImageLoader, split: str) -> Sample:
    setting = record["category"] if isinstance(record["category"], str) else None
    question_id = formats.id_value(record["question_id"])
    key = _key(question_id or where.replace(" ", "-"), setting or "none", split)
    problem = _problem(question_id, record["question"], record["answer"])
    if problem:
        return formats.error_sample(key, f"{where}: {problem}", PARSER, setting)
    gold = record["answer"].strip().lower()
    return Sample(key=key, question=record["question"], load_image=load_image, gold=gold, category=setting, parser=PARSER)


def _key(question_id: str, setting: str, split: str) -> str:
    return f"{setting}-{question_id}" if split == "all" else question_id


def _problem(question_id: str | None, question: Any, answer: Any) -> str | None:
    """What is wrong with a question's fields, or None."""
    if question_id is None:
        return "question_id is missing or not an id"
    if formats.text_value(question) is None:
        return "the question text is missing or empty"
    if not isinstance(answer, str) or answer.strip().lower() not in ("yes", "no"):
        return f"the answer is {answer!r}; expected yes or no"
    return None


register_benchmark(
    Benchmark(
        name=NAME,
        version="1",
        description="POPE: yes/no object-presence questions on COCO val2014 images (object hallucination)",
        load=load,
        template="short_answer",
        splits=SPLITS,
        default_split=DEFAULT_SPLIT,
        data_help=DATA_HELP,
    )
)
