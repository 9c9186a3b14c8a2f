"""The report in a real browser (headless Chromium), with the network off."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from attnwh.face.pictures import report_sections
from attnwh.reports.build import build_report

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
    result = subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", page_path.resolve().as_uri()], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout, result.stderr


PAGES = ("index.html", "attention.html", "layers.html", "lens.html", "masking.html", "pruning.html", "samples.html")


@pytest.mark.parametrize("page_name", PAGES)
def test_every_report_page_renders_offline_and_runs_no_injected_script(tmp_path_factory, hostile_report, page_name):
    page = hostile_report / page_name
    dom, log = render(page, tmp_path_factory.mktemp("chromium"))
    expected_charts = page.read_text().count('<div class="chart"')
    charts = re.findall(r'<div class="chart[^"]*" id="chart-\d+"[^>]*>(.*?)</div>', dom, re.DOTALL)
    assert len(charts) == expected_charts
    if page_name not in ("index.html", "samples.html"):
        assert charts, f"{page_name} should have charts"
    for chart in charts:
        assert "<svg" in chart and re.search(r"<path\b", chart), f"a chart on {page_name} did not render"
    assert "No data for this section yet." not in dom, f"{page_name} has an empty section"
    assert "data-pwned" not in dom.split("<body", 1)[0] and 'data-pwned="' not in dom
    assert "CONSOLE" not in log, [line for line in log.splitlines() if "CONSOLE" in line]
    if page_name == "index.html":  # the story in sentences, each linking to its figure on another page
        assert re.search(r'<ul class="story"><li>[^<]+ <a href="attention\.html#section-\d+">', dom)
    if page_name == "samples.html":
        assert "&lt;/script&gt;&lt;script&gt;document.documentElement.setAttribute(" in dom  # shown as text
        # where heads look: every sample of the extraction (3) drawn, each image decoded by the browser (a broken
        # one logs to the console, caught above); the pictures are inline, the hostile question in captions as text
        widths = re.findall(r'<img [^>]*data-decoded-width="(\d+)"', dom)
        assert len(widths) == len(re.findall(r"<figure[^>]*><img ", page.read_text())) == 3 and all(int(width) > 300 for width in widths), widths
        assert 'src="data:image/jpeg;base64,' in dom and "<figcaption>" in dom
    screenshot(page, tmp_path_factory.mktemp("shot"))


def screenshot(page, profile) -> None:
    """With $ATTNWH_SCREENSHOTS set, a screenshot of the page at a desktop width (1440 px) is kept there, to be looked at."""
    folder = os.environ.get("ATTNWH_SCREENSHOTS")
    if not folder:
        return
    flags = [flag for flag in CHROMIUM_FLAGS if flag != "--dump-dom"]
    target = os.path.join(folder, page.name.replace(".html", ".png"))
    result = subprocess.run(
        [chromium(), *flags, f"--user-data-dir={profile}", "--window-size=1440,3000", f"--screenshot={target}", page.resolve().as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0 and os.path.getsize(target) > 0, result.stderr[-2000:]


@pytest.fixture(scope="module")
def hostile_report(tmp_path_factory, request):
    warehouse = request.getfixturevalue("hostile_warehouse_module")
    return build_report(warehouse, tmp_path_factory.mktemp("report") / "out", pictures=report_sections()).parent
