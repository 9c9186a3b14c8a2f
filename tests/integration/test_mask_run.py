"""``attnwh mask`` on the trained toy: a resumable sweep, and what masking every head does."""

from __future__ import annotations

import math

import pytest
import torch

from attnwh.core.errors import UsageError
from attnwh.extract.benchmarks import get_benchmark
from attnwh.extract.generation import encode_batch, generate_with_capture
from attnwh.extract.mask_run import MaskOptions
from attnwh.extract.masking import HeadMask
from attnwh.extract.models import load_model, resolve_source
from attnwh.extract.prompts import FORMATS
from attnwh.extract.run import ExtractOptions, run_extract
from attnwh.extract.toy.default import default_model_folder
from attnwh.face.workflows import mask_sweep
from attnwh.queries.library import open_session

LIMIT = 48


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    warehouse = tmp_path_factory.mktemp("mask") / "wh"
    run_extract(warehouse, ExtractOptions(limit=LIMIT, rows=False, device="cpu", part_size=LIMIT, batch_size=16, command=["test"]))
    options = MaskOptions(limit=LIMIT, k=("0", "2", "4"), seeds=2, device="cpu", batch_size=16, command=["test"])
    return warehouse, options, mask_sweep(warehouse, options)[0]


def test_sweep_conditions_and_baseline(swept):
    warehouse, _, result = swept
    assert (result.conditions_total, result.conditions_written) == (1 + 2 * (1 + 2), 7)  # baseline + k∈{2,4} × (top + 2 random seeds)
    with open_session(warehouse) as session:
        conditions = session.query("select condition_id, strategy, k, len(heads) as n_heads, mode from mask_conditions order by condition_id").to_pylist()
        baseline = session.query(
            "select r.sample_idx, r.correct, s.correct as extracted from mask_results r join samples s using (sample_idx) where r.condition_id = 0 order by r.sample_idx"
        ).to_pylist()
        ranking = session.query(
            "select h.layer, h.head from stg_head_metrics h where query = 'gen1' group by all order by avg(concentration_x_sum) desc, layer, head limit 2"
        ).to_pylist()
        top2 = session.query("select heads from mask_conditions where strategy = 'top' and k = 2").to_pylist()[0]["heads"]
    assert [c["strategy"] for c in conditions].count("random") == 4 and all(c["mode"] == "zero" for c in conditions)
    assert all(c["n_heads"] == c["k"] for c in conditions)
    assert len(baseline) == LIMIT and all(row["correct"] == row["extracted"] for row in baseline)  # unmasked = the extraction's answers
    assert sorted((h["layer"], h["head"]) for h in top2) == sorted((r["layer"], r["head"]) for r in ranking)


def test_sweep_resumes_without_work(swept):
    warehouse, options, first = swept
    again, summary = mask_sweep(warehouse, options)
    assert again.run_id == first.run_id and again.conditions_written == 0 and again.conditions_skipped == first.conditions_total
    assert summary.num_rows == first.conditions_total


def test_the_default_toy_and_its_zoo_name_are_one_model(swept):
    """``toy-llava`` (the default) is ``toy-llava-small``: runs record the zoo's name, so a sweep naming either finds
    the other's extraction to rank by and resumes the same run (before, the zoo's extraction of toy-llava-small could
    not rank a default ``attnwh mask``, and the report showed the one model twice)."""
    from dataclasses import replace

    warehouse, options, first = swept
    with open_session(warehouse) as session:
        assert session.query("select distinct model from runs").column(0).to_pylist() == ["toy-llava-small"]
    for name in ("toy-llava-small", "toy-llava"):
        again, _ = mask_sweep(warehouse, replace(options, model=name))
        assert (again.run_id, again.conditions_written) == (first.run_id, 0), name


def test_mask_without_an_extraction_run_fails_clearly(tmp_path):
    with pytest.raises(UsageError, match="no complete extraction run of toy-llava"):
        mask_sweep(tmp_path / "empty", MaskOptions(limit=4, device="cpu", command=["test"]))


def test_ranking_runs_that_cannot_rank_are_refused_in_one_line(swept, tmp_path):
    """A ranking run that is missing, of a kind that has no head scores, or whose score is null for every head (region_hit
    on a benchmark without boxes, where every head would tie and the heads' numbering would pose as the ranking) is
    refused naming it; the default ranking run is the newest complete extraction with head scores for the query."""
    import shutil

    from attnwh.queries.rankings import export_heads, ranked_scores

    warehouse = tmp_path / "wh"
    shutil.copytree(swept[0], warehouse)
    mask_run = swept[2].run_id
    with open_session(warehouse) as session:
        extraction = session.query("select run_id from runs where kind = 'extract'").to_pylist()[0]["run_id"]
        for run_id, score, message in (
            ("nosuchrun", "concentration_x_sum", "no run 'nosuchrun' in the warehouse"),
            (mask_run, "concentration_x_sum", f"run {mask_run} is a mask run: heads are ranked by an extraction"),
            (
                extraction,
                "region_hit",
                f"run {extraction} has no region_hit value for any head on query gen1: nothing to rank heads by (region_hit needs a benchmark with object boxes)",
            ),
        ):
            with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
                ranked_scores(session, run_id, score, "gen1")
        for run_id, message in (("nosuchrun", "no run 'nosuchrun'"), (mask_run, "is a mask run")):
            with pytest.raises(UsageError, match=message):
                export_heads(session, run_id, "retrieval-json")
    with pytest.raises(UsageError, match="nothing to rank heads by"):
        mask_sweep(warehouse, MaskOptions(limit=4, k=("1",), device="cpu", score="region_hit", command=["test"]))
    # a newer extraction of the prompt query alone is passed over for gen1's ranking, and taken for the prompt's
    newer = run_extract(warehouse, ExtractOptions(limit=2, rows=False, queries=("prompt",), device="cpu", command=["test"])).run_id
    by_gen1 = mask_sweep(warehouse, MaskOptions(limit=4, k=("1",), strategies=("top",), device="cpu", command=["test"]))[0]
    by_prompt = mask_sweep(warehouse, MaskOptions(limit=4, k=("1",), strategies=("top",), device="cpu", ranking_query="prompt", command=["test"]))[0]
    with open_session(warehouse) as session:
        ranked_by = {
            row["run_id"]: row["ranking_run"]
            for row in session.query("select distinct run_id, ranking_run_id as ranking_run from mask_conditions where strategy = 'top'").to_pylist()
        }
    assert ranked_by[by_gen1.run_id] == extraction and ranked_by[by_prompt.run_id] == newer


def test_masking_every_head_makes_answers_independent_of_the_image():
    """Attention is the only path from the image tokens to the answer: with every head off, two images give the same logits."""
    loaded = load_model(resolve_source(str(default_model_folder())), dtype=torch.float32, device=torch.device("cpu"))
    info = loaded.info
    every_head = [(layer, head) for layer in range(info["n_layers"]) for head in range(info["n_heads"])]
    samples = get_benchmark("toy-shapes").load(None, "test")
    question = samples[0].question
    images = [sample.load_image() for sample in samples[:6:2]]  # three different scenes
    prompt = FORMATS["chat_template"].render(loaded.processor, question)
    encoded = encode_batch(loaded, images, [prompt] * len(images))
    masked, _, _ = generate_with_capture(loaded, encoded, None, 2, interventions=[HeadMask(every_head, "zero")])
    assert all(torch.equal(masked.first_logits[0], logits) for logits in masked.first_logits[1:])
    assert masked.answers[0] == masked.answers[1] == masked.answers[2]
    unmasked, _, _ = generate_with_capture(loaded, encoded, None, 2)
    assert not torch.allclose(unmasked.first_logits[0], unmasked.first_logits[1]), "unmasked, the images must matter"


def wilson(correct: int, n: int) -> tuple[float, float]:
    z = 1.959963984540054
    p = correct / n
    centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n)


def test_masking_accuracy_mart_by_hand(swept):
    """Accuracy, Wilson interval and exact McNemar p-value recomputed from the raw results in Python."""
    warehouse, _, result = swept
    with open_session(warehouse) as session:
        raw = session.query("select condition_id, sample_idx, correct from mask_results where run_id = $r", {"r": result.run_id}).to_pylist()
        mart = session.query("select * from masking_accuracy where run_id = $r order by condition_id", {"r": result.run_id}).to_pylist()
    baseline = {row["sample_idx"]: row["correct"] for row in raw if row["condition_id"] == 0}
    for row in mart:
        mine = {r["sample_idx"]: r["correct"] for r in raw if r["condition_id"] == row["condition_id"]}
        correct = sum(mine.values())
        assert row["n"] == len(mine) and row["accuracy"] == pytest.approx(correct / len(mine))
        assert (row["ci_low"], row["ci_high"]) == pytest.approx(wilson(correct, len(mine)))
        lost = sum(baseline[i] and not mine[i] for i in mine)
        gained = sum(mine[i] and not baseline[i] for i in mine)
        tail = sum(math.comb(lost + gained, i) for i in range(min(lost, gained) + 1)) / 2 ** (lost + gained)
        assert (row["correct_to_wrong"], row["wrong_to_right"]) == (lost, gained)
        assert row["mcnemar_p"] == pytest.approx(min(1.0, 2 * tail))
    assert any(row["correct_to_wrong"] for row in mart) and any(row["mcnemar_p"] < 1 for row in mart), "the sweep should change some answers"
