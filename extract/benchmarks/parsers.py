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
# "the answer is B", "Answer: (B)", "The answer is: B", "option B", "correct option is B." (the letter itself upper case)
_STATED_LETTER = re.compile(r"\b(?i:answer|option|choice)\s*(?i:is\s*:?|:)?\s*\(?([A-Z])(?:[.):,\s]|$)")
# the whole answer one letter in either case: "b", "(b)", "b." (the study's att_mmbench.py compares case-insensitively)
_LONE_LETTER = re.compile(r"^\(?([A-Za-z])[.)]?$")
# a letter, then the rest of the answer: read only where the rest is that option's own text ("B green" for B. green)
_LETTER_AND_TEXT = re.compile(r"^\(?([A-Z])[.):]?\s+(.+)$", re.S)


@dataclass(frozen=True)
class Parser:
    name: str
    version: str
    parse: Callable[[str, tuple[str, ...]], str]  # (model output, option texts) -> parsed answer
    description: str
    # (the start of an output, option texts) -> whether ``parse`` gives the same answer however the output goes on
    decided: Callable[[str, tuple[str, ...]], bool] = lambda text, choices: False
    answers: str = "open"  # what it reads: "yes_no" (yes or no), "letter" (an option letter) or "open" (a free answer)


def parse_yes_no(text: str, choices: tuple[str, ...] = ()) -> str:
    """The first word decides (case-insensitive), as the study's ``att_pope.py`` reads it; anything but yes / no
    is invalid."""
    match = _WORD.search(text)
    if match is None:
        return INVALID
    word = match.group(0).lower()
    return word if word in ("yes", "no") else INVALID


def parse_pope(text: str, choices: tuple[str, ...] = ()) -> str:
    """POPE's own rule (its ``evaluate.py``; LLaVA-1.5's ``eval_pope.py``): the first sentence (up to the first
    ".") of the stripped answer, commas removed, split at spaces: "no" if a word is ``No``, ``no`` or ``not``,
    else "yes". Never invalid: an answer without those words is a yes (``NO`` too, as there)."""
    sentence = text.strip().split(".")[0]
    words = sentence.replace(",", "").split(" ")
    return "no" if "No" in words or "not" in words or "no" in words else "yes"


def decided_pope(text: str, choices: tuple[str, ...] = ()) -> bool:
    """Whether the first sentence is complete (a "." ends it): what follows it is not read."""
    return "." in text


def decided_yes_no(text: str, choices: tuple[str, ...] = ()) -> bool:
    """Whether the first word is complete: a character that is not a letter follows it (not U+FFFD, which
    stands for the unfinished bytes of a character that may be one)."""
    match = _WORD.search(text)
    return match is not None and match.end() < len(text) and text[match.end()] != "\ufffd"


def parse_letter(text: str, choices: tuple[str, ...]) -> str:
    """An option letter within the offered choices.

    In order, the first within the offered choices: a letter standing alone at the start (``B``, ``B.``,
    ``(B)``, ``B) red``); a stated letter (``The answer is B``, ``Answer: B``, ``The answer is: B``,
    ``Option B``); the whole answer one letter in either case (``b``); a letter followed by that option's own
    text (``B red`` for ``B. red``); the whole answer equal to exactly one option's text (``red`` for ``B. red``).
    Anything else is invalid (a letter past the last option too: "I think B" is not read as I, nor as B; nor a
    letter followed by a sentence: "B is correct." would read as "B is not correct." does).
    """
    text = unicodedata.normalize("NFKC", text).strip()
    for pattern, source in ((_LEADING_LETTER, text), (_STATED_LETTER, text), (_LONE_LETTER, text)):
        match = pattern.search(source) if pattern is _STATED_LETTER else pattern.match(source)
        if match is not None and _offered(match.group(1), choices):
            return match.group(1).upper()
    match = _LETTER_AND_TEXT.match(text)
    if match is not None and _offered(match.group(1), choices) and _plain(match.group(2)) == _plain(choices[ord(match.group(1)) - ord("A")]):
        return match.group(1)
    cleaned = _plain(text)
    matches = [index for index, choice in enumerate(choices) if _plain(choice) == cleaned]
    if cleaned and len(matches) == 1:
        return chr(ord("A") + matches[0])
    return INVALID


def _plain(text: str) -> str:
    """An answer or option text as compared whole: stripped, a final full stop dropped, case folded."""
    return text.strip().rstrip(".").strip().casefold()


def _offered(letter: str, choices: tuple[str, ...]) -> bool:
    return 0 <= ord(letter.upper()) - ord("A") < len(choices)


def decided_letter(text: str, choices: tuple[str, ...] = ()) -> bool:
    """Whether a letter of the offered choices standing alone at the start is complete: followed by its
    punctuation, or by space and then a character that is not a lowercase letter. A letter at the end, a letter
    past the choices, a stated letter or an option's text are decided only by the whole answer."""
    text = unicodedata.normalize("NFKC", text).strip()
    match = _LEADING_LETTER.match(text)
    if match is None or not _offered(match.group(1), choices):
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
        Parser("yes_no", "1", parse_yes_no, "first word, yes or no", decided_yes_no, "yes_no"),
        Parser("pope", "1", parse_pope, "POPE's evaluate.py: no if the first sentence has the word No, no or not, else yes", decided_pope, "yes_no"),
        Parser("letter", "4", parse_letter, "leading or stated option letter, a letter with its option's text, or the exact text of one option", decided_letter, "letter"),
        Parser("free_text", "1", parse_free_text, "the whole open answer, NFKC, lower case, white space collapsed"),
    )
}


def parse(parser: str, text: str, choices: tuple[str, ...] = ()) -> str:
    if parser not in PARSERS:
        raise ValueError(f"unknown parser {parser!r}; choose {', '.join(PARSERS)}")
    return PARSERS[parser].parse(text, tuple(choices))
