"""Statistics of attention rows over token segments, reduced on the device in fp32 (DESIGN §5)."""

from __future__ import annotations

import torch

from attnwh.extract.segments import BOS, GENERATED, IMAGE, PROMPT, SYSTEM

STAT_NAMES = ("image_sum", "image_entropy", "image_max", "image_argmax", "bos_sum", "system_sum", "prompt_sum", "generated_sum", "region_sum", "region_entropy", "region_hit")


def row_statistics(
    rows: torch.Tensor,  # [batch, head, key] attention of one query, sums to 1 over non-pad keys
    segments: torch.Tensor,  # [batch, key] segment codes
    region: torch.Tensor | None = None,  # [batch, key] bool: image positions inside the question's boxes
) -> torch.Tensor:  # [batch, head, len(STAT_NAMES)] fp32
    """All statistics of §5 for one query row per (sample, head).

    ``image_entropy`` is the entropy of the attention renormalised over image positions, NaN (stored as
    null) when the image gets no attention (keys outside a sliding window: there is no distribution to
    renormalise, and 0 would read as "all on one token"); ``image_argmax`` is the index of the maximum
    among the image positions, -1 (null) when there is no image or it gets no attention. ``region_sum`` /
    ``region_entropy`` are the same over the region positions, NaN for samples without a region (the
    entropy also where the region gets no attention); ``region_hit`` is 1 when the most-attended image
    position (``image_argmax``) lies in the region, else 0 (SparseMM's criterion), NaN without a region or
    without a most-attended image position.
    """
    rows = rows.float()
    image = (segments == IMAGE).unsqueeze(1)  # [batch, 1, key]
    image_sum, image_entropy = mass_and_entropy(rows, image)
    masked = rows.masked_fill(~image, float("-inf"))
    image_max, argmax = masked.max(-1)
    if region is None:  # no sample has boxes: no second pass over the rows
        region_sum = region_entropy = region_hit = torch.full_like(image_sum, float("nan"))
    else:
        region = (region & (segments == IMAGE)).unsqueeze(1)
        region_sum, region_entropy = mass_and_entropy(rows, region)
        has_region = region.any(-1)  # [batch, 1]
        region_sum = torch.where(has_region, region_sum, torch.full_like(region_sum, float("nan")))
        region_entropy = torch.where(has_region, region_entropy, torch.full_like(region_entropy, float("nan")))
        hit = region.expand_as(rows).gather(-1, argmax.unsqueeze(-1)).squeeze(-1).float()
        region_hit = torch.where(has_region & (image_sum > 0), hit, torch.full_like(hit, float("nan")))
    image_index = (image.cumsum(-1) - 1).expand_as(rows).gather(-1, argmax.unsqueeze(-1)).squeeze(-1)
    has_image = image.any(-1)  # [batch, 1]
    image_max = torch.where(has_image, image_max, torch.zeros_like(image_max))
    image_index = torch.where(image_sum > 0, image_index, torch.full_like(image_index, -1))  # no image, or none of it attended

    def segment_sum(code: int) -> torch.Tensor:
        return (rows * (segments == code).unsqueeze(1)).sum(-1)

    return torch.stack(
        [
            image_sum,
            image_entropy,
            image_max,
            image_index.float(),
            segment_sum(BOS),
            segment_sum(SYSTEM),
            segment_sum(PROMPT),
            segment_sum(GENERATED),
            region_sum,
            region_entropy,
            region_hit,
        ],
        dim=-1,
    )


def mass_and_entropy(rows: torch.Tensor, selected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention mass on the selected keys, and the entropy of the attention renormalised over them (NaN
    where they get none: no distribution to renormalise)."""
    selected_rows = rows * selected
    mass = selected_rows.sum(-1)
    share = selected_rows / mass.clamp_min(torch.finfo(torch.float32).tiny).unsqueeze(-1)
    entropy = -torch.special.xlogy(share, share).sum(-1)
    return mass, torch.where(mass > 0, entropy, torch.full_like(entropy, float("nan")))
