"""One run per model and benchmark wherever the report sets runs side by side: the top-heads table, the samples, the
long-answer charts, the causal page's masking curves and the front page's cross-model sentence, on hand-made
warehouses whose runs differ in age, completeness and what ranked a mask run's heads. Every expected value is
written out by hand from the rows written here; each test failed on the code before its fix (the reason is in
its docstring)."""

from __future__ import annotations

import json
import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from attnwh.queries.library import data_test_failures, get_mart, marts, open_session, run_mart
from attnwh.reports import causal, story
from attnwh.reports.build import _section, build_report, chart_spec, page_sections
from attnwh.warehouse import parts
from attnwh.warehouse.definitions import gen_rollup, rollups
from attnwh.warehouse.layout import open_warehouse
from attnwh.warehouse.runs import Plan, open_or_create_run
from attnwh.warehouse.schema import ATTRIBUTION_FITS, GEN_METRICS, GEN_TOKENS, HEAD_ATTRIBUTIONS, HEAD_METRICS, SAMPLES, SWEEP_CONDITIONS, SWEEP_RESULTS, with_metadata


def _sweep_tables(run_id: str, conditions: list[dict], correct: list[int]) -> dict[str, pa.Table]:
    """A sweep part's tables: the condition rows, and 10 samples per condition of which the first ``correct[i]`` are right."""
    results = [
        {"run_id": run_id, "condition_id": index, "sample_idx": s, "sample_key": f"s{s}", "status": "ok", "gold": "A", "parsed": "A" if s < n else "B", "correct": s < n}
        for index, n in enumerate(correct)
        for s in range(10)
    ]
    return {"sweep_conditions": pa.Table.from_pylist(conditions, schema=SWEEP_CONDITIONS), "sweep_results": pa.Table.from_pylist(results, schema=SWEEP_RESULTS)}


def _run(root, kind: str, model: str, benchmark: str, minute: int, tables, keys: list[str], shape: tuple[int, int] = (2, 2), complete: bool = True) -> str:
    """A run created at 00:``minute`` whose one committed part holds ``tables(run_id)``; an incomplete run plans a
    second part that is never committed."""
    warehouse = open_warehouse(root, create=True)
    n_layers, n_heads = shape
    plan = Plan([*keys, *([] if complete else ["never-committed"])], len(keys))
    details = {
        "created": f"2026-01-01T00:{minute:02d}:00+00:00",
        "model_info": {"architecture": "LlavaForConditionalGeneration", "n_layers": n_layers, "n_heads": n_heads, "n_kv_heads": n_heads},
    }
    spec = {"model": model, "benchmark": benchmark, "minute": minute}
    run, _ = open_or_create_run(warehouse, kind=kind, model=model, benchmark=benchmark, spec=spec, plan=plan, run_id=None, details=details)

    def write(folder):
        written = tables(run.run_id)
        for name, table in written.items():
            pq.write_table(table.replace_schema_metadata(with_metadata(name, table.schema).metadata), folder / f"{name}.parquet")
        return {name: table.num_rows for name, table in written.items()}

    parts.commit_part(run.paths, 0, write)
    return run.run_id


def _extraction(root, model: str, benchmark: str, minute: int, image_sums: list[float], shape=(2, 2), n_samples: int = 2, complete: bool = True) -> str:
    """An extraction run (query gen1) whose heads (layer-major) have these image sums in every sample, all attention on
    one image token (concentration 1, so concentration × sum = image sum)."""
    n_heads = shape[1]

    def tables(run_id):
        samples = pa.Table.from_pylist(
            [
                {"run_id": run_id, "sample_idx": i, "sample_key": f"s{i}", "status": "ok", "question": f"q{i}", "n_image": 4, "gold": "yes", "parsed": "yes", "correct": True}
                for i in range(n_samples)
            ],
            schema=SAMPLES,
        )
        metrics = pa.Table.from_pylist(
            [
                {"run_id": run_id, "sample_idx": i, "query": "gen1", "layer": index // n_heads, "head": index % n_heads, "n_image": 4, "image_sum": value, "image_entropy": 0.0}
                for i in range(n_samples)
                for index, value in enumerate(image_sums)
            ],
            schema=HEAD_METRICS,
        )
        scores, ranks = rollups(metrics)
        return {"samples": samples, "head_metrics": metrics, "head_scores": scores, "head_ranks": ranks}

    return _run(root, "extract", model, benchmark, minute, tables, [f"s{i}" for i in range(n_samples)], shape, complete)


def _mask(
    root,
    model: str,
    benchmark: str,
    minute: int,
    ranking: tuple[str, str],
    correct: dict[tuple[str, int], int],
    total_heads: int = 4,
    complete: bool = True,
    heads: dict[tuple[str, int], list[tuple[int, int]]] | None = None,
) -> str:
    """A mask run (zero mode, every stage) of 10 samples whose heads ``ranking`` (run, score) ranked: the unmasked
    baseline answers all 10 right, each (strategy, k) condition the first ``correct[strategy, k]`` of them; each
    condition masks ``heads[strategy, k]`` (none where not given)."""
    conditions = [("none", 0, 10), *((strategy, k, n) for (strategy, k), n in correct.items())]

    def tables(run_id):
        rows = [
            {
                "run_id": run_id,
                "condition_id": index,
                "kind": "mask",
                "ranking_run_id": ranking[0],
                "ranking_score": ranking[1],
                "heads": [{"layer": layer, "head": head} for layer, head in (heads or {}).get((strategy, k), [])],
                "settings": json.dumps({"strategy": strategy, "stage": "all", "k": k, "fraction": k / total_heads, "seed": 0 if strategy == "random" else None, "mode": "zero"}),
            }
            for index, (strategy, k, _) in enumerate(conditions)
        ]
        return _sweep_tables(run_id, rows, [n for _, _, n in conditions])

    return _run(root, "mask", model, benchmark, minute, tables, [f"c{index}" for index in range(len(conditions))], complete=complete)


def _wilson(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    centre = (successes / n + z * z / (2 * n)) / (1 + z * z / n)
    spread = z * math.sqrt(successes / n * (1 - successes / n) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - spread, centre + spread


def _report_data_tests(warehouse) -> list[str]:
    """Every report mart's sidecar data tests, and run_overview's, on the warehouse."""
    failures = []
    with open_session(warehouse) as session:
        for name in [name for name in marts() if name.startswith("report_")] + ["run_overview"]:
            mart = get_mart(name)
            parameters = {key: str(spec["default"]) for key, spec in mart.parameters.items() if "default" in spec}
            failures += data_test_failures(mart, run_mart(session, name, parameters))
    return failures


# ------------------------------------------------------------------ attention.html, samples.html, pruning.html


@pytest.fixture
def three_runs(tmp_path):
    """Three extraction runs of hand on handmade (an older complete one, a newer complete one, the newest but
    incomplete), each with a different best head, and one of hand on other; two prune runs of hand on handmade."""
    root = tmp_path / "wh"
    runs = {
        "old": _extraction(root, "hand", "handmade", 1, [0.1, 0.2, 0.3, 0.9]),
        "new": _extraction(root, "hand", "handmade", 2, [0.9, 0.3, 0.2, 0.1]),
        "incomplete": _extraction(root, "hand", "handmade", 3, [0.2, 0.9, 0.1, 0.3], n_samples=1, complete=False),
        "other": _extraction(root, "hand", "other", 1, [0.5, 0.6, 0.7, 0.8]),
    }
    return root, runs


def test_top_heads_table_shows_the_run_of_the_heatmaps(three_runs):
    """Before the fix the table ranked the heads of all three handmade runs (each rank three times, the incomplete
    run's among them) and named no run; now it holds the newest complete run's, the run report_heads draws."""
    root, runs = three_runs
    (top,) = [section for section in page_sections("gen1", 2, 50)["attention.html"][1] if section.mart == "visual_heads"]
    with open_session(root) as session:
        table = _section(session, top).table
        heatmap_runs = {(row["benchmark"], row["run_id"]) for row in run_mart(session, "report_heads", {"query": "gen1"}).to_pylist()}
    # the newest complete run's heads by image sum: (0,0) 0.9, (0,1) 0.3; other's: (1,1) 0.8, (1,0) 0.7; every head of
    # these four-head runs is among its sample's top 10, so each is detected in both samples
    expected = [("handmade", runs["new"], 1, 0, 0, 0.9), ("handmade", runs["new"], 2, 0, 1, 0.3), ("other", runs["other"], 1, 1, 1, 0.8), ("other", runs["other"], 2, 1, 0, 0.7)]
    assert [(row["benchmark"], row["run_id"], row["rank"], row["layer"], row["head"], pytest.approx(row["mean_score"])) for row in table] == expected
    assert [(row["detection_score"], row["n_samples"]) for row in table] == [(1.0, 2)] * 4
    assert list(table[0]) == ["model", "benchmark", "run_id", "rank", "layer", "head", "mean_score", "detection_score", "n_samples"]
    assert heatmap_runs == {("handmade", runs["new"]), ("other", runs["other"])}


def test_samples_page_lists_each_shown_run_once(three_runs):
    """Before the fix report_samples listed the samples of every run, interleaved (s0 of three runs, then s1 ...),
    with no run named, and max_samples cut the whole list rather than each run's."""
    root, runs = three_runs
    with open_session(root) as session:
        first = run_mart(session, "report_samples", {"max_samples": "1"}).to_pylist()
        every = run_mart(session, "report_samples", {}).to_pylist()
        assert data_test_failures(get_mart("report_samples"), run_mart(session, "report_samples", {})) == []
    assert [(row["benchmark"], row["run_id"], row["sample_key"]) for row in first] == [("handmade", runs["new"], "s0"), ("other", runs["other"], "s0")]
    assert [(row["benchmark"], row["run_id"], row["sample_key"], row["question"]) for row in every] == [
        ("handmade", runs["new"], "s0", "q0"),
        ("handmade", runs["new"], "s1", "q1"),
        ("other", runs["other"], "s0", "q0"),
        ("other", runs["other"], "s1", "q1"),
    ]


def test_prune_conditions_name_their_run(tmp_path):
    """Every prune run's conditions are listed: before the fix two runs of one model and benchmark gave rows that
    could not be told apart (no run_id)."""
    root = tmp_path / "wh"

    def prune(minute: int, correct_uniform: int) -> str:
        conditions = [("full", 1.0, 10), ("uniform", 0.25, correct_uniform)]

        def tables(run_id):
            rows = [
                {
                    "run_id": run_id,
                    "condition_id": index,
                    "kind": "prune",
                    "heads": [],
                    "settings": json.dumps({"allocation": allocation, "kv_share": share, "keep": "attention", "phase": "cache", "floor": None, "seed": None, "kept_shares": []}),
                }
                for index, (allocation, share, _) in enumerate(conditions)
            ]
            return _sweep_tables(run_id, rows, [n for _, _, n in conditions])

        return _run(root, "prune", "hand", "handmade", minute, tables, ["c0", "c1"])

    first, second = prune(1, 9), prune(2, 6)
    with open_session(root) as session:
        table = run_mart(session, "report_prune_conditions", {})
    assert data_test_failures(get_mart("report_prune_conditions"), table) == []
    rows = sorted((row["run_id"], row["allocation"], row["accuracy"]) for row in table.to_pylist())
    assert rows == sorted([(first, "full", 1.0), (first, "uniform", 0.9), (second, "full", 1.0), (second, "uniform", 0.6)])


# ------------------------------------------------------------------ long-answers.html

GEN_WORDS = [("dog", "grounded"), ("cat", "hallucinated"), ("bowl", "grounded"), ("sofa", "hallucinated")]


def _gen_run(root, minute: int, base: float, slope: float, complete: bool = True) -> str:
    """An extraction run with every generated step (--queries gen) of three samples: four object words each, grounded and
    hallucinated in turn; every head's image sum at step s of sample i is base + slope × s + 0.01 × head + 0.003 × i."""

    def tables(run_id):
        samples = pa.Table.from_pylist([{"run_id": run_id, "sample_idx": i, "sample_key": f"s{i}", "status": "ok", "n_image": 4} for i in range(3)], schema=SAMPLES)
        metrics = pa.Table.from_pylist(
            [
                {"run_id": run_id, "sample_idx": i, "step": step, "layer": layer, "head": head, "n_image": 4, "image_sum": base + slope * step + 0.01 * head + 0.003 * i}
                for i in range(3)
                for step in range(len(GEN_WORDS))
                for layer in range(2)
                for head in range(2)
            ],
            schema=GEN_METRICS,
        )
        tokens = pa.Table.from_pylist(
            [
                {
                    "run_id": run_id,
                    "sample_idx": i,
                    "step": step,
                    "token_id": 10 + step,
                    "eos": False,
                    "word_index": step,
                    "word": word,
                    "word_start": True,
                    "object": word,
                    "object_status": status,
                }
                for i in range(3)
                for step, (word, status) in enumerate(GEN_WORDS)
            ],
            schema=GEN_TOKENS,
        )
        scores, heads = gen_rollup(metrics, tokens)
        return {"samples": samples, "gen_metrics": metrics, "gen_tokens": tokens, "gen_scores": scores, "gen_head_scores": heads}

    return _run(root, "extract", "hand", "handmade", minute, tables, ["s0", "s1", "s2"], complete=complete)


def test_long_answer_charts_draw_one_run_per_panel(tmp_path):
    """Three runs of one model and benchmark: before the fix both charts drew every run's rows into the one panel
    (three values per layer and step bucket, joined into one line; three bars per head) and named no run."""
    root = tmp_path / "wh"
    _gen_run(root, 1, 0.1, 0.05)
    shown = _gen_run(root, 2, 0.5, 0.1)
    _gen_run(root, 3, 0.9, 0.2, complete=False)
    with open_session(root) as session:
        by_step = chart_spec(session, "gen_attention_by_step")["datasets"]["rows"]
        heads = chart_spec(session, "hallucination_heads")["datasets"]["rows"]
    # the shown run: mean over heads 0 and 1 (+0.005) and samples (+0.003) of 0.5 + 0.1 × step; bucket 2 holds steps 2 and 3
    expected = {(layer, bucket): value for layer in range(2) for bucket, value in ((0, 0.508), (1, 0.608), (2, 0.758))}
    assert {row["run_id"] for row in by_step} == {shown} and len(by_step) == len(expected)
    assert {(row["layer"], row["step_bucket"]): row["mean_value"] for row in by_step} == pytest.approx(expected, abs=1e-6)
    # grounded words at steps 0 and 2, hallucinated at 1 and 3: compared in bucket 2-3 (steps 0 and 1 hold one kind
    # each), where every head's difference is -slope (-0.1 in the shown run)
    assert {row["run_id"] for row in heads} == {shown}
    assert sorted((row["layer"], row["head"]) for row in heads) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert [row["difference"] for row in heads] == pytest.approx([-0.1] * 4, abs=1e-6)
    assert all((row["n_grounded"], row["n_hallucinated"], row["n_hallucinated_left_out"]) == (3, 3, 3) for row in heads)


# ------------------------------------------------------------------ causal.html, run_overview


def _attribution(root, minute: int, method: str) -> str:
    """An attribution run of hand on handmade: head (l, h)'s causal importance 0.1 × (2l + h + 1)."""

    def tables(run_id):
        heads = [
            {"run_id": run_id, "layer": layer, "head": head, "score": 0.1 * (2 * layer + head + 1), "std_error": 0.01, "ci_low": 0.0, "ci_high": 1.0}
            for layer in range(2)
            for head in range(2)
        ]
        fit = [{"run_id": run_id, "method": method, "ablation": "zero", "target": "logprob", "n_conditions": 4, "n_samples": 2}]
        return {"head_attributions": pa.Table.from_pylist(heads, schema=HEAD_ATTRIBUTIONS), "attribution_fits": pa.Table.from_pylist(fit, schema=ATTRIBUTION_FITS)}

    return _run(root, "attribution", "hand", "handmade", minute, tables, ["fit"])


@pytest.fixture(scope="module")
def ranked_masks(tmp_path_factory):
    """Mask runs of hand on handmade (4 heads; k = 2 is half of them) ranked by attention (an older, the newest complete,
    and a newer incomplete one), by two attribution runs (the first twice: an older repeat), and by an imported
    ranking. Accuracies at k = 2 (top / random, of 10): each run's own, so that a line shows whose it is."""
    root = tmp_path_factory.mktemp("causal") / "wh"
    first, second = _attribution(root, 0, "single"), _attribution(root, 1, "patterns")
    runs = {
        "attention_old": _mask(root, "hand", "handmade", 2, ("extraction", "concentration_x_sum"), {("top", 2): 6, ("random", 2): 9}),
        "attribution_old": _mask(root, "hand", "handmade", 3, (first, "attribution"), {("top", 2): 5, ("random", 2): 9}),
        "attribution": _mask(root, "hand", "handmade", 4, (first, "attribution"), {("top", 2): 2, ("random", 2): 8}),
        "attribution_second": _mask(root, "hand", "handmade", 5, (second, "attribution"), {("top", 2): 3, ("random", 2): 7}),
        "imported": _mask(root, "hand", "handmade", 6, ("tsv", "imported"), {("top", 2): 1, ("random", 2): 9}),
        "attention": _mask(root, "hand", "handmade", 7, ("extraction", "image_sum"), {("top", 2): 4, ("random", 2): 6}),
        "attention_incomplete": _mask(root, "hand", "handmade", 8, ("extraction", "concentration_x_sum"), {("top", 2): 0}, complete=False),
    }
    return root, runs


def test_causal_masking_labels_rankings_and_keeps_one_run_per_line(ranked_masks):
    """Before the fix the imported ranking's run and every attention-ranked run (older, incomplete) were all
    'top by attention', drawn as one line, and the page's sentence took whichever row came last per k."""
    root, runs = ranked_masks
    with open_session(root) as session:
        rows = run_mart(session, "report_causal_masking", {}).to_pylist()
        (masking,) = [section for section in causal.sections(session) if section.title.startswith("Masking the top heads")]
    lines = {}
    for row in rows:
        lines.setdefault((row["run_id"], row["ranking"]), {})[row["k"]] = row["accuracy"]
    assert lines == {
        (runs["attribution"], "top by attribution"): {0: 1.0, 2: 0.2},
        (runs["attribution"], "random (outside attribution's top k)"): {0: 1.0, 2: 0.8},
        (runs["attribution_second"], "top by attribution"): {0: 1.0, 2: 0.3},
        (runs["attribution_second"], "random (outside attribution's top k)"): {0: 1.0, 2: 0.7},
        (runs["imported"], "top by imported ranking"): {0: 1.0, 2: 0.1},
        (runs["imported"], "random (outside the imported ranking's top k)"): {0: 1.0, 2: 0.9},
        (runs["attention"], "top by attention"): {0: 1.0, 2: 0.4},
        (runs["attention"], "random (outside attention's top k)"): {0: 1.0, 2: 0.6},
    }
    assert {row["run_id"]: row["ranking_score"] for row in rows} == {
        runs["attribution"]: "attribution",
        runs["attribution_second"]: "attribution",
        runs["imported"]: "imported",
        runs["attention"]: "image_sum",
    }
    # the chart: one series per run and ranking, never two runs in one line
    data = masking.spec["datasets"]["rows"]
    series = {}
    for row in data:
        series.setdefault(row["series"], set()).add(row["run_id"])
    assert len(series) == 8 and all(len(found) == 1 for found in series.values())

    def clause(right: int) -> str:  # of 10 samples
        low, high = _wilson(right, 10)
        return f"{right / 10:.3f} [{low:.3f}, {high:.3f}]"

    attention = f"by attention {clause(4)} (mask run {runs['attention']})"
    sentences = [
        f"masking the top 2 heads (50%, stage all, zero) of hand on handmade by attribution leaves accuracy {clause(n)} (mask run {runs[name]}), {attention}"
        for name, n in sorted((("attribution", 2), ("attribution_second", 3)), key=lambda item: runs[item[0]])
    ]
    text = "; ".join(sentences)
    assert masking.description.startswith(text[0].upper() + text[1:] + ".")


def test_run_overview_and_report_marts_pass_their_data_tests_with_attribution_runs(ranked_masks):
    """run_overview's accepted kinds left out attribution: its data test failed on any warehouse with an
    attribution run (this one has two)."""
    root, runs = ranked_masks
    with open_session(root) as session:
        kinds = sorted(row["kind"] for row in run_mart(session, "run_overview", {}).to_pylist())
    assert kinds == ["attribution"] * 2 + ["mask"] * len(runs)
    assert _report_data_tests(root) == []


def test_causal_page_renders(ranked_masks, tmp_path):
    root, runs = ranked_masks
    build_report(root, tmp_path / "report")
    page = (tmp_path / "report" / "causal.html").read_text(encoding="utf-8")
    assert "top by imported ranking" in page and runs["attribution_second"] in page


# ------------------------------------------------------------------ index.html: the cross-model sentence


def test_front_page_compares_models_at_a_shared_share_of_heads(tmp_path):
    """small (2 layers × 8 heads) and medium (2 × 16) on toy. Before the fix small's newer incomplete extraction run
    made it both the deepest (0.80) and the shallowest (0.20) model, and masking was compared at each run's largest
    k: small's 8 of 16 heads (-80 points) against medium's attribution-ranked run at 16 of 32 (-100), without
    saying k. Now: the complete run of each, and both attention-ranked runs at the share both masked, 25%."""
    root = tmp_path / "wh"
    rest = [0.1] * 6
    shown_small = _extraction(root, "small", "toy", 1, [0.5, 0.4, *rest] + [0.9] * 8, shape=(2, 8))  # top 10: 8 of layer 1, 2 of layer 0: depth 0.8
    _extraction(root, "small", "toy", 3, [0.9] * 8 + [0.5, 0.4, *rest], shape=(2, 8), n_samples=1, complete=False)  # depth 0.2
    shown_medium = _extraction(root, "medium", "toy", 2, [0.9] * 5 + [0.1] * 11 + [0.8] * 5 + [0.1] * 11, shape=(2, 16))  # 5 and 5: depth 0.5
    _mask(root, "small", "toy", 4, ("e", "concentration_x_sum"), {("top", 4): 7, ("top", 8): 2}, total_heads=16)  # 25%: -30; 50%: -80
    _mask(root, "medium", "toy", 5, ("e", "concentration_x_sum"), {("top", 2): 10, ("top", 8): 9}, total_heads=32)  # 6.25%: 0; 25%: -10
    _mask(root, "medium", "toy", 6, ("a", "attribution"), {("top", 16): 0}, total_heads=32)  # ranked by attribution: not compared
    with open_session(root) as session:
        heads = run_mart(session, "report_story_heads", {"k": "10"}).to_pylist()
        sentences = [sentence.text for sentence in story.section(session, {}).sentences]
    assert sorted((row["model"], row["run_id"], pytest.approx(row["top_depth"])) for row in heads) == [("medium", shown_medium, 0.5), ("small", shown_small, 0.8)]
    assert sentences[-1] == (
        "Across models on toy, the visual heads sit deepest in small (mean depth 0.80) and shallowest in medium (0.50); "
        "masking the top 25% of heads (8 in medium, 4 in small; zero mode) costs small the most (-30 points) and medium the least (-10 points)."
    )


def test_models_masked_at_no_common_share_are_not_compared():
    """What each model's masking costs at a share of heads only it was masked at is not set against the others'."""
    assert story.cost_comparison({"small": {0.25: (8, -0.12)}, "medium": {0.03125: (2, 0.0)}}) == (
        "; what masking the top heads costs each is not compared: their mask runs masked them at no common share of all heads (medium: 3%; small: 25%)"
    )
    assert story.cost_comparison({"small": {0.25: (8, -0.12), 0.5: (16, -0.5)}, "medium": {0.25: (16, -0.02)}}) == (
        "; masking the top 25% of heads (16 in medium, 8 in small; zero mode) costs small the most (-12 points) and medium the least (-2 points)"
    )


def test_models_masked_at_the_nearest_whole_heads_to_one_share_are_compared():
    """The toy zoo's --k 0.1,0.2 masks 13 and 26 of the large toy's 128 heads, 7 and 14 of the medium's 72, 3 and 6 of the
    small's 32: no two fractions equal, each the nearest whole heads to 10% and 20% (round(0.2 × 72) = 14). Compared
    at 20%, the largest; 2 of 64 heads (3.1%) and 3 of 32 (9.4%) are the nearest whole heads to no common share."""
    zoo = {"large": {13 / 128: (13, 0.0), 26 / 128: (26, -0.09)}, "medium": {7 / 72: (7, -0.2), 14 / 72: (14, -0.21)}, "small": {3 / 32: (3, 0.0), 6 / 32: (6, -0.23)}}
    assert [(round(share, 6), fractions) for share, fractions in story.shared_shares(zoo)] == [
        (0.2, {"large": 26 / 128, "medium": 14 / 72, "small": 6 / 32}),
        (0.1, {"large": 13 / 128, "medium": 7 / 72, "small": 3 / 32}),
    ]
    assert story.cost_comparison(zoo) == (
        "; masking the top 20% of heads (26 in large, 14 in medium, 6 in small, the nearest whole heads; zero mode) "
        "costs small the most (-23 points) and large the least (-9 points)"
    )
    assert story.shared_shares({"a": {2 / 64: (2, 0.0)}, "b": {3 / 32: (3, 0.0)}}) == []
    # neighbouring counts of one size are never one share (no --k rounds to both), however the fractions were rounded
    assert story.shared_shares({"a": {round(11 / 1024, 6): (11, 0.0)}, "b": {round(10 / 1024, 6): (10, 0.0)}}) == []
    assert story.shared_shares({"a": {round(26 / 128, 6): (26, 0.0)}, "b": {round(25 / 128, 6): (25, 0.0)}}) == []
    # a half-head tie goes to the even count, as --k rounds it: 25% of 10 heads masks 2, so 3 of 10 and 25 of 100 are
    # not named 25% (which would mask 2 of 10) but the next share that masks both: 25.4%
    assert [round(share, 6) for share, _ in story.shared_shares({"a": {0.3: (3, 0.0)}, "b": {0.25: (25, 0.0)}})] == [0.254]
    # 2 of 10 and 25 of 100: 24.5% would mask 24 of 100 (the even count), so 24.6%
    assert [round(share, 6) for share, _ in story.shared_shares({"a": {0.2: (2, 0.0)}, "b": {0.25: (25, 0.0)}})] == [0.246]
    # twelve models masked at every count of 128 heads: one pass, every share once (a search over combinations took minutes)
    dense = {f"m{index}": {round(k / 128, 6): (k, 0.0) for k in range(1, 129)} for index in range(12)}
    assert [len(fractions) for _, fractions in story.shared_shares(dense)] == [12] * 128
    # whole heads nearest a share, worked by hand: 102 of LLaVA-1.5-7B's 1,024 heads and 160 of 13B's 1,600 are 10%
    assert [round(share, 6) for share, _ in story.shared_shares({"7b": {102 / 1024: (102, 0.0)}, "13b": {0.1: (160, 0.0)}})] == [0.1]


def test_front_page_masking_sentence_compares_top_with_other_heads(tmp_path):
    """At k = every head of a stage the top and the bottom heads are the same heads: the sentence compared the two as if
    they differed ("its top 4 heads ... 30%; the bottom 4, 30%"), and at the largest k, where the random control is left
    out, said nothing of it. Now it is told at the largest k whose bottom heads are other heads, one with a random
    control first; a run whose only k is the whole stage is told as every head, without a bottom; an incomplete run
    says so."""
    every = [(0, 0), (0, 1), (1, 0), (1, 1)]  # the 2 x 2 model's heads: stage "all" holds 4
    heads = {
        ("top", 1): [(1, 0)],
        ("bottom", 1): [(0, 0)],
        ("random", 1): [(0, 1)],
        ("top", 2): [(1, 0), (1, 1)],
        ("bottom", 2): [(0, 0), (0, 1)],
        ("top", 4): every,
        ("bottom", 4): every[::-1],  # the same heads in another order
    }
    correct = {("top", 1): 6, ("bottom", 1): 9, ("random", 1): 8, ("top", 2): 5, ("bottom", 2): 7, ("top", 4): 3, ("bottom", 4): 3}
    root = tmp_path / "wh"
    chosen = _mask(root, "hand", "handmade", 1, ("r", "image_sum"), correct, heads=heads)
    whole = _mask(root, "hand", "other", 1, ("r", "image_sum"), {key: correct[key] for key in (("top", 4), ("bottom", 4))}, heads=heads, complete=False)
    with open_session(root) as session:
        rows = {row["run_id"]: row for row in run_mart(session, "report_story_masking").to_pylist()}
    # k = 1 (a random control there) rather than k = 2 (none) or k = 4 (the bottom heads are the top heads)
    row = rows[chosen]
    assert (row["k"], row["whole_stage"], row["top_accuracy"], row["random_accuracy"], row["bottom_accuracy"], row["complete"]) == (1, False, 0.6, 0.8, 0.9, True)
    sentence = story.masking_sentence(row)
    assert "masking its top 1 heads (25% of all, all layers, zero mode) moves accuracy from 100% [" in sentence, sentence
    assert "; 1 random heads give 80% (mean of 1 seed(s), 80% to 80%); the bottom 1, 90% [" in sentence, sentence
    # the whole stage alone: every head, no bottom; the run's second part never committed
    row = rows[whole]
    assert (row["k"], row["whole_stage"], row["top_accuracy"], row["bottom_accuracy"], row["complete"]) == (4, True, 0.3, None, False)
    sentence = story.masking_sentence(row)
    low, high = _wilson(3, 10)
    assert f"(mask run {whole}, heads ranked by attention (image_sum), incomplete: 1 of 2 parts committed): masking all 4 heads (100% of all, all layers, zero mode)" in sentence, (
        sentence
    )
    assert f"to 30% [{100 * low:.0f}%, {100 * high:.0f}%]; their interval lies below the baseline's." in sentence, sentence
    assert "bottom" not in sentence and "top" not in sentence
    assert _report_data_tests(root) == []
