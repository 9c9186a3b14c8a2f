"""``attnwh show`` (issue 33): pictures written in each format at the expected size, the stored rows drawn where
their tokens read the image, text in pages escaped, and every mistake one line."""

from __future__ import annotations

import html
import io

import numpy as np
import pytest
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import attnwh
from attnwh.extract.run import ExtractOptions, run_extract
from attnwh.face.cli import main
from attnwh.warehouse.catalog import Catalog
from attnwh.warehouse.layout import open_warehouse
from tests.conftest import HOSTILE_QUESTION

DPI, PANEL_INCHES, WIDTH_PER_PANEL = 100, 3.0, 1.3  # SampleFigure's defaults: 390 pixels a panel


def run_main(capsys, args: list[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_:
        main(args)
    captured = capsys.readouterr()
    return exit_.value.code, captured.out, captured.err


@pytest.fixture(scope="module")
def extract_run(hostile_warehouse_module) -> str:
    with Catalog(open_warehouse(hostile_warehouse_module)) as catalog:
        return catalog.query("select run_id from runs where kind = 'extract'").to_pylist()[0]["run_id"]


def test_png_svg_and_html_are_written(hostile_warehouse, extract_run, capsys, tmp_path):
    base = ["show", extract_run, "0", "--warehouse", str(hostile_warehouse)]
    code, out, err = run_main(capsys, [*base, "--layer", "1", "--head", "2", "--out", str(tmp_path / "one.png")])
    assert (code, err) == (0, "") and out.strip() == f"wrote {tmp_path / 'one.png'}"
    with Image.open(tmp_path / "one.png") as picture:
        assert picture.format == "PNG" and picture.width == round(PANEL_INCHES * WIDTH_PER_PANEL * DPI)
    code, _, err = run_main(capsys, [*base, "--top", "4", "--out", str(tmp_path / "top.png")])
    assert code == 0, err
    with Image.open(tmp_path / "top.png") as picture:
        assert picture.width == 4 * round(PANEL_INCHES * WIDTH_PER_PANEL * DPI) and picture.height > PANEL_INCHES * DPI
    code, _, err = run_main(capsys, [*base, "--layer", "2", "--query", "prompt", "--out", str(tmp_path / "mean.svg")])
    assert code == 0, err
    svg = (tmp_path / "mean.svg").read_text(encoding="utf-8")
    assert "<svg" in svg and "<image" in svg and "<script" not in svg
    code, _, err = run_main(capsys, [*base, "--top", "2", "--out", str(tmp_path / "page.html")])
    assert code == 0, err
    page = (tmp_path / "page.html").read_text(encoding="utf-8")
    # the hostile question is shown as text, never as markup
    assert page.count("<script") == 0 and "onerror=" not in page.replace("onerror=&quot;", "")
    assert html.escape(HOSTILE_QUESTION) in page and "data:image/png;base64," in page


def test_the_maps_are_the_stored_rows(hostile_warehouse, extract_run):
    """The toy image (64 px, 16 px patches, no crop) has a 4×4 grid: a map sampled at the cells' centres is the
    stored row of the image tokens, read here from the part's Zarr directly."""
    with attnwh.open(hostile_warehouse) as wh:
        overlays = wh.overlays(extract_run, ["1"], query="gen1", side=4)
        figure = wh.show(extract_run, "1", layer=0, head=3)
        n_image, start = wh.sql("select n_image, image_start from samples where run_id = $run and sample_idx = 1", run=extract_run).fetchall()[0]
    (rows,) = [zarr.open_group(path, mode="r") for path in sorted(hostile_warehouse.glob(f"runs/*/*/run={extract_run}/parts/*/rows.zarr"))]
    position = list(rows["sample_idx"][...]).index(1)
    stored = np.asarray(rows["attention"][position, list(rows.attrs["queries"]).index("gen1")], dtype=np.float32)[..., start : start + n_image]
    assert overlays.dims == ("sample", "layer", "head", "y", "x") and overlays.shape == (1, 3, 4, 4, 4)
    np.testing.assert_allclose(overlays.values[0], stored.reshape(3, 4, 4, 4), atol=2e-3)
    assert list(overlays.sample_key.values) == ["test-00001"]
    with Image.open(io.BytesIO(figure._repr_png_())) as picture:
        assert picture.width == round(PANEL_INCHES * WIDTH_PER_PANEL * DPI)
    assert "layer 0 head 3" in figure.panels[0].title


def test_a_run_without_rows_is_refused_naming_the_flag(tmp_path, tiny_mha, capsys):
    run_extract(tmp_path / "wh", ExtractOptions(model=str(tiny_mha), limit=1, rows=False, device="cpu", command=["test"]))
    with Catalog(open_warehouse(tmp_path / "wh")) as catalog:
        run_id = catalog.query("select run_id from runs").to_pylist()[0]["run_id"]
    code, out, err = run_main(capsys, ["show", run_id, "0", "--out", str(tmp_path / "x.png"), "--warehouse", str(tmp_path / "wh")])
    assert code != 0 and out == "" and len(err.splitlines()) == 1
    assert err.startswith("attnwh: error: ") and "--no-rows" in err and not (tmp_path / "x.png").exists()
    # the report's Samples page lists the run with the reason instead of pictures
    code, _, err = run_main(capsys, ["report", "--out", str(tmp_path / "report"), "--warehouse", str(tmp_path / "wh")])
    page = (tmp_path / "report" / "samples.html").read_text(encoding="utf-8")
    assert code == 0 and "runs without pictures" in page and "extracted with --no-rows" in page and "<figure" not in page


@pytest.mark.parametrize("value", ["-1", "51", "many"])
def test_report_pictures_out_of_range_is_one_line(value, capsys, tmp_path):
    code, _, err = run_main(capsys, ["report", "--pictures", value, "--out", str(tmp_path / "r"), "--warehouse", str(tmp_path / "wh")])
    assert code != 0 and len(err.splitlines()) == 1 and err.startswith("attnwh: error: ") and "--pictures" in err, err


BAD = [
    (["--out", "x.jpg"], "--out must end in"),
    (["--query", "gen", "--out", "x.png"], "--query must be one of"),
    (["--head", "1", "--out", "x.png"], "--head needs --layer"),
    (["--layer", "1", "--top", "2", "--out", "x.png"], "not both"),
    (["--score", "nope", "--out", "x.png"], "is not a head score"),
    ([], "--out"),
]


@pytest.mark.parametrize(("options", "message"), BAD)
def test_bad_options_are_one_line(hostile_warehouse, extract_run, capsys, tmp_path, monkeypatch, options, message):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main(capsys, ["show", extract_run, "0", *options, "--warehouse", str(hostile_warehouse)])
    assert code != 0 and len(err.splitlines()) == 1 and err.startswith("attnwh: error: ") and message in err, err


def test_unknown_runs_and_samples_are_one_line(hostile_warehouse, extract_run, capsys, tmp_path):
    for run_id, sample, message in (("nope", "0", "no run nope"), (extract_run, "no-such-sample", "has no sample 'no-such-sample'")):
        code, _, err = run_main(capsys, ["show", run_id, sample, "--out", str(tmp_path / "x.png"), "--warehouse", str(hostile_warehouse)])
        assert code != 0 and len(err.splitlines()) == 1 and message in err, err


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(layer=st.integers(-5, 40), head=st.integers(-5, 40), top=st.integers(-5, 100))
def test_out_of_range_heads_are_one_line(hostile_warehouse, extract_run, capsys, tmp_path, layer, head, top):
    """The tiny model has 3 layers of 4 heads; --top takes 1 to 64."""
    for options in (["--layer", str(layer), "--head", str(head)], ["--top", str(top)]):
        valid = (0 <= layer < 3 and 0 <= head < 4) if options[0] == "--layer" else 1 <= top <= 64
        if valid:
            continue
        code, out, err = run_main(capsys, ["show", extract_run, "0", *options, "--out", str(tmp_path / "x.png"), "--warehouse", str(hostile_warehouse)])
        assert code != 0 and out == "" and len(err.splitlines()) == 1 and err.startswith("attnwh: error: ") and "must be between" in err, err


def test_show_reads_its_rows_whatever_scheduler_dask_is_configured_with(hostile_warehouse, extract_run, capsys, tmp_path):
    """A process whose dask configuration names the distributed scheduler with no client (a notebook's closed cluster, or
    a client cut short) made ``show`` and ``report`` end with an internal error: the rows are read here, in threads."""
    import dask

    with dask.config.set(scheduler="dask.distributed"):
        code, out, err = run_main(capsys, ["show", extract_run, "0", "--layer", "1", "--head", "2", "--out", str(tmp_path / "one.png"), "--warehouse", str(hostile_warehouse)])
    assert (code, err) == (0, "") and out.strip() == f"wrote {tmp_path / 'one.png'}"


def test_a_sample_whose_layout_is_refused_is_left_out_of_the_samples_page_with_its_reason(hostile_warehouse, extract_run, monkeypatch):
    """The report's Samples page draws the run's other samples and lists the refused one (issue 47: layouts placed
    in coarse steps are refused); before, one refused sample left the whole run without pictures."""
    from attnwh.extract import regions
    from attnwh.face.pictures import report_sections
    from attnwh.queries.library import open_session
    from attnwh.reports import flips

    real, calls = regions.token_layout, []

    def first_refused(loaded, size):
        calls.append(size)
        if len(calls) == 1:
            raise regions.CoarseLayoutError("overlays are not drawn for this planted image")
        return real(loaded, size)

    monkeypatch.setattr(regions, "token_layout", first_refused)
    monkeypatch.setattr(flips, "sample_sections", lambda session, draw=None: [])  # the flips' pictures: not this test's
    with open_session(hostile_warehouse) as session:  # the report's session
        first = session.query("select sample_key from samples where run_id = $run and status = 'ok' order by sample_idx limit 2", {"run": extract_run}).to_pylist()
        sections = report_sections(n_samples=2)(session)
    drawn = next(section for section in sections if extract_run in section.title and section.pictures is not None)
    assert len(first) == 2 and len(drawn.pictures) == 1 and first[1]["sample_key"] in drawn.pictures[0].caption
    listed = next(section for section in sections if section.title == "Where heads look: runs without pictures").table
    assert [(row["run_id"], row["sample"], row["no pictures because"]) for row in listed] == [
        (extract_run, first[0]["sample_key"], "overlays are not drawn for this planted image")
    ]


def test_a_model_whose_layouts_cannot_be_drawn_is_one_row_not_one_per_sample(hostile_warehouse, extract_run, monkeypatch):
    """A model without overlays (a family with no token mapping) is a reason of the run: one row under "runs without
    pictures" and no section of its own. Since samples could be refused one by one, every sample was listed with the
    run's reason, beside an empty section saying "No sample of this run was answered"."""
    from attnwh.core.errors import ModelError
    from attnwh.extract import regions
    from attnwh.face.pictures import report_sections
    from attnwh.queries.library import open_session
    from attnwh.reports import flips

    def unsupported(loaded, size):
        raise ModelError("overlays are not supported for this planted model")

    monkeypatch.setattr(regions, "token_layout", unsupported)
    monkeypatch.setattr(flips, "sample_sections", lambda session, draw=None: [])
    with open_session(hostile_warehouse) as session:
        sections = report_sections(n_samples=2)(session)
    assert not [section for section in sections if extract_run in section.title]
    listed = next(section for section in sections if section.title == "Where heads look: runs without pictures").table
    assert [(row["sample"], row["no pictures because"]) for row in listed if row["run_id"] == extract_run] == [(None, "overlays are not supported for this planted model")]
