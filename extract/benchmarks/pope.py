"""``pope``, ``pope-aokvqa``, ``pope-gqa``: POPE object-hallucination questions ("Is there a <object> in the image?").

POPE (Li et al., EMNLP 2023) publishes one question file per image source and negative-sampling
setting, each question ``{"question_id": 1, "image": "COCO_val2014_....jpg", "text": "Is there ...?",
"label": "yes"}``:

- ``pope``: COCO val2014, ``coco_pope_{adversarial,popular,random}.json``, JSON lines despite the
  suffix (the older release numbers ``question_id`` from 0 and adds ``image_id``; both read alike);
  or the Parquet export (lmms-lab/POPE): columns ``question_id``, ``question``, ``answer``, ``image``
  (a ``{bytes, path}`` struct or bytes), ``category``; one or several files;
- ``pope-aokvqa``: A-OKVQA questions on COCO images, ``aokvqa_pope_seem_{setting}.json``;
- ``pope-gqa``: GQA questions on GQA (Visual Genome) images named by id (``2405722.jpg``),
  ``gqa_pope_seem_{setting}.json``.

The ``seem`` files are pretty-printed JSON arrays; every file is read as an array or as JSON lines,
whichever it is. Images are found by name beside the question file, in a subfolder (``val2014/``,
``images/``) or in a sibling folder.

Splits are POPE's three negative-sampling settings; ``all`` is the three together. The default is
``adversarial`` (negatives are the objects that co-occur most with the image's own, the setting
that best separates models). A sample's key is its ``question_id``, which POPE numbers per setting,
so in ``all`` keys are ``{setting}-{question_id}``; its category is the setting.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from attnwh.core.errors import BenchmarkError
from attnwh.extract.benchmarks import formats
from attnwh.extract.benchmarks.registry import Benchmark, Sample, register_benchmark

SETTINGS = ("adversarial", "popular", "random")
SPLITS = (*SETTINGS, "all")
DEFAULT_SPLIT = "adversarial"
PARSER = "pope"  # POPE's own rule (its evaluate.py, LLaVA-1.5's eval_pope.py); the study style reads the first word (study_parser)
LINE_KEYS = ("question_id", "image", "text", "label")
PARQUET_COLUMNS = ("question_id", "question", "answer", "image", "category")
LINES_EXPECTED = 'POPE questions (JSON lines or a JSON array) like {"question_id": 1, "image": "COCO_val2014_....jpg", "text": "Is there ...?", "label": "yes"}'
PARQUET_EXPECTED = f"POPE Parquet with columns {', '.join(PARQUET_COLUMNS)}"


@dataclass(frozen=True)
class Source:
    """One of POPE's image sources: its benchmark name, the word its question files start with, its images."""

    benchmark: str
    prefix: str  # coco / aokvqa / gqa: the first word of the question files' names
    file_pattern: str  # the question file of a setting, for messages
    images: str  # where the images come from, for messages
    parquet: bool  # the lmms-lab Parquet export exists (COCO only)

    def data_help(self) -> str:
        text = (
            f"a folder holding {self.file_pattern.format(setting='{adversarial,popular,random}')} and {self.images} "
            "(directly or in a subfolder); or one such question file with its images beside it or in a sibling folder"
        )
        return text + ("; or a folder of POPE Parquet files (lmms-lab/POPE), or one of them" if self.parquet else "")


SOURCES = {
    source.prefix: source
    for source in (
        Source("pope", "coco", "coco_pope_{setting}.json", "the COCO val2014 images (e.g. val2014/)", True),
        Source("pope-aokvqa", "aokvqa", "aokvqa_pope_seem_{setting}.json", "the COCO images its A-OKVQA questions name", False),
        Source("pope-gqa", "gqa", "gqa_pope_seem_{setting}.json", "the GQA images (images/<id>.jpg)", False),
    )
}


def load(source: Source, data: Path | None, split: str | None) -> list[Sample]:
    """The samples of one setting (or ``all``) from question files (or, for COCO, Parquet)."""
    root = formats.require_data(source.benchmark, data, source.data_help())
    split = split or DEFAULT_SPLIT
    if root.is_file():
        if root.suffix.lower() == ".parquet" and source.parquet:
            return formats.unique_keys(_load_parquet([root], split))
        _check_source(root, source)
        formats.check_file_split(root, split, SPLITS)
        setting = next((name for name in SETTINGS if name in formats.name_tokens(root)), split)
        return formats.unique_keys(_load_lines(root, setting, split, formats.ImageIndex.near_file(root)))
    question_files = _question_files(root, split, source)
    if question_files:
        images = formats.ImageIndex([root])
        samples = [sample for setting, path in question_files for sample in _load_lines(path, setting, split, images)]
        return formats.unique_keys(samples)
    parquet_files = formats.find_files(root, lambda path: path.suffix.lower() == ".parquet") if source.parquet else []
    if parquet_files:
        return formats.unique_keys(_load_parquet(parquet_files, split))
    wanted = source.file_pattern.format(setting=split if split != "all" else "{adversarial,popular,random}")
    raise BenchmarkError(f"{root}: no {wanted} found; expected {source.data_help()}")


def _file_source(path: Path) -> Source | None:
    """The source a POPE question file belongs to, from its name (None: not a POPE question file)."""
    tokens = formats.name_tokens(path)
    if path.suffix.lower() not in (".json", ".jsonl") or "pope" not in tokens or not any(setting in tokens for setting in SETTINGS):
        return None
    others = [source for prefix, source in SOURCES.items() if prefix != "coco" and prefix in tokens]
    return others[0] if others else SOURCES["coco"]  # COCO's files, and renamed ones naming no other source


def _check_source(path: Path, source: Source) -> None:
    found = _file_source(path)
    if found is not None and found is not source:
        raise BenchmarkError(f"{path} holds POPE's {found.prefix} questions; use --benchmark {found.benchmark}")


def _question_files(root: Path, split: str, source: Source) -> list[tuple[str, Path]]:
    """(setting, file) for each setting of the split whose question file of this source is in the folder."""
    found = []
    for setting in SETTINGS if split == "all" else (split,):
        files = formats.find_files(root, lambda path, setting=setting: _file_source(path) is source and setting in formats.name_tokens(path))
        if files:
            found.append((setting, formats.one_file(root, files, f"POPE {source.prefix} {setting} question files")))
    if split == "all" and found and len(found) < len(SETTINGS):
        missing = sorted(set(SETTINGS) - {setting for setting, _ in found})
        raise BenchmarkError(f"{root}: split all needs the question files of every setting; {source.file_pattern.format(setting=missing[0])} is missing")
    return found


def _load_lines(path: Path, setting: str, split: str, images: formats.ImageIndex) -> list[Sample]:
    items = formats.read_json_records(path, LINES_EXPECTED)
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


_DESCRIPTIONS = {
    "coco": "POPE: yes/no object-presence questions on COCO val2014 images (object hallucination)",
    "aokvqa": "POPE on A-OKVQA: yes/no object-presence questions on the COCO images of A-OKVQA",
    "gqa": "POPE on GQA: yes/no object-presence questions on GQA (Visual Genome) images",
}

for _prefix, _source in SOURCES.items():
    register_benchmark(
        Benchmark(
            name=_source.benchmark,
            version="2",  # 2: answers parsed by POPE's own rule under llava-eval (1: the first word)
            description=_DESCRIPTIONS[_prefix],
            load=partial(load, _source),
            template="short_answer",
            study_template="as_is",
            study_parser="yes_no",  # att_pope.py: the first word against the label
            splits=SPLITS,
            default_split=DEFAULT_SPLIT,
            data_help=_source.data_help(),
        )
    )
