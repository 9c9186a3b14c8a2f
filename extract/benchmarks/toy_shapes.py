"""``toy-shapes``: the embedded synthetic benchmark (POPE-style yes/no and colour multiple choice).

Items are generated deterministically from the split's seed (``attnwh.extract.toy.shapes``): even
indices ask whether a coloured shape is present, odd ones ask a shape's colour with four options.
``toy-shapes-yesno`` and ``toy-shapes-choice`` are the two halves on their own, so that charts can
compare them like two benchmarks. ``toy-shapes-region`` asks the colour questions with the box of the
shape each one names as its region (as PointQA's plain variant does: the image is not marked), so
that region attention (``region_sum``, ``region_hit``) appears on the toy.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from attnwh.extract.benchmarks.registry import Benchmark, Sample, register_benchmark
from attnwh.extract.toy import shapes

SAMPLES_PER_SPLIT = 256
KINDS = {"toy-shapes": (0, 1), "toy-shapes-yesno": (0,), "toy-shapes-choice": (1,), "toy-shapes-region": (1,)}  # item index parities


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
            version="2",
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
