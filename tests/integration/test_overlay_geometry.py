"""Token layouts at real sizes (the processors' own settings, models built without weights): the drawn cells tile the
part of the image a view reads, without stripes, and sit where the processors' documented steps put them.

At 64-128 px (the tiny models' processors) the 8-bit coordinate image is exact enough; at 640 px a step is 2.5 px, and
neighbouring boxes left gaps a drawing showed as lines no token reads. SigLIP's 384-pixel tiles in patches of 14
(LLaVA-OneVision) leave pixels 378-383 unread; they were refused."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from accelerate import init_empty_weights
from PIL import Image
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    Gemma3ImageProcessorPil,
    LlamaConfig,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessorPil,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionImageProcessorPil,
    Qwen2Config,
    Qwen2VLImageProcessorPil,
    SiglipVisionConfig,
)

from attnwh.core.errors import ModelError
from attnwh.extract.discovery import family_of
from attnwh.extract.regions import region_mask, token_layout
from attnwh.reports.overlays import overlay_maps

DRAWN = (448, 336)  # attnwh show's size for a 4:3 image


def _loaded(family: str, image_processor, config, model=None):
    """What token_layout reads of a loaded model: its family, image processor, config (and model, for anyres)."""
    return SimpleNamespace(
        spec=SimpleNamespace(family=family_of(family), architecture=family), processor=SimpleNamespace(image_processor=image_processor), config=config, model=model
    )


def _llava15():
    """LLaVA-1.5's CLIP processor (shortest side 336, centre crop 336, patches of 14: 24 × 24 tokens), CLS dropped."""
    processor = CLIPImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
    config = SimpleNamespace(vision_config=SimpleNamespace(patch_size=14), vision_feature_select_strategy="default")
    return _loaded("llava", processor, config)


def _onevision():
    pinpoints = [[384 * i, 384 * j] for i in range(1, 7) for j in range(1, 7)]
    processor = LlavaOnevisionImageProcessorPil(size={"height": 384, "width": 384}, image_grid_pinpoints=pinpoints)
    vision = SiglipVisionConfig(image_size=384, patch_size=14, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    text = Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2, vocab_size=100)
    config = LlavaOnevisionConfig(
        vision_config=vision, text_config=text, image_grid_pinpoints=pinpoints, vision_feature_select_strategy="full", vision_feature_layer=-1, vision_aspect_ratio="anyres_max_9"
    )
    with init_empty_weights():
        model = LlavaOnevisionForConditionalGeneration(config)
    return _loaded("llava_onevision", processor, config, model), processor


def _llava_next():
    """LLaVA-NeXT (v1.6): CLIP 336 / 14, its pinpoints, padding to the pinpoint, the model's unpadding."""
    pinpoints = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
    processor = LlavaNextImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}, image_grid_pinpoints=pinpoints, do_pad=True)
    vision = CLIPVisionConfig(image_size=336, patch_size=14, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    text = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=100)
    config = LlavaNextConfig(vision_config=vision, text_config=text, image_grid_pinpoints=pinpoints, vision_feature_select_strategy="default", vision_feature_layer=-2)
    with init_empty_weights():
        model = LlavaNextForConditionalGeneration(config)
    return _loaded("llava_next", processor, config, model)


FAMILIES = {
    "llava": _llava15,
    "llava_next": _llava_next,
    "qwen2_5_vl": lambda: _loaded("qwen2_5_vl", Qwen2VLImageProcessorPil(size={"shortest_edge": 3136, "longest_edge": 12845056}), SimpleNamespace()),
    "gemma3": lambda: _loaded("gemma3", Gemma3ImageProcessorPil(size={"height": 896, "width": 896}), SimpleNamespace(mm_tokens_per_image=256)),
}


@pytest.mark.parametrize("size", [(640, 480), (500, 375), (1024, 768)])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_uniform_attention_draws_one_value_over_what_the_views_read(family, size):
    """One unit of attention on every token: within the drawn part of the image every pixel has a value, and one
    value (each view's cells tile it; anyres adds its base view's share everywhere). Was: 10-20 empty columns, and
    LLaVA-NeXT's grid of darker lines where a tile's cell missed its neighbour."""
    layout = token_layout(FAMILIES[family](), size)
    drawn = overlay_maps(np.where(layout.views >= 0, 1.0, 0.0), layout.boxes, layout.views, size, DRAWN)
    columns, rows = np.flatnonzero(~np.isnan(drawn).all(axis=0)), np.flatnonzero(~np.isnan(drawn).all(axis=1))
    inner = drawn[rows.min() : rows.max() + 1, columns.min() : columns.max() + 1]
    assert not np.isnan(inner).any()
    assert np.allclose(inner, np.median(inner), rtol=1e-4)


@pytest.mark.parametrize("size", [(640, 480), (1024, 768), (480, 640)])
def test_llava15_cells_are_the_centre_crops_patches(size):
    """Resize the shortest side to 336, crop the centre 336 × 336, 24 patches a side: token (r, c) reads the original
    pixels [left + c·s, left + (c+1)·s) × [top + r·s, ...) with s = shortest side / 24 (by hand), to within one step of
    the 8-bit coordinates (side / 255)."""
    width, height = size
    side = min(width, height) / 24
    left, top = (width - min(width, height)) / 2, (height - min(width, height)) / 2
    layout = token_layout(_llava15(), size)
    rows, cols = np.divmod(np.arange(576), 24)
    expected = np.stack([left + cols * side, top + rows * side, left + (cols + 1) * side, top + (rows + 1) * side], axis=1)
    assert np.abs(layout.boxes - expected).max() <= max(width, height) / 255


def test_onevision_views_leave_the_pixels_siglip_does_not_read():
    """SigLIP's patches of 14 read 378 of a 384-pixel view: the base view (the whole image squashed to 384 × 384)
    reads none of the image's last W · 6 / 384 columns and H · 6 / 384 rows (by hand), and the drawing has no
    value there; elsewhere its cells tile the image."""
    loaded, _ = _onevision()
    width, height = 640, 480
    layout = token_layout(loaded, (width, height))
    base = layout.boxes[layout.views == 0]
    step = max(width, height) / 255
    assert abs(base[:, 2].max() - width * 378 / 384) <= step and abs(base[:, 3].max() - height * 378 / 384) <= step
    assert base[:, 0].min() == 0 and base[:, 1].min() == 0
    drawn = overlay_maps(np.where(layout.views == 0, 1.0, 0.0), layout.boxes, np.where(layout.views == 0, 0, -1), (width, height), DRAWN)
    read_columns, read_rows = int(round(DRAWN[0] * base[:, 2].max() / width)), int(round(DRAWN[1] * base[:, 3].max() / height))
    assert not np.isnan(drawn[: read_rows - 1, : read_columns - 1]).any()
    assert np.isnan(drawn[:, read_columns + 1 :]).all() and np.isnan(drawn[read_rows + 1 :]).all()


def test_onevision_tile_seams_keep_their_unread_stripes_and_next_tiles_meet():
    """A 1024 × 768 image: OneVision puts it on a 1152 × 768 canvas of 3 × 2 tiles of 384 (its best pinpoint), and
    each tile's last 6 of 384 pixels are unread, so both vertical seams keep a gap (one had been closed as if it were
    rounding); LLaVA-NeXT's CLIP reads its 336-pixel tiles whole, so its tiles meet."""

    def tile_gaps(loaded, size):
        layout = token_layout(loaded, size)
        tiles = layout.boxes[layout.views == 1]
        ends, starts = np.unique(tiles[:, 2]), np.unique(tiles[:, 0])
        following = [(end, starts[starts >= end].min()) for end in ends if (starts >= end).any()]  # each cell's right neighbour
        return [(end, start) for end, start in following if start > end]

    seams = tile_gaps(_onevision()[0], (1024, 768))
    assert len(seams) == 2 and all(start - end > 1 for end, start in seams)
    assert tile_gaps(_llava_next(), (1024, 768)) == []


def test_onevision_tiles_of_siglip_384_in_patches_of_14_are_mapped():
    """27 × 27 patches a tile (the convolution leaves pixels 378-383 unread): as many tokens as the processor counts
    for the image (LlavaOnevisionProcessor's arithmetic, here its image processor's grid and the model's packing), a
    box at the image's centre marks tokens, and a 1600 × 1200 image, whose tiles the model down-samples, has regions
    but no overlay (refused in one line)."""
    loaded, processor = _onevision()
    size = (640, 480)
    mask = region_mask(loaded, Image.new("RGB", size, (90, 90, 90)), [(300, 220, 340, 260)])
    pixels = processor(images=[Image.new("RGB", size)], return_tensors="pt")["pixel_values"]
    n_views = pixels.shape[1]
    assert n_views > 1 and len(mask) > 729 * 2  # the base view's 729 and tiles
    assert 0 < int(mask.sum()) < 40
    large = (1600, 1200)
    assert region_mask(loaded, Image.new("RGB", large), [(0, 0, 100, 100)]).any()
    with pytest.raises(ModelError, match="down-sampled"):
        token_layout(loaded, large)


def test_a_tile_of_one_patch_or_more_reads_whole_patches_only():
    """A processed image smaller than a patch is refused in one line, not a reshape error."""
    from attnwh.extract.regions import _blocks

    assert _blocks(torch.zeros(3, 384, 384), 14, 14).shape == (27 * 27, 3, 14, 14)
    with pytest.raises(ModelError, match="smaller than one"):
        _blocks(torch.zeros(3, 10, 10), 14, 14)


def _llava15_cells(size: tuple[int, int]) -> np.ndarray:
    """[576, 4] each token's cell on the original image, by hand from LLaVA-1.5's processing: the shortest side
    resized to 336 (the other to int(336 · long / short)), the centre 336 × 336 cropped, patches of 14 row-major."""
    width, height = size
    resized = (336, int(336 * height / width)) if width <= height else (int(336 * width / height), 336)
    left, top = (resized[0] - 336) // 2, (resized[1] - 336) // 2
    scale_x, scale_y = width / resized[0], height / resized[1]
    rows, cols = np.divmod(np.arange(576), 24)
    return np.stack([(left + 14 * cols) * scale_x, (top + 14 * rows) * scale_y, (left + 14 * cols + 14) * scale_x, (top + 14 * rows + 14) * scale_y], axis=1)


@pytest.mark.parametrize(
    "box", [(330, 250, 331, 251), (330.2, 250.2, 330.7, 250.9), (100, 30, 101, 31), (545, 455, 546, 456)], ids=["1x1", "sub-pixel", "top-left", "bottom-right"]
)
def test_a_box_resampling_smooths_away_marks_the_token_at_its_centre(box):
    """A 1 × 1-pixel box on 640 × 480 is 0.7 × 0.7 processed pixels: resampling leaves it below the threshold
    everywhere. It marks the one token whose patch (by hand) contains its centre. Was: no token."""
    size = (640, 480)
    cells = _llava15_cells(size)
    centre_x, centre_y = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    expected = np.flatnonzero((cells[:, 0] <= centre_x) & (centre_x < cells[:, 2]) & (cells[:, 1] <= centre_y) & (centre_y < cells[:, 3]))
    assert len(expected) == 1
    marked = region_mask(_llava15(), Image.new("RGB", size), [box]).numpy()
    assert np.flatnonzero(marked).tolist() == expected.tolist()


@pytest.mark.parametrize("size", [(3000, 200), (1000, 240), (640, 480)])
def test_thin_boxes_mark_only_tokens_they_overlap(size):
    """40 seeded boxes of 0.5 × 0.5 to 20 × 10 pixels in the crop: each marks some token it overlaps (by the
    hand-computed cells) and none further than a processed pixel from it. Was: a thin box's centre cell was added from a layout a step or more off (3000 × 200: 27 of
    160 boxes marked a token outside them, 1000 × 240: 1), and where its own pixels had marked it already."""
    import random

    cells = _llava15_cells(size)
    rng = random.Random(0)
    for _ in range(40):  # in the centre crop, where a box marks something
        width, height = rng.uniform(0.5, 20), rng.uniform(0.5, 10)
        x0, y0 = rng.uniform(cells[:, 0].min(), cells[:, 2].max() - width), rng.uniform(cells[:, 1].min(), cells[:, 3].max() - height)
        box = (x0, y0, x0 + width, y0 + height)
        marked = set(np.flatnonzero(region_mask(_llava15(), Image.new("RGB", size), [box]).numpy()).tolist())
        overlapping = set(np.flatnonzero((cells[:, 0] < box[2]) & (box[0] < cells[:, 2]) & (cells[:, 1] < box[3]) & (box[1] < cells[:, 3])).tolist())
        # resampling spreads a box's edge over about a processed pixel (a patch is 14 of them): a token that close counts
        pixel_x, pixel_y = (cells[0, 2] - cells[0, 0]) / 14, (cells[0, 3] - cells[0, 1]) / 14
        near = (cells[:, 0] < box[2] + pixel_x) & (box[0] - pixel_x < cells[:, 2]) & (cells[:, 1] < box[3] + pixel_y) & (box[1] - pixel_y < cells[:, 3])
        assert marked <= set(np.flatnonzero(near).tolist()) and (marked or not overlapping), (box, marked, overlapping)


@pytest.mark.parametrize("box", [(10, 250, 11, 251), (78, 0, 79, 1), (600, 470, 600.5, 470.5)])
def test_a_thin_box_in_the_cropped_margin_marks_no_token(box):
    """The centre crop of 640 × 480 reads x 80 .. 560 only: a box left or right of it marks nothing."""
    assert not region_mask(_llava15(), Image.new("RGB", (640, 480)), [box]).any()


@pytest.mark.parametrize("size", [(3000, 200), (200, 3000), (1270, 240)])
def test_layouts_placed_in_steps_coarser_than_0_4_cell_are_refused(size):
    """A coordinate step is side / 255; LLaVA-1.5's cell is the shortest side / 24 (by hand). Where the step is more
    than 0.4 cell the layout is refused in one line naming the image; there its cells are off by more than a quarter
    cell against the hand-computed ones (on 3000 × 200, by 11 px against cells of 8.3 px). Was: drawn misplaced."""
    from attnwh.extract.regions import _layout

    with pytest.raises(ModelError, match=f"image of {size[0]}×{size[1]} pixels: .* steps of {max(size) / 255:.1f} px"):
        token_layout(_llava15(), size)
    assert np.abs(_layout(_llava15(), size).boxes - _llava15_cells(size)).max() > min(size) / 24 / 4


@pytest.mark.parametrize("size", [(1000, 240), (640, 480), (240, 1000)])
def test_layouts_in_steps_of_0_4_cell_or_less_are_placed_within_a_quarter_cell(size):
    layout = token_layout(_llava15(), size)
    assert np.abs(layout.boxes - _llava15_cells(size)).max() <= min(size) / 24 / 4
