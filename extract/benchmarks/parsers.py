"""Answer parsers. An answer that cannot be parsed is ``invalid``: never a guess."""

from __future__ import annotations

import re

INVALID = "invalid"
_WORD = re.compile(r"[A-Za-z]+")
_LETTER = re.compile(r"^\s*\(?([A-Z])(?:[.):\s]|$)")


def parse_yes_no(text: str) -> str:
    """POPE's rule: the first word decides; anything but yes/no is invalid."""
    match = _WORD.search(text)
    if match is None:
        return INVALID
    word = match.group(0).lower()
    return word if word in ("yes", "no") else INVALID


def parse_letter(text: str, n_choices: int) -> str:
    """A leading option letter (``B``, ``B.``, ``(B)``) within the offered choices."""
    match = _LETTER.match(text)
    if match is None:
        return INVALID
    letter = match.group(1)
    return letter if ord(letter) - ord("A") < n_choices else INVALID


def parse(parser: str, text: str, n_choices: int) -> str:
    if parser == "yes_no":
        return parse_yes_no(text)
    if parser == "letter":
        return parse_letter(text, n_choices)
    raise ValueError(f"unknown parser {parser!r}")
