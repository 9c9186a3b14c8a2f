"""The report page: self-contained, escaped, and built from the warehouse."""

from __future__ import annotations

import html
import json
import re

from attnwh.reports.build import build_report
from attnwh.reports.page import Page, Section, json_for_script
from tests.conftest import HOSTILE_QUESTION as HOSTILE


def script_blocks(page: str) -> list[str]:
    return re.findall(r"<script\b[^>]*>", page)


def test_report_is_self_contained_and_escapes_questions(tmp_path, hostile_warehouse):
    index = build_report(hostile_warehouse, tmp_path / "report")
    pages = {path.name: path.read_text() for path in index.parent.glob("*.html")}
    assert set(pages) == {"index.html", "attention.html", "layers.html", "lens.html", "masking.html", "pruning.html", "long-answers.html", "causal.html", "samples.html"}
    for name, page in pages.items():
        # the inlined library bundle, the JSON specs, one loader; nothing loaded from anywhere
        blocks = script_blocks(page)
        assert not any("src=" in block for block in blocks), name
        assert len(blocks) == 2 + page.count('<div class="chart"'), name
        assert not re.search(r"<(link|img|iframe)\b[^>]*(src|href)=\"?https?:", page), name
        assert HOSTILE not in page, name
        assert all(f'href="{other}"' in page for other in pages), f"{name} does not link every page"
    assert html.escape(HOSTILE) in pages["samples.html"]  # shown as text, never as markup
    # the first heatmap holds every layer × head of the model; the SQL is shown under it
    spec_text = re.search(r'<script type="application/json" id="spec-0">(.*?)</script>', pages["attention.html"], re.DOTALL).group(1)
    data = json.loads(spec_text)["datasets"]["rows"]
    values = [row for row in data if row["kind"] == "cell"]
    assert sorted((row["layer"], row["head"]) for row in values) == [(layer, head) for layer in range(3) for head in range(4)]
    assert all(row["n_samples"] == 3 for row in values)
    # the stages are marked where they start, as the stage macro splits the model's layers
    from attnwh.warehouse.definitions import layer_stages

    stages = layer_stages(3)
    expected = {(stage, stages.index(stage)) for stage in stages}
    assert {(row["stage"], row["start"]) for row in data if row["kind"] == "stage"} == expected and len(expected) == 3
    assert "head_attention" in pages["attention.html"] and "masking_curves" in pages["masking.html"]


def test_report_exports_charts_as_files(tmp_path, hostile_warehouse):
    build_report(hostile_warehouse, tmp_path / "report", formats=("html", "svg"))
    svgs = sorted((tmp_path / "report" / "charts").glob("*.svg"))
    assert [path.name for path in svgs][:2] == ["attention-1.svg", "attention-2.svg"]
    assert all(path.read_text().lstrip().startswith("<svg") for path in svgs)
    assert any(path.name.startswith("masking-") for path in svgs)


def test_json_in_scripts_cannot_close_the_script():
    text = json_for_script({"q": HOSTILE, "amp": "a & b <!-- x -->"})
    assert "<" not in text and ">" not in text and "&" not in text
    assert json.loads(text) == {"q": HOSTILE, "amp": "a & b <!-- x -->"}


def test_page_with_hostile_chart_data_and_table():
    page = Page(
        "t",
        [
            Section("chart", "", "select 1", spec={"data": {"values": [{"q": HOSTILE}]}, "mark": "point"}),
            Section("table", "", "select 2", table=[{"question": HOSTILE}]),
            Section("empty", "", "select 3"),
        ],
    ).render()
    assert HOSTILE not in page
    assert len(script_blocks(page)) == 3
    assert "No data for this section yet." in page


def test_empty_warehouse_report_says_so(tmp_path):
    from attnwh.warehouse.layout import open_warehouse

    open_warehouse(tmp_path / "wh", create=True)
    page = build_report(tmp_path / "wh", tmp_path / "out").read_text()
    assert "No data for this section yet." in page
    assert "No attribution runs in this warehouse: `attnwh attribute --benchmark BENCHMARK` ranks heads" in (tmp_path / "out" / "causal.html").read_text()


def test_figures_of_the_study_are_indexed_and_written_one_by_one(tmp_path, hostile_warehouse, capsys):
    """Each chart names the study's figure it reproduces (the supplement's captions: Fig. 9 logit-lens ranks,
    10/15 attention sums, 11 concentration, 14 concentration × sum, 12-13 masking curves); the first page
    indexes them; --figure N writes just those charts, as SVG, PNG or PDF."""
    from tests.reliability.harness import run_cli

    index = build_report(hostile_warehouse, tmp_path / "report")
    first = index.read_text()
    assert "Figures of the study" in first
    for figure in (1, 9, 10, 11, 12, 13, 14, 15):
        assert f"<td>Fig. {figure}</td>" in first, figure
    assert "Figs. 12–13 of the study." in (index.parent / "masking.html").read_text()
    assert "Figs. 10 and 15 of the study." in (index.parent / "attention.html").read_text()
    code, out, err = run_cli(capsys, "report", "--figure", "12", "--format", "pdf", "--out", str(tmp_path / "fig"), "--warehouse", str(hostile_warehouse))
    assert code == 0, err
    assert [path.name for path in (tmp_path / "fig").iterdir()] == ["fig-12-masking_curves.pdf"]
    assert (tmp_path / "fig" / "fig-12-masking_curves.pdf").read_bytes().startswith(b"%PDF")
    code, out, err = run_cli(capsys, "report", "--figure", "10", "--out", str(tmp_path / "fig10"), "--warehouse", str(hostile_warehouse))
    assert code == 0 and sorted(path.name for path in (tmp_path / "fig10").iterdir()) == ["fig-10-head_image_sum.svg", "fig-10-layer_image_sum.svg"]
    code, out, err = run_cli(capsys, "report", "--figure", "7", "--warehouse", str(hostile_warehouse))
    assert code == 2 and err.strip() == "attnwh: error: no chart reproduces Fig. 7; figures: 1, 9, 10, 11, 12, 13, 14, 15"


def test_report_panels_show_one_run_per_model_and_benchmark(tmp_path, tiny_mha):
    """Two extraction runs and two mask runs of one model and benchmark: each per-model panel holds the rows of the
    newest complete run only (before, every run's rows were drawn into the same cells and lines), equal to that
    run's rows in the per-run marts, and every report mart's sidecar tests (the grain's uniqueness) pass."""
    from attnwh.extract.mask_run import MaskOptions
    from attnwh.extract.ranking_import import ImportOptions, import_heads
    from attnwh.extract.run import ExtractOptions, run_extract
    from attnwh.face.workflows import mask_sweep
    from attnwh.queries.library import data_test_failures, get_mart, marts, open_session, run_mart
    from attnwh.warehouse.layout import open_warehouse

    warehouse = tmp_path / "wh"
    for limit in (2, 3):
        run_extract(warehouse, ExtractOptions(model=str(tiny_mha), benchmark="toy-shapes", limit=limit, device="cpu", command=["test"]))
    for k in ("1", "2"):
        mask_sweep(warehouse, MaskOptions(model=str(tiny_mha), benchmark="toy-shapes", limit=2, k=(k,), strategies=("top",), device="cpu", command=["test"]))
    manifests = [json.loads(run.manifest.read_text()) for run in open_warehouse(warehouse).run_folders()]
    newest = {kind: max((m["created"], m["run_id"]) for m in manifests if m["kind"] == kind)[1] for kind in ("extract", "mask")}
    # newer still: a mask run ranked by an imported ranking, which Figs. 12-13 (heads ranked by attention) leave out
    ranking_file = tmp_path / "ranking.json"
    ranking_file.write_text(json.dumps({f"{layer}-{head}": [float(layer * 4 + head)] for layer in range(3) for head in range(4)}))
    imported = import_heads(warehouse, ImportOptions(ranking_file, "retrieval-json", str(tiny_mha), "outside", command=["test"])).run_id
    by_import = mask_sweep(
        warehouse, MaskOptions(model=str(tiny_mha), benchmark="toy-shapes", limit=2, k=("1",), strategies=("top",), device="cpu", ranking_run=imported, command=["test"])
    )[0].run_id
    with open_session(warehouse) as session:
        heads = run_mart(session, "report_heads", {}).to_pylist()
        per_run = run_mart(session, "head_attention", {}).to_pylist()
        layers = run_mart(session, "report_layers", {}).to_pylist()
        masking = run_mart(session, "report_masking", {}).to_pylist()
        curves = run_mart(session, "masking_curves", {}).to_pylist()
        for name in [name for name in marts() if name.startswith("report_")]:
            mart = get_mart(name)
            parameters = {key: str(spec["default"]) for key, spec in mart.parameters.items() if "default" in spec}
            assert data_test_failures(mart, run_mart(session, name, parameters)) == [], name
    expected = {(row["layer"], row["head"]): (row["n_samples"], row["mean_image_sum"]) for row in per_run if row["run_id"] == newest["extract"] and row["query"] == "gen1"}
    assert len({row["run_id"] for row in per_run}) == 2 and len(heads) == len(expected) == 12
    assert {row["run_id"] for row in heads} == {newest["extract"]}
    assert all((row["n_samples"], row["mean_image_sum"]) == expected[(row["layer"], row["head"])] for row in heads)
    assert {row["run_id"] for row in layers} == {newest["extract"]} and len(layers) == 3
    assert len({row["run_id"] for row in curves}) == 3 and {row["run_id"] for row in masking} == {newest["mask"]} != {by_import}
    assert {row["ranking_score"] for row in masking} == {"concentration_x_sum"}
    with open_session(warehouse) as session:
        conditions = run_mart(session, "report_conditions", {}).to_pylist()
    assert {(row["run_id"], row["ranking_score"]) for row in conditions} >= {(by_import, "imported"), (newest["mask"], "concentration_x_sum")}
    shown = [row for row in curves if row["run_id"] == newest["mask"]]
    lines = {(row["strategy"], row["stage"]) for row in shown if row["strategy"] != "none"}
    assert len(masking) == len(shown) - 1 + len(lines)  # each line starts at the run's one baseline
