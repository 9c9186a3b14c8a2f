"""The text after the image, per benchmark, as the reference study's evaluation code wrote it.

LLaVA-1.5's evaluation scripts (which the study used): POPE appends "Answer the question using a
single word or phrase."; MMBench puts the hint before the question and lists the options as
``A. ...`` lines, then asks for the letter; SEED-Bench and Q-Bench use the same letter prompt.
The model's prompt format (``attnwh.extract.prompts``) wraps this text with the image placeholder.
"""

from __future__ import annotations

from collections.abc import Callable

from attnwh.extract.benchmarks.registry import Sample

SHORT_ANSWER = "Answer the question using a single word or phrase."
LETTER_ANSWER = "Answer with the option's letter from the given choices directly."
LETTERS = "ABCDEFGHIJ"


def as_is(sample: Sample) -> str:
    return sample.question


def short_answer(sample: Sample) -> str:
    return f"{sample.question}\n{SHORT_ANSWER}"


def letter_choice(sample: Sample) -> str:
    lines = [sample.hint, sample.question] if sample.hint else [sample.question]
    lines += [f"{letter}. {choice}" for letter, choice in zip(LETTERS, sample.choices)]
    lines.append(LETTER_ANSWER)
    return "\n".join(lines)


TEMPLATES: dict[str, Callable[[Sample], str]] = {"as_is": as_is, "short_answer": short_answer, "letter_choice": letter_choice}


def render_question(template: str, sample: Sample) -> str:
    return TEMPLATES[template](sample)
