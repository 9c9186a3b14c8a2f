"""The benchmark registry: a benchmark is a versioned loader plus a parser and generation settings."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from attnwh.errors import BenchmarkError


@dataclass(frozen=True)
class Sample:
    """One benchmark item. ``load_image`` is called late, so a broken image fails only its sample."""

    key: str
    question: str  # the text given to the model after the image, options included
    load_image: Callable[[], Image.Image]
    choices: tuple[str, ...] = ()
    gold: str | None = None
    category: str | None = None
    parser: str = "yes_no"


@dataclass(frozen=True)
class Benchmark:
    name: str
    version: str
    description: str
    load: Callable[[Path | None, str | None], list[Sample]]  # (data, split) -> samples
    max_new_tokens: int = 8
    splits: tuple[str, ...] = field(default=())


BENCHMARKS: dict[str, Benchmark] = {}


def register_benchmark(benchmark: Benchmark) -> Benchmark:
    if benchmark.name in BENCHMARKS:
        raise ValueError(f"benchmark {benchmark.name} is already registered")
    BENCHMARKS[benchmark.name] = benchmark
    return benchmark


def get_benchmark(name: str) -> Benchmark:
    _load_builtin()
    if name in BENCHMARKS:
        return BENCHMARKS[name]
    close = difflib.get_close_matches(name, list(BENCHMARKS), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise BenchmarkError(f"unknown benchmark {name!r}; {hint}available: {', '.join(sorted(BENCHMARKS))}")


def _load_builtin() -> None:
    from attnwh.extract.benchmarks import toy_shapes  # noqa: F401  (registers itself)
