"""Where a head looks (issue 33): a sample's stored attention rows drawn over its image, for ``attnwh show``, the
notebook's ``show`` / ``overlays`` and the report's Samples page.

The rows come from the run's Zarr, the image from the benchmark (checked against the run's hash of its pixels), the
layout of its image tokens from the model's processor and the family's mapping (``extract.sample_images``), the maps
from ``reports.overlays``. Nothing runs the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from attnwh.core.errors import IntegrityError, UsageError, WarehouseError
from attnwh.core.output import kind_phrase

SHOW_QUERIES = ("gen1", "prompt")
DEFAULT_SCORE = "concentration_x_sum"
DEFAULT_TOP = 4
MAX_TOP = 64
DISPLAY_SIDE = 448  # the longer side of a drawn map, in pixels (the image's own size when smaller)


@dataclass(frozen=True)
class HeadChoice:
    """Which maps to draw: one head (``layer`` and ``head``), the mean of a layer's heads (``layer`` alone), or
    the run's ``top`` heads by ``score`` (the ``head_ranking`` mart)."""

    layer: int | None = None
    head: int | None = None
    top: int | None = None
    score: str = DEFAULT_SCORE

    def check(self, n_layers: int, n_heads: int) -> None:
        if self.head is not None and self.layer is None:
            raise UsageError("--head needs --layer (or give --layer alone for the mean of its heads)")
        if self.top is not None and self.layer is not None:
            raise UsageError("give either --layer [--head] or --top, not both")
        if self.top is not None and not 1 <= self.top <= MAX_TOP:
            raise UsageError(f"--top must be between 1 and {MAX_TOP}, got {self.top}")
        if self.layer is not None and not 0 <= self.layer < n_layers:
            raise UsageError(f"--layer must be between 0 and {n_layers - 1} for this run, got {self.layer}")
        if self.head is not None and not 0 <= self.head < n_heads:
            raise UsageError(f"--head must be between 0 and {n_heads - 1} for this run, got {self.head}")


@dataclass(frozen=True)
class SampleRows:
    """A sample's stored row and what the run recorded of it."""

    run_id: str
    spec: dict[str, Any]
    sample: dict[str, Any]  # its samples row
    attention: np.ndarray  # [layer, head, n_image] float32: the query's attention on the image tokens


def check_query(query: str) -> str:
    if query not in SHOW_QUERIES:
        raise UsageError(f"--query must be one of {', '.join(SHOW_QUERIES)}, got {query!r}")
    return query


def run_spec(session, run_id: str) -> tuple[Any, dict[str, Any]]:
    """The run's folder and spec; refused in one line unless it is an extraction run that kept its raw rows."""
    from attnwh.warehouse.parts import readable_run

    paths = session.warehouse.find_run(run_id)
    if paths is None:
        raise UsageError(f"no run {run_id} in {session.warehouse.root}")
    try:
        manifest = readable_run(paths).manifest
    except WarehouseError as exc:  # left out of every view: its samples would read as missing
        raise IntegrityError(f"run {run_id} is damaged: {exc}; see `attnwh verify {run_id}`") from exc
    if manifest.get("kind") != "extract":
        raise UsageError(f"run {run_id} is {kind_phrase(manifest.get('kind'))} run; overlays are drawn from an extraction run's raw rows")
    spec = manifest["spec"]
    if spec.get("rows") is False:
        raise UsageError(f"run {run_id} has no raw rows: it was extracted with --no-rows; extract again without --no-rows to draw where heads look")
    return paths, spec


def find_sample(session, run_id: str, sample: str) -> dict[str, Any]:
    """A sample of the run by its benchmark key, else by its index in the plan."""
    columns = "sample_idx, sample_key, status, error, question, choices, gold, output_text, parsed, correct, n_image, image_start, image_end, image_sha256"
    rows = session.query(f"select {columns} from samples where run_id = $run and sample_key = $sample", {"run": run_id, "sample": sample}).to_pylist()
    if not rows and sample.isdigit():
        rows = session.query(f"select {columns} from samples where run_id = $run and sample_idx = $index", {"run": run_id, "index": int(sample)}).to_pylist()
    if not rows:
        raise UsageError(f'run {run_id} has no sample {sample!r} (give a sample key or its index; `attnwh sql "select sample_idx, sample_key from samples"` lists them)')
    found = rows[0]
    if found["status"] != "ok":
        raise UsageError(f"sample {found['sample_key']} of run {run_id} failed ({found['error']}): it has no attention rows")
    if not found["n_image"] or found["image_end"] - found["image_start"] != found["n_image"]:
        raise UsageError(f"sample {found['sample_key']} has {found['n_image']} image tokens that are not one contiguous image; overlays draw one image")
    return found


def sample_rows(session, run_id: str, samples: Sequence[str], query: str) -> list[SampleRows]:
    """The stored rows of ``samples`` (keys or indices) for ``query``, cut to each sample's image tokens."""
    from attnwh.warehouse.arrays import has_rows, open_rows
    from attnwh.warehouse.parts import commit_records

    paths, spec = run_spec(session, run_id)
    found = [find_sample(session, run_id, sample) for sample in samples]
    if not any(has_rows(record) for record in commit_records(paths)):
        raise UsageError(f"run {run_id} has no committed raw rows (extracted with --no-rows, or no part committed yet); extract again without --no-rows to draw where heads look")
    array, indices, queries = open_rows(paths)  # damaged or unreadable rows: said as they are, naming the file
    if query not in queries:
        raise UsageError(f"run {run_id} stored rows for {', '.join(queries)}, not {query}")
    position = {int(index): place for place, index in enumerate(indices)}
    result = []
    for row in found:
        if row["sample_idx"] not in position:
            raise UsageError(f"sample {row['sample_key']} of run {run_id} has no stored rows")
        # read here, in threads: not on whatever scheduler the process's dask configuration names (a notebook's cluster)
        keys = np.asarray(array[position[row["sample_idx"]], queries.index(query)].compute(scheduler="threads"), dtype=np.float32)  # [layer, head, key]
        image = keys[..., row["image_start"] : row["image_end"]]
        result.append(SampleRows(run_id, spec, row, image))
    return result


def images_of(rows: Sequence[SampleRows], data: Path | None = None, model: str | None = None, refused: dict[str, str] | None = None, sources=None) -> dict[str, Any]:
    """Each sample's image and token layout (``extract.sample_images``; ``refused``: where samples whose layout
    cannot be drawn are left, with the reason, instead of raising; ``sources``: a ``SampleSources`` of the caller's)."""
    from attnwh.extract.sample_images import StoredSample, sample_images

    stored = [StoredSample(row.sample["sample_key"], row.sample["image_sha256"], row.sample["n_image"]) for row in rows]
    return sample_images(rows[0].spec, stored, data, model, refused, sources) if rows else {}


def display_size(size: tuple[int, int], side: int = DISPLAY_SIDE) -> tuple[int, int]:
    width, height = size
    scale = min(1.0, side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def chosen_maps(session, rows: SampleRows, choice: HeadChoice, query: str) -> list[tuple[str, np.ndarray]]:
    """(panel title, [n_image] weights) of each map ``choice`` asks for."""
    from attnwh.queries.rankings import ranked_scores

    n_layers, n_heads, _ = rows.attention.shape
    choice.check(n_layers, n_heads)
    if choice.layer is not None and choice.head is None:
        weights = rows.attention[choice.layer].mean(axis=0)
        return [(f"layer {choice.layer}, mean of {n_heads} heads\nimage {weights.sum():.0%}", weights)]
    scores, recorded = ranked_scores(session, rows.run_id, choice.score, query)
    heads = [(choice.layer, choice.head)] if choice.layer is not None else list(scores)[: choice.top or DEFAULT_TOP]
    return head_maps(rows, heads, scores, recorded)


def head_maps(rows: SampleRows, heads: Sequence[tuple[int, int]], scores: dict[tuple[int, int], float], recorded: str, label: str = "") -> list[tuple[str, np.ndarray]]:
    """A map per head, titled with its rank and score in the run's ranking and its share of attention on the image."""
    order = {head: rank for rank, head in enumerate(scores, start=1)}
    maps = []
    for layer, head in heads:
        weights = rows.attention[layer, head]
        ranked = f"#{order[(layer, head)]} " if (layer, head) in order else ""
        value = scores.get((layer, head))
        score = "" if (layer, head) not in scores else f"no {recorded} · " if value is None else f"{recorded} {value:.3g} · "
        maps.append((f"{label}{ranked}layer {layer} head {head}\n{score}image {weights.sum():.0%}", weights))
    return maps


def sample_figure(
    session,
    rows: SampleRows,
    picture,
    maps: list[tuple[str, np.ndarray]],
    query: str,
    side: int = DISPLAY_SIDE,
    columns: int = 4,
    panel_inches: float = 3.0,
    dpi: int = 100,
    notes: Sequence[str] = (),
):
    """A ``reports.overlays.SampleFigure`` of ``maps`` over the sample's image."""
    from attnwh.reports.overlays import Panel, SampleFigure, overlay_maps

    layout, image = picture.layout, picture.image
    size = display_size(image.size, side)
    panels = [Panel(title, overlay_maps(weights, layout.boxes, layout.views, image.size, size)) for title, weights in maps]
    unread = layout.views < 0
    notes = list(notes)
    if unread.any():
        shares = [float(weights[unread].sum()) for _, weights in maps]
        notes.append(f"not drawn: attention on {int(unread.sum())} image tokens that read no pixel (row newlines, CLS): {', '.join(f'{share:.1%}' for share in shares)}")
    sample = rows.sample
    answer = sample["output_text"] if sample["parsed"] in (None, "") else f"{sample['output_text']} -> {sample['parsed']}"
    return SampleFigure(
        image=image.resize(size),
        panels=panels,
        heading=f"run {rows.run_id} · sample {sample['sample_key']} · query {query}",
        question=sample["question"] or "",
        answer=(answer or "").strip(),
        gold=str(sample["gold"]),
        correct=sample["correct"],
        boxes=[tuple(value * size[0] / image.size[0] if index % 2 == 0 else value * size[1] / image.size[1] for index, value in enumerate(box)) for box in picture.boxes],
        notes=notes,
        columns=columns,
        panel_inches=panel_inches,
        dpi=dpi,
    )


def show(session, run_id: str, sample: str, choice: HeadChoice, query: str = "gen1", data: Path | None = None, model: str | None = None):
    """The figure ``attnwh show`` writes and the notebook's ``show`` returns."""
    check_query(query)
    rows = sample_rows(session, run_id, [sample], query)[0]
    maps = chosen_maps(session, rows, choice, query)  # options checked before the processor is loaded
    picture = images_of([rows], data, model)[rows.sample["sample_key"]]
    return sample_figure(session, rows, picture, maps, query)


def overlay_array(session, run_id: str, samples: Sequence[str], query: str = "gen1", side: int = 64, data: Path | None = None, model: str | None = None):
    """Every head's map of each sample as an ``xarray.DataArray`` (sample, layer, head, y, x): ``side`` × ``side``
    cells over each image, ``y`` and ``x`` the cells' centres in units of the image's height and width."""
    import xarray

    from attnwh.reports.overlays import overlay_maps

    check_query(query)
    rows = sample_rows(session, run_id, samples, query)
    pictures = images_of(rows, data, model)
    maps = [
        overlay_maps(
            row.attention,
            pictures[row.sample["sample_key"]].layout.boxes,
            pictures[row.sample["sample_key"]].layout.views,
            pictures[row.sample["sample_key"]].image.size,
            (side, side),
        )
        for row in rows
    ]
    n_layers, n_heads = rows[0].attention.shape[:2]
    centres = (np.arange(side) + 0.5) / side
    coords = {
        "sample": [row.sample["sample_idx"] for row in rows],
        "sample_key": ("sample", [row.sample["sample_key"] for row in rows]),
        "layer": range(n_layers),
        "head": range(n_heads),
        "y": centres,
        "x": centres,
    }
    return xarray.DataArray(
        np.stack(maps),
        dims=("sample", "layer", "head", "y", "x"),
        coords=coords,
        name="overlay",
        attrs={"run_id": run_id, "query": query, "units": "attention per token of the finest view"},
    )


REPORT_SAMPLES = 4  # samples per extraction run on the report's Samples page: a zoo's page stays a few MB
REPORT_TOP = 3
REPORT_DESCRIPTION = (
    "The first samples of each extraction run that kept its raw rows, drawn as `attnwh show` draws them: the run's top {top} heads by "
    "concentration × sum, then one random other head for contrast, over the image; the frame is green for a right answer, red for a "
    "wrong one. Runs without pictures are listed with the reason."
)
REPORT_SQL = "select sample_key from samples where run_id = $run and status = 'ok' order by sample_idx limit $n"


def report_sections(n_samples: int = REPORT_SAMPLES, top: int = REPORT_TOP, query: str = "gen1"):
    """The Samples page's pictures (``reports.build.build_report(pictures=...)``): a function of the report's session."""

    def sections(session) -> list:
        from attnwh.core.errors import AttnwhError
        from attnwh.extract.sample_images import SampleSources
        from attnwh.reports import flips
        from attnwh.reports.page import Section

        if n_samples < 1:
            return flips.sample_sections(session)
        sources = SampleSources()  # each benchmark and model loaded once for the page
        runs = session.query("select run_id, model, benchmark from runs where kind = 'extract' order by model, benchmark, created, run_id").to_pylist()
        built, skipped = [], []
        for run in runs:
            refused: dict[str, str] = {}
            try:
                pictures = run_pictures(session, run, n_samples, top, query, refused, sources)
            except AttnwhError as exc:
                skipped.append({"model": run["model"], "benchmark": run["benchmark"], "run_id": run["run_id"], "sample": None, "no pictures because": str(exc)})
                continue
            finally:
                skipped += [
                    {"model": run["model"], "benchmark": run["benchmark"], "run_id": run["run_id"], "sample": key, "no pictures because": reason} for key, reason in refused.items()
                ]
            if refused and not pictures:  # every sample refused: the table says why, no empty section
                continue
            title = f"Where heads look: {run['model']} on {run['benchmark']} (run {run['run_id']}, first {n_samples} samples, query {query})"
            built.append(
                Section(title, REPORT_DESCRIPTION.format(top=top) if not built else "", REPORT_SQL, pictures=pictures, empty_message="No sample of this run was answered.")
            )
        if skipped:
            built.append(Section("Where heads look: runs without pictures", "Extraction runs (or their samples) that cannot be drawn, and why.", REPORT_SQL, table=skipped))
        return built + flips.sample_sections(session, flip_drawer(session, query, sources))

    return sections


def run_pictures(session, run: dict[str, Any], n_samples: int, top: int, query: str, refused: dict[str, str] | None = None, sources=None) -> list:
    """Thumbnails of a run's first samples: its top heads and a random other head (seeded by the run's id). A sample
    whose layout cannot be drawn is left out, its reason put in ``refused`` by key; ``sources``: a ``SampleSources``."""
    import random

    from attnwh.queries.rankings import ranked_scores
    from attnwh.reports.overlays import thumbnail_data_uri
    from attnwh.reports.page import Picture

    run_id = run["run_id"]
    run_spec(session, run_id)
    keys = [row["sample_key"] for row in session.query(REPORT_SQL, {"run": run_id, "n": n_samples}).to_pylist()]
    if not keys:
        return []
    rows = sample_rows(session, run_id, keys, query)
    images = images_of(rows, refused=refused, sources=sources)
    scores, recorded = ranked_scores(session, run_id, DEFAULT_SCORE, query)
    ranked = list(scores)
    contrast = random.Random(run_id).choice(ranked[top:]) if len(ranked) > top else None
    pictures = []
    for row in rows:
        if row.sample["sample_key"] not in images:
            continue
        maps = head_maps(row, ranked[:top], scores, recorded)
        if contrast is not None:
            maps += head_maps(row, [contrast], scores, recorded, label="random: ")
        figure = sample_figure(session, row, images[row.sample["sample_key"]], maps, query, side=192, columns=len(maps), panel_inches=2.0, dpi=72)
        verdict = {True: "right", False: "wrong"}.get(row.sample["correct"], "")
        caption = (
            f"{run['model']} · {run['benchmark']} · run {run_id} · sample {row.sample['sample_key']}: {figure.question} → {figure.answer} (gold {figure.gold}; {figure.verdict()})"
        )
        pictures.append(Picture(thumbnail_data_uri(figure), figure.heading, caption, verdict))
    return pictures


FLIP_PICTURE_HEADS = 4  # masked heads drawn over a flipped sample (the condition's best-ranked first)


def flip_drawer(session, query: str, sources=None):
    """``reports.flips.DrawFlip``: the masked heads over a flipped sample, from the ranking run's rows; None where
    that run kept no rows or has not the sample (the Samples page's table says enough); each sample drawn once
    (``sources``: a ``SampleSources``)."""
    from attnwh.core.errors import AttnwhError

    drawn: dict[tuple[str, str, str], Any] = {}

    def draw(flip: dict[str, Any], what: str):
        key = (flip["ranking_run_id"], flip["sample_key"], what)
        if key not in drawn:
            try:
                drawn[key] = _flip_picture(session, flip, what, query, sources)
            except AttnwhError:
                drawn[key] = None
        return drawn[key]

    return draw


def _flip_picture(session, flip: dict[str, Any], what: str, query: str, sources=None):
    """The masked heads over the flipped sample's image, from the ranking run's rows."""
    from attnwh.queries.rankings import ranked_scores
    from attnwh.reports.overlays import thumbnail_data_uri
    from attnwh.reports.page import Picture

    ranking_run = flip["ranking_run_id"]
    rows = sample_rows(session, ranking_run, [flip["sample_key"]], query)[0]
    picture = images_of([rows], sources=sources)[rows.sample["sample_key"]]
    scores, recorded = ranked_scores(session, ranking_run, DEFAULT_SCORE, query)
    order = {head: rank for rank, head in enumerate(scores)}
    heads = sorted(((head["layer"], head["head"]) for head in flip["heads"]), key=lambda head: order.get(head, len(order)))[:FLIP_PICTURE_HEADS]
    note = f"masking {what} turned the answer {flip['baseline_parsed']} into {flip['parsed']} (gold {flip['gold']})"
    maps = head_maps(rows, heads, scores, recorded, label="masked: ")
    figure = sample_figure(session, rows, picture, maps, query, side=192, columns=len(maps), panel_inches=2.0, dpi=72, notes=[note])
    verdict = "wrong" if flip["direction"] == "correct_to_wrong" else "right"
    return Picture(thumbnail_data_uri(figure), figure.heading, f"{note}; drawn from the ranking run {ranking_run}", verdict)
