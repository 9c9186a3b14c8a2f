"""The query library: every mart's sidecar data tests on a warehouse made by extraction and masking,
and expected rows written by hand for a hand-made warehouse."""

from __future__ import annotations

import json
import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from attnwh.core.errors import UsageError
from attnwh.extract.mask_run import MaskOptions
from attnwh.extract.prune_run import PruneOptions
from attnwh.extract.run import ExtractOptions, run_extract
from attnwh.face.workflows import mask_sweep, prune_sweep
from attnwh.queries.library import bind_parameters, data_test_failures, get_mart, marts, open_session, run_mart
from attnwh.warehouse import parts
from attnwh.warehouse.definitions import rollups
from attnwh.warehouse.layout import open_warehouse
from attnwh.warehouse.runs import Plan, open_or_create_run
from attnwh.warehouse.schema import HEAD_METRICS, HEAD_SUMMARY, LOGIT_LENS, MASK_CONDITIONS, MASK_RESULTS, SAMPLES, with_metadata


@pytest.fixture(scope="module")
def toy_warehouse(tmp_path_factory):
    warehouse = tmp_path_factory.mktemp("marts") / "wh"
    run_extract(warehouse, ExtractOptions(limit=24, rows=False, queries=("prompt", "gen1", "gen"), device="cpu", part_size=12, batch_size=12, command=["test"]))
    mask_sweep(warehouse, MaskOptions(limit=24, k=("0", "2", "4"), seeds=2, device="cpu", batch_size=12, command=["test"]))
    prune_sweep(warehouse, PruneOptions(limit=24, kv_shares=("1", "0.25"), seeds=1, device="cpu", batch_size=12, command=["test"]))
    return warehouse


# imported rankings: tests/integration/test_heads.py; attribution runs: tests/integration/test_attribution.py; object words (hallucination_heads, object_hallucination, sweep_hallucination) need a
# benchmark with object annotations: tests/integration/test_long_answers.py; two benchmarks asking the same questions
# (repeated_questions): the zoo's test in tests/integration/test_toy.py
@pytest.mark.parametrize(
    "name",
    sorted(
        set(marts())
        - {
            "imported_ranking",
            "attribution_ranking",
            "report_attribution_heads",
            "report_causal_masking",
            "hallucination_heads",
            "object_hallucination",
            "sweep_hallucination",
            "repeated_questions",
        }
    ),
)
def test_mart_sidecar_tests_pass_on_a_real_warehouse(toy_warehouse, name):
    mart = get_mart(name)
    with open_session(toy_warehouse) as session:
        runs = {row["kind"]: row for row in session.query("select kind, run_id, model, benchmark, spec from runs").to_pylist()}
        extract = runs["extract"]
        known = {
            "run_id": {"mask_sweep": runs["mask"]["run_id"], "prune_sweep": runs["prune"]["run_id"]}.get(name, extract["run_id"]),
            "model": extract["model"],
            "benchmark": extract["benchmark"],
            "model_revision": json.loads(extract["spec"])["model_revision"],
            "run_a": extract["run_id"],
            "run_b": extract["run_id"],
        }
        given = {key: known[key] for key, spec in mart.parameters.items() if spec.get("required")}
        if name == "ranking_agreement":  # the run's gen1 ranking against its prompt ranking
            given["query_b"] = "prompt"
        table = run_mart(session, name, given)
    assert table.num_rows > 0, f"{name} returned no rows"
    assert data_test_failures(mart, table) == []


@pytest.mark.parametrize("name", sorted(marts()))
def test_every_mart_orders_its_rows(name):
    """A mart's last statement ends in an ORDER BY of its own (not one inside a window or a subquery): without it
    DuckDB hands rows in whatever order its threads finish, and `attnwh query head_attention` showed layers shuffled
    differently at each call (helper-41)."""
    sql = "\n".join(line.split("--")[0] for line in get_mart(name).sql.splitlines()).lower()
    at = sql.rfind("order by")
    assert at >= 0, f"{name} has no ORDER BY"
    depth = 0
    for character in sql[at:]:
        depth += {"(": 1, ")": -1}.get(character, 0)
        assert depth >= 0, f"{name}'s last ORDER BY sits inside parentheses (a window or a subquery), not on its rows"


def test_status_rates_samples_of_an_extraction_and_conditions_of_a_sweep(toy_warehouse):
    """`attnwh status`: an extraction's samples per second between its first and last commit; a sweep's parts are its
    conditions, committed a group at a time in a burst at the group's end, so its rate is conditions per second since
    the run began (the first-to-last-commit rate read 30 "samples" per second for a sweep of 0.5 conditions per second)."""
    from datetime import datetime

    from attnwh.warehouse.status import run_status

    for folder in sorted(toy_warehouse.glob("runs/*/*/run=*")):
        manifest = json.loads((folder / "RUN.json").read_text())
        commits = sorted(datetime.fromisoformat(json.loads(path.read_text())["created"]).timestamp() for path in (folder / "_commits").glob("part-*.json"))
        status = run_status(open_warehouse(toy_warehouse).find_run(manifest["run_id"]))
        if manifest["kind"] == "extract":
            assert status["conditions_per_second"] is None
            assert status["samples_per_second"] == pytest.approx((len(commits) - 1) / (commits[-1] - commits[0]) * manifest["part_size"])
        else:
            began = datetime.fromisoformat(manifest["created"]).timestamp()
            assert status["samples_per_second"] is None
            assert status["conditions_per_second"] == pytest.approx(len(commits) / (commits[-1] - began))


def test_run_list_counts_an_extractions_samples_and_a_sweeps_conditions(toy_warehouse):
    """`attnwh runs`: a sweep's parts are its conditions; listed as samples, the mask run of 24 samples read 9."""
    conditions = {}
    for path in toy_warehouse.glob("runs/*/*/run=*/parts/*/sweep_conditions.parquet"):
        run_id = path.parts[-4].removeprefix("run=")
        conditions[run_id] = conditions.get(run_id, 0) + pq.read_table(path).num_rows
    with open_session(toy_warehouse) as session:
        rows = {row["kind"]: row for row in run_mart(session, "run_list").to_pylist()}
    assert (rows["extract"]["n_samples"], rows["extract"]["n_conditions"]) == (24, None)
    for kind in ("mask", "prune"):
        assert (rows[kind]["n_samples"], rows[kind]["n_conditions"]) == (None, conditions[rows[kind]["run_id"]]), kind


def test_resuming_a_run_of_another_kind_or_other_settings_is_one_short_line(toy_warehouse, capsys):
    """`--run` naming an extraction from `attnwh mask` is told as a run of another kind (the line listed every condition
    and both plan hashes, ~2 KB); other settings of the same kind name the keys with long values cut."""
    from tests.reliability.harness import run_cli

    with open_session(toy_warehouse) as session:
        runs = {row["kind"]: row["run_id"] for row in session.query("select kind, run_id from runs").to_pylist()}
    common = ["--limit", "24", "--device", "cpu", "--batch-size", "12", "--warehouse", str(toy_warehouse)]
    code, out, err = run_cli(capsys, "mask", "--run", runs["extract"], *common)
    assert (
        code != 0
        and err.strip()
        == f"attnwh: error: run {runs['extract']} is an extract run, not a mask run; name a new run with --run NEW_ID, or leave --run out (mask names its run from its settings)"
    )
    code, out, err = run_cli(capsys, "mask", "--run", runs["mask"], "--k", "0,3", "--seeds", "2", *common)
    assert code != 0 and len(err.strip().splitlines()) == 1 and "differing keys: conditions (run: 7 items: [[" in err and len(err) < 400, err


def test_sql_naming_a_named_query_with_parameters_says_to_run_it_with_query(toy_warehouse, capsys):
    """Marts with parameters are no views: `attnwh sql "select * from visual_heads"` said only "Table ... does not exist"."""
    from tests.reliability.harness import run_cli

    code, out, err = run_cli(capsys, "sql", "select * from visual_heads", "--warehouse", str(toy_warehouse))
    assert code != 0 and "visual_heads is a named query with parameters, not a view: run it with `attnwh query visual_heads`" in err
    code, out, err = run_cli(capsys, "sql", "select * from no_such_table", "--warehouse", str(toy_warehouse))
    assert code != 0 and "Table with name no_such_table does not exist" in err


def _extract_run(warehouse) -> str:
    with open_session(warehouse) as session:
        return session.query("select run_id from runs where kind = 'extract'").to_pylist()[0]["run_id"]


def test_sidecar_tests_can_fail():
    mart = get_mart("segment_shares")
    row = {column: 0.5 for column in mart.columns} | {"run_id": "r", "query": "gen1", "layer": 0, "model": "m", "benchmark": "b"}
    table = pa.Table.from_pylist([row, {**row, "image": 1.5}])
    failures = data_test_failures(mart, table)
    assert any("not unique" in failure for failure in failures) and any("image outside" in failure for failure in failures)


# ------------------------------------------------------------------ a hand-made warehouse
#
# One extraction run of a 2-layer × 2-head model on 2 samples (4 image tokens each), query gen1:
#
#   sample  layer head  image_sum  image_entropy  bos   system prompt generated
#   0       0     0     0.6        0              0.1   0.1    0.1    0.1
#   0       0     1     0.2        ln 4           0.4   0.2    0.1    0.1
#   0       1     0     0.0        0              0.5   0.2    0.2    0.1
#   0       1     1     0.8        ln 2           0.1   0.0    0.05   0.05
#   1       0     0     0.4        ln 2           0.2   0.2    0.1    0.1
#   1       0     1     0.6        0              0.1   0.1    0.1    0.1
#   1       1     0     0.2        0              0.4   0.2    0.1    0.1
#   1       1     1     0.4        ln 4           0.3   0.1    0.1    0.1
#
# concentration = 1 - entropy / ln 4: entropy 0 -> 1, ln 2 -> 0.5, ln 4 -> 0.

LN2, LN4 = math.log(2), math.log(4)
HAND_METRICS = [
    (0, 0, 0, 0.6, 0.0, 0.1, 0.1, 0.1, 0.1),
    (0, 0, 1, 0.2, LN4, 0.4, 0.2, 0.1, 0.1),
    (0, 1, 0, 0.0, 0.0, 0.5, 0.2, 0.2, 0.1),
    (0, 1, 1, 0.8, LN2, 0.1, 0.0, 0.05, 0.05),
    (1, 0, 0, 0.4, LN2, 0.2, 0.2, 0.1, 0.1),
    (1, 0, 1, 0.6, 0.0, 0.1, 0.1, 0.1, 0.1),
    (1, 1, 0, 0.2, 0.0, 0.4, 0.2, 0.1, 0.1),
    (1, 1, 1, 0.4, LN4, 0.3, 0.1, 0.1, 0.1),
]
# logit lens (layers 0..2): sample 0 ranks 5, 1, 1 (settles at layer 1); sample 1 ranks 3, 2, 1 (settles at 2)
HAND_LENS = {0: [5, 1, 1], 1: [3, 2, 1]}


def _hand_warehouse(root, kind="new", one_image_token: int | None = None):
    """``kind``: "new" writes head_scores and head_ranks as extraction does now; "old" writes a part
    as attnwh wrote it before head_ranks, sumsq_concentration_x_sum and the definitions' version existed: a
    wide head_summary, here with values no mart may show (it is recomputed from head_metrics).
    ``one_image_token``: that sample's rows have one image token (no concentration) and every row a
    region_hit (1 where the image sum is above 0.3)."""
    warehouse = open_warehouse(root, create=True)
    plan = Plan(["s0", "s1"], 2)
    details = {"model_info": {"architecture": "LlavaForConditionalGeneration", "n_layers": 2, "n_heads": 2, "n_kv_heads": 2}}
    run, _ = open_or_create_run(warehouse, kind="extract", model="hand", benchmark="handmade", spec={"dtype": "float32"}, plan=plan, run_id=None, details=details)

    def write(folder):
        samples = pa.Table.from_pylist(
            [{"run_id": run.run_id, "sample_idx": i, "sample_key": f"s{i}", "status": "ok", "n_image": 4, "gold": "yes", "parsed": "yes", "correct": i == 0} for i in (0, 1)],
            schema=SAMPLES,
        )
        metrics = pa.Table.from_pylist(
            [
                {
                    "run_id": run.run_id,
                    "sample_idx": s,
                    "query": "gen1",
                    "layer": layer,
                    "head": head,
                    "n_image": 1 if s == one_image_token else 4,
                    "image_sum": image,
                    "region_hit": None if one_image_token is None else image > 0.3,
                    "image_entropy": entropy,
                    "image_max": image,
                    "image_argmax": 0,
                    "bos_sum": bos,
                    "system_sum": system,
                    "prompt_sum": prompt,
                    "generated_sum": generated,
                }
                for s, layer, head, image, entropy, bos, system, prompt, generated in HAND_METRICS
            ],
            schema=HEAD_METRICS,
        )
        lens = pa.Table.from_pylist(
            [
                {"run_id": run.run_id, "sample_idx": s, "query": "gen1", "layer": layer, "target_token": 7, "target_rank": rank, "target_prob": 0.5}
                for s, ranks in HAND_LENS.items()
                for layer, rank in enumerate(ranks)
            ],
            schema=LOGIT_LENS,
        )
        scores, ranks = rollups(metrics)
        tables = {"samples": samples, "head_metrics": metrics, "logit_lens": lens}
        if kind == "new":
            tables.update(head_scores=scores, head_ranks=ranks)
        else:
            wrong = {name: 1e6 for name in HEAD_SUMMARY.names if name.startswith(("sum", "max"))}
            legacy = pa.Table.from_pylist([{"run_id": run.run_id, "query": "gen1", "layer": 0, "head": 0, "n": 99, **wrong}], schema=HEAD_SUMMARY)
            tables["head_summary"] = legacy.drop_columns(["sumsq_concentration_x_sum", "definitions"])
        for name, table in tables.items():
            pq.write_table(table.replace_schema_metadata(with_metadata(name, table.schema).metadata), folder / f"{name}.parquet")
        return {name: table.num_rows for name, table in tables.items()}

    parts.commit_part(run.paths, 0, write)
    return root, run.run_id


@pytest.fixture
def hand(tmp_path):
    return _hand_warehouse(tmp_path / "hand")


@pytest.fixture(params=["new", "old"])
def hand_either(request, tmp_path):
    return _hand_warehouse(tmp_path / "hand", kind=request.param)


def _rows(warehouse, name, given=None, order=("layer", "head")):
    with open_session(warehouse) as session:
        rows = run_mart(session, name, given or {}).to_pylist()
    return sorted(rows, key=lambda row: tuple(row[key] for key in order))


def test_head_attention_by_hand(hand):
    warehouse, _ = hand
    rows = _rows(warehouse, "head_attention")
    expected = [  # (layer, head, mean image sum, mean concentration, mean concentration × sum)
        (0, 0, 0.5, 0.75, (0.6 * 1 + 0.4 * 0.5) / 2),
        (0, 1, 0.4, 0.5, (0.2 * 0 + 0.6 * 1) / 2),
        (1, 0, 0.1, 1.0, (0.0 + 0.2 * 1) / 2),  # sample 0 gives the image 0: no concentration, a product of 0
        (1, 1, 0.6, 0.25, (0.8 * 0.5 + 0.4 * 0) / 2),
    ]
    got = [(r["layer"], r["head"], r["mean_image_sum"], r["mean_concentration"], r["mean_concentration_x_sum"]) for r in rows]
    assert got == [pytest.approx(row) for row in expected]
    assert rows[0]["n_samples"] == 2 and rows[0]["sd_image_sum"] == pytest.approx(math.sqrt(0.02))


def test_report_story_heads_by_hand(hand):
    """The front page's numbers: the hand run's means (test_head_attention_by_hand) ranked by concentration × sum are
    (0,0) 0.4, (0,1) 0.3, (1,1) 0.2, (1,0) 0.1; of 2 layers, layer 0 is early (depth 0) and layer 1 late (depth 1)."""
    warehouse, _ = hand
    (row,) = _rows(warehouse, "report_story_heads", {"k": "3"}, order=("run_id",))
    assert (row["n_layers"], row["n_heads_all"], row["n_top"]) == (2, 4, 3)
    assert (row["early_share"], row["mid_share"], row["late_share"]) == pytest.approx((2 / 3, 0, 1 / 3))
    assert (row["early_share_all"], row["mid_share_all"], row["late_share_all"]) == pytest.approx((1 / 2, 0, 1 / 2))  # 2 of 4 heads per layer
    from attnwh.reports.story import head_sentences

    where = head_sentences(row, "gen1", {})[0].text
    assert "(67% early, 0% mid, 33% late of 2 layers, whose stages hold 50%, 0%, 50% of all heads)" in where
    assert row["top_depth"] == pytest.approx(1 / 3)
    assert (row["top_concentration"], row["all_concentration"]) == pytest.approx(((0.75 + 0.5 + 0.25) / 3, (0.75 + 0.5 + 1.0 + 0.25) / 4))
    assert (row["top_image_sum"], row["all_image_sum"]) == pytest.approx(((0.5 + 0.4 + 0.6) / 3, (0.5 + 0.4 + 0.1 + 0.6) / 4))


def test_visual_heads_ranking_and_detection_by_hand(hand_either):
    # the same numbers from the rollups (new parts) and from every head_metrics row (old parts)
    warehouse, _ = hand_either
    rows = _rows(warehouse, "visual_heads", {"k": "1", "score": "concentration_x_sum"})
    # per-sample top head by concentration × sum: sample 0 -> (0,0) with 0.6; sample 1 -> (0,1) with 0.6
    detection = {(r["layer"], r["head"]): r["detection_score"] for r in rows}
    assert detection == {(0, 0): 0.5, (0, 1): 0.5, (1, 0): 0.0, (1, 1): 0.0}
    ranks = {(r["layer"], r["head"]): r["rank"] for r in rows}
    assert ranks == {(0, 0): 1, (0, 1): 2, (1, 1): 3, (1, 0): 4}  # means 0.4, 0.3, 0.2, 0.1
    # concentration × sum per sample: (0,0) 0.6, 0.2; (0,1) 0, 0.6; (1,0) 0, 0.2; (1,1) 0.4, 0
    assert [r["mean_score"] for r in rows] == pytest.approx([0.4, 0.3, 0.1, 0.2])
    assert [r["sd_score"] for r in rows] == pytest.approx([math.sqrt(0.08), math.sqrt(0.18), math.sqrt(0.02), math.sqrt(0.08)])
    by_sum = _rows(warehouse, "visual_heads", {"k": "2", "score": "image_sum"})
    # sample 1 ties (0,0) and (1,1) at 0.4 for second place: the lower layer wins
    assert {(r["layer"], r["head"]): r["detection_score"] for r in by_sum} == {(0, 0): 1.0, (0, 1): 0.5, (1, 0): 0.0, (1, 1): 0.5}
    by_concentration = _rows(warehouse, "visual_heads", {"k": "3", "score": "concentration", "query": "gen1"})
    # concentration: sample 0 -> 1, 0, none, 0.5 ((1,0) gives the image 0: no concentration; top 3: (0,0), (1,1),
    # (0,1)); sample 1 -> 0.5, 1, 1, 0 ((0,1), (1,0), (0,0)); (1,0) has the score in sample 1 only
    assert {(r["layer"], r["head"]): r["detection_score"] for r in by_concentration} == {(0, 0): 1.0, (0, 1): 1.0, (1, 0): 1.0, (1, 1): 0.5}
    assert [r["n_samples"] for r in by_concentration] == [2, 2, 1, 2]
    assert [r["mean_score"] for r in by_concentration] == pytest.approx([0.75, 0.5, 1.0, 0.25])  # (1,0): not (1 + 1) / 2 from a 0 entropy
    assert _rows(warehouse, "visual_heads", {"query": "prompt"}) == []


def test_detection_counts_only_samples_where_the_head_has_the_score(tmp_path):
    """A sample without the score (one image token: no concentration) places no head: with sample 0's gone, the
    top head by concentration of sample 1 alone ((0,1) and (1,0) tie at 1: the lower layer) is detected in 1 of
    1; nothing else is (as places by the tie-break, (0,0) would have been sample 0's). region_hit (0 / 1) ties
    most heads of a sample: its detection is absent, its mean the share hit."""
    warehouse, _ = _hand_warehouse(tmp_path / "hand", one_image_token=0)
    for k in ("1", "65"):  # from the rollups, and from every head_metrics row
        rows = _rows(warehouse, "visual_heads", {"k": k, "score": "concentration"})
        assert [r["n_samples"] for r in rows] == [1, 1, 1, 1]
        detection = {(r["layer"], r["head"]): r["detection_score"] for r in rows}
        assert detection == ({(0, 0): 0.0, (0, 1): 1.0, (1, 0): 0.0, (1, 1): 0.0} if k == "1" else dict.fromkeys(detection, 1.0))
    hits = _rows(warehouse, "visual_heads", {"k": "1", "score": "region_hit"})
    # image sums per (layer, head) over samples 0, 1: (0,0) 0.6, 0.4; (0,1) 0.2, 0.6; (1,0) 0.0, 0.2; (1,1) 0.8, 0.4 -> hits above 0.3
    assert {(r["layer"], r["head"]): r["mean_score"] for r in hits} == {(0, 0): 1.0, (0, 1): 0.5, (1, 0): 0.0, (1, 1): 1.0}
    assert [r["detection_score"] for r in hits] == [None] * 4


def test_head_ranks_by_hand():
    # 1 sample × 2 layers × 2 heads, query gen1; head (1,0) has one image token, so no concentration
    rows = [(0, 0, 4, 0.3, LN2), (0, 1, 4, 0.5, 0.0), (1, 0, 1, 0.5, 0.0), (1, 1, 4, 0.3, LN4)]
    metrics = pa.Table.from_pylist(
        [
            {"run_id": "r", "sample_idx": 0, "query": "gen1", "layer": layer, "head": head, "n_image": n_image, "image_sum": image, "image_entropy": entropy}
            for layer, head, n_image, image, entropy in rows
        ],
        schema=HEAD_METRICS,
    )
    _, ranks = rollups(metrics)
    placed = {(r["score"], r["rank"]): (r["layer"], r["head"], r["n"]) for r in ranks.to_pylist()}
    # image_sum: 0.5 ties between (0,1) and (1,0) -> lower layer first; 0.3 ties (0,0) and (1,1)
    assert [placed["image_sum", rank] for rank in (1, 2, 3, 4)] == [(0, 1, 1), (1, 0, 1), (0, 0, 1), (1, 1, 1)]
    # concentration: (0,1) 1, (0,0) 0.5, (1,1) 0; (1,0) has none, so no place
    assert [placed["concentration", rank] for rank in (1, 2, 3)] == [(0, 1, 1), (0, 0, 1), (1, 1, 1)]
    assert [placed["concentration_x_sum", rank][:2] for rank in (1, 2, 3)] == [(0, 1), (0, 0), (1, 1)]
    assert ("concentration", 4) not in placed and ("concentration_x_sum", 4) not in placed
    assert not any(score == "region_hit" for score, _ in placed)  # 0 / 1: it does not order heads


def _visual_heads_by_python(session, score: str, k: int, query: str) -> dict:
    """The detection score and mean per head, from the raw head_metrics rows, in plain Python."""
    raw = session.query("select run_id, sample_idx, layer, head, n_image, image_sum, image_entropy from head_metrics where query = $q", {"q": query}).to_pylist()
    per_sample, values = {}, {}
    for row in raw:
        concentration = 1 - row["image_entropy"] / math.log(row["n_image"]) if row["n_image"] > 1 else None
        value = {"image_sum": row["image_sum"], "concentration": concentration, "concentration_x_sum": None if concentration is None else concentration * row["image_sum"]}[score]
        per_sample.setdefault((row["run_id"], row["sample_idx"]), []).append((row["layer"], row["head"], value))
        values.setdefault((row["run_id"], row["layer"], row["head"]), []).append(value)
    detected = dict.fromkeys(values, 0)
    for (run_id, _), heads in per_sample.items():  # a sample's heads that have the score, higher first, ties to the lower layer
        ordered = sorted([item for item in heads if item[2] is not None], key=lambda item: (-item[2], item[0], item[1]))
        for layer, head, _ in ordered[:k]:
            detected[run_id, layer, head] += 1
    present = {key: [v for v in found if v is not None] for key, found in values.items()}
    return {key: (detected[key] / len(found) if found else None, sum(found) / len(found) if found else None) for key, found in present.items()}


@pytest.mark.parametrize("score", ["concentration_x_sum", "image_sum", "concentration"])
def test_visual_heads_equals_python_over_rows_by_either_route(toy_warehouse, score):
    cases = (("gen1", 1), ("prompt", 5), ("gen1", 32), ("prompt", 64), ("gen1", 65))
    with open_session(toy_warehouse) as session:
        expected = {case: _visual_heads_by_python(session, score, case[1], case[0]) for case in cases}
        for (query, k), want in expected.items():
            got = run_mart(session, "visual_heads", {"score": score, "k": str(k), "query": query}).to_pylist()
            assert {(r["run_id"], r["layer"], r["head"]): r["detection_score"] for r in got} == {key: value[0] for key, value in want.items()}
            assert {(r["run_id"], r["layer"], r["head"]): r["mean_score"] for r in got} == pytest.approx({key: value[1] for key, value in want.items()})
        # with head_metrics gone from the session only the rollups remain: the same detection scores
        # come back for every k up to ranks_kept() (64), so that route is the one taken
        assert session.query("select ranks_kept() as kept").to_pylist() == [{"kept": 64}]
        session._register_table("head_metrics", HEAD_METRICS.empty_table())
        for (query, k), want in expected.items():
            got = run_mart(session, "visual_heads", {"score": score, "k": str(k), "query": query}).to_pylist()
            detection = {(r["run_id"], r["layer"], r["head"]): r["detection_score"] for r in got}
            if k <= 64:
                assert detection == {key: value[0] for key, value in want.items()}
            else:  # beyond the places kept only head_metrics can answer: gone here, so nothing is detected
                assert set(detection.values()) <= {0, None}


def test_layer_profile_and_segment_shares_by_hand(hand):
    warehouse, _ = hand
    layers = _rows(warehouse, "layer_profile", order=("layer",))
    assert [(r["layer"], r["depth"], r["stage"], r["n"]) for r in layers] == [(0, 0.0, "early", 4), (1, 1.0, "late", 4)]  # 2 layers: thirds round to early [0], mid [], late [1]
    assert [r["mean_image_sum"] for r in layers] == pytest.approx([0.45, 0.35])
    shares = _rows(warehouse, "segment_shares", order=("layer",))
    assert [r["bos"] for r in shares] == pytest.approx([0.2, 0.325])
    assert [r["generated"] for r in shares] == pytest.approx([0.1, 0.0875])
    for row in shares:
        assert row["image"] + row["bos"] + row["system"] + row["prompt"] + row["generated"] == pytest.approx(1.0)


def test_logit_lens_marts_by_hand(hand):
    warehouse, _ = hand
    layers = _rows(warehouse, "lens_convergence", order=("layer",))
    assert [(r["layer"], r["rank_median"], r["share_at_top"]) for r in layers] == [(0, 4.0, 0.0), (1, 1.5, 0.5), (2, 1.0, 1.0)]
    assert [r["rank_q1"] for r in layers] == pytest.approx([3.5, 1.25, 1.0])
    (settling,) = _rows(warehouse, "lens_settling", order=("query",))
    assert (settling["median_settle_layer"], settling["share_settled_early"], settling["n_samples"]) == (1.5, 0.5, 2)


def test_run_overview_by_hand(hand):
    warehouse, run_id = hand
    (row,) = _rows(warehouse, "run_overview", order=("run_id",))
    assert (row["run_id"], row["kind"], row["n_rows"], row["n_errors"], row["accuracy"], row["complete"]) == (run_id, "extract", 2, 0, 0.5, True)


def test_parameters_are_typed_checked_and_bound(hand):
    warehouse, run_id = hand
    mart = get_mart("visual_heads")
    assert bind_parameters(mart, {"k": "3"}) == {"score": "concentration_x_sum", "k": 3, "query": "gen1", "attribution_method": "any"}
    with pytest.raises(UsageError, match="must be int"):
        bind_parameters(mart, {"k": "3; drop table runs"})
    with pytest.raises(UsageError, match="takes image_sum, concentration, concentration_x_sum, region_hit"):
        bind_parameters(mart, {"score": "image_sum' or 1=1 --"})
    with pytest.raises(UsageError, match="must be at least 1, got 0"):
        bind_parameters(mart, {"k": "0"})
    with pytest.raises(UsageError, match="no parameter bogus"):
        bind_parameters(mart, {"bogus": "1"})
    with pytest.raises(UsageError, match="needs --param run_id"):
        bind_parameters(get_mart("head_ranking"), {})
    # a value carrying SQL is data: it matches no run
    assert _rows(warehouse, "head_ranking", {"run_id": f"{run_id}' or 1=1 --"}) == []
    assert len(_rows(warehouse, "head_ranking", {"run_id": run_id})) == 4


def test_circular_accuracy_by_hand(tmp_path):
    """MMBench circular: question A right in both rotations, B wrong in one, C's second rotation an error row; D, of
    three options, has two of its three rotations in the run (as a --limit leaves it), both right: it does not count."""
    warehouse = open_warehouse(tmp_path / "wh", create=True)
    keys = ["A-c0", "A-c1", "B-c0", "B-c1", "C-c0", "C-c1", "D-c0", "D-c1"]
    run, _ = open_or_create_run(warehouse, kind="extract", model="hand", benchmark="mmbench-circular", spec={}, plan=Plan(keys, 8), run_id=None, details={})
    outcomes = [("ok", True), ("ok", True), ("ok", True), ("ok", False), ("ok", True), ("error", None), ("ok", True), ("ok", True)]

    def write(folder):
        samples = pa.Table.from_pylist(
            [
                {
                    "run_id": run.run_id,
                    "sample_idx": i,
                    "sample_key": key,
                    "status": status,
                    "correct": correct,
                    "group_key": key[0],
                    "choices": ["x", "y", "z"][: 3 if key[0] == "D" else 2],
                }
                for i, (key, (status, correct)) in enumerate(zip(keys, outcomes))
            ],
            schema=SAMPLES,
        )
        pq.write_table(samples.replace_schema_metadata(with_metadata("samples", samples.schema).metadata), folder / "samples.parquet")
        return {"samples": samples.num_rows}

    parts.commit_part(run.paths, 0, write)
    (row,) = _rows(tmp_path / "wh", "run_overview", order=("run_id",))
    assert (row["n_groups"], row["circular_accuracy"]) == (3, pytest.approx(1 / 3))
    assert row["accuracy"] == pytest.approx(6 / 7)  # the plain accuracy counts rotations (error rows are not scored)


def test_answer_stability_by_hand(tmp_path):
    """A hand-made mask run of a multiple-choice benchmark: the baseline and one masked condition over five
    samples; the stability figures worked out by hand below."""
    warehouse = open_warehouse(tmp_path / "wh", create=True)
    run, _ = open_or_create_run(warehouse, kind="mask", model="hand", benchmark="mmbench", spec={"hand": True}, plan=Plan(["c0", "c1"], 1), run_id=None, details={})
    # sample: gold, (baseline parsed, log-probabilities of A, B, C), (masked parsed, log-probabilities)
    answers = [
        ("A", ("A", [-0.1, -2.0, -3.0]), ("A", [-0.3, -1.5, -3.0])),  # right -> right, same answer; gold shift -0.2
        ("B", ("B", [-2.0, -0.2, -3.0]), ("A", [-0.4, -1.2, -3.0])),  # right -> wrong, changed; shift -1.0
        ("C", ("A", [-0.5, -2.0, -1.5]), ("C", [-1.5, -2.0, -0.5])),  # wrong -> right, changed; shift +1.0
        ("A", ("B", [-1.0, -0.5, -2.0]), ("C", [-1.4, -0.9, -0.4])),  # wrong -> wrong, changed; shift -0.4
        ("B", ("B", [-1.0, -0.1, -2.0]), None),  # an error row in the masked condition: not paired
    ]

    def write_condition(condition_id: int):
        def write(folder):
            condition = pa.Table.from_pylist(
                [
                    {
                        "run_id": run.run_id,
                        "condition_id": condition_id,
                        "strategy": "top" if condition_id else "none",
                        "stage": "all",
                        "k": 2 * condition_id,
                        "fraction": 0.1 * condition_id,
                        "mode": "zero",
                        "heads": [],
                    }
                ],
                schema=MASK_CONDITIONS,
            )
            rows = []
            for index, (gold, baseline, masked) in enumerate(answers):
                answer = masked if condition_id else baseline
                if answer is None:
                    rows.append(
                        {
                            "run_id": run.run_id,
                            "condition_id": condition_id,
                            "sample_idx": index,
                            "sample_key": f"s{index}",
                            "mode": "zero",
                            "status": "error",
                            "error": "image unreadable",
                            "gold": gold,
                        }
                    )
                    continue
                rows.append(
                    {
                        "run_id": run.run_id,
                        "condition_id": condition_id,
                        "sample_idx": index,
                        "sample_key": f"s{index}",
                        "mode": "zero",
                        "status": "ok",
                        "gold": gold,
                        "parsed": answer[0],
                        "correct": answer[0] == gold,
                        "option_logprobs": answer[1],
                    }
                )
            results = pa.Table.from_pylist(rows, schema=MASK_RESULTS)
            for table, name in ((condition, "mask_conditions"), (results, "mask_results")):
                pq.write_table(table.replace_schema_metadata(with_metadata(name, table.schema).metadata), folder / f"{name}.parquet")
            return {"mask_conditions": 1, "mask_results": results.num_rows}

        return write

    for condition_id in (0, 1):
        parts.commit_part(run.paths, condition_id, write_condition(condition_id))
    baseline, masked = _rows(tmp_path / "wh", "masking_accuracy", order=("condition_id",))
    # the baseline against itself: nothing changes
    assert (baseline["changed"], baseline["correct_to_wrong"], baseline["wrong_to_right"], baseline["gold_logprob_shift"]) == (0, 0, 0, 0)
    # four paired samples: three answers changed; one right -> wrong, one wrong -> right; shifts -0.2, -1.0, +1.0, -0.4
    assert masked["changed"] == pytest.approx(3 / 4)
    assert (masked["correct_to_wrong"], masked["wrong_to_right"]) == (1, 1)
    assert masked["gold_logprob_shift"] == pytest.approx((-0.2 - 1.0 + 1.0 - 0.4) / 4, abs=1e-6)
    # the flipped samples behind those counts (s1 right -> wrong, s2 wrong -> right; s3 changed but stayed wrong)
    flips = [
        (row["condition_id"], row["sample_key"], row["baseline_parsed"], row["parsed"], row["direction"]) for row in _rows(tmp_path / "wh", "answer_flips", order=("sample_idx",))
    ]
    assert flips == [(1, "s1", "B", "A", "correct_to_wrong"), (1, "s2", "A", "C", "wrong_to_right")]
    (condition,) = _rows(tmp_path / "wh", "report_flips", order=("condition_id",))
    assert (condition["strategy"], condition["k"], condition["correct_to_wrong"], condition["wrong_to_right"], list(condition["sample_keys"])) == ("top", 2, 1, 1, ["s1", "s2"])
    # the front page's masking sentence: baseline 3 of 5 right, the top 2 heads masked 2 of 4 (Wilson by hand below)
    (story,) = _rows(tmp_path / "wh", "report_story_masking", order=("run_id",))
    assert (story["k"], story["baseline_accuracy"], story["top_accuracy"], story["random_accuracy"], story["bottom_accuracy"]) == (2, 0.6, 0.5, None, None)

    def wilson(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
        centre, spread = (successes / n + z * z / (2 * n)) / (1 + z * z / n), z * math.sqrt(successes / n * (1 - successes / n) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        return centre - spread, centre + spread

    from attnwh.reports.story import masking_sentence

    (base_low, base_high), (top_low, top_high) = wilson(3, 5), wilson(2, 4)
    assert (story["baseline_ci_low"], story["baseline_ci_high"], story["top_ci_low"], story["top_ci_high"]) == pytest.approx((base_low, base_high, top_low, top_high))
    sentence = masking_sentence(story)
    assert f"from 60% [{100 * base_low:.0f}%, {100 * base_high:.0f}%] to 50% [{100 * top_low:.0f}%, {100 * top_high:.0f}%]" in sentence
    assert "random" not in sentence and "bottom" not in sentence and "overlaps the baseline's" in sentence
    assert story["ranking_score"] is None and "ranked by" not in sentence  # this hand-made run recorded no ranking
    assert f"(mask run {story['run_id']}, heads ranked by causal attribution): " in masking_sentence({**story, "ranking_score": "attribution"})
    assert f"(mask run {story['run_id']}, heads ranked by attention (image_sum)): " in masking_sentence({**story, "ranking_score": "image_sum"})
    from attnwh.reports.story import _where

    assert _where({"early": 0.0, "mid": 0.5, "late": 0.5}) == "as often in the mid as in the late layers"  # a tie is no majority
    assert _where({"early": 0.2, "mid": 0.2, "late": 0.6}) == "mostly in the late layers"
    assert _where({"early": 0.3, "mid": 0.3, "late": 0.4}) == "most often in the late layers"
    # accuracies that differ by less than half a point are told apart; equal ones are said once
    near = {**story, "baseline_accuracy": 0.998, "top_accuracy": 0.996, "random_accuracy": 0.998, "random_seeds": 2, "random_accuracy_min": 0.997, "random_accuracy_max": 0.999}
    assert "from 99.8% [" in masking_sentence(near) and "to 99.6% [" in masking_sentence(near) and "random heads give 99.8% (" in masking_sentence(near)
    same = {**story, "top_accuracy": story["baseline_accuracy"]}
    assert "leaves accuracy at 60% [" in masking_sentence(same) and " to " not in masking_sentence(same).split("mode)")[1].split(";")[0]
    # the report's masking page links the condition to those samples on the Samples page
    from attnwh.face.pictures import report_sections
    from attnwh.reports.build import build_report

    build_report(tmp_path / "wh", tmp_path / "report", pictures=report_sections())
    anchor = f"flips-{run.run_id}-1"
    assert f'href="samples.html#{anchor}"' in (tmp_path / "report" / "masking.html").read_text(encoding="utf-8")
    samples_page = (tmp_path / "report" / "samples.html").read_text(encoding="utf-8")
    flipped = samples_page[samples_page.index(f'<section id="{anchor}">') :].split("</section>", 1)[0]
    assert "<td>s1</td>" in flipped and "<td>s2</td>" in flipped and "<td>s3</td>" not in flipped
    assert masked["delta"] == 0 and masked["mcnemar_p"] == 1.0
    assert (masked["n"], masked["accuracy"]) == (4, pytest.approx(2 / 4))
    (sweep,) = [row for row in _rows(tmp_path / "wh", "mask_sweep", {"run_id": run.run_id}, order=("k",)) if row["k"] == 2]
    assert (sweep["changed"], sweep["correct_to_wrong"], sweep["wrong_to_right"]) == (0.75, 1, 1)


def _scored_runs(root, runs: dict[str, list[float]], n_layers: int = 2, n_heads: int = 3) -> dict[str, str]:
    """Extraction runs of one sample each whose heads' image_sum are the given values (layer-major)."""
    warehouse = open_warehouse(root, create=True)
    details = {"model_info": {"architecture": "LlavaForConditionalGeneration", "n_layers": n_layers, "n_heads": n_heads, "n_kv_heads": n_heads}}
    ids = {}
    for benchmark, values in runs.items():
        run, _ = open_or_create_run(warehouse, kind="extract", model="hand", benchmark=benchmark, spec={"values": values}, plan=Plan(["s0"], 1), run_id=None, details=details)

        def write(folder, run=run, values=values):
            samples = pa.Table.from_pylist([{"run_id": run.run_id, "sample_idx": 0, "sample_key": "s0", "status": "ok", "n_image": 4}], schema=SAMPLES)
            metrics = pa.Table.from_pylist(
                [
                    {
                        "run_id": run.run_id,
                        "sample_idx": 0,
                        "query": "gen1",
                        "layer": index // n_heads,
                        "head": index % n_heads,
                        "n_image": 4,
                        "image_sum": value,
                        "image_entropy": 1.0,
                        "image_max": value,
                        "image_argmax": 0,
                    }
                    for index, value in enumerate(values)
                ],
                schema=HEAD_METRICS,
            )
            scores, ranks = rollups(metrics)
            tables = {"samples": samples, "head_metrics": metrics, "head_scores": scores, "head_ranks": ranks}
            for name, table in tables.items():
                pq.write_table(table.replace_schema_metadata(with_metadata(name, table.schema).metadata), folder / f"{name}.parquet")
            return {name: table.num_rows for name, table in tables.items()}

        parts.commit_part(run.paths, 0, write)
        ids[benchmark] = run.run_id
    return ids


def _average_ranks(values: list[float]) -> list[float]:
    return [sum(1 for other in values if other < value) + (sum(1 for other in values if other == value) + 1) / 2 for value in values]


def _pearson(x: list[float], y: list[float]) -> float:
    mx, my = sum(x) / len(x), sum(y) / len(y)
    return sum((a - mx) * (b - my) for a, b in zip(x, y)) / math.sqrt(sum((a - mx) ** 2 for a in x) * sum((b - my) ** 2 for b in y))


def _kendall_tau_b(x: list[float], y: list[float]) -> float:
    concordant = discordant = ties_x = ties_y = 0
    for i in range(len(x)):
        for j in range(i + 1, len(x)):
            dx, dy = x[i] - x[j], y[i] - y[j]
            if dx * dy > 0:
                concordant += 1
            elif dx * dy < 0:
                discordant += 1
            elif dx == 0 and dy != 0:
                ties_x += 1
            elif dy == 0 and dx != 0:
                ties_y += 1
    return (concordant - discordant) / math.sqrt((concordant + discordant + ties_x) * (concordant + discordant + ties_y))


def test_ranking_agreement_by_hand(tmp_path):
    """Two benchmarks' rankings of six heads, with ties in each; rho, tau-b and top-k overlaps by hand."""
    pope = [0.9, 0.5, 0.5, 0.3, 0.1, 0.0]  # heads (0,0) (0,1) (0,2) (1,0) (1,1) (1,2)
    mmb = [0.8, 0.6, 0.2, 0.2, 0.4, 0.1]
    ids = _scored_runs(tmp_path / "wh", {"pope": pope, "mmbench": mmb})
    rows = _rows(tmp_path / "wh", "ranking_agreement", {"run_a": ids["pope"], "run_b": ids["mmbench"], "score_a": "image_sum", "score_b": "image_sum"}, order=("k",))
    assert [row["k"] for row in rows] == [1, 5]  # the grid up to the six heads
    # worked by hand: of 15 pairs, 11 concordant, 2 discordant ((0,2)-(1,1), (1,0)-(1,1)), one tied in pope only
    # ((0,1)-(0,2)), one in mmbench only ((0,2)-(1,0)): tau-b = (11 - 2) / sqrt(14 * 14)
    assert _kendall_tau_b(pope, mmb) == pytest.approx(9 / 14)
    assert rows[0]["kendall_tau_b"] == pytest.approx(9 / 14, abs=1e-6)
    assert rows[0]["spearman"] == pytest.approx(_pearson(_average_ranks(pope), _average_ranks(mmb)), abs=1e-6)
    assert rows[0]["n_heads"] == 6
    # top-1: (0,0) in both; top-5: pope drops (1,2), mmbench drops (1,2) -> 5 shared
    assert (rows[0]["shared"], rows[0]["jaccard"]) == (1, 1.0)
    assert (rows[1]["shared"], rows[1]["jaccard"]) == (5, 1.0)
    # a ranking against itself agrees perfectly; against its reverse, perfectly the other way (top-1 disjoint)
    ids = _scored_runs(tmp_path / "wh2", {"up": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6], "down": [0.6, 0.5, 0.4, 0.3, 0.2, 0.1]})
    same = _rows(tmp_path / "wh2", "ranking_agreement", {"run_a": ids["up"], "run_b": ids["up"], "score_a": "image_sum", "score_b": "image_sum"}, order=("k",))
    assert (same[0]["spearman"], same[0]["kendall_tau_b"]) == (pytest.approx(1.0), pytest.approx(1.0))
    reverse = _rows(tmp_path / "wh2", "ranking_agreement", {"run_a": ids["up"], "run_b": ids["down"], "score_a": "image_sum", "score_b": "image_sum"}, order=("k",))
    assert (reverse[0]["spearman"], reverse[0]["kendall_tau_b"]) == (pytest.approx(-1.0), pytest.approx(-1.0))
    assert (reverse[0]["shared"], reverse[0]["jaccard"]) == (0, 0.0)
    assert (reverse[1]["shared"], reverse[1]["jaccard"]) == (4, pytest.approx(4 / 6))
    # a ranking that is one tie has no rank correlation: both null (Spearman was NaN)
    ids = _scored_runs(tmp_path / "wh3", {"flat": [0.5] * 6, "up": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]})
    flat = _rows(tmp_path / "wh3", "ranking_agreement", {"run_a": ids["flat"], "run_b": ids["up"], "score_a": "image_sum", "score_b": "image_sum"}, order=("k",))
    assert (flat[0]["spearman"], flat[0]["kendall_tau_b"]) == (None, None)


def _attribution_run(root, benchmark: str, scores: list[float | None], n_layers: int = 2, n_heads: int = 4) -> str:
    """An attribution run whose heads' scores are the given values (layer-major; None: a head its patterns never
    ablated, stored null), written as attnwh attribute writes its fit part."""
    from attnwh.warehouse.schema import ATTRIBUTION_FITS, HEAD_ATTRIBUTIONS

    warehouse = open_warehouse(root, create=True)
    details = {"model_info": {"architecture": "LlavaForConditionalGeneration", "n_layers": n_layers, "n_heads": n_heads, "n_kv_heads": n_heads}}
    run, _ = open_or_create_run(warehouse, kind="attribution", model="hand", benchmark=benchmark, spec={"scores": scores}, plan=Plan(["fit"], 1), run_id=None, details=details)

    def write(folder):
        heads = [{"run_id": run.run_id, "layer": i // n_heads, "head": i % n_heads, "score": score} for i, score in enumerate(scores)]
        fit = [{"run_id": run.run_id, "method": "patterns", "ablation": "zero", "target": "margin", "fit": "ridge", "n_conditions": 12, "n_samples": 4}]
        tables = {"head_attributions": pa.Table.from_pylist(heads, schema=HEAD_ATTRIBUTIONS), "attribution_fits": pa.Table.from_pylist(fit, schema=ATTRIBUTION_FITS)}
        for name, table in tables.items():
            pq.write_table(table.replace_schema_metadata(with_metadata(name, table.schema).metadata), folder / f"{name}.parquet")
        return {name: table.num_rows for name, table in tables.items()}

    parts.commit_part(run.paths, 0, write)
    return run.run_id


def _top(scores: dict[tuple[int, int], float], k: int) -> set[tuple[int, int]]:
    return set(sorted(scores, key=lambda head: (-scores[head], head))[:k])


def test_ranking_agreement_ranks_only_the_heads_both_score(tmp_path):
    """An attribution run that leaves heads unscored (null) against an extraction run: the unscored heads are in
    neither ranking (they were ranked last in one and by their attention in the other, so that a top-k cut counted
    them), k stops at the heads both score, and below 5 of them rho and tau-b are null (a figure from 4 heads was
    shown); each run's model and benchmark stand beside it. Top-k sets worked here in Python."""
    attention = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2]  # heads (0,0) ... (1,3)
    causal = [None, 0.1, 0.2, 0.3, 0.4, 0.8, 0.7, 0.6]  # attention's best head unscored
    ids = _scored_runs(tmp_path / "wh", {"pope": attention}, n_heads=4)
    attribution = _attribution_run(tmp_path / "wh", "mmbench", causal)
    rows = _rows(tmp_path / "wh", "ranking_agreement", {"run_a": ids["pope"], "run_b": attribution, "score_a": "image_sum"}, order=("k",))
    both = [i for i, score in enumerate(causal) if score is not None]
    by_a = {(i // 4, i % 4): attention[i] for i in both}
    by_b = {(i // 4, i % 4): causal[i] for i in both}
    assert [row["k"] for row in rows] == [1, 5] and rows[0]["n_heads"] == 7
    for row in rows:
        shared = len(_top(by_a, row["k"]) & _top(by_b, row["k"]))
        assert (row["shared"], row["jaccard"]) == (shared, pytest.approx(shared / (2 * row["k"] - shared)))
    assert rows[1]["shared"] == 3  # (0,3), (1,0), (1,1): with (0,0) in attention's top 5, two
    a, b = [attention[i] for i in both], [causal[i] for i in both]
    assert rows[0]["spearman"] == pytest.approx(_pearson(_average_ranks(a), _average_ranks(b)), abs=1e-9)
    assert rows[0]["kendall_tau_b"] == pytest.approx(_kendall_tau_b(a, b), abs=1e-9)
    assert (rows[0]["model_a"], rows[0]["benchmark_a"], rows[0]["model_b"], rows[0]["benchmark_b"]) == ("hand", "pope", "hand", "mmbench")
    assert data_test_failures(get_mart("ranking_agreement"), pa.Table.from_pylist(rows)) == []
    # 4 heads scored by both: the grid stops at k = 1 (k = 5 and 10 were shown), no correlation
    few = _attribution_run(tmp_path / "wh", "mmbench", [None, None, 0.2, None, 0.4, None, 0.7, 0.6])
    rows = _rows(tmp_path / "wh", "ranking_agreement", {"run_a": ids["pope"], "run_b": few, "score_a": "image_sum"}, order=("k",))
    assert [(row["k"], row["n_heads"], row["spearman"], row["kendall_tau_b"]) for row in rows] == [(1, 4, None, None)]
    assert rows[0]["shared"] == len(_top({(0, 2): 0.7, (1, 0): 0.5, (1, 2): 0.3, (1, 3): 0.2}, 1) & _top({(0, 2): 0.2, (1, 0): 0.4, (1, 2): 0.7, (1, 3): 0.6}, 1))


def test_yes_no_metrics_equal_popes_script(tmp_path):
    """Ten POPE answers in two settings, scored by POPE's evaluate.py (its counts and formulas, written out here) and by
    the mart; an invalid answer (the study's first-word parser) is counted apart; a letter question is left out."""
    warehouse = open_warehouse(tmp_path / "wh", create=True)
    gold = ["yes", "yes", "yes", "no", "no", "no", "yes", "no", "yes", "no", "A", "yes"]
    parsed = ["yes", "no", "yes", "yes", "no", "no", "yes", "no", "invalid", "yes", "A", "no"]
    category = ["adversarial"] * 6 + ["random"] * 5 + [None]  # the last without a category: in the run's row only
    keys = [f"s{i}" for i in range(len(gold))]
    run, _ = open_or_create_run(warehouse, kind="extract", model="hand", benchmark="pope", spec={}, plan=Plan(keys, len(keys)), run_id=None, details={})

    def write(folder):
        samples = pa.Table.from_pylist(
            [
                {"run_id": run.run_id, "sample_idx": i, "sample_key": key, "status": "ok", "gold": g, "parsed": p, "correct": g == p, "category": c}
                for i, (key, g, p, c) in enumerate(zip(keys, gold, parsed, category))
            ],
            schema=SAMPLES,
        )
        pq.write_table(samples.replace_schema_metadata(with_metadata("samples", samples.schema).metadata), folder / "samples.parquet")
        return {"samples": samples.num_rows}

    parts.commit_part(run.paths, 0, write)
    listed = _rows(tmp_path / "wh", "yes_no_metrics", order=("run_id",))
    rows = {row["category"]: row for row in listed}
    assert len(listed) == 3  # the run's row, then one per category: the sample without one is in the run's row only

    def pope(indices):  # evaluate.py: TP, FP, TN, FN over the predictions; an invalid answer predicts neither class here
        tp = sum(parsed[i] == "yes" and gold[i] == "yes" for i in indices)
        fp = sum(parsed[i] == "yes" and gold[i] == "no" for i in indices)
        tn = sum(parsed[i] == "no" and gold[i] == "no" for i in indices)
        fn = sum(parsed[i] == "no" and gold[i] == "yes" for i in indices)
        precision, recall = tp / (tp + fp), tp / (tp + fn)
        return {
            "n": len(indices),
            "accuracy": (tp + tn) / len(indices),
            "precision": precision,
            "recall": recall,
            "f1": 2 * precision * recall / (precision + recall),
            "yes_ratio": (tp + fp) / len(indices),
        }

    yes_no = [i for i in range(len(gold)) if gold[i] in ("yes", "no")]
    for name, indices in ((None, yes_no), ("adversarial", [i for i in yes_no if category[i] == "adversarial"]), ("random", [i for i in yes_no if category[i] == "random"])):
        expected = pope(indices)
        assert {key: rows[name][key] for key in expected} == {key: pytest.approx(value) for key, value in expected.items()}, name
    assert (rows[None]["n_invalid"], rows["random"]["n_invalid"], rows["adversarial"]["n_invalid"]) == (1, 1, 0)
    assert set(rows) == {None, "adversarial", "random"}
    assert {row["positive"] for row in listed} == {"yes"}


@pytest.mark.parametrize(
    ("benchmark", "gold", "parsed"),
    [
        ("amber-existence", ["no"] * 10, ["no"] * 7 + ["yes"] * 3),  # every existence gold is no: yes-positive had no recall at all
        ("amber-attribute", ["yes"] * 5 + ["no"] * 5, ["yes", "yes", "yes", "yes", "no", "no", "no", "no", "yes", "yes"]),
    ],
)
def test_yes_no_metrics_of_amber_equal_its_script(tmp_path, benchmark, gold, parsed):
    """AMBER's inference.py counts no as the positive class: precision = (answered no to a no question) / (answered
    no), recall = the same / (no questions); its arithmetic written out here (without its 0.001 in F1's denominator)."""
    warehouse = open_warehouse(tmp_path / "wh", create=True)
    keys = [f"s{i}" for i in range(len(gold))]
    run, _ = open_or_create_run(warehouse, kind="extract", model="hand", benchmark=benchmark, spec={}, plan=Plan(keys, len(keys)), run_id=None, details={})

    def write(folder):
        rows = [
            {"run_id": run.run_id, "sample_idx": i, "sample_key": key, "status": "ok", "gold": g, "parsed": p, "correct": g == p}
            for i, (key, g, p) in enumerate(zip(keys, gold, parsed))
        ]
        samples = pa.Table.from_pylist(rows, schema=SAMPLES)
        pq.write_table(samples.replace_schema_metadata(with_metadata("samples", samples.schema).metadata), folder / "samples.parquet")
        return {"samples": samples.num_rows}

    parts.commit_part(run.paths, 0, write)
    (row,) = _rows(tmp_path / "wh", "yes_no_metrics", order=("run_id",))
    qa_ans_no_num = sum(p == "no" for p in parsed)
    qa_ans_no_score = sum(p == "no" and g == "no" for g, p in zip(gold, parsed))
    qa_no_num = sum(g == "no" for g in gold)
    qa_no_score = qa_ans_no_score
    precision, recall = qa_ans_no_score / qa_ans_no_num, qa_no_score / qa_no_num
    expected = {
        "accuracy": sum(g == p for g, p in zip(gold, parsed)) / len(gold),
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall),
        "yes_ratio": sum(p == "yes" for p in parsed) / len(parsed),
    }
    assert row["positive"] == "no"
    assert {key: row[key] for key in expected} == {key: pytest.approx(value) for key, value in expected.items()}


def test_object_hallucination_deltas_pair_the_samples_both_answered():
    """A condition whose first sample failed (an error row) is compared with the baseline on its other sample only:
    the baseline's hallucinating sample 0 must not make the condition look cleaner. Staging tables written by hand, the
    mart's own SQL over them; deltas by hand over sample 1."""
    import duckdb

    from attnwh.warehouse.definitions import define_macros

    connection = duckdb.connect()
    define_macros(connection)
    connection.execute(
        "create table stg_sweep_results (run_id varchar, kind varchar, condition_id int, status varchar, sample_idx int, object_mentions int, "
        "hallucinated int, truth_objects int, truth_mentioned int, hallu_objects int, hallu_mentioned int)"
    )
    connection.execute("create table stg_samples as select * exclude (kind, condition_id) from stg_sweep_results")
    rows = [
        ("m", "mask", 0, "ok", 0, 10, 8, 5, 2, 3, 1),  # the baseline hallucinates on sample 0
        ("m", "mask", 0, "ok", 1, 10, 0, 5, 5, 3, 0),
        ("m", "mask", 1, "error", 0, None, None, None, None, None, None),  # sample 0 failed under the condition
        ("m", "mask", 1, "ok", 1, 10, 2, 5, 4, 3, 1),
    ]
    connection.executemany("insert into stg_sweep_results values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    connection.execute("create table stg_runs as select 'm' as run_id, 'hand' as model, 'amber-generative' as benchmark")
    connection.execute("create table stg_sweep_conditions as select * from (values ('m', 0, '{}'), ('m', 1, '{}')) as t(run_id, condition_id, settings)")
    found = connection.execute(get_mart("object_hallucination").sql)
    names = [column[0] for column in found.description]
    by_condition = {row["condition_id"]: row for row in (dict(zip(names, values)) for values in found.fetchall())}
    masked = by_condition[1]
    assert (masked["n_answers"], masked["n_paired"]) == (1, 1)
    # sample 1: chair 2/10 against 0/10, cover 4/5 against 5/5, hal 1 against 0 (unpaired: 2/10 - 8/20, 4/5 - 7/10, 1 - 1/2)
    assert (masked["chair_delta"], masked["cover_delta"], masked["hal_delta"]) == (pytest.approx(0.2), pytest.approx(-0.2), pytest.approx(1.0))
    assert (by_condition[0]["chair_delta"], by_condition[0]["n_paired"]) == (pytest.approx(0.0), 2)


def test_the_lens_marts_measure_depth_over_a_hybrid_models_decoder_layers(tmp_path):
    """A run shaped like Qwen3.5's tiny model: 8 decoder layers, 2 of them attention (runs.n_layers counts those).
    The lens has 9 layers (0 = embeddings .. 8 = the model's logits); the answer is top-1 from lens layer 4 on, both
    at the prompt's last position and at a generated word: settled at depth 4 / 8, early (was 4 / 2: depth 2.0,
    never early)."""
    from attnwh.warehouse.definitions import gen_rollup
    from attnwh.warehouse.schema import GEN_LENS, GEN_METRICS, GEN_TOKENS

    warehouse = open_warehouse(tmp_path / "wh", create=True)
    info = {"architecture": "Qwen3_5ForConditionalGeneration", "n_layers": 2, "n_decoder_layers": 8, "attention_layers": [3, 7], "n_heads": 1, "n_kv_heads": 1}
    run, _ = open_or_create_run(warehouse, kind="extract", model="hybrid", benchmark="handmade", spec={}, plan=Plan(["s0"], 1), run_id=None, details={"model_info": info})
    ranks = [5, 4, 3, 2, 1, 1, 1, 1, 1]

    def write(folder):
        lens = [
            {"run_id": run.run_id, "sample_idx": 0, "query": "prompt", "layer": layer, "target_token": 5, "target_rank": rank, "target_prob": 1 / rank}
            for layer, rank in enumerate(ranks)
        ]
        tables = {
            "samples": pa.Table.from_pylist([{"run_id": run.run_id, "sample_idx": 0, "sample_key": "s0", "status": "ok", "n_image": 4}], schema=SAMPLES),
            "logit_lens": pa.Table.from_pylist(lens, schema=LOGIT_LENS),
            "gen_metrics": pa.Table.from_pylist(
                [{"run_id": run.run_id, "sample_idx": 0, "step": 0, "layer": layer, "head": 0, "n_image": 4, "image_sum": 0.5} for layer in range(2)], schema=GEN_METRICS
            ),
            "gen_tokens": pa.Table.from_pylist(
                [{"run_id": run.run_id, "sample_idx": 0, "step": 0, "token_id": 5, "eos": False, "word_index": 0, "word": "cat", "word_start": True}], schema=GEN_TOKENS
            ),
            "gen_lens": pa.Table.from_pylist(
                [{"run_id": run.run_id, "sample_idx": 0, "step": 0, "layer": layer, "token_rank": rank, "token_prob": 1 / rank} for layer, rank in enumerate(ranks)],
                schema=GEN_LENS,
            ),
        }
        tables["gen_scores"], tables["gen_head_scores"] = gen_rollup(tables["gen_metrics"], tables["gen_tokens"])
        for name, table in tables.items():
            pq.write_table(table.replace_schema_metadata(with_metadata(name, table.schema).metadata), folder / f"{name}.parquet")
        return {name: table.num_rows for name, table in tables.items()}

    parts.commit_part(run.paths, 0, write)
    (generated,) = _rows(tmp_path / "wh", "gen_lens_settling", order=("run_id",))
    assert (generated["n_layers"], generated["median_settle_layer"], generated["mean_settle_depth"], generated["share_settled_early"]) == (8, 4, 0.5, 1.0)
    (prompt,) = _rows(tmp_path / "wh", "lens_settling", order=("run_id",))
    assert (prompt["n_layers"], prompt["median_settle_layer"], prompt["median_settle_depth"], prompt["share_settled_early"]) == (8, 4, 0.5, 1.0)
    depths = [row["depth"] for row in _rows(tmp_path / "wh", "lens_convergence", order=("layer",))]
    assert depths == pytest.approx([layer / 8 for layer in range(9)])
    with open_session(tmp_path / "wh") as session:
        assert session.query("select n_layers, n_decoder_layers from runs").to_pylist() == [{"n_layers": 2, "n_decoder_layers": 8}]
