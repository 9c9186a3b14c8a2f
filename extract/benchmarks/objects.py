"""Object words in free-text answers, counted as AMBER's scoring script counts them.

AMBER (Wang et al., 2023) scores a description with ``inference.py``: nltk tokenises and POS-tags it,
keeps the nouns (``NN*``), lemmatises them with WordNet, keeps those in its vocabulary
(``relation.json``'s keys and values), and walks them in order against the image's annotation: a global
safe word (``safe_words.txt``) is counted but never hallucinated; a noun among the truth objects or
their associations (``relation.json``) is safe and marks its truth object covered; a noun among the
hallu objects or their associations marks that hallu object covered; otherwise a spaCy
(``en_core_web_lg``) vector similarity above 0.8 to a hallu word marks it covered, and to a safe word
rescues the noun as safe; every noun not rescued is hallucinated. ``ObjectVocabulary.score`` is that
walk, with the same order (associations of each truth object in annotation order, then the truth
objects; the first match wins, so an association shared by two truth objects covers the earlier one,
a truth object that is another's association covers that other, and a repeated truth object can only be
covered once; a global safe word is skipped first, so it never covers a truth or hallu object) and the
same counts (``ObjectScore``).

What stands in for nltk and spaCy here (neither model can be installed offline), and so what differs:

- *Words*: runs of letters and digits, joined by inner hyphens and apostrophes (``e-book``,
  ``dog's``), lower-cased; a trailing ``'s`` is dropped. nltk splits ``dog's`` too and keeps hyphenated
  words whole, so ``tree-lined`` names no tree in either. The authors' script is case-sensitive
  (``TV`` only as written; a sentence-initial ``Dogs`` is not the lemma ``dog`` in WordNet); here case
  never matters.
- *Lemmas*: no WordNet. A word is its own vocabulary entry if it is one (``people``, ``glass``,
  ``earrings``, as WordNet keeps a lemma that is a word of its own); else the first of its plural
  readings that is an entry: ``IRREGULAR_PLURALS`` (men, women, children, mice, geese, ...), then
  suffix rules (``-ies`` → ``-y``, ``-ie``; ``-ves`` → ``-f``, ``-fe``, ``-ve``; ``-es`` after s, x, z, ch,
  sh, o; ``-s`` but not ``-ss``, so ``kiwis`` and ``skis`` too, while ``bus`` and ``tennis`` are entries of
  their own; ``-men`` → ``-man``). Letting the vocabulary choose matches its spelling: AMBER spells
  foliage ``leave``, so ``leaves`` is ``leave`` here, where WordNet
  gives ``leaf`` (not in the vocabulary: the authors never count leaves). An entry written in the
  plural (``earrings``, ``chopsticks``, ``slippers``) is also found from its singular, which WordNet
  gives for both forms (so the authors never count those either). ``spellings`` (AMBER: ``leaf`` →
  ``leave``) maps a few words onto an entry's spelling.
- *No POS tagger*: every word spelled like a vocabulary entry counts, whatever its part of speech:
  ``sign``, ``light``, ``range``, ``orange``, ``line`` as verbs or adjectives (AMBER's global safe
  words, never hallucinated, so only the mention count grows), and ``watch``, ``support``, ``drink``,
  ``skate`` as verbs (these can be counted as hallucinated where the tagger would have dropped them).
  One closed-class word is handled: ``can`` is the modal verb, not an object, when another word
  follows it directly unless that word is one a noun can be followed by (``of``, ``on``, ``and``,
  ``is``, ...: ``NOUN_CAN_FOLLOWERS``); ``cans`` is always the object.
- *Multi-word objects*: an entry with spaces (``traffic light``) or a hyphen (``air-conditioning``,
  also matched as ``air conditioning``) is one ``WordSpan`` over its words, the longest entry first,
  its last word read in the plural too. nltk gives one token per word, so the authors match such an
  entry only through vector similarity.
- *Similarity*: no word vectors. Two words are similar when equal (spaCy gives an identical word
  1.0) or when the vocabulary's ``similar`` pairs list them (AMBER: ``AMBER_SIMILAR`` in
  ``attnwh.extract.benchmarks.amber``). As in the script, similarity only ever compares two
  vocabulary words (a noun outside the vocabulary is dropped before), so the pairs are between
  entries; a pair the spaCy model would have scored above 0.8 and that is missing here counts a
  noun as hallucinated that the authors would have rescued, and the other way round.

A vocabulary is immutable after construction (plain containers never changed after ``__init__``),
so threads may share one. Its ``version`` names the matching rules: bump ``MATCHER_VERSION`` whenever
any of the above changes what a text is counted as.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

MATCHER_VERSION = "1"

_WORD = re.compile(r"[^\W_]+(?:['’-][^\W_]+)*")
_POSSESSIVE = re.compile(r"['’]s$")
_SPACE_ONLY = re.compile(r"\s+")

# plurals no suffix rule reads back (the singular is tried after the word itself)
IRREGULAR_PLURALS = {
    "people": "person",
    "men": "man",
    "women": "woman",
    "children": "child",
    "mice": "mouse",
    "geese": "goose",
    "teeth": "tooth",
    "feet": "foot",
    "oxen": "ox",
    "cacti": "cactus",
}
# words after which ``can`` is the container (``a can of soda``, ``the can is``); after any other word it is the modal
NOUN_CAN_FOLLOWERS = frozenset(
    "of on in at by with near next beside behind under underneath above and or is was sits stands lies filled placed sitting standing lying that which".split()
)
_ES_AFTER = ("s", "x", "z", "ch", "sh")


@dataclass(frozen=True)
class WordSpan:
    """A word of a text (a multi-word object is one span over its words)."""

    index: int  # 0-based index among the words of the text
    start: int  # character offsets in the text, [start, end)
    end: int
    text: str  # the word as written
    object: str | None  # the canonical object (a vocabulary entry) the word names, else None


@dataclass(frozen=True)
class ObjectScore:
    """One answer's counts, as AMBER's ``inference.py`` adds them up (its metric names in brackets)."""

    mentions: int  # object words mentioned, every occurrence, global safe words included (chair_num)
    hallucinated: int  # of those, hallucinated (chair_score)
    truth: int  # objects in the annotation's truth list, repeats included (safe_cover_num)
    truth_mentioned: int  # of those, mentioned (safe_cover_score)
    hallu: int  # objects in the annotation's hallu list (hallu_cover_num)
    hallu_mentioned: int  # of those, mentioned (hallu_cover_score: AMBER's "Cog")


@dataclass(frozen=True)
class ObjectAnnotation:
    """What an image holds (``truth``) and which objects would be hallucinations (``hallu``), in the vocabulary's names."""

    truth: tuple[str, ...]
    hallu: tuple[str, ...]
    vocabulary: ObjectVocabulary


@dataclass(frozen=True)
class _Lookup:
    """AMBER's ordered word list of one side of an annotation: each object's associations in order, then the objects."""

    words: tuple[str, ...]
    owners: tuple[int, ...]  # the object (its place in the annotation's list) each word covers

    def first(self, word: str, similar) -> int | None:
        """The object the first word ``similar`` to ``word`` covers, or None."""
        return next((owner for candidate, owner in zip(self.words, self.owners) if similar(word, candidate)), None)


def noun_forms(word: str) -> tuple[str, ...]:
    """The readings of a lower-case word as a noun, most likely first: the word itself, then the singulars
    it may be the plural of (the vocabulary picks the first that is an entry)."""
    forms = [word]
    if word in IRREGULAR_PLURALS:
        forms.append(IRREGULAR_PLURALS[word])
    if len(word) > 4 and word.endswith("ies"):
        forms += [word[:-3] + "y", word[:-1]]
    elif len(word) > 4 and word.endswith("ves"):
        forms += [word[:-3] + "f", word[:-3] + "fe", word[:-1]]
    elif len(word) > 3 and word.endswith("es") and word[:-2].endswith(_ES_AFTER):
        forms += [word[:-2], word[:-1]]
    elif len(word) > 3 and word.endswith("oes"):
        forms += [word[:-1], word[:-2]]
    elif len(word) > 2 and word.endswith("s") and not word.endswith("ss"):
        forms.append(word[:-1])
    if len(word) > 3 and word.endswith("men"):
        forms.append(word[:-3] + "man")
    return tuple(dict.fromkeys(forms))


class ObjectVocabulary:
    """The object words a benchmark counts, and how a text's words are matched to them.

    ``associations``: each object's associated words (AMBER's ``relation.json``; a word associated with a
    truth object is safe and covers it). The entries are the associations' keys and values, ``objects``
    (every object an annotation names) and ``safe_words`` (AMBER's global safe words: counted as a mention,
    never as a hallucination). ``similar``: pairs of entries that count as similar (the stand-in for word
    vectors); ``spellings``: words matched as an entry spelled otherwise.
    """

    def __init__(
        self,
        name: str,
        associations: Mapping[str, Iterable[str]],
        *,
        objects: Iterable[str] = (),
        safe_words: Iterable[str] = (),
        similar: Iterable[tuple[str, str]] = (),
        spellings: Mapping[str, str] | None = None,
        version: str = MATCHER_VERSION,
    ):
        self.name = name
        self.version = version
        self._associations = {key: tuple(values) for key, values in associations.items()}
        self.safe_words = frozenset(safe_words)
        listed = [*self._associations, *(word for values in self._associations.values() for word in values), *objects, *sorted(self.safe_words)]
        self.entries = tuple(dict.fromkeys(listed))
        self._similar = frozenset(frozenset(pair) for pair in similar)
        self._keys, self._phrases = self._index(spellings or {})
        self._longest = max((len(words) for words in self._phrases), default=1)

    def __repr__(self) -> str:
        return f"ObjectVocabulary({self.name!r}, version {self.version!r}, {len(self.entries)} entries)"

    def _index(self, spellings: Mapping[str, str]) -> tuple[dict[str, str], dict[tuple[str, ...], str]]:
        """Single words and phrases (lower case) to entries: each entry's own spelling first, then the spellings
        table, then each entry's singular (an entry written in the plural is found from its singular too)."""
        keys: dict[str, str] = {}
        phrases: dict[tuple[str, ...], str] = {}
        for entry in self.entries:
            lowered = entry.lower()
            if " " not in lowered:
                keys.setdefault(lowered, entry)
            parts = tuple(_WORD.findall(lowered.replace("-", " ")))
            if len(parts) > 1:
                phrases.setdefault(parts, entry)
                phrases.setdefault((*parts[:-1], _singular(parts[-1])), entry)
        for word, entry in spellings.items():
            keys.setdefault(word.lower(), entry)
        for entry in self.entries:
            if " " not in entry and not entry.lower().endswith(("us", "is")):  # bus, tennis: singular already
                keys.setdefault(_singular(entry.lower()), entry)
        return keys, phrases

    # ------------------------------------------------------------ words

    def words(self, text: str) -> list[WordSpan]:
        """Every word of ``text`` in order, each with the object it names (None for the others)."""
        tokens = list(_WORD.finditer(text))
        spans: list[WordSpan] = []
        position = 0
        while position < len(tokens):
            length, entry = self._phrase_at(text, tokens, position)
            if length == 1:
                entry = self._single(text, tokens, position)
            start, end = tokens[position].start(), tokens[position + length - 1].end()
            spans.append(WordSpan(len(spans), start, end, text[start:end], entry))
            position += length
        return spans

    def _phrase_at(self, text: str, tokens: list[re.Match], position: int) -> tuple[int, str | None]:
        """The longest phrase entry starting at ``position`` (its number of words and the entry), else (1, None)."""
        for length in range(min(self._longest, len(tokens) - position), 1, -1):
            run = tokens[position : position + length]
            if not all(_SPACE_ONLY.fullmatch(text, before.end(), after.start()) for before, after in zip(run, run[1:])):
                continue
            head = tuple(_bare(token.group(0)) for token in run[:-1])
            for form in noun_forms(_bare(run[-1].group(0))):
                if (*head, form) in self._phrases:
                    return length, self._phrases[(*head, form)]
        return 1, None

    def _single(self, text: str, tokens: list[re.Match], position: int) -> str | None:
        word = _bare(tokens[position].group(0))
        entry = next((self._keys[form] for form in noun_forms(word) if form in self._keys), None)
        if word == "can" and entry is not None and _modal_can(text, tokens, position):
            return None
        return entry

    # ------------------------------------------------------------ counting

    def similar(self, word: str, other: str) -> bool:
        """The stand-in for AMBER's spaCy similarity above 0.8: the same word, or a listed pair."""
        return word == other or frozenset((word, other)) in self._similar

    def _lookups(self, annotation: ObjectAnnotation) -> tuple[_Lookup, _Lookup]:
        return self._lookup(annotation.truth), self._lookup(annotation.hallu)

    def _lookup(self, objects: tuple[str, ...]) -> _Lookup:
        words, owners = [], []
        for place, name in enumerate(objects):
            associated = self._associations.get(name, ())
            words += associated
            owners += [place] * len(associated)
        return _Lookup((*words, *objects), (*owners, *range(len(objects))))

    def status(self, word: WordSpan, annotation: ObjectAnnotation) -> str | None:
        """'grounded' (names an object in the image), 'hallucinated' (names a vocabulary object that is not),
        'safe' (AMBER's global safe words: counted as a mention, never as a hallucination), None (not an object word)."""
        if word.object is None:
            return None
        if word.object in self.safe_words:
            return "safe"
        safe, _ = self._lookups(annotation)
        return "grounded" if safe.first(word.object, self.similar) is not None else "hallucinated"

    def score(self, text: str, annotation: ObjectAnnotation) -> ObjectScore:
        """The answer's counts, walking its object words in order as AMBER's ``inference.py`` does."""
        safe, hallu = self._lookups(annotation)
        truth_covered: set[int] = set()
        hallu_covered: set[int] = set()
        nouns = [span.object for span in self.words(text) if span.object is not None]
        hallucinated = 0
        for noun in nouns:
            if noun in self.safe_words:
                continue
            exact = safe.first(noun, _equal)
            if exact is not None:
                truth_covered.add(exact)
                continue
            for match in (hallu.first(noun, _equal), hallu.first(noun, self.similar)):
                if match is not None:
                    hallu_covered.add(match)
            rescued = safe.first(noun, self.similar)
            if rescued is not None:
                truth_covered.add(rescued)
                continue
            hallucinated += 1
        return ObjectScore(len(nouns), hallucinated, len(annotation.truth), len(truth_covered), len(annotation.hallu), len(hallu_covered))


def amber_metrics(scores: Iterable[ObjectScore]) -> dict[str, float]:
    """AMBER's generative metrics in percent, unrounded: CHAIR = Σhallucinated / Σmentions, Cover =
    Σtruth_mentioned / Σtruth, Hal = the share of answers with a hallucinated object, Cog = Σhallu_mentioned /
    Σhallu. A metric over nothing (no mentions, no answers) is NaN: the authors' script starts every denominator
    at 0.001 (``metrics.txt``), which prints 0 there and shifts every other value by under 0.001 / denominator."""
    scores = list(scores)

    def percent(part: float, whole: float) -> float:
        return 100 * part / whole if whole else math.nan

    return {
        "CHAIR": percent(sum(s.hallucinated for s in scores), sum(s.mentions for s in scores)),
        "Cover": percent(sum(s.truth_mentioned for s in scores), sum(s.truth for s in scores)),
        "Hal": percent(sum(s.hallucinated > 0 for s in scores), len(scores)),
        "Cog": percent(sum(s.hallu_mentioned for s in scores), sum(s.hallu for s in scores)),
    }


def _singular(word: str) -> str:
    """The first singular a lower-case word may be the plural of (the word itself if none)."""
    forms = noun_forms(word)
    return forms[1] if len(forms) > 1 else word


def _equal(word: str, other: str) -> bool:
    return word == other


def _bare(token: str) -> str:
    """A token as the vocabulary is looked up: lower case, a trailing possessive ``'s`` dropped."""
    return _POSSESSIVE.sub("", token.lower()) or token.lower()


def _modal_can(text: str, tokens: list[re.Match], position: int) -> bool:
    """Whether ``can`` at ``position`` is the modal verb: another word follows it, separated by spaces only,
    and that word is not one the container is followed by (``NOUN_CAN_FOLLOWERS``)."""
    if position + 1 >= len(tokens):
        return False
    after = tokens[position + 1]
    return bool(_SPACE_ONLY.fullmatch(text, tokens[position].end(), after.start())) and after.group(0).lower() not in NOUN_CAN_FOLLOWERS
