"""Overlay geometry per family (issue 33): where each image token reads the original image, and a planted row
that attends one known patch lights exactly that patch.

Expected boxes are worked out by hand from the tiny models' processor settings (the same settings
``test_regions.py`` notes per family), not by the code under test; the upsampling is checked against torch's own
bilinear interpolation. Models are built without weights (``load_geometry``): the processor and the family's
mapping are all overlays need.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attnwh.extract.models import load_geometry, resolve_source
from attnwh.extract.regions import token_layout
from attnwh.reports.overlays import overlay_maps
from tests.integration.test_regions import BUILDERS

# 8-bit coordinates: a 128-pixel side is read to ±0.25 px
TOLERANCE = 0.3

# family -> (image size, [(token, hand-computed box x0, y0, x1, y1, view)], tokens that read no pixel)
CASES = {
    # CLIP processor, no resize of a 64-high image, centre crop keeps x 32..96; 16 px patches, 4×4 row-major
    "llava": ((128, 64), [(0, (32, 0, 48, 16), 0), (6, (64, 16, 80, 32), 0), (15, (80, 48, 96, 64), 0)], []),
    "vipllava": ((64, 64), [(5, (16, 16, 32, 32), 0), (12, (0, 48, 16, 64), 0)], []),
    # resized (no crop) to 32×32 and pooled into 2×2 tokens: each a 64×32 quarter of a 128×64 image
    "gemma3": ((128, 64), [(1, (64, 0, 128, 32), 0), (2, (0, 32, 64, 64), 0)], []),
    # smart-resized to 96×64: 2 rows × 3 columns of 32×32 merged patches, each 32×24 of the original 96×48
    "qwen2_5_vl": ((96, 48), [(0, (0, 0, 32, 24), 0), (4, (32, 24, 64, 48), 0)], []),
    # base view 96×48 squashed to 32×32: 4×4 tokens of 24×12; tiles 1×2 of 32 px crops at 2/3 scale: 4 rows ×
    # 8 columns of 12×12, each row followed by a newline (tokens 16 + 9 r + c)
    "llava_next": ((96, 48), [(0, (0, 0, 24, 12), 0), (15, (72, 36, 96, 48), 0), (16 + 9 * 2 + 5, (60, 24, 72, 36), 1)], [16 + 9 * r + 8 for r in range(4)]),
    # tiles 2×3 of 32 px crops at scale 1, padded 8 px top and bottom, unpadded to rows 1..6: 6 rows × 12 columns
    # of 8×8 (tokens 16 + 13 r + c, the padded row r + 1 is original y 8 r .. 8 r + 8)
    "llava_onevision": (
        (96, 48),
        [(5, (24, 12, 48, 24), 0), (16 + 13 * 3 + 6, (48, 24, 56, 32), 1), (16 + 13 * 5 + 11, (88, 40, 96, 48), 1)],
        [16 + 13 * r + 12 for r in range(6)],
    ),
}
N_IMAGE = {"llava": 16, "vipllava": 16, "gemma3": 4, "qwen2_5_vl": 6, "llava_next": 16 + 4 * 9, "llava_onevision": 16 + 6 * 13}
# the area of the finest view's cell (the tiles of anyres), from the boxes above: maps are in its units
FINEST_CELL = {"llava": 16 * 16, "vipllava": 16 * 16, "gemma3": 64 * 32, "qwen2_5_vl": 32 * 24, "llava_next": 12 * 12, "llava_onevision": 8 * 8}


@pytest.fixture(scope="module")
def geometry_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("overlay-models")
    cache: dict[str, object] = {}

    def get(name: str):
        if name not in cache:
            cache[name] = load_geometry(resolve_source(str(BUILDERS[name](root / name))))
        return cache[name]

    return get


@pytest.mark.parametrize("family", list(CASES))
def test_token_boxes_against_the_processor(geometry_models, family):
    size, expected, unread = CASES[family]
    layout = token_layout(geometry_models(family), size)
    assert len(layout.views) == N_IMAGE[family] and layout.boxes.shape == (N_IMAGE[family], 4)
    for token, box, view in expected:
        np.testing.assert_allclose(layout.boxes[token], box, atol=TOLERANCE, err_msg=f"token {token}")
        assert layout.views[token] == view
    assert sorted(np.flatnonzero(layout.views < 0).tolist()) == unread
    assert np.isnan(layout.boxes[unread]).all() and not np.isnan(layout.boxes[layout.views >= 0]).any()


@pytest.mark.parametrize("family", list(CASES))
def test_a_planted_row_lights_exactly_its_patch(geometry_models, family):
    size, expected, _ = CASES[family]
    layout = token_layout(geometry_models(family), size)
    width, height = size
    for token, (x0, y0, x1, y1), _ in expected:
        weights = np.zeros(len(layout.views))
        weights[token] = 1.0
        picture = overlay_maps(weights, layout.boxes, layout.views, size, size)  # one map pixel per image pixel
        ys, xs = np.mgrid[0:height, 0:width] + 0.5
        centre_x, centre_y, cell_w, cell_h = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0
        # bilinear: the attention itself at the patch's centre (per token of the finest view; the nearest pixel centre
        # is up to half a pixel off it), nothing a cell away
        peak = FINEST_CELL[family] / (cell_w * cell_h)
        assert (1 - 0.5 / cell_w) * (1 - 0.5 / cell_h) * peak * 0.95 <= np.nanmax(picture) <= peak * 1.03  # 8-bit coordinates: ±2% on a cell
        brightest = np.argwhere(picture >= np.nanmax(picture) - 1e-9)
        assert all(x0 <= x + 0.5 <= x1 and y0 <= y + 0.5 <= y1 for y, x in brightest), f"token {token}: peak outside its patch"
        far = (np.abs(xs - centre_x) >= cell_w - TOLERANCE) | (np.abs(ys - centre_y) >= cell_h - TOLERANCE)
        assert np.nan_to_num(picture[far]).max() < 0.02 * peak, f"token {token} lights pixels a cell away"
        assert np.nansum(picture) > 0


def test_upsampling_is_torch_bilinear(geometry_models):
    # ViP-LLaVA, 64×64: a regular 4×4 grid over the whole image, upsampled to 64×64 as torch does it
    layout = token_layout(geometry_models("vipllava"), (64, 64))
    weights = np.random.default_rng(0).random(16)
    expected = torch.nn.functional.interpolate(torch.tensor(weights).reshape(1, 1, 4, 4), size=(64, 64), mode="bilinear", align_corners=False)[0, 0].numpy()
    np.testing.assert_allclose(overlay_maps(weights, layout.boxes, layout.views, (64, 64), (64, 64)), expected, atol=0.02)


def test_pixels_no_token_reads_have_no_value(geometry_models):
    # LLaVA's centre crop of a 128×64 image drops x < 32 and x ≥ 96
    layout = token_layout(geometry_models("llava"), (128, 64))
    picture = overlay_maps(np.ones((2, 3, 16)), layout.boxes, layout.views, (128, 64), (128, 64))
    assert picture.shape == (2, 3, 64, 128)
    assert np.isnan(picture[..., :31]).all() and np.isnan(picture[..., 97:]).all()
    np.testing.assert_allclose(picture[..., 33:95], 1.0, atol=1e-6)


def test_text_in_pictures_is_drawn_as_written():
    """Benchmark text is never parsed as mathtext ($...$ would be typeset, an unbalanced one raises) nor as markup."""
    from PIL import Image

    from attnwh.reports.overlays import Panel, SampleFigure

    question = r"Is $\frac{1 the <b>price</b> $5 & </script>?"
    figure = SampleFigure(Image.new("RGB", (32, 32), (40, 80, 120)), [Panel("L0 H0 $x_1", np.full((32, 32), 0.5))], "run · sample", question, "$", "A", False)
    assert figure.png()[:8] == b"\x89PNG\r\n\x1a\n" and b"<svg" in figure.svg()
    page = figure.html()
    assert "&lt;b&gt;price&lt;/b&gt;" in page and "&lt;/script&gt;" in page and "<b>" not in page
