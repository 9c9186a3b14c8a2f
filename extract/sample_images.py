"""A run's sample images and where their image tokens read them (issue 33's overlays; ``recompute --regions``'s
boxes), without running the model.

The image comes from the benchmark the run names (its data folder, or ``data`` where the files moved), checked
against the hash the run stored of the pixels it read; the layout of its image tokens comes from the model's
processor and the family's mapping (``regions.token_layout``, on a model built without weights,
``models.load_geometry``), checked against the number of image tokens the run stored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from attnwh.core.errors import UsageError
from attnwh.extract.benchmarks.registry import Box


@dataclass(frozen=True)
class StoredSample:
    """What the run stored of a sample that its image must match."""

    key: str
    image_sha256: str | None
    n_image: int | None


@dataclass(frozen=True)
class SampleImage:
    key: str
    image: Image.Image  # RGB, as the run read it
    boxes: tuple[Box, ...]  # the benchmark's regions (PointQA), in pixels of the image
    layout: Any  # regions.TokenLayout


@dataclass
class SampleSources:
    """The benchmarks' samples and the models' geometry that drawing samples reads, kept for one call that draws many
    runs of a few benchmarks and models (the report's Samples page: loading the processor again for each run was a
    tenth of the report's time). Made by that call and handed down; never shared between calls."""

    samples: dict[tuple[str, str, str | None], dict[str, Any]] = field(default_factory=dict)
    geometries: dict[str, Any] = field(default_factory=dict)

    def samples_of(self, spec: Mapping[str, Any], data: Path | str | None) -> dict[str, Any]:
        key = (spec["benchmark"], str(data or spec.get("data")), spec.get("split"))
        if key not in self.samples:
            self.samples[key] = run_samples(spec, data)
        return self.samples[key]

    def geometry_of(self, spec: Mapping[str, Any], model: str | None):
        key = model or spec["model"]
        if key not in self.geometries:
            self.geometries[key] = run_geometry(spec, model)
        return self.geometries[key]


def run_samples(spec: Mapping[str, Any], data: Path | str | None = None) -> dict[str, Any]:
    """The benchmark samples of a run by key (``spec``: its RUN.json spec; ``data``: where the files moved since)."""
    from attnwh.extract.benchmarks import get_benchmark
    from attnwh.extract.benchmarks.data import resolve_data

    benchmark = get_benchmark(spec["benchmark"])
    return {sample.key: sample for sample in benchmark.load(resolve_data(benchmark, data or spec.get("data")), spec.get("split"))}


def run_geometry(spec: Mapping[str, Any], model: str | None = None):
    """The run's model without weights (``models.load_geometry``): its processor and module tree, what mapping image
    tokens to the image needs (``model``: where it moved since the run)."""
    from attnwh.extract.models import load_geometry, resolve_source
    from attnwh.extract.toy.default import model_location

    return load_geometry(resolve_source(model_location(model or spec["model"])))


def read_image(sample) -> Image.Image:
    """A sample's image in RGB, or one line saying why it cannot be read."""
    try:
        return sample.load_image().convert("RGB")
    except Exception as exc:  # noqa: BLE001  an unreadable image: the benchmark's loaders raise many kinds
        raise UsageError(f"sample {sample.key}: cannot read its image ({type(exc).__name__}: {exc})") from exc


def sample_images(
    spec: Mapping[str, Any],
    stored: Sequence[StoredSample],
    data: Path | None = None,
    model: str | None = None,
    refused: dict[str, str] | None = None,
    sources: SampleSources | None = None,
) -> dict[str, SampleImage]:
    """Each stored sample's image and token layout (``spec``: the run's RUN.json spec; ``data`` / ``model``: where
    the benchmark's files or the model moved since the run). A sample whose layout is too coarse to draw
    (``CoarseLayoutError``) raises, or with ``refused`` is left out and its reason put there by key; a model whose
    layouts cannot be drawn at all raises either way (the run has no pictures). ``sources``: what an earlier call of
    the same caller loaded."""
    from attnwh.extract.part_tables import image_sha256
    from attnwh.extract.regions import CoarseLayoutError, token_layout

    sources = sources if sources is not None else SampleSources()
    samples = sources.samples_of(spec, data)
    loaded = sources.geometry_of(spec, model)
    found = {}
    for entry in stored:
        sample = samples.get(entry.key)
        if sample is None:
            raise UsageError(f"sample {entry.key} is not in the benchmark's data any more; give --data")
        image = read_image(sample)
        if entry.image_sha256 is not None and image_sha256(image) != entry.image_sha256:
            raise UsageError(f"sample {entry.key}: the benchmark's image is not the one the run read (its pixels differ); give --data with the run's files")
        try:
            layout = token_layout(loaded, image.size)
        except CoarseLayoutError as exc:
            if refused is None:
                raise
            refused[entry.key] = str(exc)
            continue
        if entry.n_image is not None and len(layout.views) != entry.n_image:
            raise UsageError(f"sample {entry.key}: the processor gives {len(layout.views)} image tokens, the run stored {entry.n_image}; give --model with the run's model")
        found[entry.key] = SampleImage(entry.key, image, tuple(sample.boxes), layout)
    return found
