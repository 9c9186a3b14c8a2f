"""The report's page Attention against causal importance in headless Chromium: its scatter and its masking curves
render from a warehouse with an attribution run, an extraction, and mask sweeps ranked by each."""

from __future__ import annotations

import re

from attnwh.extract.attribution import AttributeOptions, prepare_attribute, run_attribute
from attnwh.extract.mask_run import MaskOptions
from attnwh.extract.run import ExtractOptions, run_extract
from attnwh.face.workflows import mask_sweep
from attnwh.reports.build import build_report
from tests.browser.test_report_in_chromium import chromium, render


def test_the_causal_page_renders_its_charts_offline(tmp_path, tiny_mha):
    chromium()  # skips (or fails in CI) before any work when there is no browser
    warehouse, common = tmp_path / "wh", {"model": str(tiny_mha), "benchmark": "toy-shapes-choice", "limit": 3, "device": "cpu", "command": ["test"]}
    attribution = run_attribute(warehouse, prepare_attribute(AttributeOptions(method="single", **common)))
    extraction = run_extract(warehouse, ExtractOptions(rows=False, **common))
    for ranking in (extraction.run_id, attribution.run_id):
        mask_sweep(warehouse, MaskOptions(k=("0", "1", "2"), seeds=1, ranking_run=ranking, **common))
    page = build_report(warehouse, tmp_path / "report").parent / "causal.html"
    dom, log = render(page, tmp_path)
    charts = re.findall(r'<div class="chart[^"]*" id="chart-\d+"[^>]*>(.*?)</div>', dom, re.DOTALL)
    assert len(charts) == 2 and all("<svg" in chart and re.search(r"<path\b", chart) for chart in charts)
    assert "No data for this section yet." not in dom and "CONSOLE" not in log
    assert "by attribution leaves accuracy" in dom and "Spearman's rho" in dom.replace("&#x27;", "'")
