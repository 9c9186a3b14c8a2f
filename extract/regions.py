"""Regions (DESIGN §4): the image tokens whose patches overlap a question's boxes.

The boxes are in pixels of the original image, but every family resizes, crops, pads or tiles the
image before its vision tower sees it. Rather than re-implementing each processor's geometry, a
mask image of the original size (boxes white, the rest black) goes through the model's own image
processor, with the same sizes, and only normalisation switched off so that pixel values stay in
[0, 1]. A processed pixel is inside a box when all its channels exceed ``THRESHOLD`` (0.5: far
above the ringing of bicubic resampling, and above the mean-colour padding LLaVA's pad-to-square
adds, whose darkest channel is 0.41). An image token is in the region when any pixel of its patch
(or pooled block of patches, or merged patches) is inside. A box thinner than about half a
processed pixel therefore marks no token.

Patch grids map to image tokens per family (each family's data names its function, ``discovery.Family.region_tokens``;
a family without one has no region mapping, and region questions are refused for it):

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
from typing import TYPE_CHECKING

import torch
from PIL import Image, ImageDraw

from attnwh.core.errors import ModelError
from attnwh.extract.benchmarks.registry import Box

if TYPE_CHECKING:
    from attnwh.extract.models import LoadedModel

THRESHOLD = 0.5
RegionFunction = Callable[["LoadedModel", Image.Image], torch.Tensor]  # (loaded, box mask image) -> [n_image] bool


def region_mask(loaded: LoadedModel, image: Image.Image, boxes: Sequence[Box]) -> torch.Tensor:
    """[n_image] bool in the order of the image tokens: True where the token's patch overlaps a box."""
    region_tokens = loaded.spec.family.region_tokens
    if region_tokens is None:
        raise ModelError(f"regions are not supported for {loaded.spec.architecture}")
    return region_tokens(loaded, render_box_mask(image.size, boxes))


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


def _process_mask(loaded: LoadedModel, mask: Image.Image) -> Mapping[str, torch.Tensor]:
    """The image processor's output for the mask: the real image's geometry, pixel values in [0, 1]."""
    return loaded.processor.image_processor(images=[mask], do_normalize=False, do_rescale=True, rescale_factor=1 / 255, return_tensors="pt")


def _inside(pixels: torch.Tensor, channel_dim: int) -> torch.Tensor:
    """Pixels inside a box: every channel above the threshold."""
    return (pixels > THRESHOLD).all(dim=channel_dim)


def _blocks_touched(inside: torch.Tensor, block_height: int, block_width: int) -> torch.Tensor:
    """[rows * cols] bool, row-major: blocks of an [H, W] pixel map that contain an inside pixel."""
    height, width = inside.shape
    if height % block_height or width % block_width:
        raise ModelError(f"a processed image of {width}×{height} pixels does not divide into {block_width}×{block_height} blocks")
    blocks = inside.reshape(height // block_height, block_height, width // block_width, block_width)
    return blocks.any(dim=3).any(dim=1).flatten()


def _extra_vision_tokens(loaded: LoadedModel) -> int:
    """Tokens the tower adds before the patches (CLIP's CLS), as the processor counts them."""
    additional = int(getattr(loaded.processor, "num_additional_image_tokens", 0) or 0)
    dropped = 1 if getattr(loaded.config, "vision_feature_select_strategy", "default") == "default" else 0
    return max(additional - dropped, 0)


def _patch_grid(loaded: LoadedModel, mask: Image.Image) -> torch.Tensor:
    """Per-patch flags of a single processed view, row-major."""
    pixels = _process_mask(loaded, mask)["pixel_values"]  # [1, channel, height, width]
    patch = int(loaded.config.vision_config.patch_size)
    return _blocks_touched(_inside(pixels[0], channel_dim=0), patch, patch)


def llava_region(loaded: LoadedModel, mask: Image.Image) -> torch.Tensor:
    """LLaVA-1.5: one token per patch of the resized, centre-cropped image (after a CLS with ``full``)."""
    patches = _patch_grid(loaded, mask)
    return torch.cat([torch.zeros(_extra_vision_tokens(loaded), dtype=torch.bool), patches])


def vip_llava_region(loaded: LoadedModel, mask: Image.Image) -> torch.Tensor:
    """ViP-LLaVA: always drops CLS from every feature layer, so one token per patch."""
    return _patch_grid(loaded, mask)


def gemma3_region(loaded: LoadedModel, mask: Image.Image) -> torch.Tensor:
    """Gemma 3: soft tokens are average-pooled blocks of patches of the resized (uncropped) image."""
    processed = _process_mask(loaded, mask)
    if int(processed.get("num_crops", torch.zeros(1)).sum()) > 0:
        raise ModelError("regions are not supported for Gemma 3 with pan-and-scan crops")
    pixels = processed["pixel_values"][0]  # [channel, height, width]
    tokens_per_side = math.isqrt(int(loaded.config.mm_tokens_per_image))
    _, height, width = pixels.shape
    return _blocks_touched(_inside(pixels, channel_dim=0), height // tokens_per_side, width // tokens_per_side)


def qwen_vl_region(loaded: LoadedModel, mask: Image.Image) -> torch.Tensor:
    """Qwen2-VL / 2.5-VL: each run of merge² flattened patches is one token, tokens row-major."""
    processor = loaded.processor.image_processor
    processed = _process_mask(loaded, mask)
    patches = processed["pixel_values"]  # [grid_t * grid_h * grid_w, channel * temporal * patch * patch]
    merge, patch, temporal = int(processor.merge_size), int(processor.patch_size), int(processor.temporal_patch_size)
    n_tokens = int(processed["image_grid_thw"].prod()) // merge**2
    pixels = patches.reshape(n_tokens, merge**2, -1, temporal, patch, patch)  # [token, merged patch, channel, temporal, row, col]
    return _inside(pixels, channel_dim=2).flatten(1).any(dim=1)


def _view_flags(loaded: LoadedModel, mask: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
    """Anyres: per-view patch flags [view, patch] as float features, and the processor's image_sizes."""
    if _extra_vision_tokens(loaded):
        raise ModelError(f"regions are not supported for {loaded.spec.architecture} with a CLS feature kept (strategy 'full')")
    processed = _process_mask(loaded, mask)
    views = processed["pixel_values"][0]  # [view, channel, height, width]
    patch = int(loaded.config.vision_config.patch_size)
    flags = torch.stack([_blocks_touched(_inside(view, channel_dim=0), patch, patch) for view in views])
    return flags.float(), processed["image_sizes"]


def _newline() -> torch.Tensor:
    """The row-newline "feature" packed after each tile row: below zero, so never in the region."""
    return torch.tensor([-1.0])


def llava_next_region(loaded: LoadedModel, mask: Image.Image) -> torch.Tensor:
    """LLaVA-NeXT: the model's ``pack_image_features`` orders base view, unpadded tiles and newlines."""
    flags, image_sizes = _view_flags(loaded, mask)
    strategy = loaded.config.vision_feature_select_strategy
    packed, _ = loaded.model.model.pack_image_features([flags[..., None]], image_sizes, strategy, image_newline=_newline())
    return packed[0][:, 0] > 0


def llava_onevision_region(loaded: LoadedModel, mask: Image.Image) -> torch.Tensor:
    """LLaVA-OneVision: as LLaVA-NeXT, plus ``anyres_max`` bilinear down-sampling (any overlap counts)."""
    flags, image_sizes = _view_flags(loaded, mask)
    packed, _ = loaded.model.model.pack_image_features([flags[..., None]], image_sizes, image_newline=_newline(), vision_aspect_ratio=loaded.config.vision_aspect_ratio)
    return packed[0][:, 0] > 0
