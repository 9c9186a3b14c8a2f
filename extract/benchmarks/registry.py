"""The benchmark registry: a benchmark is configuration (loader, prompt template, parser, generation
settings, version); code lives only in the loaders of the odd formats.

A loader turns local files into ``Sample`` objects. It never decodes images up front (``load_image``
is called late, so a broken image fails only its sample), and a malformed row becomes a ``Sample``
with ``error`` set (an error row in the warehouse) rather than stopping the run. A file that is not
in the expected format at all raises ``BenchmarkError`` naming the file, the line or column, and
what was expected.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from attnwh.core.errors import BenchmarkError
from attnwh.core.registry import did_you_mean, register
from attnwh.extract.benchmarks.objects import ObjectAnnotation

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels of the original image


@dataclass(frozen=True)
class Sample:
    """One benchmark item."""

    key: str  # the benchmark's own id (unique within a split)
    question: str  # the question as the benchmark states it (options not included, except for the toy)
    load_image: Callable[[], Image.Image]
    choices: tuple[str, ...] = ()  # option texts in letter order (A, B, ...)
    gold: str | None = None  # 'yes' / 'no', or an option letter
    category: str | None = None
    parser: str = "yes_no"  # a name in ``parsers.PARSERS``
    hint: str | None = None  # MMBench's hint / context, shown before the question
    note: str | None = None  # a sentence the llava-eval prompt adds after the question (PointQA's rectangle hint)
    boxes: tuple[Box, ...] = ()  # regions the question points at (PointQA)
    group: str | None = None  # samples scored together (MMBench circular: the question's index)
    error: str | None = None  # set by the loader for a malformed row: the sample becomes an error row
    objects: ObjectAnnotation | None = None  # objects in the image and would-be hallucinations (AMBER, the toy captions)


@dataclass(frozen=True)
class Benchmark:
    name: str
    version: str  # bumped whenever loading, prompts or parsing change what a run produces
    description: str
    load: Callable[[Path | None, str | None], list[Sample]]  # (data, split) -> samples
    template: str = "as_is"  # a name in ``templates.TEMPLATES``: the llava-eval prompt style
    study_template: str | None = None  # the study prompt style's template (None: the same as ``template``)
    study_parser: str | None = None  # the study prompt style's answer parser (None: the loader's, each sample's ``parser``)
    max_new_tokens: int = 8
    splits: tuple[str, ...] = field(default=())
    default_split: str | None = None
    data_required: bool = True  # False: built in (the toy)
    data_help: str = ""  # the files ``--data`` accepts
    part_size: int | None = None  # samples per committed part when --part-size is not given (None: the run loop's default, 256)

    def parser_for(self, style: str, parser: str) -> str:
        """The answer parser of a prompt style for a sample the loader gave ``parser``."""
        return self.study_parser if style == "study" and self.study_parser is not None else parser

    def template_for(self, style: str) -> str:
        """The template name of a prompt style (``templates.PROMPT_STYLES``)."""
        if style == "study" and self.study_template is not None:
            return self.study_template
        return self.template


BENCHMARKS: dict[str, Benchmark] = {}


def register_benchmark(benchmark: Benchmark) -> Benchmark:
    return register(BENCHMARKS, benchmark.name, benchmark, "benchmark")


def get_benchmark(name: str) -> Benchmark:
    _load_builtin()
    if name in BENCHMARKS:
        return BENCHMARKS[name]
    raise BenchmarkError(f"unknown benchmark {name!r}; {did_you_mean(name, BENCHMARKS)}available: {', '.join(sorted(BENCHMARKS))}")


def all_benchmarks() -> list[Benchmark]:
    _load_builtin()
    return [BENCHMARKS[name] for name in sorted(BENCHMARKS)]


def check_split(benchmark: Benchmark, split: str | None) -> str | None:
    """The split to load: the one asked for (which must exist), else the benchmark's default."""
    if split is None:
        return benchmark.default_split
    if benchmark.splits and split not in benchmark.splits:
        raise BenchmarkError(f"{benchmark.name} has splits {', '.join(benchmark.splits)}; got {split!r}")
    return split


def _load_builtin() -> None:
    # each module registers its benchmarks on import
    from attnwh.extract.benchmarks import amber, mmbench, pointqa, pope, qbench, seed_bench, toy_shapes  # noqa: F401
