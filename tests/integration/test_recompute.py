"""``attnwh recompute``: derived statistics from raw rows, against numpy on the same rows read straight from Zarr.

The references here read each part's ``rows.zarr`` and ``samples.parquet`` by globbing the run's
folder (not through attnwh's commit log or readers) and compute every statistic with plain numpy
from the definitions in the README. Regions are checked against extraction itself: the region
statistics extraction stored for a PointQA question's boxes equal those recomputed from the rows
with the same boxes given in a regions file.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from attnwh.core.errors import ModelError, UsageError
from attnwh.extract.mask_run import MaskOptions
from attnwh.extract.recompute import RecomputeOptions, read_regions
from attnwh.extract.run import ExtractOptions, run_extract
from attnwh.face.workflows import mask_sweep, recompute
from attnwh.queries.library import open_session
from attnwh.warehouse.layout import open_warehouse
from tests.reliability.harness import run_cli

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    """The embedded toy on 10 samples in parts of 4 (3 parts), with raw rows."""
    warehouse = tmp_path_factory.mktemp("recompute") / "wh"
    result = run_extract(warehouse, ExtractOptions(limit=10, part_size=4, batch_size=4, device="cpu", command=["test"]))
    return warehouse, result.run_id


def reference_rows(warehouse: Path, run_id: str) -> list[tuple[int, str, np.ndarray]]:
    """(sample_idx, sample_key, image rows [query, layer, head, n_image] float32) of every sample, by globbing the run's parts."""
    (run,) = warehouse.glob(f"runs/*/*/run={run_id}")
    found = []
    for part in sorted((run / "parts").glob("part-*")):
        samples = {row["sample_idx"]: row for row in pq.read_table(part / "samples.parquet").to_pylist()}
        group = zarr.open_group(part / "rows.zarr", mode="r")
        attention = np.asarray(group["attention"][...], dtype=np.float32)
        for position, idx in enumerate(np.asarray(group["sample_idx"][...]).tolist()):
            sample = samples[idx]
            found.append((idx, sample["sample_key"], attention[position, ..., sample["image_start"] : sample["image_end"]]))
    return sorted(found, key=lambda item: item[0])


def view_rows(warehouse: Path, sql: str, **parameters) -> list[dict]:
    with open_session(warehouse) as session:
        return session.user_query(sql, parameters or None).to_pylist()


def keyed(rows: list[dict], column: str) -> dict[tuple, float]:
    return {(row["sample_idx"], row["query"], row["layer"], row["head"]): row[column] for row in rows}


QUERIES = ("prompt", "gen1")


def test_topk_mass_equals_numpy_and_joins_head_metrics(toy_run):
    warehouse, run_id = toy_run
    result = recompute(warehouse, RecomputeOptions(run_id, "topk_mass", "top3_mass", k=3, command=["test"]))
    assert (result.parts_total, result.parts_written) == (3, 3)
    got = keyed(view_rows(warehouse, "select * from top3_mass"), "topk_mass")
    expected = {}
    for idx, _, image in reference_rows(warehouse, run_id):
        for q, query in enumerate(QUERIES):
            for layer in range(image.shape[1]):
                for head in range(image.shape[2]):
                    row = image[q, layer, head]
                    total = float(row.sum())
                    expected[(idx, query, layer, head)] = float(np.sort(row)[::-1][:3].sum()) / total if total > 0 else None
    assert got.keys() == expected.keys() and len(got) == 10 * 2 * 4 * 8
    assert [key for key in got if got[key] is None] == [key for key in expected if expected[key] is None]  # no image attention: null
    assert max(abs(got[key] - expected[key]) for key in got if expected[key] is not None) < 1e-6
    assert min(value for value in got.values() if value is not None) < 0.9  # not trivially 1: the toy spreads attention over more than 3 of its 16 image tokens
    # joins head_metrics on the source run's keys; the top-3 mass is at least 3 / n_image and at most 1
    joined = view_rows(
        warehouse, "select count(*) as n, min(topk_mass * n_image) as low, max(topk_mass) as high from top3_mass join head_metrics using (run_id, sample_idx, query, layer, head)"
    )[0]
    assert joined["n"] == len(got) and joined["low"] >= 3 - 1e-4 and joined["high"] <= 1 + 1e-6
    # k beyond the image: the whole image attention
    recompute(warehouse, RecomputeOptions(run_id, "topk_mass", "all_mass", k=1000, command=["test"]))
    assert {round(row["topk_mass"], 6) for row in view_rows(warehouse, "select topk_mass from all_mass where topk_mass is not null")} == {1.0}


def test_sinks_equal_numpy(toy_run):
    warehouse, run_id = toy_run
    tau, share = 0.2, 0.25
    recompute(warehouse, RecomputeOptions(run_id, "image_sum_without_sinks", "no_sinks", tau=tau, share=share, command=["test"]))
    got = keyed(view_rows(warehouse, "select * from no_sinks"), "image_sum_without_sinks")
    sinks = {(row["sample_idx"], row["query"]): row["sink_positions"] for row in view_rows(warehouse, "select * from no_sinks_sinks")}
    expected, expected_sinks = {}, {}
    for idx, _, image in reference_rows(warehouse, run_id):
        n_layers, n_heads, n_image = image.shape[1:]
        for q, query in enumerate(QUERIES):
            votes = [0] * n_image
            for layer in range(n_layers):
                for head in range(n_heads):
                    row = image[q, layer, head]
                    for token in range(n_image):
                        votes[token] += bool(row[token] / row.sum() > tau)
            sink = [token for token in range(n_image) if votes[token] >= share * n_layers * n_heads]
            expected_sinks[(idx, query)] = sink
            for layer in range(n_layers):
                for head in range(n_heads):
                    row = image[q, layer, head]
                    expected[(idx, query, layer, head)] = float(sum(row[t] for t in range(n_image) if t not in sink))
    assert sinks == expected_sinks
    assert any(expected_sinks.values()) and not all(expected_sinks.values())  # the thresholds split the toy's samples
    assert got.keys() == expected.keys()
    assert max(abs(got[key] - expected[key]) for key in got) < 1e-5


def test_resumes_part_by_part_and_each_part_commits_once(toy_run, capsys):
    warehouse, run_id = toy_run
    args = ("recompute", run_id, "--statistic", "topk_mass", "--k", "2", "--name", "top2", "--warehouse", str(warehouse))
    code, out, err = run_cli(capsys, *args, "--max-parts", "1")
    assert code == 0, err
    assert "wrote 1 part(s)" in out and "(incomplete)" in out
    assert view_rows(warehouse, "select count(distinct sample_idx) as n from top2")[0]["n"] == 4
    code, out, err = run_cli(capsys, *args)
    assert code == 0 and "wrote 2 part(s)" in out and "1 of 3 part(s) were already computed" in out
    code, out, err = run_cli(capsys, *args)
    assert code == 0 and "wrote 0 part(s)" in out
    rows = view_rows(warehouse, "select sample_idx, query, layer, head, count(*) as n from top2 group by all having n > 1")
    assert rows == []
    assert view_rows(warehouse, "select count(*) as n from top2")[0]["n"] == 10 * 2 * 4 * 8
    (derived,) = [row for row in view_rows(warehouse, "select run_id, kind, complete from runs where kind = 'derived' and spec like '%top2%'")]
    assert derived["complete"]
    code, out, err = run_cli(capsys, "verify", "--warehouse", str(warehouse))
    assert code == 0, out + err


@pytest.mark.parametrize("scheduler", [None, "local:2"])
def test_damaged_source_rows_are_refused_and_none_of_them_committed(toy_run, tmp_path, capsys, scheduler):
    """A source part whose attention shard is deleted (Zarr would read it as NaN, its fill value: before, recompute
    committed a derived part of NULLs for it) is refused in one line naming the file, in process and on Dask
    workers, before the derived run is created (it was created, and left empty or with the sound parts)."""
    warehouse, run_id = toy_run
    damaged = tmp_path / "wh"
    shutil.copytree(warehouse, damaged)
    (run,) = damaged.glob(f"runs/*/*/run={run_id}")
    shard = next(path for path in sorted((run / "parts" / "part-000001" / "rows.zarr" / "attention" / "c").rglob("*")) if path.is_file())
    shard.unlink()
    options = ["--scheduler", scheduler] if scheduler else []
    code, out, err = run_cli(capsys, "recompute", run_id, "--statistic", "topk_mass", "--k", "5", "--name", "top5_damaged", "--warehouse", str(damaged), *options)
    lines = [line for line in err.splitlines() if line.startswith("attnwh: ")]
    assert code == 1 and len(lines) == 1, err
    assert lines[0].startswith("attnwh: error: ") and str(shard.relative_to(run)) in lines[0] and "is missing" in lines[0] and "attnwh verify" in lines[0], lines[0]
    assert not [manifest for manifest in damaged.glob("runs/*/*/run=*/RUN.json") if json.loads(manifest.read_text())["spec"].get("name") == "top5_damaged"]


def test_on_a_local_dask_cluster_equals_in_process(toy_run):
    warehouse, run_id = toy_run
    recompute(warehouse, RecomputeOptions(run_id, "topk_mass", "top4_local", k=4, command=["test"]))
    result = recompute(warehouse, RecomputeOptions(run_id, "topk_mass", "top4_dask", k=4, scheduler="local:2", command=["test"]))
    assert result.parts_written == 3
    local = view_rows(warehouse, "select sample_idx, query, layer, head, topk_mass from top4_local order by all")
    dask = view_rows(warehouse, "select sample_idx, query, layer, head, topk_mass from top4_dask order by all")
    assert local == dask and len(local) == 640
    writers = view_rows(warehouse, "select derived_run_id from top4_dask limit 1")
    assert writers


def test_regions_equal_what_extraction_stored_for_the_same_boxes(tmp_path, tiny_mha):
    (tmp_path / "data" / "VG_100K").mkdir(parents=True)
    Image.new("RGB", (64, 64), (90, 120, 150)).save(tmp_path / "data" / "VG_100K" / "1.png")
    Image.new("RGB", (128, 64), (150, 120, 90)).save(tmp_path / "data" / "VG_100K" / "2.png")
    boxes = {"q1": [[0, 0, 32, 32]], "q2": [[80, 48, 128, 64]]}
    entries = [
        {"id": "q1", "image": "VG_100K/1.png", "bboxes": boxes["q1"], "obj_question": "How many circles are there?", "answer": "2"},
        {"id": "q2", "image": "VG_100K/2.png", "bboxes": boxes["q2"], "obj_question": "How many squares are there?", "answer": "1"},
    ]
    (tmp_path / "data" / "pointQA_twice_test.json").write_text(json.dumps(entries), encoding="utf-8")
    warehouse = tmp_path / "wh"
    options = ExtractOptions(model=str(tiny_mha), benchmark="pointqa-visual-obj", data=tmp_path / "data", part_size=2, batch_size=2, device="cpu", command=["test"])
    run_id = run_extract(warehouse, options).run_id
    regions = tmp_path / "regions.jsonl"
    regions.write_text("".join(json.dumps({"sample_key": key, "boxes": value}) + "\n" for key, value in boxes.items()))
    recompute(warehouse, RecomputeOptions(run_id, "region", "boxed", regions=regions, command=["test"]))
    rows = view_rows(
        warehouse,
        "select b.region_sum as got_sum, m.region_sum as stored_sum, b.region_entropy as got_entropy, m.region_entropy as stored_entropy "
        "from boxed b join head_metrics m using (run_id, sample_idx, query, layer, head)",
    )
    assert len(rows) == 2 * 2 * 3 * 4
    assert max(abs(row["got_sum"] - row["stored_sum"]) for row in rows) < 2e-3  # rows are stored in float16
    assert max(abs(row["got_entropy"] - row["stored_entropy"]) for row in rows) < 5e-3
    # boxes for one sample only: the other's region statistics are null
    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps({"sample_key": "q2", "boxes": boxes["q2"]}) + "\n")
    recompute(warehouse, RecomputeOptions(run_id, "region", "boxed_q2", regions=one, command=["test"]))
    counts = view_rows(warehouse, "select s.sample_key, count(b.region_sum) as n from boxed_q2 b join samples s using (run_id, sample_idx) group by all order by 1")
    assert counts == [{"sample_key": "q1", "n": 0}, {"sample_key": "q2", "n": 24}]


@pytest.mark.parametrize(
    "extra, message",
    [
        (("--statistic", "topk_mass", "--name", "x"), "--statistic topk_mass needs --k"),
        (("--statistic", "topk_mass", "--k", "0", "--name", "x"), "--k must be at least 1; got 0"),
        (("--statistic", "topk_mass", "--k", "2", "--tau", "0.5", "--name", "x"), "--tau does not apply to --statistic topk_mass"),
        (("--statistic", "image_sum_without_sinks", "--tau", "2", "--share", "0.5", "--name", "x"), "--tau must be in (0, 1]; got 2.0"),
        (("--statistic", "entropy", "--name", "x"), "unknown statistic 'entropy'; choose topk_mass, image_sum_without_sinks, region"),
        (("--statistic", "topk_mass", "--k", "2", "--name", "Top"), "--name 'Top' must be a lower-case identifier"),
        (("--statistic", "topk_mass", "--k", "2", "--name", "head_metrics"), "--name head_metrics is taken"),
        (("--statistic", "topk_mass", "--k", "2", "--name", "visual_heads"), "--name visual_heads is taken"),
        (("--statistic", "topk_mass", "--k", "2", "--name", "x;drop"), "must be a lower-case identifier"),
        (("--statistic", "region", "--regions", "/nonexistent/regions.jsonl", "--name", "x"), "cannot read --regions /nonexistent/regions.jsonl"),
    ],
)
def test_bad_options_give_one_line(toy_run, capsys, extra, message):
    warehouse, run_id = toy_run
    code, out, err = run_cli(capsys, "recompute", run_id, *extra, "--warehouse", str(warehouse))
    assert code == 2 and len(err.splitlines()) == 1 and message in err, err


def test_bad_runs_and_names_give_one_line(toy_run, capsys, tiny_mha):
    warehouse, run_id = toy_run
    code, _, err = run_cli(capsys, "recompute", "nosuchrun", "--statistic", "topk_mass", "--k", "2", "--name", "x", "--warehouse", str(warehouse))
    assert code == 2 and err.strip() == f"attnwh: error: no run nosuchrun in {warehouse}"
    recompute(warehouse, RecomputeOptions(run_id, "topk_mass", "five", k=5, command=["test"]))
    code, _, err = run_cli(capsys, "recompute", run_id, "--statistic", "topk_mass", "--k", "6", "--name", "five", "--warehouse", str(warehouse))
    assert code == 2 and "--name five already holds topk_mass" in err and len(err.splitlines()) == 1
    no_rows = run_extract(warehouse, ExtractOptions(limit=2, part_size=2, rows=False, device="cpu", command=["test"])).run_id
    code, _, err = run_cli(capsys, "recompute", no_rows, "--statistic", "topk_mass", "--k", "2", "--name", "x", "--warehouse", str(warehouse))
    assert code == 2 and f"run {no_rows} is not an extraction with raw rows" in err


def test_regions_file_naming_unknown_samples_is_refused(toy_run, tmp_path):
    """Refused before the derived run is created: the audit of helper-37 found each such refusal leaving an empty
    derived run folder behind (a RUN.json and a plan, no part), listed by ``runs`` as a run of 0 parts."""
    warehouse, run_id = toy_run
    runs_before = sorted(path.name for path in (warehouse / "runs").rglob("run=*"))
    regions = tmp_path / "regions.jsonl"
    regions.write_text(json.dumps({"sample_key": "no-such-sample", "boxes": [[0, 0, 4, 4]]}) + "\n")
    with pytest.raises(UsageError, match=f"names 1 sample\\(s\\) not in run {run_id}: no-such-sample"):
        recompute(warehouse, RecomputeOptions(run_id, "region", "r", regions=regions, command=["test"]))
    known = reference_rows(warehouse, run_id)[0][1]
    regions.write_text(json.dumps({"sample_key": known, "boxes": [[0, 0, 4, 4]]}) + "\n")
    with pytest.raises(ModelError, match="model folder /nonexistent/model does not exist"):
        recompute(warehouse, RecomputeOptions(run_id, "region", "r", regions=regions, model="/nonexistent/model", command=["test"]))
    assert sorted(path.name for path in (warehouse / "runs").rglob("run=*")) == runs_before


def test_a_name_holding_the_same_run_made_otherwise_is_refused(toy_run, tmp_path):
    """The same name over the same source run with another regions file (or boxes found by another rule, as after
    attnwh's rule for thin boxes changed) made a second derived run under the name, and the view held each source row
    twice. Now refused in one line; the same command again resumes the run it made."""
    warehouse, run_id = toy_run
    known = reference_rows(warehouse, run_id)[0][1]
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    first.write_text(json.dumps({"sample_key": known, "boxes": [[0, 0, 4, 4]]}) + "\n")
    second.write_text(json.dumps({"sample_key": known, "boxes": [[2, 2, 9, 9]]}) + "\n")
    made = recompute(warehouse, RecomputeOptions(run_id, "region", "r", regions=first, command=["test"]))
    again = recompute(warehouse, RecomputeOptions(run_id, "region", "r", regions=first, command=["test"]))
    assert made.new_run and not again.new_run and again.run_id == made.run_id
    runs_before = sorted(path.name for path in (warehouse / "runs").rglob("run=*"))
    with pytest.raises(UsageError, match=f"--name r already holds run {run_id} made with other settings .*differing: parameters") as refused:
        recompute(warehouse, RecomputeOptions(run_id, "region", "r", regions=second, command=["test"]))
    assert "\n" not in str(refused.value)
    assert sorted(path.name for path in (warehouse / "runs").rglob("run=*")) == runs_before
    with open_session(warehouse) as session:
        counts = session.query("select count(*) as n, count(distinct (sample_idx, query, layer, head)) as distinct_rows from r").to_pylist()[0]
    assert counts["n"] == counts["distinct_rows"] > 0


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    coordinate=st.one_of(
        st.integers(309, 2_000).map(lambda digits: "1" + "0" * digits),  # an integer no float holds
        st.integers(309, 100_000).map(lambda exponent: f"1e{exponent}"),  # read as inf
        st.integers(309, 2_000).map(lambda exponent: f"-1E+{exponent}"),
    ),
    position=st.integers(0, 3),
)
def test_a_box_coordinate_past_float_range_is_one_line(tmp_path, coordinate, position):
    """An integer of 309 digits or more in a box ended ``recompute`` with numpy's TypeError (exit 70): now the line
    names the file and the box, as for any other bad box."""
    box = ["0", "0", "10", "10"]
    box[position] = coordinate
    path = tmp_path / "regions.jsonl"
    path.write_text('{"sample_key": "s", "boxes": [[' + ", ".join(box) + "]]}\n", encoding="utf-8")
    with pytest.raises(UsageError, match=f"{path}:1: a box is four finite numbers") as refused:
        read_regions(path)
    assert "\n" not in str(refused.value)


BOX = st.lists(st.one_of(st.integers(-5, 300), st.floats(allow_nan=True, allow_infinity=True), st.booleans(), st.text(max_size=3), st.none()), max_size=5)
LINE = st.one_of(
    st.text(max_size=40),
    st.builds(lambda key, boxes: json.dumps({"sample_key": key, "boxes": boxes}), st.one_of(st.text(max_size=5), st.integers(), st.none()), st.lists(BOX, max_size=3)),
    st.builds(json.dumps, st.one_of(st.none(), st.integers(), st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=3))),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(LINE, max_size=6))
def test_generated_regions_files_parse_or_give_one_line(tmp_path, lines):
    path = tmp_path / "regions.jsonl"
    path.write_text("\n".join(lines), encoding="utf-8")
    try:
        parsed = read_regions(path)
    except UsageError as exc:
        assert "\n" not in str(exc) and str(path) in str(exc)
        return
    for key, boxes in parsed.items():  # what parses is well-formed
        assert isinstance(key, str)
        for x0, y0, x1, y1 in boxes:
            assert all(np.isfinite([x0, y0, x1, y1])) and x0 <= x1 and y0 <= y1


def test_a_derived_view_is_read_only_and_survives_a_mask_run(toy_run, capsys):
    """The view is in every session (sql, query), user SQL cannot write through it, and other runs do not disturb it."""
    warehouse, run_id = toy_run
    recompute(warehouse, RecomputeOptions(run_id, "topk_mass", "top1", k=1, command=["test"]))
    mask_sweep(warehouse, MaskOptions(limit=4, k=("0", "1"), seeds=1, strategies=("top",), device="cpu", ranking_run=run_id, command=["test"]))
    code, out, err = run_cli(capsys, "sql", "select count(*) as n from top1", "--warehouse", str(warehouse), "--format", "json")
    assert code == 0 and json.loads(out)[0]["n"] == 640, err
    code, _, err = run_cli(capsys, "sql", "drop view top1", "--warehouse", str(warehouse))
    assert code != 0 and "only SELECT" in err
    assert open_warehouse(warehouse).find_run(run_id) is not None


def test_a_run_whose_images_are_split_by_text_tokens_is_refused(tmp_path, capsys):
    """Idefics3 splits an image into tiles with marker tokens between them (the span of a sample's 20 image tokens
    holds 30 positions): the statistics read the span, so recompute refuses such a run in one line, before it
    creates anything (by hand: 2×2 tiles + a global view of 4 tokens, each after two marker tokens)."""
    from tests.builders.tiny_idefics3 import save_tiny_idefics3

    folder = save_tiny_idefics3(tmp_path / "idefics3")
    result = run_extract(tmp_path / "wh", ExtractOptions(model=str(folder), limit=2, batch_size=2, device="cpu", command=["test"]))
    with open_session(tmp_path / "wh") as session:
        spans = session.query("select n_image, image_end - image_start as span from samples").to_pylist()
    assert spans == [{"n_image": 20, "span": 28}] * 2  # the first tile's markers come before the span: 4 × 2 within it
    runs_before = sorted(path.name for path in (tmp_path / "wh" / "runs").rglob("run=*"))
    code, out, err = run_cli(capsys, "recompute", result.run_id, "--statistic", "topk_mass", "--k", "1", "--name", "top1", "--warehouse", str(tmp_path / "wh"))
    assert code != 0 and err.splitlines() == [
        f"attnwh: error: run {result.run_id}: sample {_first_key(tmp_path / 'wh')}'s 20 image tokens lie split over a span of 28 (text tokens "
        "between tiles or rows); recompute reads the span and would count them"
    ]
    assert sorted(path.name for path in (tmp_path / "wh" / "runs").rglob("run=*")) == runs_before


def _first_key(warehouse) -> str:
    with open_session(warehouse) as session:
        return session.query("select sample_key from samples order by sample_idx limit 1").to_pylist()[0]["sample_key"]
