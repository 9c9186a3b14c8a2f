"""The object matcher against hand-computed counts and against AMBER's own counting loop.

``authors_counts`` is ``inference.py``'s generative branch transcribed line by line (spaCy's similarity
left out: exact matches only); the matcher's words stand in for nltk's nouns, and the answers the
properties draw know which object each of their words names, so the words are checked too.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attnwh.extract.benchmarks.objects import ObjectAnnotation, ObjectScore, ObjectVocabulary, WordSpan, amber_metrics, noun_forms
from tests import fixtures_benchmarks as fx

EXTRA_OBJECTS = ["earrings", "glass", "bus", "box", "knife", "shelf", "mouse", "goose", "child", "tomato", "shoe", "cherry", "glove", "horse"]
EXTRA_OBJECTS += ["TV", "e-book", "air-conditioning", "traffic light", "tennis", "sunglasses", "kiwi", "ski", "bus"]


def vocabulary(similar=(("bin", "dustbin"),), spellings=None) -> ObjectVocabulary:
    return ObjectVocabulary(
        "test", fx.AMBER_RELATION, objects=EXTRA_OBJECTS, safe_words=fx.AMBER_SAFE_WORDS, similar=similar, spellings={"leaf": "leave"} if spellings is None else spellings
    )


VOCABULARY = vocabulary()
EXACT = vocabulary(similar=())


def annotation(truth, hallu, vocab: ObjectVocabulary = VOCABULARY) -> ObjectAnnotation:
    return ObjectAnnotation(tuple(truth), tuple(hallu), vocab)


ID1 = annotation(fx.AMBER_ID1_TRUTH, fx.AMBER_ID1_HALLU)


def objects(text: str, vocab: ObjectVocabulary = VOCABULARY) -> list[str | None]:
    return [word.object for word in vocab.words(text)]


# ---------------------------------------------------------------- words and lemmas

LEMMAS = [
    ("dogs", "dog"),
    ("Dog's", "dog"),
    ("people", "people"),  # an entry of its own, as WordNet keeps it
    ("persons", "person"),
    ("men", "man"),
    ("women", "woman"),
    ("children", "child"),
    ("mice", "mouse"),
    ("geese", "goose"),
    ("leaves", "leave"),  # the vocabulary's spelling (WordNet: leaf)
    ("leaf", "leave"),  # the spellings table
    ("knives", "knife"),
    ("shelves", "shelf"),
    ("gloves", "glove"),
    ("boxes", "box"),
    ("buses", "bus"),
    ("bus", "bus"),
    ("glasses", "glass"),
    ("grass", "grass"),
    ("tennis", "tennis"),
    ("kiwis", "kiwi"),
    ("skis", "ski"),
    ("bu", None),  # bus is singular: no key from it
    ("horses", "horse"),
    ("tomatoes", "tomato"),
    ("shoes", "shoe"),
    ("cherries", "cherry"),
    ("skies", "sky"),
    ("trees", "tree"),
    ("earring", "earrings"),  # an entry written in the plural, found from its singular
    ("earrings", "earrings"),
    ("sunglasses", "sunglasses"),
    ("TV", "TV"),
    ("tvs", "TV"),
    ("e-books", "e-book"),
    ("air-conditioning", "air-conditioning"),
    ("cloudy", None),
    ("walking", None),
    ("tree-lined", None),  # one word, as nltk keeps it: no tree
    ("doghouse", None),
    ("is", None),
]


@pytest.mark.parametrize(("word", "expected"), LEMMAS)
def test_lemmas_match_the_vocabulary_spelling(word, expected):
    assert objects(word) == [expected]


def test_people_is_a_person_where_the_vocabulary_has_no_people():
    small = ObjectVocabulary("small", {"person": [], "leaf": []})
    assert objects("people and leaves", small) == ["person", None, "leaf"]


def test_noun_forms_start_with_the_word_itself():
    assert noun_forms("boxes") == ("boxes", "box", "boxe")
    assert noun_forms("glass") == ("glass",)
    assert noun_forms("leaves") == ("leaves", "leaf", "leafe", "leave")


def test_words_offsets_and_multi_word_objects():
    text = "Two traffic lights, a dog's bowl\nand air conditioning."
    assert VOCABULARY.words(text) == [
        WordSpan(0, 0, 3, "Two", None),
        WordSpan(1, 4, 18, "traffic lights", "traffic light"),
        WordSpan(2, 20, 21, "a", None),
        WordSpan(3, 22, 27, "dog's", "dog"),
        WordSpan(4, 28, 32, "bowl", None),
        WordSpan(5, 33, 36, "and", None),
        WordSpan(6, 37, 53, "air conditioning", "air-conditioning"),
    ]
    for word in VOCABULARY.words(text):
        assert text[word.start : word.end] == word.text
    assert objects("traffic, lights") == [None, "light"]  # not one phrase across punctuation
    assert objects("") == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("You can see a dog", [None, None, None, None, "dog"]),
        ("a can of soda", [None, "can", None, None]),
        ("the trash can.", [None, None, "can"]),
        ("a trash can near the road", [None, None, "can", None, None, "road"]),
        ("The can is red", [None, "can", None, None]),
        ("two cans stand", [None, "can", None]),
        ("can", ["can"]),
    ],
)
def test_can_is_an_object_only_where_it_is_not_the_modal(text, expected):
    assert objects(text) == expected


# ---------------------------------------------------------------- hand-computed counts

ANSWER_A = "A man walks his dog along a road beside a lake. Tall trees and mountains rise under a cloudy sky, and two birds fly over the water."
ANSWER_B = "A person stands near a sign with a light. The ground is covered in grass and leaves."
ANSWER_C = "Clouds drift over a dog and a dog, near the flowers and the sun."
ANSWER_NONE = "It is a beautiful day."


@pytest.mark.parametrize(
    ("text", "expected", "statuses"),
    [
        # man (covers person), dog (hallucinated, covers dog), road, lake, trees (covers forest), mountains, sky,
        # birds (hallucinated, covers bird), water (lake again): grass is the truth object never mentioned
        (ANSWER_A, ObjectScore(9, 2, 7, 6, 5, 2), ["grounded", "hallucinated", "grounded", "grounded", "grounded", "grounded", "grounded", "hallucinated", "grounded"]),
        # sign and light: global safe words; ground covers grass (grass's associations come before road's)
        (ANSWER_B, ObjectScore(6, 0, 7, 3, 5, 0), ["grounded", "safe", "safe", "grounded", "grounded", "grounded"]),
        # every mention hallucinated; dog twice, covered once
        (ANSWER_C, ObjectScore(5, 5, 7, 0, 5, 4), ["hallucinated"] * 5),
        (ANSWER_NONE, ObjectScore(0, 0, 7, 0, 5, 0), []),
    ],
)
def test_hand_computed_scores_for_annotation_1(text, expected, statuses):
    assert VOCABULARY.score(text, ID1) == expected
    assert [VOCABULARY.status(word, ID1) for word in VOCABULARY.words(text) if word.object is not None] == statuses


def test_an_association_covers_the_first_truth_object_it_belongs_to():
    # ground is associated with grass and with road: it covers whichever comes first in the truth list
    assert VOCABULARY.score("the ground and a path", annotation(["grass", "road"], [])).truth_mentioned == 2
    assert VOCABULARY.score("the ground and a path", annotation(["road", "grass"], [])).truth_mentioned == 1


def test_a_repeated_truth_object_is_covered_once():
    assert VOCABULARY.score("a ship and another ship on the lake", annotation(["ship", "ship", "lake"], ["bird"])) == ObjectScore(3, 0, 3, 2, 1, 0)


def test_a_safe_word_never_covers_a_truth_object():
    sign = annotation(["sign"], [])
    assert VOCABULARY.score("a sign", sign) == ObjectScore(1, 0, 1, 0, 0, 0)
    assert VOCABULARY.status(VOCABULARY.words("a sign")[1], sign) == "safe"


def test_an_object_both_truth_and_hallu_is_grounded():
    assert VOCABULARY.score("a dog", annotation(["dog"], ["dog"])) == ObjectScore(1, 0, 1, 1, 1, 0)


def test_similar_pairs_stand_in_for_word_vectors():
    assert VOCABULARY.score("a dustbin", annotation(["bin"], [])) == ObjectScore(1, 0, 1, 1, 0, 0)
    assert EXACT.score("a dustbin", annotation(["bin"], [], EXACT)) == ObjectScore(1, 1, 1, 0, 0, 0)
    assert VOCABULARY.score("a dustbin", annotation([], ["bin"])) == ObjectScore(1, 1, 0, 0, 1, 1)
    assert VOCABULARY.score("a bin", annotation(["dustbin"], [])) == ObjectScore(1, 0, 1, 1, 0, 0)  # relation.json's own association


# ---------------------------------------------------------------- metrics


def test_amber_metrics_from_summed_counts():
    scores = [VOCABULARY.score(text, ID1) for text in (ANSWER_A, ANSWER_B, ANSWER_C, ANSWER_NONE)]
    assert amber_metrics(scores) == pytest.approx({"CHAIR": 100 * 7 / 20, "Cover": 100 * 9 / 28, "Hal": 50.0, "Cog": 100 * 6 / 20})


def test_amber_metrics_over_nothing_are_nan():
    none = amber_metrics([VOCABULARY.score(ANSWER_NONE, ID1)])
    assert math.isnan(none["CHAIR"]) and (none["Cover"], none["Hal"], none["Cog"]) == (0.0, 0.0, 0.0)
    assert all(math.isnan(value) for value in amber_metrics([]).values())


# ---------------------------------------------------------------- AMBER's loop, transcribed


def authors_counts(nouns: list[str], truth: list[str], hallu: list[str], association: dict, global_safe_words: list[str]) -> ObjectScore:
    """``inference.py``'s generative branch for one answer, as written, without ``check_synonyms_word``."""
    after_process_nouns = list(nouns)
    safe_words = []
    safe_list = []
    for idx, word in enumerate(truth):
        safe_words += association[word]
        safe_list += [idx] * len(association[word])
    ha_words = []
    ha_list = []
    for idx, word in enumerate(hallu):
        ha_words += association[word]
        ha_list += [idx] * len(association[word])
    safe_words += truth
    safe_len = len(truth)
    safe_list += [0] * safe_len
    safe_flag_list = [0] * len(after_process_nouns)
    ha_words += hallu
    ha_len = len(hallu)
    ha_list += [0] * ha_len
    for idx, noun in enumerate(after_process_nouns):
        if noun in global_safe_words:
            continue
        if noun in safe_words:
            for j in range(len(safe_words)):
                if noun == safe_words[j]:
                    if j < (len(safe_list) - safe_len):
                        safe_list[safe_list[j] + len(safe_list) - safe_len] = 1
                    else:
                        safe_list[j] = 1
                    break
            continue
        if noun in ha_words:
            for j in range(len(ha_words)):
                if noun == ha_words[j]:
                    if j < (len(ha_list) - ha_len):
                        ha_list[ha_list[j] + len(ha_list) - ha_len] = 1
                    else:
                        ha_list[j] = 1
                    break
        safe_flag_list[idx] = 1
    return ObjectScore(
        mentions=len(safe_flag_list),
        hallucinated=sum(safe_flag_list),
        truth=len(safe_list[-safe_len:]),
        truth_mentioned=sum(safe_list[-safe_len:]),
        hallu=len(ha_list[-ha_len:]),
        hallu_mentioned=sum(ha_list[-ha_len:]),
    )


IRREGULAR = {"man": "men", "woman": "women", "child": "children", "mouse": "mice", "goose": "geese", "knife": "knives", "shelf": "shelves", "leave": "leaves"}
FILLERS = ["a", "the", "and", "two", "near", "walking", "cloudy", "beautiful", "is", "there", "of", "under", "it's", "Several"]
PUNCTUATION = [",", ".", "!", ";", ":", "\n"]


def plural(word: str) -> str:
    """English plural by the school rules (written independently of the matcher's rules)."""
    if word in IRREGULAR:
        return IRREGULAR[word]
    if word.endswith(("s", "x", "z", "ch", "sh")):
        return word + "es"
    if word.endswith("y") and word[-2] not in "aeiou":
        return word[:-1] + "ies"
    return word + "s"


def written(entry: str, form: str) -> str:
    """An entry as an answer may write it (a singular can may be the modal: its rule has its own test)."""
    entry = "cans" if entry == "can" else entry
    if form == "plural" and not entry.endswith("s"):
        return plural(entry)
    if form == "capital":
        return entry[0].upper() + entry[1:]
    if form == "upper":
        return entry.upper()
    if form == "possessive":
        return entry + "'s"
    return entry


@st.composite
def answers(draw, entries: list[str]) -> tuple[str, list[str]]:
    """An answer and the objects its words name, in order."""
    text, named = "", []
    for _ in range(draw(st.integers(0, 25))):
        kind = draw(st.sampled_from(["entry", "entry", "filler", "punctuation"]))
        if kind == "punctuation":
            text += draw(st.sampled_from(PUNCTUATION))
            continue
        if kind == "filler":
            piece = draw(st.sampled_from(FILLERS))
        else:
            entry = draw(st.sampled_from(entries))
            piece = written(entry, draw(st.sampled_from(["as is", "plural", "capital", "upper", "possessive"])))
            named.append(entry)
        text += (" " if text else "") + piece
    return text, named


def check_against_the_authors(vocab: ObjectVocabulary, text: str, named: list[str], note: ObjectAnnotation, association: dict, safe_words: list[str]) -> None:
    words = vocab.words(text)
    assert [word.object for word in words if word.object is not None] == named
    expected = authors_counts(named, list(note.truth), list(note.hallu), association, safe_words)
    assert vocab.score(text, note) == expected
    statuses = [vocab.status(word, note) for word in words if word.object is not None]
    assert statuses.count("hallucinated") == expected.hallucinated


KEYS = list(fx.AMBER_RELATION)
ENTRIES = [entry for entry in EXACT.entries if entry not in ("traffic light",)] + ["traffic light"]


@settings(max_examples=400, deadline=None)
@given(data=st.data(), truth=st.lists(st.sampled_from(KEYS), max_size=6), hallu=st.lists(st.sampled_from(KEYS), max_size=5))
def test_scores_equal_the_authors_loop(data, truth, hallu):
    text, named = data.draw(answers(ENTRIES))
    check_against_the_authors(EXACT, text, named, annotation(truth, hallu, EXACT), fx.AMBER_RELATION, fx.AMBER_SAFE_WORDS)
