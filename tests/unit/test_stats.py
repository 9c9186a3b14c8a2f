"""Statistics against hand computations on hand-written rows."""

from __future__ import annotations

import math

import pytest
import torch

from attnwh.extract.segments import BOS, GENERATED, IMAGE, PAD, PROMPT, SYSTEM
from attnwh.extract.stats import STAT_NAMES, row_statistics

# pad, bos, system, system, image ×4, prompt, prompt, generated
SEGMENTS = torch.tensor([[PAD, BOS, SYSTEM, SYSTEM, IMAGE, IMAGE, IMAGE, IMAGE, PROMPT, PROMPT, GENERATED]], dtype=torch.int8)


def stats_of(row: list[float], segments: torch.Tensor = SEGMENTS) -> dict[str, float]:
    values = row_statistics(torch.tensor([[row]], dtype=torch.float32), segments)[0, 0]
    return dict(zip(STAT_NAMES, values.tolist()))


def test_one_hot_image_attention_has_zero_entropy():
    stats = stats_of([0, 0, 0, 0, 0, 0, 1.0, 0, 0, 0, 0])
    assert stats["image_sum"] == pytest.approx(1.0)
    assert stats["image_entropy"] == pytest.approx(0.0, abs=1e-7)
    assert stats["image_max"] == pytest.approx(1.0)
    assert stats["image_argmax"] == 2  # third image position
    assert stats["bos_sum"] == stats["system_sum"] == stats["prompt_sum"] == stats["generated_sum"] == 0


def test_uniform_image_attention_has_entropy_ln_n():
    # 0.1 on each image token, the rest spread by hand over the other segments
    row = [0, 0.3, 0.05, 0.05, 0.1, 0.1, 0.1, 0.1, 0.08, 0.07, 0.05]
    stats = stats_of(row)
    assert stats["image_sum"] == pytest.approx(0.4)
    assert stats["image_entropy"] == pytest.approx(math.log(4), abs=1e-6)
    assert stats["image_max"] == pytest.approx(0.1)
    assert stats["bos_sum"] == pytest.approx(0.3)
    assert stats["system_sum"] == pytest.approx(0.1)
    assert stats["prompt_sum"] == pytest.approx(0.15)
    assert stats["generated_sum"] == pytest.approx(0.05)


def test_skewed_image_attention_matches_hand_entropy():
    image = [0.2, 0.1, 0.05, 0.05]  # W = 0.4, p = 0.5, 0.25, 0.125, 0.125
    row = [0, 0.6, 0, 0, *image, 0, 0, 0]
    stats = stats_of(row)
    expected = -(0.5 * math.log(0.5) + 0.25 * math.log(0.25) + 2 * 0.125 * math.log(0.125))
    assert expected == pytest.approx(1.2130075659799042)
    assert stats["image_entropy"] == pytest.approx(expected, abs=1e-6)
    assert stats["image_argmax"] == 0
    assert stats["image_max"] == pytest.approx(0.2)


def test_no_image_attention_has_no_entropy_no_argmax_and_no_region_hit():
    """A head whose keys exclude the image (outside its sliding window) gives it 0: there is no distribution over
    the image, so no entropy (0 would read as "all on one token", concentration 1), no most-attended image token
    and no region hit (stored as nulls)."""
    row = [0, 0.5, 0.25, 0.25, 0, 0, 0, 0, 0, 0, 0]
    stats = stats_of(row)
    assert stats["image_sum"] == 0 and stats["image_max"] == 0
    assert math.isnan(stats["image_entropy"]) and stats["image_argmax"] == -1
    boxed = torch.zeros(1, 11, dtype=torch.bool)
    boxed[0, 4] = True  # the first image token: what an argmax of 0 would hit
    with_region = dict(zip(STAT_NAMES, row_statistics(torch.tensor([[row]]), SEGMENTS, boxed)[0, 0].tolist()))
    assert with_region["region_sum"] == 0 and math.isnan(with_region["region_entropy"]) and math.isnan(with_region["region_hit"])


def test_sample_without_image_tokens():
    segments = torch.tensor([[BOS, PROMPT, PROMPT]], dtype=torch.int8)
    stats = stats_of([0.5, 0.25, 0.25], segments)
    assert stats["image_sum"] == 0 and stats["image_max"] == 0 and stats["image_argmax"] == -1
    assert stats["prompt_sum"] == pytest.approx(0.5)


def test_batch_and_heads_are_independent():
    rows = torch.tensor(
        [[[0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0.5, 0.5, 0, 0, 0, 0, 0]], [[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1], [0, 0, 0, 0, 0.25, 0.25, 0.25, 0.25, 0, 0, 0]]]
    )
    stats = row_statistics(rows, SEGMENTS.expand(2, -1))
    assert stats.shape == (2, 2, len(STAT_NAMES))
    sums = stats[..., STAT_NAMES.index("image_sum")]
    assert sums.tolist() == [[0.0, 1.0], [0.0, 1.0]]
    entropy = stats[..., STAT_NAMES.index("image_entropy")]
    assert entropy[0, 1].item() == pytest.approx(math.log(2))
    assert entropy[1, 1].item() == pytest.approx(math.log(4))
    assert stats[1, 0, STAT_NAMES.index("generated_sum")].item() == 1.0


def test_region_hit_is_whether_the_most_attended_image_token_is_in_the_boxes():
    row = torch.tensor([[[0, 0.1, 0.05, 0.05, 0.1, 0.4, 0.2, 0.05, 0.03, 0.02, 0.0]]], dtype=torch.float32)  # image argmax: position 5
    inside = torch.zeros(1, 11, dtype=torch.bool)
    inside[0, 5] = True  # the second image token is boxed
    stats = dict(zip(STAT_NAMES, row_statistics(row, SEGMENTS, inside)[0, 0].tolist()))
    assert (stats["region_hit"], stats["image_argmax"], stats["region_sum"]) == (1.0, 1, pytest.approx(0.4))
    elsewhere = torch.zeros(1, 11, dtype=torch.bool)
    elsewhere[0, 6] = elsewhere[0, 7] = True
    stats = dict(zip(STAT_NAMES, row_statistics(row, SEGMENTS, elsewhere)[0, 0].tolist()))
    assert stats["region_hit"] == 0.0 and stats["region_sum"] == pytest.approx(0.25)
    none = torch.zeros(1, 11, dtype=torch.bool)
    none[0, 8] = True  # a "region" on a prompt token is no image region: no boxes
    assert math.isnan(dict(zip(STAT_NAMES, row_statistics(row, SEGMENTS, none)[0, 0].tolist()))["region_hit"])
    assert math.isnan(stats_of(row[0, 0].tolist())["region_hit"])  # no regions at all
