"""``qbench``: Q-Bench's LLVisionQA, multiple choice about low-level image quality (blur, noise, lighting).

The authors' files are JSON lists, ``llvisionqa_dev.json`` (with answers) and ``llvisionqa_test.json``
(without them), of ``{"type": 2, "concern": 3, "question": "How is the lighting of this building?",
"img_path": "00653.jpg", "candidates": ["High", "Low", "Medium"], "correct_ans": "Low"}``, with the
images in a folder (``images/``, ``images_llvisionqa/``). The hub export names the two codes
``question_type`` / ``question_concern``; both spellings are read.

The options are the candidates in file order (2 to 4 of them) and the gold letter is the position of
``correct_ans`` among them; a file without any ``correct_ans`` gives samples without gold. Items have
no id of their own, and each LLVisionQA image has one question, so the key is ``img_path``. The
category is ``{type} / {concern}`` as the file gives them, each code named as Q-Bench names it:
type 0 ``yes-or-no``, 1 ``what``, 2 ``how``; concern 0 ``distortion``, 1 ``other low-level``,
2 ``in-context distortion``, 3 ``in-context other`` (so ``split_part(category, ' / ', 1)`` is the
type); a code given as text is kept as it is, an unknown number shown as ``type 7``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from attnwh.core.errors import BenchmarkError
from attnwh.extract.benchmarks import formats
from attnwh.extract.benchmarks.registry import Benchmark, Sample, register_benchmark
from attnwh.extract.benchmarks.templates import LETTERS

NAME = "qbench"
SPLITS = ("dev", "test")
DEFAULT_SPLIT = "dev"
PARSER = "letter"
REQUIRED = ("img_path", "question", "candidates")
MIN_CANDIDATES, MAX_CANDIDATES = 2, 4
TYPE_FIELDS = ("type", "question_type")  # the authors' files, the hub export
CONCERN_FIELDS = ("concern", "question_concern")
QUESTION_TYPES = {0: "yes-or-no", 1: "what", 2: "how"}
CONCERNS = {0: "distortion", 1: "other low-level", 2: "in-context distortion", 3: "in-context other"}
EXPECTED = 'a JSON list of LLVisionQA questions like {"img_path": ..., "question": ..., "candidates": [...], "correct_ans": ...}'
DATA_HELP = (
    "a folder holding llvisionqa_dev.json and/or llvisionqa_test.json and the LLVisionQA images (directly or in a "
    "subfolder such as images/); or one of those files, its images beside it or in a sibling folder"
)


def load(data: Path | None, split: str | None) -> list[Sample]:
    """The questions of one LLVisionQA split."""
    root = formats.require_data(NAME, data, DATA_HELP)
    split = split or DEFAULT_SPLIT
    if root.is_file():
        formats.check_file_split(root, split, SPLITS)
        return formats.unique_keys(_load_file(root, formats.ImageIndex.near_file(root)))
    return formats.unique_keys(_load_file(_question_file(root, split), formats.ImageIndex([root])))


def _question_file(root: Path, split: str) -> Path:
    def matches(path: Path) -> bool:
        name = path.name.lower()
        return path.suffix.lower() == ".json" and ("llvisionqa" in name or "qbench" in name) and split in formats.name_tokens(path)

    files = formats.find_files(root, matches)
    if not files:
        raise BenchmarkError(f"{root}: no llvisionqa_{split}.json found; expected {DATA_HELP}")
    return formats.one_file(root, files, f"Q-Bench {split} files")


def _load_file(path: Path, images: formats.ImageIndex) -> list[Sample]:
    _, items = formats.json_list_items(path, EXPECTED)
    formats.check_keys_somewhere(path, items, REQUIRED, EXPECTED)
    has_answers = any(isinstance(item, dict) and "correct_ans" in item for _, item in items)
    return [_sample(f"{path.name} line {line}", item, has_answers, images) for line, item in items]


def _sample(where: str, item: Any, has_answers: bool, images: formats.ImageIndex) -> Sample:
    if not isinstance(item, dict):
        return formats.error_sample(where.replace(" ", "-"), f"{where}: not a JSON object", PARSER)
    key = formats.text_value(item.get("img_path"))
    category = _category(_first(item, TYPE_FIELDS), _first(item, CONCERN_FIELDS))
    gold, problem = _gold(item, has_answers)
    if key is None:
        problem = "img_path is missing or empty"
    elif formats.text_value(item.get("question")) is None:
        problem = "the question is missing or empty"
    if problem is not None:
        return formats.error_sample(key or where.replace(" ", "-"), f"{where}: {problem}", PARSER, category)
    choices = tuple(item["candidates"])
    return Sample(key=key, question=item["question"], load_image=images.loader(key), choices=choices, gold=gold, category=category, parser=PARSER)


def _gold(item: dict[str, Any], has_answers: bool) -> tuple[str | None, str | None]:
    """(the gold letter, what is wrong with the candidates or the answer)."""
    candidates = item.get("candidates")
    if not isinstance(candidates, list) or not all(isinstance(candidate, str) for candidate in candidates):
        return None, "candidates is not a list of texts"
    if not MIN_CANDIDATES <= len(candidates) <= MAX_CANDIDATES:
        return None, f"{len(candidates)} candidates; expected {MIN_CANDIDATES} to {MAX_CANDIDATES}"
    if not has_answers:
        return None, None
    answer = item.get("correct_ans")
    positions = [index for index, candidate in enumerate(candidates) if candidate == answer]
    if len(positions) != 1:
        found = "not among" if not positions else f"{len(positions)} times among"
        return None, f"correct_ans {answer!r} is {found} the candidates"
    return LETTERS[positions[0]], None


def _first(item: dict[str, Any], names: tuple[str, ...]) -> Any:
    return next((item[name] for name in names if item.get(name) is not None), None)


def _category(question_type: Any, concern: Any) -> str | None:
    """``{type} / {concern}``: Q-Bench's codes named, text kept, an unknown code shown as a number."""
    if question_type is None and concern is None:
        return None
    return f"{_code_name(question_type, QUESTION_TYPES, 'type')} / {_code_name(concern, CONCERNS, 'concern')}"


def _code_name(value: Any, names: dict[int, str], what: str) -> str:
    if isinstance(value, str) and value.strip():
        return value.strip()
    if isinstance(value, int) and not isinstance(value, bool) and value in names:
        return names[value]
    return f"{what} {value}"


register_benchmark(
    Benchmark(
        name=NAME,
        version="3",  # 3: llava-eval words questions as LLaVA-1.5's model_vqa_qbench.py (2: as its letter-choice scripts); the letter parser v3
        description="Q-Bench LLVisionQA: multiple choice on low-level image quality (distortions, lighting, clarity)",
        load=load,
        template="study_qbench",  # LLaVA-1.5's model_vqa_qbench.py and the study's att_qbench.py word it alike
        study_template="study_qbench",
        splits=SPLITS,
        default_split=DEFAULT_SPLIT,
        data_help=DATA_HELP,
    )
)
