"""Token segments: the type of every key position, derived from ``input_ids`` after the processor.

Never from hard-coded counts: LLaVA-NeXT has a variable number of image tokens per image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

PAD, BOS, SYSTEM, IMAGE, PROMPT, GENERATED = 0, 1, 2, 3, 4, 5


@dataclass(frozen=True)
class ImageSpan:
    """Where the image sits in one sample, counted from its first real (non-pad) token."""

    n_tokens: int
    n_image: int
    image_start: int | None
    image_end: int | None


def prompt_segments(
    input_ids: torch.Tensor,  # [batch, position]
    attention_mask: torch.Tensor,  # [batch, position], 0 on padding
    image_token_ids: tuple[int, ...],
) -> torch.Tensor:  # [batch, position] int8 segment codes
    """Segment codes of a left-padded prompt batch: pad, bos, system, image, prompt.

    ``bos`` is the first real token that is not an image token (the model's BOS where it has one; Qwen's
    first template token where it has none); ``system`` is what comes before the first image token."""
    real = attention_mask.bool()
    image = torch.isin(input_ids, torch.tensor(image_token_ids, device=input_ids.device)) & real
    position = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
    # the first real token that is not an image token: PaliGemma puts the image before <bos>
    first_real = torch.where(real & ~image, position, input_ids.shape[1]).min(dim=1, keepdim=True).values
    has_image = image.any(dim=1, keepdim=True)
    first_image = torch.where(image, position, input_ids.shape[1]).min(dim=1, keepdim=True).values
    segments = torch.full_like(input_ids, PROMPT, dtype=torch.int8)
    segments[has_image.expand_as(image) & (position < first_image)] = SYSTEM
    segments[image] = IMAGE
    segments[position == first_real] = BOS
    segments[~real] = PAD
    return segments


def with_generated(segments: torch.Tensor, n_generated: int) -> torch.Tensor:
    """Segments of the keys seen by a decode query: the prompt plus ``n_generated`` generated tokens."""
    extra = torch.full((segments.shape[0], n_generated), GENERATED, dtype=segments.dtype, device=segments.device)
    return torch.cat([segments, extra], dim=1)


def image_spans(segments: torch.Tensor) -> list[ImageSpan]:
    """Per sample: prompt length without padding, and the image span relative to the first real token."""
    spans = []
    for row in segments.cpu():
        real = row != PAD
        offset = int(real.int().argmax()) if bool(real.any()) else len(row)
        image_positions = torch.nonzero(row == IMAGE).flatten()
        if len(image_positions):
            start, end = int(image_positions[0]) - offset, int(image_positions[-1]) + 1 - offset
        else:
            start = end = None
        spans.append(ImageSpan(int(real.sum()), len(image_positions), start, end))
    return spans
