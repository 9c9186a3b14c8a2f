"""The text after the image, per benchmark and prompt style.

Two styles, chosen with ``--prompt-style`` and recorded in every run's fingerprint:

- ``llava-eval`` (default): as LLaVA-1.5's evaluation scripts word it (``model_vqa_loader.py`` /
  ``model_vqa_mmbench.py`` with LLaVA's question files): POPE appends "Answer the question using a
  single word or phrase."; multiple choice puts MMBench's hint first, lists the options as ``A. ...``
  lines and ends with "Answer with the option's letter from the given choices directly.".
- ``study``: as the reference study's released code (jing-bi/visual-head ``llava/eval/att_*.py``)
  words it: POPE's question as the file states it; MMBench without the hint (the line that puts it
  first is commented out in ``att_mmbench.py``); Q-Bench's "Choose between one of the options as
  follows:" list with no closing instruction; SEED-Bench options as ``A.choice`` (no space);
  PointQA as its ``build_prompt`` (options, then the letter instruction, no rectangle sentence).

A template is a function of the sample; ``TEMPLATES`` names them, and each benchmark names one
template per style. The model's prompt format (``attnwh.extract.prompts``) wraps this text with
the image placeholder.
"""

from __future__ import annotations

from collections.abc import Callable

from attnwh.core.errors import UsageError
from attnwh.extract.benchmarks.registry import Sample

SHORT_ANSWER = "Answer the question using a single word or phrase."
LETTER_ANSWER = "Answer with the option's letter from the given choices directly."
QBENCH_OPTIONS = "Choose between one of the options as follows:"
LETTERS = "ABCDEFGHIJ"
PROMPT_STYLES = ("llava-eval", "study")
DEFAULT_PROMPT_STYLE = "llava-eval"


def as_is(sample: Sample) -> str:
    return sample.question


def short_answer(sample: Sample) -> str:
    return f"{sample.question}\n{SHORT_ANSWER}"


def letter_choice(sample: Sample) -> str:
    """LLaVA-1.5: hint, question (with the benchmark's note), ``A. option`` lines, the letter instruction."""
    question = f"{sample.question} {sample.note}" if sample.note else sample.question
    lines = [sample.hint, question] if sample.hint else [question]
    lines += _options(sample, ". ")
    lines.append(LETTER_ANSWER)
    return "\n".join(lines)


def study_letter_choice(sample: Sample) -> str:
    """The study's MMBench and PointQA prompt: question, ``A. option`` lines, the letter instruction; no hint, no note."""
    return "\n".join([sample.question, *_options(sample, ". "), LETTER_ANSWER])


def study_seed(sample: Sample) -> str:
    """The study's ``att_seed.py``: options as ``A.choice`` (no space), then the letter instruction."""
    return "\n".join([sample.question, *_options(sample, "."), LETTER_ANSWER])


def study_qbench(sample: Sample) -> str:
    """Q-Bench as LLaVA-1.5's ``model_vqa_qbench.py`` and the study's ``att_qbench.py`` word it: the options after
    "Choose between ...", each line ending in a newline, no instruction."""
    return f"{sample.question}\n{QBENCH_OPTIONS}\n" + "".join(f"{line}\n" for line in _options(sample, ". "))


def _options(sample: Sample, separator: str) -> list[str]:
    return [f"{letter}{separator}{choice}" for letter, choice in zip(LETTERS, sample.choices)]


TEMPLATES: dict[str, Callable[[Sample], str]] = {
    "as_is": as_is,
    "short_answer": short_answer,
    "letter_choice": letter_choice,
    "study_letter_choice": study_letter_choice,
    "study_seed": study_seed,
    "study_qbench": study_qbench,
}


def check_style(style: str) -> str:
    if style not in PROMPT_STYLES:
        raise UsageError(f"unknown prompt style {style!r}; choose {', '.join(PROMPT_STYLES)}")
    return style


def render_question(template: str, sample: Sample) -> str:
    return TEMPLATES[template](sample)
