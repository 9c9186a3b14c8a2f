"""Answer parsers against hand-labelled model outputs."""

from __future__ import annotations

import pytest

from attnwh.extract.benchmarks.parsers import PARSERS, parse

COLOURS = ("red", "green", "blue", "yellow")

# (model output, what a careful human reads in it)
YES_NO = [
    ("Yes", "yes"),
    ("yes.", "yes"),
    ("Yes, there is a dog in the image.", "yes"),
    ("  no", "no"),
    ("No, there is not.", "no"),
    ("NO", "no"),
    ("There is no dog.", "invalid"),  # the first word decides, as in POPE's evaluation
    ("Nope", "invalid"),
    ("yesterday", "invalid"),
    ("", "invalid"),
    ("1", "invalid"),
    ("Oui", "invalid"),
]

LETTER = [
    ("B", "B"),
    ("B.", "B"),
    ("(C)", "C"),
    ("C) blue", "C"),
    ("D. yellow", "D"),
    ("A\n", "A"),
    ("**B**", "B"),
    ("The answer is D.", "D"),
    ("Answer: B", "B"),
    ("The correct option is C", "C"),
    ("blue", "C"),  # exactly one option's text
    ("Yellow.", "D"),
    ("A red circle", "invalid"),  # an article, not a letter
    ("E", "invalid"),  # past the last option
    ("answer is a red", "invalid"),
    ("I think so", "invalid"),
    ("purple", "invalid"),
    ("", "invalid"),
]


@pytest.mark.parametrize(("output", "expected"), YES_NO)
def test_yes_no(output, expected):
    assert parse("yes_no", output) == expected


@pytest.mark.parametrize(("output", "expected"), LETTER)
def test_letter(output, expected):
    assert parse("letter", output, COLOURS) == expected


def test_letter_respects_the_number_of_options():
    assert parse("letter", "C", ("x", "y")) == "invalid"
    assert parse("letter", "B", ("x", "y")) == "B"


def test_parsers_are_named_and_versioned():
    assert {name: parser.version for name, parser in PARSERS.items()} == {"yes_no": "1", "letter": "2"}
    with pytest.raises(ValueError, match="unknown parser"):
        parse("fuzzy", "B")
