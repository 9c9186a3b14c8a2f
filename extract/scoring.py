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
