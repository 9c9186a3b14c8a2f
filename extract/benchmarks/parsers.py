"""Answer parsers, named and versioned (both stored on every sample row).

An answer that cannot be parsed is ``invalid``: never a guess, never a random letter.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

INVALID = "invalid"
_WORD = re.compile(r"[^\W\d_]+")
# a letter standing alone at the start: "B", "B.", "B)", "(B)", "B: text", "B, ..."; not the article
# of a sentence ("A red circle"): a letter followed by a space and a lowercase word does not count
_LEADING_LETTER = re.compile(r"^[\s\"'*]*\(?([A-Z])(?:[.):,\"'*]|\s+(?![a-z])|$)")
# "the answer is B", "Answer: (B)", "option B", "correct option is B." (the letter itself upper case)
_STATED_LETTER = re.compile(r"\b(?i:answer|option|choice)\s*(?i:is|:)?\s*\(?([A-Z])(?:[.):,\s]|$)")


@dataclass(frozen=True)
class Parser:
    name: str
    version: str
    parse: Callable[[str, tuple[str, ...]], str]  # (model output, option texts) -> parsed answer
    description: str
    # (the start of an output, option texts) -> whether ``parse`` gives the same answer however the output goes on
    decided: Callable[[str, tuple[str, ...]], bool] = lambda text, choices: False


def parse_yes_no(text: str, choices: tuple[str, ...] = ()) -> str:
    """POPE's rule: the first word decides (case-insensitive); anything but yes / no is invalid."""
    match = _WORD.search(text)
    if match is None:
        return INVALID
    word = match.group(0).lower()
    return word if word in ("yes", "no") else INVALID


def decided_yes_no(text: str, choices: tuple[str, ...] = ()) -> bool:
    """Whether the first word is complete: a character that is not a letter follows it (not U+FFFD, which
    stands for the unfinished bytes of a character that may be one)."""
    match = _WORD.search(text)
    return match is not None and match.end() < len(text) and text[match.end()] != "\ufffd"


def parse_letter(text: str, choices: tuple[str, ...]) -> str:
    """An option letter within the offered choices.

    In order: a letter standing alone at the start (``B``, ``B.``, ``(B)``, ``B) red``); a stated
    letter (``The answer is B``, ``Answer: B``, ``Option B``); the whole answer equal to exactly one
    option's text (``red`` for ``B. red``). Anything else, or a letter past the last option, is invalid.
    """
    text = unicodedata.normalize("NFKC", text).strip()
    for pattern, source in ((_LEADING_LETTER, text), (_STATED_LETTER, text)):
        match = pattern.search(source) if pattern is _STATED_LETTER else pattern.match(source)
        if match is not None:
            letter = match.group(1).upper()
            return letter if 0 <= ord(letter) - ord("A") < len(choices) else INVALID
    cleaned = text.rstrip(".").strip().casefold()
    matches = [index for index, choice in enumerate(choices) if choice.strip().rstrip(".").casefold() == cleaned]
    if cleaned and len(matches) == 1:
        return chr(ord("A") + matches[0])
    return INVALID


def decided_letter(text: str, choices: tuple[str, ...] = ()) -> bool:
    """Whether a letter standing alone at the start is complete: followed by its punctuation, or by space and
    then a character that is not a lowercase letter. A letter at the end, a stated letter or an option's text
    are decided only by the whole answer."""
    text = unicodedata.normalize("NFKC", text).strip()
    match = _LEADING_LETTER.match(text)
    if match is None:
        return False
    after = text[match.end(1) : match.end(1) + 1]
    return (after != "" and after in ".):,\"'*") or match.end() < len(text)


def parse_free_text(text: str, choices: tuple[str, ...] = ()) -> str:
    """An open answer (a description) as a whole, normalised so that answers differing only in form compare
    equal: NFKC, lower case, every run of white space one space, stripped. A blank answer is invalid. Nothing
    is decided before the answer ends (``decided`` stays False): a description has no early answer."""
    normalised = " ".join(unicodedata.normalize("NFKC", text).lower().split())
    return normalised or INVALID


PARSERS: dict[str, Parser] = {
    parser.name: parser
    for parser in (
        Parser("yes_no", "1", parse_yes_no, "first word, yes or no", decided_yes_no),
        Parser("letter", "2", parse_letter, "leading or stated option letter, or the exact text of one option", decided_letter),
        Parser("free_text", "1", parse_free_text, "the whole open answer, NFKC, lower case, white space collapsed"),
    )
}


def parse(parser: str, text: str, choices: tuple[str, ...] = ()) -> str:
    if parser not in PARSERS:
        raise ValueError(f"unknown parser {parser!r}; choose {', '.join(PARSERS)}")
    return PARSERS[parser].parse(text, tuple(choices))
