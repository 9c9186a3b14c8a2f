"""``toy-shapes``: the embedded synthetic benchmark (POPE-style yes/no and colour multiple choice)."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from attnwh.extract.benchmarks.registry import Benchmark, Sample, register_benchmark
from attnwh.extract.toy import shapes

DEFAULT_SIZE = 64


def load(data: Path | None, split: str | None) -> list[Sample]:
    seed = shapes.SPLIT_SEEDS[split or "test"]
    samples = []
    for index in range(DEFAULT_SIZE):
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
            )
        )
    return samples


register_benchmark(
    Benchmark(
        name="toy-shapes",
        version="1",
        description="synthetic shapes: yes/no presence and colour multiple choice (embedded default)",
        load=load,
        template="as_is",  # the toy's questions carry their own options and answer instruction
        max_new_tokens=2,
        splits=tuple(shapes.SPLIT_SEEDS),
        default_split="test",
        data_required=False,
        data_help="nothing: generated deterministically",
    )
)
