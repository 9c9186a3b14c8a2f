"""``toy-shapes``: the embedded synthetic benchmark (POPE-style yes/no and colour multiple choice).

Items are generated deterministically from the split's seed (``attnwh.extract.toy.shapes``): even
indices ask whether a coloured shape is present, odd ones ask a shape's colour with four options.
``toy-shapes-yesno`` and ``toy-shapes-choice`` are the two halves on their own, so that charts can
compare them like two benchmarks. ``toy-shapes-region`` asks the colour questions with the box of the
shape each one names as its region (as PointQA's plain variant does: the image is not marked), so
that region attention (``region_sum``, ``region_hit``) appears on the toy.

``toy-shapes-caption`` asks for a description of the same kind of scenes (``shapes.make_caption_item``,
its own items) and parses it as free text; each sample carries the objects of its scene, so its answers
are counted as AMBER counts descriptions: truth = the shapes present, hallu = the shapes absent, in a
vocabulary of the three shape names (plurals read too). A colour is an attribute, not an object: "a red
square" for a blue one names the square, grounded (as AMBER's generative metrics ignore attributes).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from attnwh.extract.benchmarks.objects import ObjectAnnotation, ObjectVocabulary
from attnwh.extract.benchmarks.registry import Benchmark, Sample, register_benchmark
from attnwh.extract.toy import shapes

SAMPLES_PER_SPLIT = 256
KINDS = {"toy-shapes": (0, 1), "toy-shapes-yesno": (0,), "toy-shapes-choice": (1,), "toy-shapes-region": (1,)}  # item index parities
CAPTION = "toy-shapes-caption"
CAPTION_VOCABULARY = ObjectVocabulary("toy-shapes", {shape: () for shape in shapes.SHAPES})


def load(name: str, data: Path | None, split: str | None) -> list[Sample]:
    split = split or "test"
    seed = shapes.SPLIT_SEEDS[split]
    parities = KINDS[name]
    indices = [index for index in range(SAMPLES_PER_SPLIT * 2 // len(parities)) if index % 2 in parities][:SAMPLES_PER_SPLIT]
    samples = []
    for index in indices:
        item = shapes.make_item(seed, index)
        samples.append(
            Sample(
                key=f"{split}-{index:05d}",
                question=item.question,
                load_image=partial(shapes.render, item.scene),
                choices=item.choices,
                gold=item.gold,
                category=item.kind,
                parser="letter" if item.choices else "yes_no",
                boxes=(shapes.box(item.target),) if name == "toy-shapes-region" and item.target is not None else (),
            )
        )
    return samples


def load_caption(data: Path | None, split: str | None) -> list[Sample]:
    split = split or "test"
    samples = []
    for index in range(SAMPLES_PER_SPLIT):
        item = shapes.make_caption_item(shapes.SPLIT_SEEDS[split], index)
        samples.append(
            Sample(
                key=f"{split}-{index:05d}",
                question=item.question,
                load_image=partial(shapes.render, item.scene),
                category="caption",
                parser="free_text",
                objects=ObjectAnnotation(item.present, item.absent, CAPTION_VOCABULARY),
            )
        )
    return samples


_DESCRIPTIONS = {
    "toy-shapes": "synthetic shapes: yes/no presence and colour multiple choice (the embedded default)",
    "toy-shapes-yesno": "synthetic shapes: yes/no presence questions only",
    "toy-shapes-choice": "synthetic shapes: colour multiple choice only",
    "toy-shapes-region": "synthetic shapes: colour multiple choice, the named shape's box as the region (unmarked, as PointQA's plain variant)",
}

for _name, _description in _DESCRIPTIONS.items():
    register_benchmark(
        Benchmark(
            name=_name,
            version="3",  # 3: the letter parser v3 (a stated "is:", a lone lower-case letter)
            description=_description,
            load=partial(load, _name),
            template="as_is",  # the toy's questions carry their own options and answer instruction
            max_new_tokens=2,
            part_size=32,  # a few seconds of work per committed part on a CPU
            splits=tuple(shapes.SPLIT_SEEDS),
            default_split="test",
            data_required=False,
            data_help="nothing: generated deterministically",
        )
    )

register_benchmark(
    Benchmark(
        name=CAPTION,
        version="1",
        description="synthetic shapes: describe the shapes; object words counted against the scene (shapes present / absent) as AMBER counts them",
        load=load_caption,
        template="as_is",
        max_new_tokens=64,  # the reference caption is at most 12 words; a pretrained model's few sentences fit too
        part_size=16,
        splits=tuple(shapes.SPLIT_SEEDS),
        default_split="test",
        data_required=False,
        data_help="nothing: generated deterministically",
    )
)
