"""The drawn figure (issue 47): pixels no token reads are grey, and the colour bar's numbers and label fit.

Pixels are read back from the saved PNG and compared with a hand-computed blend; the colour bar's text is measured
on the rendered canvas."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from PIL import Image

from attnwh.reports.overlays import Panel, SampleFigure

RED = (255, 0, 0)


def _figure(values: np.ndarray) -> SampleFigure:
    image = Image.new("RGB", (values.shape[1], values.shape[0]), RED)
    return SampleFigure(image, [Panel("layer 1 head 2", values)], "run · sample", "q", "a", "g", True, columns=1)


def _margined_map(peak: float, height: int = 100, width: int = 200) -> np.ndarray:
    """[height, width]: no value in the left and right quarters (a centre crop's margins), a ramp up to ``peak`` between."""
    values = np.full((height, width), np.nan, np.float32)
    values[:, width // 4 : width - width // 4] = np.linspace(0, peak, width - 2 * (width // 4), dtype=np.float32)[None, :]
    return values


@pytest.mark.parametrize("shape", [(100, 200), (20, 40)], ids=["as large as its panel", "smaller than its panel"])
def test_pixels_no_token_reads_are_grey_in_the_png(shape):
    """Also where the map is smaller than its panel (a small source image), which matplotlib resamples: the grey's own
    alpha was then multiplied by the alpha per pixel (0.85 × 0.85 = 0.72, a lighter grey)."""
    figure = _figure(_margined_map(1.5e-3, *shape))
    png = np.asarray(Image.open(io.BytesIO(figure.png())).convert("RGB")).astype(float)
    drawn = figure.figure()
    FigureCanvasAgg(drawn).draw()
    box = drawn.axes[0].get_window_extent()
    assert png.shape[:2] == (round(drawn.bbox.height), round(drawn.bbox.width))
    rows = slice(round(png.shape[0] - box.y1) + 3, round(png.shape[0] - box.y0) - 3)
    left_margin = png[rows, round(box.x0) + 3 : round(box.x0 + 0.2 * box.width)]
    # by hand: grey 127.5 at alpha 0.85 over the red image
    expected = 0.85 * np.array([127.5, 127.5, 127.5]) + 0.15 * np.array(RED)
    np.testing.assert_allclose(left_margin.reshape(-1, 3).mean(axis=0), expected, atol=3)
    assert np.abs(left_margin - expected).max() <= 3
    assert "grey: not read by the model" in figure.caption_lines()


def test_a_map_without_unread_pixels_says_nothing_of_grey():
    assert "grey: not read by the model" not in _figure(np.full((100, 200), 1e-3, np.float32)).caption_lines()


# (peak of the map, panel inches, image height / width): the report's thumbnails (2 in) and `attnwh show`'s (3 in);
# numbers of one to five characters (1.5e-3 is written 0.2 .. 1.4 with an offset, 0.03 as 0.000 .. 0.030); wide and tall
BARS = [(1.5e-3, 3.0, 0.5), (1.5e-3, 2.0, 0.5), (0.03, 2.0, 1.0), (1.0, 2.0, 0.25), (2e-4, 3.0, 3.0)]


@pytest.mark.parametrize(("peak", "panel_inches", "aspect"), BARS, ids=[f"{peak:g}-{inches:g}in-{aspect:g}" for peak, inches, aspect in BARS])
def test_colour_bar_numbers_and_label_lie_inside_a_single_panel(peak, panel_inches, aspect):
    """Attention per token is about 1e-3: the ticks must tell values apart, and nothing may be cut at the edge or
    drawn over the map."""
    values = _margined_map(peak, height=round(200 * aspect), width=200)
    image = Image.new("RGB", (values.shape[1], values.shape[0]), RED)
    drawn = SampleFigure(image, [Panel("layer 1 head 2\nscore 0.5", values)], "run · sample", "q", "a", "g", True, columns=1, panel_inches=panel_inches, dpi=72).figure()
    canvas = FigureCanvasAgg(drawn)
    canvas.draw()
    renderer = canvas.get_renderer()
    panel, bar = drawn.axes
    ticks = [label for label in bar.get_yticklabels() if label.get_visible() and label.get_text()]
    offset = bar.yaxis.get_offset_text()
    shown = [label.get_text() for label in ticks]
    assert len(shown) >= 3 and len(set(shown)) == len(shown)
    # the power of ten above the bar, as math text (10^{-3}) or plain (×10⁻³)
    exponent = re.search(r"10\^\{(.+?)\}|×10([⁻⁰¹²³⁴⁵⁶⁷⁸⁹]+)$", offset.get_text())
    power = next((group for group in exponent.groups() if group), "") if exponent else ""
    power = power.translate(str.maketrans("⁻⁰¹²³⁴⁵⁶⁷⁸⁹", "-0123456789")).replace("\N{MINUS SIGN}", "-")
    scale = 10.0 ** int(power) if exponent else 1.0
    assert exponent or not offset.get_text(), offset.get_text()
    numbers = [float(re.sub(r"[^0-9.\-\N{MINUS SIGN}]", "", text.replace("\\mathdefault", "")).replace("\N{MINUS SIGN}", "-")) * scale for text in shown]
    assert max(numbers) >= 0.8 * peak and min(numbers) <= 0.1 * peak  # the numbers are those of the map, 0 .. peak
    width, height = canvas.get_width_height()
    texts = [*ticks, offset, bar.yaxis.label, panel.title, drawn._suptitle]
    for text in texts:
        extent = text.get_window_extent(renderer)
        assert 0 <= extent.x0 and extent.x1 <= width and 0 <= extent.y0 and extent.y1 <= height, (text.get_text(), extent, width, height)
    drawn_map = panel.get_window_extent(renderer)
    for text in [*ticks, offset, bar.yaxis.label]:  # right of the map, never over it
        assert text.get_window_extent(renderer).x0 >= drawn_map.x1, (text.get_text(), text.get_window_extent(renderer), drawn_map)
    assert panel.title.get_window_extent(renderer).y0 >= drawn_map.y1  # the title above the map
