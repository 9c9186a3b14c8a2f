"""A new head score over existing columns is one edit: its name and formula in warehouse/sql/definitions.sql.

The edit is made to a temporary copy of the definitions (the session's ``definitions_sql``); nothing else
changes, and the score then appears in the per-part rollups, the head ranking, the detection scores, the
sidecars' choices, the export and the ``--score`` options, with values checked against a hand computation.
"""

from __future__ import annotations

import pytest
import typer

from attnwh.face.console import head_score
from attnwh.queries.library import bind_parameters, get_mart
from attnwh.warehouse import definitions
from tests.integration.test_marts import HAND_METRICS, _hand_warehouse, _rows


@pytest.fixture
def text_sum_score(monkeypatch):
    """The definitions with one score more: text_sum, the attention on the system prompt and the question."""
    original = definitions.definitions_sql()
    names = "create or replace macro head_score_names() as ['image_sum', 'concentration', 'concentration_x_sum', 'region_hit'];"
    case = "        when 'region_hit' then case when m.image_sum > 0 then m.region_hit::double end\n"
    assert names in original and case in original, "the definitions changed shape: update this copy's edit"
    edited = original.replace(names, names.replace("'region_hit']", "'region_hit', 'text_sum']")).replace(
        case, case + "        when 'text_sum' then m.system_sum::double + m.prompt_sum::double\n"
    )
    definitions.head_score_names.cache_clear()
    monkeypatch.setattr(definitions, "definitions_sql", lambda: edited)
    yield "text_sum"
    definitions.head_score_names.cache_clear()


def test_a_score_over_existing_columns_is_one_edit(text_sum_score, tmp_path):
    warehouse, run_id = _hand_warehouse(tmp_path / "hand")  # its rollups are built with the edited definitions
    # by hand: per (layer, head), the mean over the two samples of system + prompt attention
    expected: dict[tuple[int, int], list[float]] = {}
    for _, layer, head, _, _, _, system, prompt, _ in HAND_METRICS:
        expected.setdefault((layer, head), []).append(system + prompt)
    means = {key: sum(values) / len(values) for key, values in expected.items()}

    ranking = _rows(warehouse, "head_ranking", {"run_id": run_id, "score": text_sum_score})
    assert {(row["layer"], row["head"]): row["score"] for row in ranking} == pytest.approx(means)
    assert [(row["layer"], row["head"]) for row in sorted(ranking, key=lambda row: row["rank"])] == sorted(means, key=lambda key: (-means[key], key))
    visual = _rows(warehouse, "visual_heads", {"score": text_sum_score, "k": "1"})
    assert {(row["layer"], row["head"]): row["mean_score"] for row in visual} == pytest.approx(means)
    # detection (top-1 per sample), system + prompt by head (0,0), (0,1), (1,0), (1,1): sample 0 has 0.2, 0.3, 0.4,
    # 0.05 -> (1, 0); sample 1 has 0.3, 0.2, 0.3, 0.2 -> a tie, to the lower layer: (0, 0)
    detection = {(row["layer"], row["head"]): row["detection_score"] for row in visual}
    assert detection == {(0, 0): 0.5, (0, 1): 0.0, (1, 0): 0.5, (1, 1): 0.0}
    # the choices of every score parameter and option come from the definitions
    assert text_sum_score in get_mart("head_ranking").parameters["score"]["choices"]
    assert bind_parameters(get_mart("head_sample_scores"), {"run_id": run_id, "score": text_sum_score})["score"] == text_sum_score
    assert head_score(text_sum_score) == text_sum_score


def test_without_the_edit_the_score_is_refused(tmp_path):
    with pytest.raises(typer.BadParameter, match="not a head score; choose image_sum"):
        head_score("text_sum")
