"""The report page: self-contained, escaped, and built from the warehouse."""

from __future__ import annotations

import html
import json
import re

import pytest

from attnwh.reports.build import build_report
from attnwh.reports.page import Page, Section, json_for_script

from tests.conftest import HOSTILE_QUESTION as HOSTILE


def script_blocks(page: str) -> list[str]:
    return re.findall(r"<script\b[^>]*>", page)


def test_report_is_self_contained_and_escapes_questions(tmp_path, hostile_warehouse):
    target = build_report(hostile_warehouse, tmp_path / "report")
    page = target.read_text()
    # one inlined library bundle, one JSON spec (the heatmap), one loader; nothing loaded from anywhere
    blocks = script_blocks(page)
    assert len(blocks) == 3, blocks
    assert not any("src=" in block for block in blocks)
    assert not re.search(r"<(link|img|iframe)\b[^>]*(src|href)=\"?https?:", page)
    # the question is shown as text, never as markup
    assert HOSTILE not in page
    assert html.escape(HOSTILE) in page
    # the heatmap spec parses back and holds every layer × head of the model
    spec_text = re.search(r'<script type="application/json" id="spec-0">(.*?)</script>', page, re.DOTALL).group(1)
    spec = json.loads(spec_text)
    values = spec["data"]["values"]
    assert sorted((row["layer"], row["head"]) for row in values) == [(layer, head) for layer in range(3) for head in range(4)]
    assert all(row["n_samples"] == 3 for row in values)
    assert "SELECT" in page.upper() and "head_attention" in page


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
