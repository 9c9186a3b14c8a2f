"""Long answers (``--queries gen``) in SQL: the marts of every generated token on a hand-made warehouse, each
expected value computed here in plain Python from the same hand-written rows."""

from __future__ import annotations

import math
import statistics

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy.stats import t as student_t

from attnwh.queries.library import open_session, run_mart
from attnwh.warehouse import parts
from attnwh.warehouse.definitions import gen_rollup
from attnwh.warehouse.layout import open_warehouse
from attnwh.warehouse.runs import Plan, open_or_create_run
from attnwh.warehouse.schema import GEN_HEAD_SCORES, GEN_LENS, GEN_METRICS, GEN_SCORES, GEN_TOKENS, SAMPLES, with_metadata

N_LAYERS, N_HEADS = 2, 2
# per sample, the generated words (None: the EOS step) and what each names: (word, object_status)
ANSWERS = {
    0: [("the", None), ("dog", "grounded"), ("cat", "hallucinated"), ("sofa", "hallucinated"), ("bowl", "grounded"), None],
    1: [("cat", "grounded"), ("bird", "hallucinated"), ("dog", "grounded"), ("and", None), ("tree", "hallucinated"), ("hat", "safe"), None],
}
# per sample, the answer's object counts (AMBER's): mentions, hallucinated, truth, truth named, hallu, hallu named
OBJECTS = {0: (4, 2, 3, 2, 4, 1), 1: (5, 0, 4, 3, 2, 0)}
# the lens of each word's first token, ranks at layers 0, 1, 2 (sample, step) -> ranks
LENS = {
    (0, 0): [3, 1, 1],
    (0, 1): [9, 4, 1],
    (0, 2): [2, 2, 1],
    (0, 3): [1, 5, 1],
    (0, 4): [1, 1, 1],
    (1, 0): [6, 1, 1],
    (1, 1): [8, 7, 1],
    (1, 2): [1, 1, 1],
    (1, 3): [4, 1, 1],
    (1, 4): [2, 3, 1],
    (1, 5): [1, 1, 1],
}


def image_sum(sample: int, step: int, layer: int, head: int) -> float:
    """A value for every (sample, step, layer, head), different enough that every mean and variance is checked."""
    return round(0.05 + 0.11 * step + 0.07 * layer + 0.13 * head + 0.031 * sample + 0.017 * ((step * 7 + head * 3 + sample) % 5) + 0.023 * layer * (step % 3), 6)


# more answers, for hallucination_heads, which compares the kinds within a step bucket (0, 1, 2-3, 4-7) where each has
# two samples: buckets 1, 2 and 4 are compared; in bucket 0 one sample has a hallucinated word (left out); sample 0
# repeats "cat" and sample 3 "cup" within a bucket (one sample's evidence each)
HALLUCINATING = {
    0: [("a", None), ("dog", "grounded"), ("cat", "hallucinated"), ("cat", "hallucinated"), None],
    1: [("dog", "grounded"), ("bowl", "grounded"), ("sofa", "hallucinated"), ("tree", "hallucinated"), ("hat", "grounded"), None],
    2: [("cat", "grounded"), ("bird", "hallucinated"), ("dog", "grounded"), ("and", None), ("tree", "hallucinated"), None],
    3: [("the", None), ("bird", "hallucinated"), ("cup", "grounded"), ("cup", "grounded"), ("sofa", "hallucinated"), ("hat", "safe"), None],
    4: [("dog", "grounded"), ("dog", "grounded"), ("cat", "grounded"), ("bird", "hallucinated"), ("lamp", "grounded"), ("box", "hallucinated"), None],
    5: [("cat", "hallucinated"), ("the", None), None],
}


def _write(root, stale, answers=ANSWERS, objects=OBJECTS, value=None, part_size=None):
    """A run of ``answers`` in parts of ``part_size`` samples (all in one by default); ``stale``: True (every part) or
    the ids of the parts whose rollups are of other definitions."""
    value = value or image_sum
    keys = list(answers)
    part_size = part_size or len(keys)
    warehouse = open_warehouse(root, create=True)
    details = {"model_info": {"architecture": "LlavaForConditionalGeneration", "n_layers": N_LAYERS, "n_heads": N_HEADS, "n_kv_heads": N_HEADS}}
    run, _ = open_or_create_run(
        warehouse, kind="extract", model="hand", benchmark="handmade", spec={"dtype": "float32"}, plan=Plan([f"s{s}" for s in keys], part_size), run_id=None, details=details
    )
    names = ("object_mentions", "hallucinated", "truth_objects", "truth_mentioned", "hallu_objects", "hallu_mentioned")

    def writer(chosen, stale):
        return lambda folder: write(folder, chosen, stale)

    def write(folder, chosen, stale):
        samples = pa.Table.from_pylist(
            [{"run_id": run.run_id, "sample_idx": s, "sample_key": f"s{s}", "status": "ok", "n_image": 4, **dict(zip(names, objects.get(s, ())))} for s in chosen], schema=SAMPLES
        )
        metrics, tokens, lens = [], [], []
        for s, words in ((s, answers[s]) for s in chosen):
            for step, word in enumerate(words):
                tokens.append(
                    {
                        "run_id": run.run_id,
                        "sample_idx": s,
                        "step": step,
                        "token_id": 2 if word is None else 10 + step,
                        "eos": word is None,
                        "word_index": None if word is None else step,
                        "word": None if word is None else word[0],
                        "word_start": None if word is None else True,
                        "object": None if word is None or word[1] is None else word[0],
                        "object_status": None if word is None else word[1],
                    }
                )
                for layer in range(N_LAYERS):
                    for head in range(N_HEADS):
                        metrics.append({"run_id": run.run_id, "sample_idx": s, "step": step, "layer": layer, "head": head, "n_image": 4, "image_sum": value(s, step, layer, head)})
                for layer, rank in enumerate(LENS.get((s, step), [])):
                    lens.append({"run_id": run.run_id, "sample_idx": s, "step": step, "layer": layer, "token_rank": rank, "token_prob": 1 / rank})
        tables = {"samples": samples, "gen_metrics": pa.Table.from_pylist(metrics, schema=GEN_METRICS), "gen_tokens": pa.Table.from_pylist(tokens, schema=GEN_TOKENS)}
        tables["gen_lens"] = pa.Table.from_pylist(lens, schema=GEN_LENS)
        scores, heads = gen_rollup(tables["gen_metrics"], tables["gen_tokens"])
        if stale:  # rollups of other definitions, with values no mart may show: recomputed from the rows
            scores = pa.Table.from_pylist([{**row, "total": 1e6, "definitions": "older"} for row in scores.to_pylist()], schema=GEN_SCORES)
            heads = pa.Table.from_pylist([{**row, "total": 1e6, "definitions": "older"} for row in heads.to_pylist()], schema=GEN_HEAD_SCORES)
        tables["gen_scores"], tables["gen_head_scores"] = scores, heads
        for name, table in tables.items():
            pq.write_table(table.replace_schema_metadata(with_metadata(name, table.schema).metadata), folder / f"{name}.parquet")
        return {name: table.num_rows for name, table in tables.items()}

    for part_id, start in enumerate(range(0, len(keys), part_size)):
        parts.commit_part(run.paths, part_id, writer(keys[start : start + part_size], stale is True or (stale is not False and part_id in stale)))
    return root


@pytest.fixture(params=["current", "stale"])
def long_answers(request, tmp_path):
    return _write(tmp_path / "wh", stale=request.param == "stale")


@pytest.fixture(params=["current", "stale"])
def hallucinating_answers(request, tmp_path):
    return _write(tmp_path / "wh", stale=request.param == "stale", answers=HALLUCINATING, objects={})


def _rows(warehouse, name, order, given=None):
    with open_session(warehouse) as session:
        rows = run_mart(session, name, given or {}).to_pylist()
    return sorted(rows, key=lambda row: tuple(row[key] for key in order))


def _bucket(step: int) -> int:
    return step if step < 2 else 2 ** int(math.log2(step))


def test_attention_by_step_by_hand(long_answers):
    rows = _rows(long_answers, "gen_attention_by_step", ("step_bucket", "layer"))
    expected = {}
    for s, words in ANSWERS.items():
        for step in range(len(words)):
            for layer in range(N_LAYERS):
                for head in range(N_HEADS):
                    expected.setdefault((_bucket(step), layer), []).append(image_sum(s, step, layer, head))
    assert [(row["step_bucket"], row["layer"]) for row in rows] == sorted(expected)
    assert sorted({row["step_bucket"] for row in rows}) == [0, 1, 2, 4]
    for row in rows:
        values = expected[(row["step_bucket"], row["layer"])]
        assert row["n_values"] == len(values) and row["n_tokens"] == len(values) // N_HEADS
        assert row["mean_value"] == pytest.approx(statistics.fmean(values), abs=1e-6)
        assert row["sd_value"] == pytest.approx(statistics.stdev(values), abs=1e-6)
        assert row["stage"] == ("early" if row["layer"] == 0 else "late")


def test_attention_by_step_counts_tokens_where_the_score_has_no_value(tmp_path):
    """Concentration is null where a head gives the image no attention (a sliding window short of it): the bucket's
    tokens are still counted (n_tokens), its values are not (n_values). One sample of 2 steps, 1 layer × 2 heads; at
    step 1 head 0 sees no image key."""
    warehouse = open_warehouse(tmp_path / "wh", create=True)
    details = {"model_info": {"architecture": "LlavaForConditionalGeneration", "n_layers": 1, "n_heads": 2, "n_kv_heads": 2}}
    run, _ = open_or_create_run(warehouse, kind="extract", model="hand", benchmark="handmade", spec={}, plan=Plan(["s0"], 1), run_id=None, details=details)
    rows = [(0, 0, 0.5, 1.0), (0, 1, 0.4, 0.5), (1, 0, 0.0, None), (1, 1, 0.6, 0.25)]  # step, head, image_sum, image_entropy

    def write(folder):
        tables = {
            "samples": pa.Table.from_pylist([{"run_id": run.run_id, "sample_idx": 0, "sample_key": "s0", "status": "ok", "n_image": 4}], schema=SAMPLES),
            "gen_metrics": pa.Table.from_pylist(
                [
                    {"run_id": run.run_id, "sample_idx": 0, "step": step, "layer": 0, "head": head, "n_image": 4, "image_sum": total, "image_entropy": entropy}
                    for step, head, total, entropy in rows
                ],
                schema=GEN_METRICS,
            ),
            "gen_tokens": pa.Table.from_pylist([{"run_id": run.run_id, "sample_idx": 0, "step": step, "token_id": 10 + step, "eos": False} for step in (0, 1)], schema=GEN_TOKENS),
        }
        tables["gen_scores"], tables["gen_head_scores"] = gen_rollup(tables["gen_metrics"], tables["gen_tokens"])
        for name, table in tables.items():
            pq.write_table(table.replace_schema_metadata(with_metadata(name, table.schema).metadata), folder / f"{name}.parquet")
        return {name: table.num_rows for name, table in tables.items()}

    parts.commit_part(run.paths, 0, write)
    by_bucket = {row["step_bucket"]: row for row in _rows(tmp_path / "wh", "gen_attention_by_step", ("step_bucket",), {"score": "concentration"})}
    assert {bucket: (row["n_values"], row["n_tokens"]) for bucket, row in by_bucket.items()} == {0: (2, 1), 1: (1, 1)}  # was n_tokens 0 at step 1


def _ancova(grounded: dict, hallucinated: dict) -> tuple:
    """One bucket by hand: each sample's (mean step, mean value) of a kind; a slope of value on step within the kinds;
    the grounded mean moved to the hallucinated mean step; residual variance; the difference's variance; its df."""
    g = [(statistics.fmean(x for x, _ in v), statistics.fmean(y for _, y in v)) for v in grounded.values()]
    h = [(statistics.fmean(x for x, _ in v), statistics.fmean(y for _, y in v)) for v in hallucinated.values()]
    means = [(statistics.fmean(x for x, _ in k), statistics.fmean(y for _, y in k)) for k in (g, h)]
    sxx = sum((x - mx) ** 2 for k, (mx, _) in zip((g, h), means) for x, _ in k)
    sxy = sum((x - mx) * (y - my) for k, (mx, my) in zip((g, h), means) for x, y in k)
    syy = sum((y - my) ** 2 for k, (_, my) in zip((g, h), means) for _, y in k)
    slope = sxy / sxx if sxx > 0 else 0.0
    df = len(g) + len(h) - (3 if sxx > 0 else 2)
    residual = max(syy - slope * sxy, 0) / df
    (gx, gy), (hx, hy) = means
    variance = residual * (1 / len(g) + 1 / len(h) + ((gx - hx) ** 2 / sxx if sxx > 0 else 0))
    return gy + slope * (hx - gx), hy, gx, hx, residual, variance, df


def test_hallucination_heads_by_hand(hallucinating_answers):
    """Per head: per step bucket, each sample's mean step and value of each kind, an analysis of covariance over the
    samples where both kinds have two (the grounded mean at the hallucinated words' mean step); the buckets' adjusted
    differences weighted by their hallucinated samples; the Satterthwaite degrees of freedom of that weighted sum
    (computed here in plain Python from the hand-written answers)."""
    rows = _rows(hallucinating_answers, "hallucination_heads", ("layer", "head"))
    assert [(row["layer"], row["head"]) for row in rows] == [(layer, head) for layer in range(N_LAYERS) for head in range(N_HEADS)]
    separations = {}
    for row in rows:
        layer, head = row["layer"], row["head"]
        by_sample = {}  # (bucket, kind) -> sample -> [(step, value)]
        for s, words in HALLUCINATING.items():
            for step, word in enumerate(words):
                if word is not None and word[1] in ("grounded", "hallucinated"):
                    by_sample.setdefault((_bucket(step), word[1]), {}).setdefault(s, []).append((step, image_sum(s, step, layer, head)))
        compared, words_compared, hallucinated_words = [], {"grounded": 0, "hallucinated": 0}, 0
        for bucket in sorted({bucket for bucket, _ in by_sample}):
            grounded, hallucinated = by_sample.get((bucket, "grounded"), {}), by_sample.get((bucket, "hallucinated"), {})
            hallucinated_words += sum(map(len, hallucinated.values()))
            if len(grounded) < 2 or len(hallucinated) < 2:
                continue
            words_compared["grounded"] += sum(map(len, grounded.values()))
            words_compared["hallucinated"] += sum(map(len, hallucinated.values()))
            compared.append((len(hallucinated), *_ancova(grounded, hallucinated)))
        assert len(compared) == 3  # buckets 1, 2-3 and 4-7; bucket 0 has one hallucinating sample
        total = sum(c[0] for c in compared)
        weights = [c[0] / total for c in compared]
        mean_g = sum(w * c[1] for w, c in zip(weights, compared))
        mean_h = sum(w * c[2] for w, c in zip(weights, compared))
        pieces = [(w * w * c[6], c[7]) for w, c in zip(weights, compared)]
        se = math.sqrt(sum(piece for piece, _ in pieces))
        df = se**4 / sum(piece**2 / n for piece, n in pieces)  # Satterthwaite, over the buckets
        quantile = student_t.ppf(0.975, math.floor(df))  # scipy's t, at the degrees of freedom rounded down
        difference = mean_g - mean_h
        assert (row["n_grounded"], row["n_hallucinated"], row["n_hallucinated_left_out"], row["n_buckets"]) == (
            words_compared["grounded"],
            words_compared["hallucinated"],
            hallucinated_words - words_compared["hallucinated"],
            3,
        )
        assert (row["n_grounded"], row["n_hallucinated"], row["n_hallucinated_left_out"]) == (9, 10, 1)  # 'safe' and plain words are neither
        assert (row["step_grounded"], row["step_hallucinated"]) == pytest.approx(
            (sum(w * c[3] for w, c in zip(weights, compared)), sum(w * c[4] for w, c in zip(weights, compared)))
        )
        assert (row["mean_grounded"], row["mean_hallucinated"]) == pytest.approx((mean_g, mean_h), abs=1e-6)
        assert row["difference"] == pytest.approx(difference, abs=1e-6)
        assert row["welch_df"] == pytest.approx(df, rel=1e-6)
        assert (row["ci_low"], row["ci_high"]) == pytest.approx((difference - quantile * se, difference + quantile * se), abs=1e-6)
        assert row["welch_t"] == pytest.approx(difference / se, abs=1e-6)  # of float32 values
        residual = sum(w * c[5] for w, c in zip(weights, compared))
        assert row["effect_size"] == pytest.approx(difference / math.sqrt(residual), rel=1e-5)  # of float32 values
        separations[(layer, head)] = abs(difference / se)
    ranks = {(row["layer"], row["head"]): row["separation_rank"] for row in rows}
    assert sorted(ranks.values()) == [1, 2, 3, 4]
    for a in separations:  # best first by |t| (heads whose |t| differ only by the float32 values' rounding: either order)
        for b in separations:
            if separations[a] > separations[b] + 1e-5:
                assert ranks[a] < ranks[b], (a, b, separations)


def test_hallucination_heads_compares_words_at_the_same_steps(tmp_path):
    """Image attention that falls with the step alone (the same for both kinds at every step) and hallucinated words later
    in the answers than grounded ones: pooled over the steps grounded words would 'attend more'; within the steps they do
    not, and the mart says so. Steps 0-1: grounded words only; steps 2-3: one of each kind, in either order; steps 4-5:
    hallucinated words only (left out: no grounded word to compare them with)."""
    g, h = ("dog", "grounded"), ("cat", "hallucinated")
    answers = {s: [g, g, *((g, h) if s < 2 else (h, g)), h, h, None] for s in range(4)}

    def falling(s, step, layer, head):
        return 0.5 - 0.05 * step + 0.01 * layer + 0.02 * head + 0.003 * s

    root = _write(tmp_path / "wh", stale=False, answers=answers, objects={}, value=falling)
    kinds = {kind: [falling(s, step, 0, 0) for s, words in answers.items() for step, word in enumerate(words) if word and word[1] == kind] for kind in ("grounded", "hallucinated")}
    assert statistics.fmean(kinds["grounded"]) - statistics.fmean(kinds["hallucinated"]) == pytest.approx(0.4 / 3)  # pooled over the steps
    rows = _rows(root, "hallucination_heads", ("layer", "head"))
    assert len(rows) == N_LAYERS * N_HEADS
    for row in rows:
        assert (row["n_buckets"], row["n_grounded"], row["n_hallucinated"], row["n_hallucinated_left_out"]) == (1, 4, 4, 8)
        assert row["difference"] == pytest.approx(0, abs=1e-6)
        assert row["ci_low"] < 0 < row["ci_high"]


@pytest.mark.parametrize("stale", [(), (1,)], ids=["current", "one part stale"])
def test_a_run_of_many_parts_gives_the_rows_of_one_part(tmp_path, monkeypatch, stale):
    """The long-answer rollups of a run of many parts, added up once and kept on this machine (then read from there), or
    recomputed from the rows when a part's are of other definitions (once, then kept; every session with the cache off):
    the marts' rows equal those of the same answers in one part (whose rows the tests above check by hand)."""
    one = _write(tmp_path / "one", stale=False, answers=HALLUCINATING, objects={})
    many = _write(tmp_path / "many", stale=set(stale), answers=HALLUCINATING, objects={}, part_size=2)
    cache = tmp_path / "cache"
    monkeypatch.setenv("ATTNWH_OBJECT_CACHE", str(cache))

    def marts(root):
        found = {}
        for name, order in (("hallucination_heads", ("layer", "head")), ("gen_attention_by_step", ("step_bucket", "layer"))):
            found[name] = [{key: value for key, value in row.items() if key != "run_id"} for row in _rows(root, name, order)]
        return found

    def same(got, expected):
        assert got.keys() == expected.keys()
        for name in expected:
            assert len(got[name]) == len(expected[name]) and all(a.keys() == b.keys() for a, b in zip(got[name], expected[name]))
            for a, b in zip(got[name], expected[name]):
                for key, value in b.items():
                    assert a[key] == (pytest.approx(value, rel=1e-9) if isinstance(value, float) else value), (name, key)

    expected = marts(one)
    assert len(expected["hallucination_heads"]) == N_LAYERS * N_HEADS
    for _ in range(2):  # added up and kept, then read from the cache
        same(marts(many), expected)
    kept = sorted(path.name.split("-")[1] for path in cache.rglob("rollup-gen*"))
    assert kept == ([] if stale else ["gen_head_scores", "gen_scores"])  # a stale run's parts are not added up ...
    recomputed = sorted(path.name.split("-")[1] for path in cache.rglob("recomputed-gen*"))
    assert recomputed == (["gen_head_scores", "gen_scores"] if stale else [])  # ... but summed from its rows once and kept
    monkeypatch.setenv("ATTNWH_OBJECT_CACHE", "off")
    same(marts(many), expected)


def test_hallucination_heads_adjusts_for_steps_within_a_bucket(tmp_path):
    """Within bucket 4-7 the hallucinated words come two steps after the grounded ones (steps 6-7 against 4-5), and
    image attention falls with the step alone: unadjusted the bucket's grounded words 'attend' 0.1 more; adjusted for
    the step (one slope for both kinds, from the steps within each kind) they do not. The coverage of this interval in
    simulated answers is in the README (Long answers)."""
    offsets = (0.0, 0.001, 0.004, 0.005, 0.002, 0.0)  # per sample; as large on average at either step (0.006 / 3)

    answers = {
        s: [
            None,
            None,
            None,
            None,
            *([("dog", "grounded"), None] if s % 2 else [None, ("dog", "grounded")]),
            *([("cat", "hallucinated"), None] if s % 2 else [None, ("cat", "hallucinated")]),
        ]
        for s in range(6)
    }
    for words in answers.values():  # fill the other steps with plain words, and end
        words[:] = [word or ("the", None) for word in words] + [None]

    def falling(s, step, layer, head):
        return 0.5 - 0.05 * step + 0.01 * layer + 0.02 * head + offsets[s]

    root = _write(tmp_path / "wh", stale=False, answers=answers, objects={}, value=falling)
    rows = _rows(root, "hallucination_heads", ("layer", "head"))
    assert len(rows) == N_LAYERS * N_HEADS
    for row in rows:
        assert (row["n_buckets"], row["n_grounded"], row["n_hallucinated"]) == (1, 6, 6)
        assert row["step_hallucinated"] - row["step_grounded"] == pytest.approx(2.0)
        assert row["difference"] == pytest.approx(0, abs=1e-6)  # unadjusted: 0.1
        assert row["ci_low"] < 0 < row["ci_high"]


def test_lens_settling_per_kind_of_word_by_hand(long_answers):
    rows = {row["token_kind"]: row for row in _rows(long_answers, "gen_lens_settling", ("token_kind",))}

    def settle(ranks):  # the first layer after the last one where the token was not top-1
        return max((layer + 1 for layer, rank in enumerate(ranks) if rank != 1), default=0)

    kinds = {"grounded": [], "hallucinated": [], "other": []}
    for (s, step), ranks in LENS.items():
        status = ANSWERS[s][step][1]
        kinds[status if status in ("grounded", "hallucinated") else "other"].append(settle(ranks))
    assert set(rows) == set(kinds)
    for kind, settled in kinds.items():
        assert rows[kind]["n_words"] == len(settled)
        assert rows[kind]["median_settle_layer"] == pytest.approx(statistics.median(settled))
        assert rows[kind]["mean_settle_depth"] == pytest.approx(statistics.fmean(value / N_LAYERS for value in settled))


def test_amber_metrics_by_hand(long_answers):
    (row,) = _rows(long_answers, "object_hallucination", ("run_id",))
    mentions, hallucinated, truth, truth_named, hallu, hallu_named = (sum(column) for column in zip(*OBJECTS.values()))
    assert row["kind"] == "extract" and row["condition_id"] is None and row["n_answers"] == 2
    assert row["chair"] == pytest.approx(hallucinated / mentions)
    assert row["cover"] == pytest.approx(truth_named / truth)
    assert row["hal"] == pytest.approx(0.5)  # one of the two answers names a hallucinated object
    assert row["cog"] == pytest.approx(hallu_named / hallu)
    assert row["hal_ci_low"] < 0.5 < row["hal_ci_high"]


# ------------------------------------------------------------------ the toy's captions, end to end


@pytest.fixture(scope="module")
def captions(tmp_path_factory):
    from attnwh.extract.mask_run import MaskOptions
    from attnwh.extract.run import ExtractOptions, run_extract
    from attnwh.face.workflows import mask_sweep

    warehouse = tmp_path_factory.mktemp("captions") / "wh"
    common = {"benchmark": "toy-shapes-caption", "limit": 12, "device": "cpu", "batch_size": 6, "command": ["test"]}
    extraction = run_extract(warehouse, ExtractOptions(**common, queries=("prompt", "gen1", "gen"), rows=False, part_size=12))
    sweep, table = mask_sweep(warehouse, MaskOptions(**common, k=("0", "8"), seeds=1, strategies=("top", "random"), ranking_run=extraction.run_id))
    return warehouse, extraction.run_id, sweep.run_id, table


def _query(warehouse, sql, parameters=None):
    with open_session(warehouse) as session:
        return session.query(sql, parameters or {}).to_pylist()


def test_generated_tokens_spell_the_answer_and_name_its_objects(captions):
    from transformers import AutoTokenizer

    from attnwh.extract.benchmarks.toy_shapes import CAPTION_VOCABULARY
    from attnwh.extract.toy.default import default_model_folder

    warehouse, run_id, _, _ = captions
    tokenizer = AutoTokenizer.from_pretrained(default_model_folder())
    samples = _query(warehouse, "select sample_idx, output_text, object_mentions, hallucinated from samples where run_id = $r and status = 'ok'", {"r": run_id})
    tokens = _query(warehouse, "select * from gen_tokens where run_id = $r order by sample_idx, step", {"r": run_id})
    info = _query(warehouse, "select n_layers, n_heads from runs where run_id = $r", {"r": run_id})[0]
    per_step = _query(warehouse, "select sample_idx, count(*) as n from gen_metrics where run_id = $r group by sample_idx", {"r": run_id})
    assert len(samples) == 12 and sum(sample["object_mentions"] for sample in samples) > 0, "the trained toy names shapes"
    for sample in samples:
        rows = [row for row in tokens if row["sample_idx"] == sample["sample_idx"]]
        answer = [row["token_id"] for row in rows if not row["eos"]]
        assert tokenizer.decode(answer, skip_special_tokens=True).strip() == sample["output_text"]
        assert [row["step"] for row in rows] == list(range(len(rows)))
        assert next(row["n"] for row in per_step if row["sample_idx"] == sample["sample_idx"]) == len(rows) * info["n_layers"] * info["n_heads"]
        # every object word of the answer appears once as a word start, with its object
        text = tokenizer.decode(answer, skip_special_tokens=True)
        named = [(word.index, word.object) for word in CAPTION_VOCABULARY.words(text) if word.object is not None]
        assert [(row["word_index"], row["object"]) for row in rows if row["word_start"] and row["object"] is not None] == named
        assert sum(row["object_status"] == "hallucinated" for row in rows if row["word_start"]) == sample["hallucinated"]


def test_a_masking_sweep_on_captions_reports_amber_metrics_per_condition(captions):
    warehouse, _, sweep_id, table = captions
    results = _query(warehouse, "select condition_id, object_mentions, hallucinated, truth_objects, truth_mentioned from sweep_results where run_id = $r", {"r": sweep_id})
    expected = {}
    for row in results:
        sums = expected.setdefault(row["condition_id"], [0, 0, 0, 0, 0, 0])
        sums[0] += row["object_mentions"]
        sums[1] += row["hallucinated"]
        sums[2] += row["truth_objects"]
        sums[3] += row["truth_mentioned"]
        sums[4] += 1
        sums[5] += row["hallucinated"] > 0
    rows = {row["condition_id"]: row for row in _query(warehouse, "select * from object_hallucination where run_id = $r", {"r": sweep_id})}
    assert set(rows) == set(expected) and len(rows) >= 3
    for condition, (mentions, hallucinated, truth, named, answers, hallucinating) in expected.items():
        row = rows[condition]
        assert row["n_answers"] == answers == 12
        assert row["chair"] == (pytest.approx(hallucinated / mentions) if mentions else None)
        assert row["cover"] == pytest.approx(named / truth)
        assert row["hal"] == pytest.approx(hallucinating / answers)
        assert row["chair_delta"] == (pytest.approx(row["chair"] - rows[0]["chair"]) if row["chair"] is not None and rows[0]["chair"] is not None else None)
    assert table.column_names[:3] == ["condition_id", "settings", "n_answers"] and table.num_rows == len(rows)  # what `attnwh mask` prints


def test_raw_rows_of_every_generated_step(tmp_path):
    """``--gen-rows``: step 0's row is the ``prompt`` row and step 1's the ``gen1`` row (both stored from the same
    fp32 rows), each step's image mass is its gen_metrics ``image_sum``, and a step sees the prompt and t keys more."""
    import numpy as np

    import attnwh
    from attnwh.extract.run import ExtractOptions, run_extract

    options = ExtractOptions(limit=6, queries=("prompt", "gen1", "gen"), gen_rows=True, max_new_tokens=3, batch_size=3, device="cpu", command=["test"])
    result = run_extract(tmp_path / "wh", options)
    with attnwh.open(tmp_path / "wh") as handle:
        fixed = handle.rows(result.run_id).compute(scheduler="threads")
        steps = handle.gen_rows(result.run_id).compute(scheduler="threads")
        metrics = handle.query("gen_attention_by_step").df()
        per_row = {
            (row["sample_idx"], row["step"], row["layer"], row["head"]): row["image_sum"]
            for row in handle.sql("select sample_idx, step, layer, head, image_sum from gen_metrics").df().to_dict("records")
        }
        spans = {row["sample_idx"]: row for row in handle.sql("select sample_idx, n_tokens, image_start, image_end from samples").df().to_dict("records")}
    assert len(metrics) > 0 and list(steps.sample.values) == list(fixed.sample.values)
    np.testing.assert_array_equal(steps.isel(step=0).values, fixed.sel(query="prompt").values)
    np.testing.assert_array_equal(steps.isel(step=1).values[..., : fixed.sizes["key"]], fixed.sel(query="gen1").values)
    for (sample, step, layer, head), image_sum in per_row.items():
        span = spans[sample]
        row = steps.sel(sample=sample).isel(step=step, layer=layer, head=head).values
        assert np.isfinite(row[: span["n_tokens"] + step]).all() and np.isnan(row[span["n_tokens"] + step :]).all()
        assert abs(float(np.sum(row[span["image_start"] : span["image_end"]], dtype=np.float64)) - image_sum) <= 2e-3
