"""Answers that flipped (issue 33): the masking page links each condition to the samples whose answer it turned
wrong or right, listed on the Samples page (where the face also draws the masked heads over the first one:
``attnwh.face.pictures.report_sections``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from attnwh.queries.library import Catalog, get_mart, run_mart
from attnwh.reports.page import Link, Picture, Section

# (a flipped sample's answer_flips row, what the condition did) -> the masked heads over its image, or None
DrawFlip = Callable[[dict[str, Any], str], Picture | None]

SAMPLES_PAGE = "samples.html"
TITLE = "Answers that flipped"
DESCRIPTION = (
    "Every masking condition that changed whether answers were right, against the unmasked baseline on the same samples: "
    "how many turned wrong and how many turned right; the link leads to those samples on the Samples page, with the "
    "masked heads drawn over the first one's image where the condition masked the top heads."
)


def anchor(run_id: str, condition_id: int) -> str:
    """The id of a condition's flipped samples on the Samples page: the one place both pages build it."""
    return f"flips-{run_id}-{condition_id}"


def masking_section(session: Catalog) -> Section:
    """The masking page's table of conditions that flipped answers, each linked to its samples."""
    mart = get_mart("report_flips")
    rows = run_mart(session, "report_flips").to_pylist()
    table = [
        {
            **{key: value for key, value in row.items() if key not in ("run_id", "condition_id", "sample_keys")},
            "samples": Link(
                f"{len(row['sample_keys'])} sample(s): {', '.join(row['sample_keys'][:3])}{' ...' if len(row['sample_keys']) > 3 else ''}",
                f"{SAMPLES_PAGE}#{anchor(row['run_id'], row['condition_id'])}",
            ),
        }
        for row in rows
    ]
    return Section(TITLE, DESCRIPTION, mart.sql, table=table or None, empty_message="No masking condition flipped an answer.")


def sample_sections(session: Catalog, draw: DrawFlip | None = None) -> list[Section]:
    """A section per masking condition that flipped answers, its id ``anchor(...)``: the flipped samples, and where
    the condition masked the top heads and ``draw`` is given, those heads over the first flipped sample's image."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for row in run_mart(session, "answer_flips").to_pylist():
        if row["kind"] == "mask":
            groups.setdefault((row["run_id"], row["condition_id"]), []).append(row)
    sql = get_mart("answer_flips").sql
    sections = []
    for (run_id, condition_id), rows in groups.items():
        first, settings = rows[0], json.loads(rows[0]["settings"])
        seed = f", seed {settings['seed']}" if settings.get("seed") is not None else ""
        what = f"{settings.get('strategy')} {settings.get('k')} heads ({settings.get('stage')}{seed}, {settings.get('mode')})"
        table = [{key: row[key] for key in ("sample_key", "gold", "baseline_parsed", "parsed", "direction")} for row in rows]
        drawn = draw(first, what) if draw is not None and settings.get("strategy") == "top" and first["ranking_run_id"] and first["heads"] else None
        title = f"Flipped by masking: {first['model']} on {first['benchmark']}, {what}, run {run_id} condition {condition_id}"
        sections.append(Section(title, "", sql, table=table, pictures=[drawn] if drawn is not None else None, anchor=anchor(run_id, condition_id)))
    return sections
