"""The report in a real browser (headless Chromium), with the network off."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from attnwh.reports.build import build_report
from tests.conftest import HOSTILE_QUESTION as HOSTILE

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--proxy-server=127.0.0.1:9",  # any network request fails: the page must not need one
    "--proxy-bypass-list=<-loopback>",
    "--enable-logging=stderr",
    "--v=0",
    "--virtual-time-budget=10000",
    "--dump-dom",
]


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("CI must install chromium for the browser tests (apt-get install chromium)")
        pytest.skip("chromium is not installed")
    return found


def render(page_path, tmp_path) -> tuple[str, str]:
    result = subprocess.run(
        [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", page_path.resolve().as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout, result.stderr


def test_report_renders_offline_and_runs_no_injected_script(tmp_path, hostile_warehouse):
    page = build_report(hostile_warehouse, tmp_path / "report")
    dom, log = render(page, tmp_path)
    charts = re.findall(r'<div class="chart[^"]*" id="chart-\d+"[^>]*>(.*?)</div>', dom, re.DOTALL)
    assert charts, "no chart container in the rendered page"
    for chart in charts:
        assert "<svg" in chart and re.search(r"<path\b", chart), "a chart did not render"
    assert "data-pwned" not in dom.split("<body", 1)[0] and 'data-pwned="' not in dom
    assert "CONSOLE" not in log, [line for line in log.splitlines() if "CONSOLE" in line]
    assert "window.pwned" not in log
    assert "&lt;/script&gt;&lt;script&gt;document.documentElement.setAttribute(" in dom  # shown as text
