"""Answer parsers against hand-labelled model outputs."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
    ("There is no dog.", "invalid"),  # the first word decides, as in the study's att_pope.py
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
    ("B is correct.", "invalid"),  # a letter followed by a sentence: "B is not correct." would read alike
    ("B is not correct.", "invalid"),
    ("B green", "B"),  # a letter with its option's own text (v4)
    ("C  Blue.", "C"),
    ("C red", "invalid"),  # a letter with another option's text: neither
    ("D D", "D"),  # a letter standing alone at the start
    ("E", "invalid"),  # past the last option
    ("answer is a red", "invalid"),
    ("I think so", "invalid"),
    ("The answer is: B", "B"),
    ("Answer is: (C)", "C"),
    ("b", "B"),  # the whole answer one letter, in either case
    ("(c).", "invalid"),
    ("a dog", "invalid"),
    ("I. The answer is B", "B"),  # I is past the options: the stated letter reads
    ("I'd say B", "invalid"),  # no leading letter of the options, nothing stated
    ("purple", "invalid"),
    ("", "invalid"),
]


@pytest.mark.parametrize(("output", "expected"), YES_NO)
def test_yes_no(output, expected):
    assert parse("yes_no", output) == expected


@pytest.mark.parametrize(("output", "expected"), LETTER)
def test_letter(output, expected):
    assert parse("letter", output, COLOURS) == expected


# (a description, its parsed form: the whole text, NFKC, lower case, white space collapsed)
FREE_TEXT = [
    ("The image shows a dog.", "the image shows a dog."),
    ("  Two  cats\n\non a\tsofa.  ", "two cats on a sofa."),
    ("A ﬁsh in a ＬＡＫＥ", "a fish in a lake"),  # NFKC: the ligature and full-width letters
    ("Yes", "yes"),  # not read as yes / no: an open answer is kept whole
    ("", "invalid"),
    (" \n\t", "invalid"),
]


@pytest.mark.parametrize(("output", "expected"), FREE_TEXT)
def test_free_text(output, expected):
    assert parse("free_text", output) == expected


def test_a_description_is_never_decided_early():
    assert not any(PARSERS["free_text"].decided(text, ()) for text in ("", "A dog.", "Yes,", "B."))


def test_letter_respects_the_number_of_options():
    assert parse("letter", "C", ("x", "y")) == "invalid"
    assert parse("letter", "B", ("x", "y")) == "B"


def official_pope(text: str) -> str:
    """POPE's evaluate.py / LLaVA-1.5's eval_pope.py, line for line (the answer stripped first, as LLaVA's
    model_vqa_loader.py stores it)."""
    text = text.strip()
    if text.find(".") != -1:
        text = text.split(".")[0]
    text = text.replace(",", "")
    words = text.split(" ")
    if "No" in words or "not" in words or "no" in words:
        return "no"
    return "yes"


POPE = [
    ("Yes", "yes"),
    ("No", "no"),
    ("No.", "no"),
    ("There is no dog in the image.", "no"),
    ("I do not see a dog.", "no"),
    ("Yes, there is a dog. There is no cat.", "yes"),  # only the first sentence is read
    ("Yes, there is no dog", "no"),
    ("NO", "yes"),  # not one of its words: a yes there
    ("Not really.", "yes"),
    ("", "yes"),
    ("no,", "no"),
]


@pytest.mark.parametrize(("output", "expected"), POPE)
def test_pope_reads_answers_as_its_own_script_does(output, expected):
    assert parse("pope", output) == official_pope(output) == expected


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("NnoOtYyesa .,!\n")), max_size=24))
def test_pope_equals_its_script_on_generated_answers(text):
    assert parse("pope", text) == official_pope(text)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("NnoOtYyesa .,")), max_size=16), st.text(alphabet=st.sampled_from(list("NnoOtYyesa .,")), max_size=16))
def test_a_decided_pope_answer_reads_the_same_however_it_goes_on(start, rest):
    if PARSERS["pope"].decided(start, ()):
        assert parse("pope", start + rest) == parse("pope", start)


def test_parsers_are_named_and_versioned():
    assert {name: parser.version for name, parser in PARSERS.items()} == {"yes_no": "1", "pope": "1", "letter": "4", "free_text": "1"}
    with pytest.raises(ValueError, match="unknown parser"):
        parse("fuzzy", "B")


# -- a decided answer: what a sweep stops at (extract.reuse) -------------------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

ANSWER_TEXT = st.text(alphabet=st.sampled_from(list("YyesNnoABCDabcd .,:()*'\"\n-1é\ufffd\u0301")) | st.characters(), max_size=12)


@settings(max_examples=400, deadline=None)
@given(start=ANSWER_TEXT, rest=ANSWER_TEXT, parser=st.sampled_from(sorted(PARSERS)))
def test_a_decided_answer_parses_the_same_however_it_goes_on(start, rest, parser):
    """Once a parser calls the start of an output decided, no continuation changes what it parses."""
    if PARSERS[parser].decided(start, COLOURS):
        assert parse(parser, start + rest, COLOURS) == parse(parser, start, COLOURS)


@pytest.mark.parametrize(
    "parser, text, decided",
    [
        ("yes_no", "Yes", False),  # could still be "Yesterday"
        ("yes_no", "Yes,", True),
        ("yes_no", "No ", True),
        ("yes_no", "Yes\ufffd", False),  # unfinished bytes of a character
        ("yes_no", "", False),
        ("letter", "B", False),  # could still be "Blue"
        ("letter", "B.", True),
        ("letter", "(C)", True),
        ("letter", "B ", False),  # could still be "B red" (not a leading letter)
        ("letter", "B R", True),
        ("letter", "The answer is B.", False),  # stated letters wait for the whole answer
        ("letter", "I.", False),  # past the four options: what follows may state one
        ("letter", "b.", False),  # a lone letter in lower case: only the whole answer decides
    ],
)
def test_decided_by_hand(parser, text, decided):
    assert PARSERS[parser].decided(text, COLOURS) is decided
