"""Scoring an answer: decoded text, parser name and version, parsed answer, correct, option log-probabilities."""

from __future__ import annotations

from typing import Any

import torch

from attnwh.extract.benchmarks import Sample
from attnwh.extract.benchmarks.parsers import PARSERS


def score_answer(tokenizer, sample: Sample, answer: list[int], log_probs: torch.Tensor, letter_ids: list[torch.Tensor]) -> dict[str, Any]:
    """The answer's columns: decoded text, parser name and version, parsed answer, correct, option log-probs.

    ``log_probs`` [vocab]: log-softmax of the logits at the answer position of this sample.
    """
    text = tokenizer.decode(answer, skip_special_tokens=True).strip()
    parser = PARSERS[sample.parser]
    parsed = parser.parse(text, sample.choices)
    return {
        "output_text": text,
        "parser": parser.name,
        "parser_version": parser.version,
        "parsed": parsed,
        "correct": (parsed == sample.gold) if sample.gold is not None else None,
        "option_logprobs": option_log_probs(log_probs, letter_ids, len(sample.choices)),
        **object_counts(sample, text),
    }


def object_counts(sample: Sample, text: str) -> dict[str, int]:
    """The answer's object words counted against the sample's annotation (the ``OBJECT_COUNTS`` columns), as
    AMBER's script counts them; nothing for a benchmark without object annotations (the columns stay null)."""
    if sample.objects is None:
        return {}
    score = sample.objects.vocabulary.score(text, sample.objects)
    return {
        "object_mentions": score.mentions,
        "hallucinated": score.hallucinated,
        "truth_objects": score.truth,
        "truth_mentioned": score.truth_mentioned,
        "hallu_objects": score.hallu,
        "hallu_mentioned": score.hallu_mentioned,
    }


def option_log_probs(log_probs: torch.Tensor, letter_ids: list[torch.Tensor], n_choices: int) -> list[float] | None:
    """Log-probability of each option letter at the answer position (any single token spelling it)."""
    if not n_choices:
        return None
    return [float(torch.logsumexp(log_probs[ids], dim=0)) for ids in letter_ids[:n_choices]]


YES_NO = ("yes", "no")  # the options of a yes / no answer, in the order a target's ``options`` lists them


def word_token_ids(tokenizer, word: str) -> torch.Tensor:
    """The ids of the single tokens that spell ``word`` at the start of an answer (``yes``, ``Yes``, ``▁yes``)."""
    candidates = set()
    for spelling in {word, word.capitalize(), word.upper()}:
        for text in (spelling, " " + spelling):
            encoded = tokenizer.encode(text, add_special_tokens=False)
            if len(encoded) == 1:
                candidates.add(encoded[0])
    candidates.discard(tokenizer.unk_token_id)
    return torch.tensor(sorted(candidates), dtype=torch.long)


def option_ids(tokenizer, sample: Sample, letter_ids: list[torch.Tensor]) -> tuple[list[torch.Tensor], int] | None:
    """A sample's options as the token ids that start each (option letters; yes and no) and the gold option's
    index, or None where the sample has no gold answer among options (an open answer, no gold)."""
    index = gold_option(sample)
    if index is None:
        return None
    if PARSERS[sample.parser].answers == "letter":
        return letter_ids[: len(sample.choices)], index
    return [word_token_ids(tokenizer, word) for word in YES_NO], index


def gold_option(sample: Sample) -> int | None:
    """The index of the gold answer among the sample's options (letters A, B, ...; yes, no), or None: an open
    answer, or no gold."""
    if sample.gold is None:
        return None
    answers = PARSERS[sample.parser].answers
    if answers == "letter" and sample.choices:
        index = ord(sample.gold) - ord("A") if len(sample.gold) == 1 else -1
        return index if 0 <= index < len(sample.choices) else None
    if answers == "yes_no" and sample.gold in YES_NO:
        return YES_NO.index(sample.gold)
    return None


def answer_target(options: tuple[list[torch.Tensor], int], log_probs: torch.Tensor) -> dict[str, float]:
    """What head attribution predicts for one sample (``log_probs`` [vocab] at the answer position): the gold
    option's log-probability (any single token that starts it) and its margin over the best wrong option."""
    ids, gold = options
    values = [float(torch.logsumexp(log_probs[option].float(), dim=0)) for option in ids]
    wrong = [value for index, value in enumerate(values) if index != gold]
    return {"gold_logprob": values[gold], "gold_margin": values[gold] - max(wrong) if wrong else None}
