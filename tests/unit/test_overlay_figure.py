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


def test_colour_bar_numbers_and_label_lie_inside_a_single_panel():
    """Attention per token is about 1e-3: the ticks must tell values apart, and nothing may be cut at the edge."""
    drawn = _figure(_margined_map(1.5e-3)).figure()
    canvas = FigureCanvasAgg(drawn)
    canvas.draw()
    renderer = canvas.get_renderer()
    bar = drawn.axes[1]
    ticks = [label for label in bar.get_yticklabels() if label.get_visible() and label.get_text()]
    offset = bar.yaxis.get_offset_text()
    shown = [label.get_text() for label in ticks]
    assert len(shown) >= 3 and len(set(shown)) == len(shown)
    exponent = re.search(r"10\^\{(.+?)\}", offset.get_text())
    scale = 10.0 ** int(exponent.group(1).replace("\N{MINUS SIGN}", "-")) if exponent else 1.0
    values = [float(re.sub(r"[^0-9.\-\N{MINUS SIGN}]", "", text.replace("\\mathdefault", "")).replace("\N{MINUS SIGN}", "-")) * scale for text in shown]
    assert max(values) >= 1.2e-3 and min(values) <= 1e-4  # the numbers are those of the map, 0 .. 1.5e-3
    width, height = canvas.get_width_height()
    for text in [*ticks, offset, bar.yaxis.label]:
        extent = text.get_window_extent(renderer)
        assert 0 <= extent.x0 and extent.x1 <= width and 0 <= extent.y0 and extent.y1 <= height, (text.get_text(), extent, width, height)
