"""Regions (DESIGN §4): the image tokens whose patches overlap a question's boxes.

The boxes are in pixels of the original image, but every family resizes, crops, pads or tiles the
image before its vision tower sees it. Rather than re-implementing each processor's geometry, a
mask image of the original size (boxes white, the rest black) goes through the model's own image
processor, with the same sizes, and only normalisation switched off so that pixel values stay in
[0, 1]. A processed pixel is inside a box when all its channels exceed ``THRESHOLD`` (0.5: far
above the ringing of bicubic resampling, and above the mean-colour padding LLaVA's pad-to-square
adds, whose darkest channel is 0.41). An image token is in the region when any pixel of its patch
(or pooled block of patches, or merged patches) is inside. Resampling can smooth a box thinner than about a processed
pixel below the threshold (a 1 × 1-pixel box on a 640 × 480 image is 0.7 × 0.7 processed pixels): a box thinner than
``THIN_SHARE`` of the image's side that marks no token alone marks the tokens whose cells (``token_layout``) contain
its centre, one per view; a box whose centre lies where the model reads no pixel (a centre crop's margin) marks none.

Patch grids map to image tokens per family (each family's data names its function, ``discovery.Family.image_tokens``,
which reduces each token's block of processed pixels; a family without one has no region mapping and no overlays, and
region questions are refused for it). The same function places each token on the original image for overlays
(``token_layout``): the processed image is then one whose pixels hold their own coordinates.

* LLaVA-1.5 / ViP-LLaVA: one token per patch of the processed (resized, centre-cropped) image,
  row-major; a CLS feature kept by ``vision_feature_select_strategy="full"`` comes first and is
  never in the region.
* Gemma 3: the image is resized (no crop) to the tower's size; its patches are average-pooled into
  ``mm_tokens_per_image`` soft tokens (a square grid), each covering a square block of pixels.
* Qwen2-VL / Qwen2.5-VL: the processor already orders the flattened patches so that each run of
  ``merge_size²`` patches is one image token, tokens row-major over the merged grid.
* LLaVA-NeXT / LLaVA-OneVision (anyres): a base view and the tiles of the best grid pinpoint. The
  per-patch flags of every view are packed by the model's own ``pack_image_features`` (unpadding,
  OneVision's ``anyres_max`` down-sampling, one newline token per row), so the token order is the
  model's by construction; the newline tokens are never in the region.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image, ImageDraw

from attnwh.core.errors import ModelError
from attnwh.extract.benchmarks.registry import Box

if TYPE_CHECKING:
    from attnwh.extract.models import LoadedModel

THRESHOLD = 0.5
Reduce = Callable[[torch.Tensor], torch.Tensor]  # [block, channel, height, width] processed pixels -> [block, feature]
# (loaded, image, reduce) -> [n_image, feature + 1] float in the order of the image tokens: each token's block of the
# processed image reduced, then its piece (0: the one view, or anyres' base view; 1, 2, ...: anyres' tiles, in the processor's order); NaN rows for the
# tokens that read no block (a kept CLS feature, anyres' row newlines)
TokenFunction = Callable[["LoadedModel", Image.Image, Reduce], torch.Tensor]


def region_mask(loaded: LoadedModel, image: Image.Image, boxes: Sequence[Box]) -> torch.Tensor:
    """[n_image] bool in the order of the image tokens: True where the token's patch overlaps a box, and, for a thin box
    (``_thin``) that resampling smoothed away (it marks no token alone), where the token's cell contains the box's
    centre: a token the box overlaps, so the rule is the same, found another way; not where the layout's cells are
    too coarse to say which (``token_layout`` refuses them)."""
    image_tokens = _image_tokens(loaded, "regions")

    def marked(chosen: Sequence[Box]) -> torch.Tensor:
        return image_tokens(loaded, render_box_mask(image.size, chosen), _any_inside)[:, 0] > 0

    inside = marked(boxes)
    thin = [box for box in boxes if _thin(box, image.size)]
    lost = [box for box in thin if not (inside if len(boxes) == 1 else marked([box])).any()]  # a pass each: thin boxes are few
    if lost:
        try:
            layout = token_layout(loaded, image.size)
        except ModelError:  # no layout (OneVision's down-sampled tiles), or one whose cells are a step or more off
            return inside
        for box in lost:
            inside |= torch.from_numpy(_cells_containing(layout.boxes, ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)))
    return inside


# a box narrower or lower than this share of the image's side may be under a processed pixel (a family's view of an
# image is at least 224 pixels a side, so this is about 2 of them or more; anyres' tiles of a very wide image see
# less): checked alone, and where it marks nothing, its centre's cell is marked
THIN_SHARE = 1 / 112
# the rule regions are made by, named in the fingerprint of runs with boxes (a run whose regions were made by an
# earlier rule is not resumed by this one): overlap with the processed box mask, and a thin box's centre cell
REGION_RULE = "overlap, thin box centre"


def _thin(box: Box, size: tuple[int, int]) -> bool:
    return box[2] - box[0] < THIN_SHARE * size[0] or box[3] - box[1] < THIN_SHARE * size[1]


def _cells_containing(boxes: np.ndarray, point: tuple[float, float]) -> np.ndarray:
    """[n_image] bool: the tokens whose cells (``boxes``, half-open; NaN: no cell) contain ``point``."""
    x, y = point
    with np.errstate(invalid="ignore"):
        return (boxes[:, 0] <= x) & (x < boxes[:, 2]) & (boxes[:, 1] <= y) & (y < boxes[:, 3])


@dataclass(frozen=True)
class TokenLayout:
    """Where each image token of a sample reads the original image (issue 33's overlays).

    ``boxes`` [n_image, 4] are (x0, y0, x1, y1) in pixels of the original image, the part of the image the token's
    block of processed pixels covers (padding left out); NaN for tokens that read no pixel (a CLS feature, anyres'
    row newlines, a block of padding only). ``views`` [n_image]: 0 for the one view (anyres: the base view),
    1 for anyres' tiles, -1 where ``boxes`` is NaN."""

    size: tuple[int, int]  # (width, height) of the original image
    boxes: np.ndarray
    views: np.ndarray


class CoarseLayoutError(ModelError):
    """An image whose layout's coordinate steps are coarse against its cells (``token_layout``): that sample cannot be
    drawn, where other samples of its run can."""


# the largest coordinate step (side / 255) a drawing accepts, in units of the smallest token cell: up to 0.47 cell
# LLaVA-1.5's cells were within a quarter cell of the hand-computed ones, at 0.5 cell off by more than half a cell
COARSEST_STEP = 0.4


def token_layout(loaded: LoadedModel, size: tuple[int, int]) -> TokenLayout:
    """The layout of an image of ``size`` (width, height), from the family's own mapping of processed pixels to
    tokens: an image whose red and green channels are the pixel's x and y (8 bits: a 640-pixel side to ±1.3 px)
    and whose blue channel is full goes through the processor; padding the processor adds has a darker blue.

    Refused (``CoarseLayoutError``) where a coordinate step is more than ``COARSEST_STEP`` of the smallest token cell along a
    side (LLaVA-1.5 on an image more than 4.25 times as wide as high): the cells would be misplaced by a step or more."""
    layout = _layout(loaded, size)
    _check_steps(layout)
    return layout


def _check_steps(layout: TokenLayout) -> None:
    """Refuse a layout whose coordinate steps are coarse against its cells. A view's cell along a side is its
    tokens' mean box width (height): each box edge is off by at most a step, and neighbours share their edges, so
    the errors of a row's boxes add up to those of its two ends."""
    spatial = layout.views >= 0
    for low, high, side, name in ((0, 2, layout.size[0], "width"), (1, 3, layout.size[1], "height")):
        cells = [float(np.mean(layout.boxes[layout.views == view, high] - layout.boxes[layout.views == view, low])) for view in np.unique(layout.views[spatial])]
        step = side / 255
        if cells and step > COARSEST_STEP * min(cells):
            raise CoarseLayoutError(
                f"overlays are not drawn for an image of {layout.size[0]}×{layout.size[1]} pixels: its token layout places cells in steps of "
                f"{step:.1f} px along its {name}, more than {COARSEST_STEP:g} of its smallest token cell ({min(cells):.1f} px); its region statistics are kept"
            )


def _layout(loaded: LoadedModel, size: tuple[int, int]) -> TokenLayout:
    """``token_layout`` before its check of the coordinate steps."""
    width, height = size
    xs = np.rint(255 * (np.arange(width) + 0.5) / width).astype(np.uint8)
    ys = np.rint(255 * (np.arange(height) + 0.5) / height).astype(np.uint8)
    pixels = np.stack([np.broadcast_to(xs[None, :], (height, width)), np.broadcast_to(ys[:, None], (height, width)), np.full((height, width), 255, np.uint8)], axis=-1)
    features = _image_tokens(loaded, "overlays")(loaded, Image.fromarray(pixels, "RGB"), _extent).numpy().astype(np.float64)
    spatial = features[:, 0] > 0
    boxes = np.full((len(features), 4), np.nan)
    # extents of pixel centres (in units of the image's side) widened by half a processed pixel each side
    boxes[spatial] = features[spatial][:, [1, 3, 2, 4]] * np.array([width, height, width, height])
    pieces = np.where(spatial, np.nan_to_num(features[:, -1]).round(), -1).astype(np.int16)  # 0: the one view or anyres' base; 1...: its tiles
    views = np.minimum(pieces, 1).astype(np.int8)
    boxes = _close_gaps(_snap_to_edges(boxes, width, height), views, pieces, width, height, _reads_whole_views(loaded))
    return TokenLayout(size, boxes, views)


def _reads_whole_views(loaded: LoadedModel) -> bool:
    """Whether the tower's patches cover each processed view whole (its size a multiple of the patch): SigLIP's 384
    in patches of 14 leaves 6 pixels of every tile unread, a real stripe at each seam between tiles."""
    vision = getattr(loaded.config, "vision_config", None)
    size, patch = getattr(vision, "image_size", None), getattr(vision, "patch_size", None)
    return not (isinstance(size, int) and isinstance(patch, int) and patch > 0) or size % patch == 0


def _close_gaps(boxes: np.ndarray, views: np.ndarray, pieces: np.ndarray, width: int, height: int, whole_views: bool) -> np.ndarray:
    """Neighbouring tokens of a view meet: where a box ends and, at most one step of the coordinates' 8 bits (and a
    pixel) away, another of the view starts, both edges move to their midpoint. The extents are of rounded
    coordinates (a 640-pixel side in steps of 2.5 px), so neighbours' boxes left gaps of up to a step between them,
    which a drawing showed as stripes no token reads; tokens of one column (row) share their edges exactly (a pixel's
    x does not depend on its y), so each edge value is moved once for all of them. Across a seam between two tiles
    (the edge's boxes and its partner's in no common tile) the gap is closed only where the tower reads its views
    whole: SigLIP's unread 6 / 384 of a tile is a real gap of about a step, which rounding cannot tell from none."""
    closed = boxes.copy()
    for view in np.unique(views[views >= 0]):
        chosen = views == view
        for low, high, side in ((0, 2, width), (1, 3, height)):
            tolerance = side / 255 + 1
            starts, ends = np.unique(boxes[chosen, low]), np.unique(boxes[chosen, high])
            for end in ends:
                near = starts[np.abs(starts - end) <= tolerance]
                if not len(near):
                    continue
                start = near[np.argmin(np.abs(near - end))]
                ending, starting = chosen & (boxes[:, high] == end), chosen & (boxes[:, low] == start)
                if not whole_views and not set(pieces[ending]) & set(pieces[starting]):
                    continue
                middle = (start + end) / 2
                closed[ending, high] = middle
                closed[starting, low] = middle
    return closed


def _snap_to_edges(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """Box edges near the image's edges on it: down-sampling filters read the ramp of coordinates clamped at the
    edges, which moves the outermost pixel centres inwards (half a pixel when Gemma 3 squashes 128 px into 32), and
    the coordinates are rounded to steps of 1/255 of the side (anyres' first tile row of a 500×375 image began 1.1 px
    below the top, a step of 1.5 px: the top row of the drawing had no tile)."""
    snapped = boxes.copy()
    for low, high, side in ((0, 2, width), (1, 3, height)):
        near = np.minimum(np.maximum(0.1 * (boxes[:, high] - boxes[:, low]), side / 255), 0.01 * side)
        snapped[:, low] = np.where(boxes[:, low] < near, 0.0, boxes[:, low])
        snapped[:, high] = np.where(boxes[:, high] > side - near, float(side), boxes[:, high])
    return snapped


def _image_tokens(loaded: LoadedModel, what: str) -> TokenFunction:
    image_tokens = loaded.spec.family.image_tokens
    if image_tokens is None:
        raise ModelError(f"{what} are not supported for {loaded.spec.architecture}")
    return image_tokens


def _any_inside(blocks: torch.Tensor) -> torch.Tensor:
    """[block, 1]: 1 where a pixel of the block is inside a box (every channel above the threshold)."""
    return _inside(blocks, channel_dim=1).flatten(1).any(dim=1).float()[:, None]


def _extent(blocks: torch.Tensor) -> torch.Tensor:
    """[block, 5]: the share of the block's pixels from the image (not padding), then x0, x1, y0, y1 of those
    pixels in units of the image's side (red: x, green: y), widened by half a pixel each side; 0 without any."""
    valid = blocks[:, 2] > THRESHOLD  # [block, height, width]
    has = valid.flatten(1).any(dim=1)
    features = [valid.flatten(1).float().mean(dim=1)]
    lines = {0: valid.any(dim=1).sum(dim=1), 1: valid.any(dim=2).sum(dim=1)}  # x: valid columns, y: valid rows
    for channel in (0, 1):
        coordinate = blocks[:, channel]  # [block, height, width]: pixel centres in units of the image's side
        low = torch.where(valid, coordinate, torch.inf).flatten(1).min(dim=1).values
        high = torch.where(valid, coordinate, -torch.inf).flatten(1).max(dim=1).values
        half = torch.where(lines[channel] > 1, (high - low) / (2 * (lines[channel] - 1).clamp(min=1)), torch.zeros_like(low))
        features += [torch.where(has, low - half, 0.0), torch.where(has, high + half, 0.0)]
    return torch.stack(features, dim=1)


def render_box_mask(size: tuple[int, int], boxes: Sequence[Box]) -> Image.Image:
    """An RGB image of ``size`` (width, height): white where a pixel overlaps a box, black elsewhere.

    Pixel ``i`` covers [i, i + 1), so a box edge inside a pixel includes that pixel; a box of zero
    width or height still marks the pixel row or column it lies on.
    """
    width, height = size
    mask = Image.new("RGB", (width, height), (0, 0, 0))
    draw = ImageDraw.Draw(mask)
    for x0, y0, x1, y1 in boxes:
        left, top = max(math.floor(x0), 0), max(math.floor(y0), 0)
        right = min(max(math.ceil(x1), math.floor(x0) + 1), width)  # exclusive
        bottom = min(max(math.ceil(y1), math.floor(y0) + 1), height)
        if right > left and bottom > top:
            draw.rectangle([left, top, right - 1, bottom - 1], fill=(255, 255, 255))
    return mask


def _process(loaded: LoadedModel, image: Image.Image) -> Mapping[str, torch.Tensor]:
    """The image processor's output for a mask or coordinate image: the real image's geometry, pixel values in [0, 1]."""
    return loaded.processor.image_processor(images=[image], do_normalize=False, do_rescale=True, rescale_factor=1 / 255, return_tensors="pt")


def _inside(pixels: torch.Tensor, channel_dim: int) -> torch.Tensor:
    """Pixels inside a box: every channel above the threshold."""
    return (pixels > THRESHOLD).all(dim=channel_dim)


def _blocks(pixels: torch.Tensor, block_height: int, block_width: int) -> torch.Tensor:
    """[rows * cols, channel, block_height, block_width], row-major: the blocks of a [channel, H, W] image. Pixels
    past the last whole block are read by no token, as a patch embedding (a convolution of stride = kernel, no
    padding) or a pooling never reads them: SigLIP's 384-pixel tiles in patches of 14 give 27 × 27 patches, pixels
    378-383 unread (LLaVA-OneVision)."""
    channels, height, width = pixels.shape
    rows, cols = height // block_height, width // block_width
    if not rows or not cols:
        raise ModelError(f"a processed image of {width}×{height} pixels is smaller than one {block_width}×{block_height} block")
    pixels = pixels[:, : rows * block_height, : cols * block_width]
    blocks = pixels.reshape(channels, rows, block_height, cols, block_width)
    return blocks.permute(1, 3, 0, 2, 4).reshape(-1, channels, block_height, block_width)


def _view(features: torch.Tensor, view: int) -> torch.Tensor:
    """``features`` [token, feature] with the view as a last column."""
    return torch.cat([features, torch.full((len(features), 1), float(view))], dim=1)


def _no_pixels(n_tokens: int, n_features: int) -> torch.Tensor:
    return torch.full((n_tokens, n_features), float("nan"))


def _extra_vision_tokens(loaded: LoadedModel) -> int:
    """Tokens the tower adds before the patches (CLIP's CLS), as the processor counts them."""
    additional = int(getattr(loaded.processor, "num_additional_image_tokens", 0) or 0)
    dropped = 1 if getattr(loaded.config, "vision_feature_select_strategy", "default") == "default" else 0
    return max(additional - dropped, 0)


def _patch_grid(loaded: LoadedModel, image: Image.Image, reduce: Reduce) -> torch.Tensor:
    """Per-patch features of a single processed view, row-major, with the view."""
    pixels = _process(loaded, image)["pixel_values"]  # [1, channel, height, width]
    patch = int(loaded.config.vision_config.patch_size)
    return _view(reduce(_blocks(pixels[0], patch, patch)), 0)


def llava_tokens(loaded: LoadedModel, image: Image.Image, reduce: Reduce) -> torch.Tensor:
    """LLaVA-1.5: one token per patch of the resized, centre-cropped image (after a CLS with ``full``)."""
    patches = _patch_grid(loaded, image, reduce)
    return torch.cat([_no_pixels(_extra_vision_tokens(loaded), patches.shape[1]), patches])


def vip_llava_tokens(loaded: LoadedModel, image: Image.Image, reduce: Reduce) -> torch.Tensor:
    """ViP-LLaVA: always drops CLS from every feature layer, so one token per patch."""
    return _patch_grid(loaded, image, reduce)


def gemma3_tokens(loaded: LoadedModel, image: Image.Image, reduce: Reduce) -> torch.Tensor:
    """Gemma 3: soft tokens are average-pooled blocks of patches of the resized (uncropped) image."""
    processed = _process(loaded, image)
    if int(processed.get("num_crops", torch.zeros(1)).sum()) > 0:
        raise ModelError("regions and overlays are not supported for Gemma 3 with pan-and-scan crops")
    pixels = processed["pixel_values"][0]  # [channel, height, width]
    tokens_per_side = math.isqrt(int(loaded.config.mm_tokens_per_image))
    _, height, width = pixels.shape
    return _view(reduce(_blocks(pixels, height // tokens_per_side, width // tokens_per_side)), 0)


def qwen_vl_tokens(loaded: LoadedModel, image: Image.Image, reduce: Reduce) -> torch.Tensor:
    """Qwen2-VL / 2.5-VL: each run of merge² flattened patches is one token, tokens row-major over the merged grid;
    within a run the patches are row-major over the merge × merge block (the processor's transpose)."""
    processor = loaded.processor.image_processor
    processed = _process(loaded, image)
    patches = processed["pixel_values"]  # [grid_t * grid_h * grid_w, channel * temporal * patch * patch]
    merge, patch, temporal = int(processor.merge_size), int(processor.patch_size), int(processor.temporal_patch_size)
    n_tokens = int(processed["image_grid_thw"].prod()) // merge**2
    pixels = patches.reshape(n_tokens, merge, merge, -1, temporal, patch, patch)  # [token, merge row, merge col, channel, temporal, row, col]
    blocks = pixels[:, :, :, :, 0].permute(0, 3, 1, 4, 2, 5).reshape(n_tokens, -1, merge * patch, merge * patch)
    return _view(reduce(blocks), 0)


def _view_features(loaded: LoadedModel, image: Image.Image, reduce: Reduce) -> tuple[torch.Tensor, torch.Tensor]:
    """Anyres: per-view patch features [view, patch, feature + 1] (the last: the piece, 0 the base view, 1, 2, ... the tiles), and the
    processor's image_sizes."""
    if _extra_vision_tokens(loaded):
        raise ModelError(f"regions and overlays are not supported for {loaded.spec.architecture} with a CLS feature kept (strategy 'full')")
    processed = _process(loaded, image)
    views = processed["pixel_values"][0]  # [view, channel, height, width]
    patch = int(loaded.config.vision_config.patch_size)
    features = torch.stack([_view(reduce(_blocks(view, patch, patch)), index) for index, view in enumerate(views)])
    return features, processed["image_sizes"]


def _newline(features: torch.Tensor) -> torch.Tensor:
    """The row-newline "feature" packed after each tile row: NaN, it reads no pixel."""
    return torch.full((features.shape[-1],), float("nan"))


def llava_next_tokens(loaded: LoadedModel, image: Image.Image, reduce: Reduce) -> torch.Tensor:
    """LLaVA-NeXT: the model's ``pack_image_features`` orders base view, unpadded tiles and newlines."""
    features, image_sizes = _view_features(loaded, image, reduce)
    strategy = loaded.config.vision_feature_select_strategy
    packed, _ = loaded.model.model.pack_image_features([features], image_sizes, strategy, image_newline=_newline(features))
    return packed[0]


def llava_onevision_tokens(loaded: LoadedModel, image: Image.Image, reduce: Reduce) -> torch.Tensor:
    """LLaVA-OneVision: as LLaVA-NeXT, plus ``anyres_max`` bilinear down-sampling (any overlap counts)."""
    features, image_sizes = _view_features(loaded, image, reduce)
    pack = loaded.model.model.pack_image_features
    packed, _ = pack([features], image_sizes, image_newline=_newline(features), vision_aspect_ratio=loaded.config.vision_aspect_ratio)
    if reduce is _extent:
        whole, _ = pack([features], image_sizes, image_newline=_newline(features), vision_aspect_ratio=f"anyres_max_{NO_DOWNSAMPLING}")
        if len(whole[0]) != len(packed[0]):
            # bilinear down-sampling averages the tokens' extents: boxes narrower than the cells they stand for
            raise ModelError(
                f"overlays are not supported for {loaded.spec.architecture} on an image of {image.width}×{image.height} pixels: its tiles are down-sampled "
                f"({loaded.config.vision_aspect_ratio}), and where a down-sampled token reads is not mapped (its region statistics are)"
            )
    return packed[0]


NO_DOWNSAMPLING = 10_000  # an anyres_max tile count that no image reaches: the tiles' tokens as the tower gives them
