"""``mmbench`` and ``mmbench-circular``: MMBench multiple choice from its public TSV (``MMBench_DEV_EN.tsv``).

The TSV (as OpenCompass / VLMEvalKit publish it) has columns ``index``, ``question``, ``hint``, ``A``..``D``,
``answer``, ``category``, ``image`` (base64), and sometimes ``l2-category``, ``split``, ``source``.
How its oddities are read:

- An empty option cell (or one pandas reads as NaN: ``nan``, ``None``, ``NA``, ...) is no option.
  Present options keep their order and are relettered without gaps (A, B, D present → A, B, C),
  and the gold letter moves with its option; a gold letter naming an absent option is an error row.
- An empty or NaN hint is None.
- An ``image`` cell of at most 64 digits is the ``index`` of the row that carries the image.
- Rows with an index of 1,000,000 or more are the file's own circular copies of row
  ``index % 1,000,000``; they are skipped, because the loader makes every rotation itself. (A copy
  whose main row is absent stands in for it.)

``mmbench`` gives one sample per question, keyed by its index. ``mmbench-circular`` gives, for a
question of n options, n samples whose options are rotated by 0..n-1 (rotation k puts original
option k first), keyed ``{index}-c{k}``, with ``group`` the question's index: MMBench's circular
evaluation scores a question right only when every rotation is right.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from attnwh.core.errors import BenchmarkError
from attnwh.extract.benchmarks import formats
from attnwh.extract.benchmarks.images import base64_loader
from attnwh.extract.benchmarks.registry import Benchmark, Sample, register_benchmark
from attnwh.extract.benchmarks.templates import LETTERS

NAME = "mmbench"
CIRCULAR_NAME = "mmbench-circular"
SPLITS = ("dev", "test")
DEFAULT_SPLIT = "dev"
PARSER = "letter"
REQUIRED_COLUMNS = ("index", "question", "A", "B", "image")
COPY_OFFSET = 1_000_000  # MMBench numbers the circular copies of question i as i + k * 1,000,000
IMAGE_REFERENCE_LENGTH = 64  # a shorter image cell names another row's index (VLMEvalKit's convention)
# the cells pandas reads as NaN by default: the reference evaluation code read the TSV with pandas
NA_CELLS = frozenset(
    ("", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN") + ("<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null")
)
EXPECTED = f"an MMBench TSV with columns {', '.join(REQUIRED_COLUMNS)} (and hint, C, D, answer, category)"
DATA_HELP = (
    "an MMBench TSV with base64 images (MMBench_DEV_EN.tsv, mmbench_dev_20230712.tsv, ...), or a folder holding "
    "exactly one English MMBench TSV of the split (Chinese ones, named *_CN*, are used only when passed as the file)"
)


@dataclass(frozen=True)
class Question:
    """One MMBench question as the TSV states it (options relettered without gaps)."""

    key: str  # the question's index
    question: str
    load_image: formats.ImageLoader
    choices: tuple[str, ...]
    gold: str | None
    category: str | None
    hint: str | None
    error: str | None = None


def load(circular: bool, data: Path | None, split: str | None) -> list[Sample]:
    """One sample per question, or (``circular``) one per rotation of its options."""
    path = _tsv_file(formats.require_data(CIRCULAR_NAME if circular else NAME, data, DATA_HELP), split or DEFAULT_SPLIT)
    header, rows = formats.read_tsv(path, REQUIRED_COLUMNS, EXPECTED)
    images = {row["index"].strip(): row["image"] for _, row in rows}
    questions = [_question(path, header, line, row, images) for line, row in _question_rows(rows)]
    samples = [sample for question in questions for sample in (_rotations(question) if circular else [_single(question)])]
    return formats.unique_keys(samples)


def _tsv_file(root: Path, split: str) -> Path:
    if root.is_file():
        formats.check_file_split(root, split, SPLITS)
        return root

    def matches(path: Path) -> bool:
        tokens = formats.name_tokens(path)
        return path.suffix.lower() == ".tsv" and "mmbench" in path.name.lower() and split in tokens and "cn" not in tokens

    files = formats.find_files(root, matches)
    if not files:
        raise BenchmarkError(f"{root}: no MMBench {split} TSV (such as MMBench_{split.upper()}_EN.tsv) found; expected {DATA_HELP}")
    return formats.one_file(root, files, f"MMBench {split} TSVs")


def _question_rows(rows: list[tuple[int, dict[str, str]]]) -> list[tuple[int, dict[str, str]]]:
    """The rows that state a question: all but the circular copies, unless a copy's main row is absent."""
    main, copies = [], {}
    for line, row in rows:
        number = _number(row["index"])
        if number is not None and number >= COPY_OFFSET:
            base = str(number % COPY_OFFSET)
            if base not in copies or number < _number(copies[base][1]["index"]):
                copies[base] = (line, row)
        else:
            main.append((line, row))
    present = {_key(row["index"]) for _, row in main}
    orphans = [item for base, item in copies.items() if base not in present]
    return sorted(main + orphans, key=lambda item: item[0])


def _number(index: str) -> int | None:
    index = index.strip()
    return int(index) if index.isascii() and index.isdigit() else None


def _key(index: str) -> str:
    """The question's index: a circular copy's is that of its main row."""
    number = _number(index)
    return index.strip() if number is None else str(number % COPY_OFFSET)


def _question(path: Path, header: list[str], line: int, row: dict[str, str], images: dict[str, str]) -> Question:
    where = f"{path.name} line {line}"
    letters = [letter for letter in LETTERS if letter in header and not _missing(row[letter])]
    gold, problem = _gold(header, row, letters)
    key = _key(row["index"])
    if not key:
        key, problem = f"line-{line}", "the index is empty"
    elif _missing(row["question"]):
        problem = "the question is empty"
    elif len(letters) < 2:
        problem = f"{len(letters)} option(s); expected at least 2"
    return Question(
        key=key,
        question=row["question"],
        load_image=_image_loader(where, row["image"], images),
        choices=tuple(row[letter] for letter in letters),
        gold=gold,
        category=None if _missing(row.get("category")) else row["category"],
        hint=None if _missing(row.get("hint")) else row["hint"],
        error=f"{where}: {problem}" if problem else None,
    )


def _gold(header: list[str], row: dict[str, str], letters: list[str]) -> tuple[str | None, str | None]:
    """(the gold letter among the present options, what is wrong with it); no answer column: no gold."""
    if "answer" not in header:
        return None, None
    answer = row["answer"].strip()
    if answer not in letters:
        return None, f"the answer {answer!r} is not among the options {', '.join(letters)}"
    return LETTERS[letters.index(answer)], None


def _missing(cell: str | None) -> bool:
    return cell is None or cell in NA_CELLS or not cell.strip()


def _image_loader(where: str, cell: str, images: dict[str, str]) -> formats.ImageLoader:
    text = cell.strip()
    if _number(text) is not None and len(text) <= IMAGE_REFERENCE_LENGTH:
        target = images.get(text, "").strip()
        if len(target) <= IMAGE_REFERENCE_LENGTH:
            return formats.failing_loader(f"{where}: the image cell refers to row index {text}, which has no image")
        text = target
    return base64_loader(text, where)


def _single(question: Question) -> Sample:
    return _sample(question, question.key, question.choices, question.gold, group=None)


def _rotations(question: Question) -> list[Sample]:
    """Rotation k lists the options from original option k on; the gold letter follows its option."""
    if question.error is not None:
        return [_sample(question, f"{question.key}-c0", question.choices, None, group=question.key)]
    n = len(question.choices)
    samples = []
    for k in range(n):
        gold = None if question.gold is None else LETTERS[(LETTERS.index(question.gold) - k) % n]
        choices = question.choices[k:] + question.choices[:k]
        samples.append(_sample(question, f"{question.key}-c{k}", choices, gold, group=question.key))
    return samples


def _sample(question: Question, key: str, choices: tuple[str, ...], gold: str | None, group: str | None) -> Sample:
    if question.error is not None:
        return dataclasses.replace(formats.error_sample(key, question.error, PARSER, question.category), group=group)
    return Sample(
        key=key, question=question.question, load_image=question.load_image, choices=choices, gold=gold, category=question.category, parser=PARSER, hint=question.hint, group=group
    )


def _register(name: str, circular: bool, description: str) -> None:
    register_benchmark(
        Benchmark(
            name=name,
            version="2",  # 2: the letter parser v3 (a stated "is:", a lone lower-case letter)
            description=description,
            load=partial(load, circular),
            template="letter_choice",
            study_template="study_letter_choice",
            splits=SPLITS,
            default_split=DEFAULT_SPLIT,
            data_help=DATA_HELP,
        )
    )


_register(NAME, False, "MMBench: multiple-choice perception and reasoning questions, one sample per question")
_register(CIRCULAR_NAME, True, "MMBench with circular evaluation: every rotation of each question's options, grouped by question")
