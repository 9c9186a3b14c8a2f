"""``amber-generative``, ``amber-existence``, ``amber-attribute``, ``amber-relation``: AMBER (Wang et al., 2023),
object hallucination without an LLM judge.

The authors' repository (junyangwang0410/AMBER) holds under ``data/``:

- ``query/query_generative.json``: a JSON list of ``{"id": 1, "image": "AMBER_1.jpg", "query": "Describe this
  image."}``, ids 1-1004;
- ``query/query_discriminative-existence.json``: the same records asking ``Is there a {object} in this image?``
  (ids 8633-13556, several per image);
- ``annotations.json``: one entry per id of every query file, ``{"id", "type", "truth", "hallu"}``: a
  ``generative`` entry lists the objects in the image (``truth``) and objects a description could
  hallucinate (``hallu``); a ``discriminative-hallucination`` entry has ``truth`` ``yes`` or ``no``;
- ``relation.json``: each object's associated words (``{"person": ["people", "man", ...]}``);
  ``safe_words.txt``: words counted as mentions but never as hallucinations (one a line).

Images are distributed separately (``AMBER_{id}.jpg``) and found by name below ``--data`` or directly in a
folder beside it (``AMBER/image/`` beside ``AMBER/data/``). Files are found by name
(``formats.SEARCH_DEPTH`` folders down), so ``--data`` may be the repository, its ``data/`` folder, or a
query file itself (the other files then beside it or one folder up).

``amber-generative``: each query is a sample keyed by its id, parsed as free text (``free_text``) and
annotated with an ``ObjectAnnotation`` (truth, hallu, and one ``ObjectVocabulary`` per load, built from
relation.json, the safe words and every object the generative annotations name; how it counts, and how
that differs from the authors' ``inference.py``: ``attnwh.extract.benchmarks.objects``). Up to 512 new
tokens: LLaVA-1.5's descriptions of AMBER images run to about 100-250 tokens, and 512 is the budget the
object-hallucination decoding studies (OPERA, VCD) give CHAIR descriptions, so an answer is not cut short.
Parts of 16 samples, as a description takes a few hundred decoding steps.

``amber-existence``: yes / no, gold from the annotation, the object the question names as the category.
``amber-attribute`` (``query/query_discriminative-attribute.json``, ids 1005-8632: annotations typed
``discriminative-attribute-state|number|action``) and ``amber-relation`` (``query_discriminative-relation.json``,
ids 13557-15220: typed ``discriminative-relation`` or ``relation``): yes / no alike, the category the attribute's
dimension (``state``, ``number``, ``action``, as inference.py splits its scores) or ``relation``.
The authors count a response right only when it is exactly ``Yes`` or ``No``; attnwh's ``yes_no`` parser
reads the first word whatever its case or what follows (``No, there is no dog.`` is ``no`` here and wrong
for the authors), as for POPE.

Bad input: an annotation no query names is ignored (annotations.json holds every task's entries, so
that is the normal case); a query whose annotation is missing, repeated, of another type or malformed
is an error sample; a missing image fails its sample when it is loaded; a file that is not in the
authors' format raises ``BenchmarkError`` naming the file and line.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from attnwh.core.errors import BenchmarkError
from attnwh.extract.benchmarks import formats
from attnwh.extract.benchmarks.objects import ObjectAnnotation, ObjectVocabulary
from attnwh.extract.benchmarks.registry import Benchmark, Sample, register_benchmark

GENERATIVE, EXISTENCE, ATTRIBUTE, RELATION_TASK = "amber-generative", "amber-existence", "amber-attribute", "amber-relation"
DISCRIMINATIVE = (EXISTENCE, ATTRIBUTE, RELATION_TASK)
QUERY_FILES = {
    GENERATIVE: "query_generative.json",
    EXISTENCE: "query_discriminative-existence.json",
    ATTRIBUTE: "query_discriminative-attribute.json",
    RELATION_TASK: "query_discriminative-relation.json",
}
# the annotation types a query file's ids carry (annotations.json); the relation file's entries are typed both
# ways, and AMBER's inference.py scores every non-generative entry as a yes / no answer
ANNOTATION_TYPES = {
    GENERATIVE: ("generative",),
    EXISTENCE: ("discriminative-hallucination",),
    ATTRIBUTE: ("discriminative-attribute-state", "discriminative-attribute-number", "discriminative-attribute-action"),
    RELATION_TASK: ("discriminative-relation", "relation"),
}
PARSERS = {GENERATIVE: "free_text", EXISTENCE: "yes_no", ATTRIBUTE: "yes_no", RELATION_TASK: "yes_no"}
ANNOTATIONS, RELATION, SAFE_WORDS = "annotations.json", "relation.json", "safe_words.txt"
SPLITS = ("test",)
QUERY_KEYS = ("id", "image", "query")
QUERY_EXPECTED = 'a JSON list of AMBER queries like {"id": 1, "image": "AMBER_1.jpg", "query": "Describe this image."}'
ANNOTATIONS_EXPECTED = 'a JSON list of AMBER annotations like {"id": 1, "type": "generative", "truth": [...], "hallu": [...]}'
RELATION_EXPECTED = 'a JSON object of AMBER word associations like {"person": ["people", "man"]}'
EXISTENCE_QUESTION = re.compile(r"^Is there (?:a|an) (.+?) in this image\?$")
# The stand-in for the authors' spaCy similarity (> 0.8) between two vocabulary words: pairs that count as similar.
# bin / dustbin: the same object; relation.json lists bin under dustbin but not dustbin under bin, so without
# the pair a dustbin in an image annotated "bin" would be a hallucination.
AMBER_SIMILAR = (("bin", "dustbin"),)
# AMBER's vocabulary spells foliage "leave" (leaves → leave); "leaf" names the same object
AMBER_SPELLINGS = {"leaf": "leave"}
_JSON_SPACE = re.compile(r"[ \t\n\r]*")


def _data_help(name: str) -> str:
    others = f"{ANNOTATIONS}, {RELATION} and {SAFE_WORDS}" if name == GENERATIVE else ANNOTATIONS
    return (
        f"AMBER's data folder (or the repository) holding query/{QUERY_FILES[name]}, {others}, with the AMBER_*.jpg images "
        "below it or in a folder beside it (image/); or that query file itself"
    )


@dataclass(frozen=True)
class Joined:
    """A query that can be asked, with its annotation."""

    key: str
    item: dict[str, Any]  # the query
    annotation: dict[str, Any]
    line: int  # the annotation's line in annotations.json


@dataclass(frozen=True)
class Files:
    query: Path
    annotations: Path
    base: Path  # where relation.json and safe_words.txt are looked for
    images: formats.ImageIndex


def load(name: str, data: Path | None, split: str | None) -> list[Sample]:
    """The samples of one AMBER query file, each joined to its annotation by id."""
    root = formats.require_data(name, data, _data_help(name))
    files = _files(root, name)
    _, queries = formats.json_list_items(files.query, QUERY_EXPECTED)
    formats.check_keys_somewhere(files.query, queries, QUERY_KEYS, QUERY_EXPECTED)
    annotations = _annotations(files.annotations)
    if name == GENERATIVE:
        relation = _relation(_find(files.base, RELATION, name))
        safe_words = _safe_words(_find(files.base, SAFE_WORDS, name))
        vocabulary = amber_vocabulary(relation, safe_words, _annotated_objects(annotations))
        make = partial(_generative_sample, vocabulary=vocabulary)
    else:
        make = partial(_yes_no_sample, name=name)
    samples = []
    for line, item in queries:
        checked = _join(f"{files.query.name} line {line}", line, item, annotations, name)
        samples.append(checked if isinstance(checked, Sample) else make(checked, files.images))
    return formats.unique_keys(samples)


def amber_vocabulary(relation: dict[str, tuple[str, ...]], safe_words: Iterable[str], objects: Iterable[str]) -> ObjectVocabulary:
    """AMBER's object vocabulary: relation.json's keys and values, the annotations' objects, the safe words."""
    return ObjectVocabulary("amber", relation, objects=objects, safe_words=safe_words, similar=AMBER_SIMILAR, spellings=AMBER_SPELLINGS)


# ---------------------------------------------------------------- files


def _files(root: Path, name: str) -> Files:
    if root.is_file():
        base = next((folder for folder in (root.parent, root.parent.parent) if _found(folder, ANNOTATIONS)), root.parent)
        return Files(root, _find(base, ANNOTATIONS, name), base, _images([root.parent, base]))
    return Files(_find(root, QUERY_FILES[name], name), _find(root, ANNOTATIONS, name), root, _images([root]))


def _images(roots: list[Path]) -> formats.ImageIndex:
    """Images below the roots, or directly in a sibling folder of the last (``AMBER/image/`` beside ``AMBER/data/``)."""
    try:
        entries = sorted(roots[-1].parent.iterdir())
    except OSError:
        entries = []
    siblings = [entry for entry in entries if entry.is_dir() and entry not in roots and not entry.name.startswith(".")]
    return formats.ImageIndex([*roots, *siblings], [formats.SEARCH_DEPTH] * len(roots) + [0] * len(siblings))


def _found(root: Path, file_name: str) -> list[Path]:
    return formats.find_files(root, lambda path: path.name.lower() == file_name)


def _find(root: Path, file_name: str, name: str) -> Path:
    files = _found(root, file_name)
    if not files:
        raise BenchmarkError(f"{root}: no {file_name} found; expected {_data_help(name)}")
    return formats.one_file(root, files, f"{file_name} files")


def _annotations(path: Path) -> dict[str, list[tuple[int, dict[str, Any]]]]:
    """The annotations by id (as a string), each with its line; an entry without an id cannot be joined and is left out."""
    _, items = formats.json_list_items(path, ANNOTATIONS_EXPECTED)
    formats.check_keys_somewhere(path, items, ("id", "type", "truth"), ANNOTATIONS_EXPECTED)
    by_id: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    for line, item in items:
        key = formats.id_value(item.get("id")) if isinstance(item, dict) else None
        if key is not None:
            by_id.setdefault(key, []).append((line, item))
    return by_id


def _annotated_objects(annotations: dict[str, list[tuple[int, dict[str, Any]]]]) -> list[str]:
    """Every object the generative annotations name, in file order."""
    names = []
    for entries in annotations.values():
        for _, item in entries:
            if item.get("type") in ANNOTATION_TYPES[GENERATIVE]:
                names += [name for field in ("truth", "hallu") if _names(item.get(field)) for name in item[field]]
    return names


def _relation(path: Path) -> dict[str, tuple[str, ...]]:
    text, document = formats.read_json(path, RELATION_EXPECTED)
    if not isinstance(document, dict):
        raise BenchmarkError(f"{path}: line 1: the document is not a JSON object; expected {RELATION_EXPECTED}")
    for key, line in _member_lines(text):
        if not _names(document[key]):
            raise BenchmarkError(f"{path}: line {line}: {key!r} maps to {json.dumps(document[key])[:60]}; expected a list of words")
    return {key: tuple(words) for key, words in document.items()}


def _member_lines(text: str) -> list[tuple[str, int]]:
    """The keys of the JSON object ``text`` (valid JSON) with the line each stands on."""
    decoder = json.JSONDecoder()
    members = []
    position = _JSON_SPACE.match(text, _JSON_SPACE.match(text, 0).end() + 1).end()  # past the brace
    while text[position] != "}":
        key, after = decoder.raw_decode(text, position)
        members.append((key, text.count("\n", 0, position) + 1))
        position = _JSON_SPACE.match(text, _JSON_SPACE.match(text, after).end() + 1).end()  # past the colon
        _, position = decoder.raw_decode(text, position)
        position = _JSON_SPACE.match(text, position).end()
        if text[position] == ",":
            position = _JSON_SPACE.match(text, position + 1).end()
    return members


def _safe_words(path: Path) -> list[str]:
    return [line.strip() for line in formats.read_text(path).splitlines() if line.strip()]


def _names(value: Any) -> bool:
    """Whether ``value`` is a list of words (object names)."""
    return isinstance(value, list) and all(isinstance(word, str) and word.strip() for word in value)


# ---------------------------------------------------------------- samples


def _join(where: str, line: int, item: Any, annotations: dict, name: str) -> Sample | Joined:
    """The query with its annotation, or the error sample of a query that cannot be asked."""
    parser, kind = PARSERS[name], ANNOTATION_TYPES[name]
    if not isinstance(item, dict):
        return formats.error_sample(f"line-{line}", f"{where}: not a JSON object", parser)
    key = formats.id_value(item.get("id"))
    if key is None:
        return formats.error_sample(f"line-{line}", f"{where}: id is missing or not an id", parser)
    if formats.text_value(item.get("query")) is None:
        return formats.error_sample(key, f"{where}: the query text is missing or empty", parser)
    if formats.text_value(item.get("image")) is None:
        return formats.error_sample(key, f"{where}: the image name is missing", parser)
    entries = annotations.get(key, [])
    if not entries:
        return formats.error_sample(key, f"{where}: no annotation with id {key} in {ANNOTATIONS}", parser)
    if len(entries) > 1:
        lines = ", ".join(str(entry_line) for entry_line, _ in entries)
        return formats.error_sample(key, f"{ANNOTATIONS} lines {lines} share id {key}", parser)
    annotation_line, annotation = entries[0]
    if annotation.get("type") not in kind:
        message = f"{ANNOTATIONS} line {annotation_line}: id {key} has type {annotation.get('type')!r}; expected {' or '.join(kind)}"
        return formats.error_sample(key, message, parser)
    return Joined(key, item, annotation, annotation_line)


def _generative_sample(joined: Joined, images: formats.ImageIndex, vocabulary: ObjectVocabulary) -> Sample:
    truth, hallu = joined.annotation["truth"], joined.annotation.get("hallu")
    if not (_names(truth) and _names(hallu)):
        message = f"{ANNOTATIONS} line {joined.line}: id {joined.key}: truth and hallu must be lists of object names"
        return formats.error_sample(joined.key, message, PARSERS[GENERATIVE])
    objects = ObjectAnnotation(tuple(truth), tuple(hallu), vocabulary)
    load_image = images.loader(joined.item["image"])
    return Sample(key=joined.key, question=joined.item["query"], load_image=load_image, category="generative", parser=PARSERS[GENERATIVE], objects=objects)


def _yes_no_sample(joined: Joined, images: formats.ImageIndex, name: str) -> Sample:
    """A discriminative query: gold yes / no from the annotation; the category is, for existence, the object the
    question names, for attribute, the dimension (state, number, action), for relation, ``relation``."""
    truth = joined.annotation["truth"]
    if not isinstance(truth, str) or truth.strip().lower() not in ("yes", "no"):
        message = f"{ANNOTATIONS} line {joined.line}: id {joined.key} has truth {truth!r}; expected yes or no"
        return formats.error_sample(joined.key, message, PARSERS[name])
    if name == EXISTENCE:
        named = EXISTENCE_QUESTION.match(joined.item["query"].strip())
        category = named.group(1).lower() if named else None  # the object the question names
    elif name == ATTRIBUTE:
        category = joined.annotation["type"].rsplit("-", 1)[-1]  # state | number | action
    else:
        category = "relation"
    load_image = images.loader(joined.item["image"])
    return Sample(key=joined.key, question=joined.item["query"], load_image=load_image, gold=truth.strip().lower(), category=category, parser=PARSERS[name])


register_benchmark(
    Benchmark(
        name=GENERATIVE,
        version="1",
        description="AMBER generative: 'Describe this image.', object words counted against the annotation as AMBER's script counts them (CHAIR, Cover, Hal, Cog)",
        load=partial(load, GENERATIVE),
        template="as_is",  # the query is the whole prompt, in both styles
        max_new_tokens=512,
        splits=SPLITS,
        default_split="test",
        data_help=_data_help(GENERATIVE),
        part_size=16,
    )
)
DESCRIPTIONS = {
    EXISTENCE: "AMBER discriminative existence: yes/no 'Is there a {object} in this image?' (object hallucination)",
    ATTRIBUTE: "AMBER discriminative attribute: yes/no questions on an object's state, number or action (the category)",
    RELATION_TASK: "AMBER discriminative relation: yes/no questions on whether two objects are in contact",
}


def _register_discriminative(name: str) -> None:
    register_benchmark(
        Benchmark(
            name=name,
            version="1",
            description=DESCRIPTIONS[name],
            load=partial(load, name),
            template="short_answer",  # as POPE, the same kind of question
            study_template="as_is",
            splits=SPLITS,
            default_split="test",
            data_help=_data_help(name),
        )
    )


for task in DISCRIMINATIVE:
    _register_discriminative(task)
