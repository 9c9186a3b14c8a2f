"""The one batch path of every command that runs a model over samples (extract, mask): images decoded,
prompts rendered, batches encoded, and every sample that fails at any of those steps set aside as an
error row with the same text everywhere (``data: ...``, ``image: ...``, ``processor: ...``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from attnwh.extract.benchmarks import Sample
from attnwh.extract.benchmarks.templates import render_question
from attnwh.extract.generation import encode_batch
from attnwh.extract.models import LoadedModel
from attnwh.extract.part_tables import image_sha256
from attnwh.extract.prompts import PromptFormat


@dataclass(frozen=True)
class Ready:
    """A sample whose image decoded."""

    sample_idx: int
    sample: Sample
    image: Image.Image | None  # None in a sweep's batches once encoded (they keep the encoding, not the picture)
    image_sha256: str


@dataclass(frozen=True)
class Failed:
    """A sample set aside: its row becomes an error row with ``error``."""

    sample_idx: int
    sample: Sample
    error: str


@dataclass
class Batch:
    """Samples encoded together (left-padded), their prompts, and what ``prepare`` made of them."""

    items: list[Ready]
    prompts: list[str]
    encoded: dict[str, torch.Tensor]
    prepared: Any = None


Prepare = Callable[[LoadedModel, dict[str, torch.Tensor], list[Ready]], Any]


def load_samples(samples: list[Sample], indices: list[int]) -> tuple[list[Ready], list[Failed]]:
    """Decode every sample's image; a malformed row or a broken image is set aside, the others go on."""
    ready, failed = [], []
    for sample_idx, sample in zip(indices, samples):
        if sample.error is not None:  # a malformed benchmark row
            failed.append(Failed(sample_idx, sample, f"data: {sample.error}"))
            continue
        try:
            image = sample.load_image().convert("RGB")
        except Exception as exc:  # noqa: BLE001  a broken image fails its sample only
            failed.append(Failed(sample_idx, sample, f"image: {_describe(exc)}"))
            continue
        ready.append(Ready(sample_idx, sample, image, image_sha256(image)))
    return ready, failed


def prompt_text(loaded: LoadedModel, prompt_format: PromptFormat, template: str, sample: Sample) -> str:
    """The exact text given to the processor: the benchmark's question in its template, in the prompt format."""
    return prompt_format.render(loaded.processor, render_question(template, sample))


def encode_batches(
    loaded: LoadedModel, items: list[Ready], prompt_of: Callable[[Sample], str], batch_size: int, prepare: Prepare | None = None, device: torch.device | None = None
) -> Iterator[Batch | Failed]:
    """Batches of ``batch_size`` encoded by the processor (and ``prepare``d), lazily, on the model's device (or
    ``device``); a batch the processor rejects is split until the sample it rejects is alone, and that one is
    yielded as ``Failed``."""
    for start in range(0, len(items), batch_size):
        yield from _encode(loaded, items[start : start + batch_size], prompt_of, prepare, device)


def _encode(loaded: LoadedModel, items: list[Ready], prompt_of: Callable[[Sample], str], prepare: Prepare | None, device: torch.device | None) -> Iterator[Batch | Failed]:
    prompts = [prompt_of(item.sample) for item in items]
    try:
        encoded = encode_batch(loaded, [item.image for item in items], prompts, device)
        prepared = prepare(loaded, encoded, items) if prepare is not None else None
    except Exception as exc:  # noqa: BLE001  isolate the sample the processor rejects
        if len(items) == 1:
            yield Failed(items[0].sample_idx, items[0].sample, f"processor: {type(exc).__name__}: {exc}")
            return
        for item in items:
            yield from _encode(loaded, [item], prompt_of, prepare, device)
        return
    yield Batch(items, prompts, encoded, prepared)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return text if type(exc).__name__ == "ImageLoadError" else f"{type(exc).__name__}: {text}"
