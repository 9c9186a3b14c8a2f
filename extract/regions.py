"""Regions (DESIGN §4): the image tokens whose patches overlap a question's boxes."""

from __future__ import annotations

import torch

from attnwh.errors import ModelError


def region_mask(loaded, image, boxes) -> torch.Tensor:
    """[n_image] bool in the order of the image tokens: True where the token's patch overlaps a box."""
    raise ModelError(f"regions are not supported for {loaded.adapter.architecture} yet")
