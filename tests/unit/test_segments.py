"""Token segments from input_ids, against segments written by hand."""

from __future__ import annotations

import torch

from attnwh.extract.segments import BOS, GENERATED, IMAGE, PAD, PROMPT, SYSTEM, image_spans, prompt_segments, with_generated

IMG = 9


def test_left_padded_batch_segments():
    input_ids = torch.tensor([[0, 0, 1, 5, 6, IMG, IMG, IMG, 7, 8], [1, 5, 6, IMG, IMG, IMG, 7, 8, 8, 8]])
    attention_mask = (torch.arange(10) >= torch.tensor([[2], [0]])).long()
    segments = prompt_segments(input_ids, attention_mask, (IMG,))
    assert segments.tolist() == [[PAD, PAD, BOS, SYSTEM, SYSTEM, IMAGE, IMAGE, IMAGE, PROMPT, PROMPT], [BOS, SYSTEM, SYSTEM, IMAGE, IMAGE, IMAGE, PROMPT, PROMPT, PROMPT, PROMPT]]
    spans = image_spans(segments)
    assert [(s.n_tokens, s.n_image, s.image_start, s.image_end) for s in spans] == [(8, 3, 3, 6), (10, 3, 3, 6)]
    extended = with_generated(segments, 1)
    assert extended[:, -1].tolist() == [GENERATED, GENERATED]


def test_text_only_prompt_has_no_system_or_image():
    input_ids = torch.tensor([[1, 5, 6, 7]])
    segments = prompt_segments(input_ids, torch.ones_like(input_ids), (IMG,))
    assert segments.tolist() == [[BOS, PROMPT, PROMPT, PROMPT]]
    assert image_spans(segments)[0].image_start is None


def test_image_before_bos_keeps_every_image_token():
    # PaliGemma: the processor puts the image tokens first, then <bos>, then the prompt
    input_ids = torch.tensor([[0, IMG, IMG, IMG, 1, 5, 6], [IMG, IMG, IMG, 1, 5, 6, 7]])
    attention_mask = torch.tensor([[0, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1]])
    segments = prompt_segments(input_ids, attention_mask, (IMG,))
    assert segments.tolist() == [[PAD, IMAGE, IMAGE, IMAGE, BOS, PROMPT, PROMPT], [IMAGE, IMAGE, IMAGE, BOS, PROMPT, PROMPT, PROMPT]]
    assert [(s.n_image, s.image_start, s.image_end) for s in image_spans(segments)] == [(3, 0, 3), (3, 0, 3)]
