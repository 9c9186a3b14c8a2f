"""Which prompt position each key of a call is, when a sliding-window layer's cache holds only the last keys
(Gemma 3's local layers: ``DynamicSlidingWindowLayer`` hands a decode step its last W - 1 keys and the new one):
pruning keeps and ablation by a baseline image swap the keys of the right positions. Checked by hand."""

from __future__ import annotations

import torch

from attnwh.extract.image_swap import LayerImageSwap
from attnwh.extract.pruning import LayerPrune


def _prune(kept: list[bool], generated: int) -> LayerPrune:
    n = len(kept)
    layer = LayerPrune(torch.tensor([[1]]), torch.zeros(1, n, dtype=torch.bool), "stride", 1)
    layer.kept, layer.generated = torch.tensor([[kept]]), generated
    return layer


def test_pruning_reads_the_kept_flags_of_the_positions_a_window_holds():
    kept = [True, False, True, False, False, True]  # 6 prompt positions
    # a full cache after 2 generated tokens: the prompt's flags, then the generated keys (kept)
    assert _prune(kept, 2)._kept_over(8)[0, 0].tolist() == kept + [True, True]
    # a window of 4 keys after 2 generated tokens: positions 4, 5 (prompt) and 6, 7 (generated)
    assert _prune(kept, 2)._kept_over(4)[0, 0].tolist() == [False, True, True, True]
    # a window of 3 keys at the first decode step: positions 4, 5 and 6
    assert _prune(kept, 1)._kept_over(3)[0, 0].tolist() == [False, True, True]
    # a window past the prompt: only generated keys
    assert _prune(kept, 9)._kept_over(3)[0, 0].tolist() == [True, True, True]


def test_a_baseline_image_is_swapped_in_at_the_positions_a_window_holds():
    """Prompt of 6 positions, image at 3, 4, 5; the ablated head's call after 2 generated tokens is handed a
    window of 4 keys (positions 4..7): its own keys at positions 4 and 5 are hidden and the baseline's keys of
    positions 4 and 5 shown in their place; the other head sees its own keys only."""
    image = torch.tensor([[False, False, False, True, True, True]])
    baseline_key = torch.arange(6, dtype=torch.float32).reshape(1, 1, 6, 1) + 100  # baseline key of position p: 100 + p
    swap = LayerImageSwap(torch.tensor([0]), image, baseline_key, baseline_key.clone())
    query = torch.zeros(1, 2, 6, 1)  # the prefill: 2 heads, one KV head
    key = torch.zeros(1, 1, 6, 1)
    swap.attend(query, key, key, None, None)
    swap.attend(torch.zeros(1, 2, 1, 1), torch.zeros(1, 1, 7, 1), torch.zeros(1, 1, 7, 1), None, None)  # decode step 1, full cache
    keys, _, mask = swap.attend(torch.zeros(1, 2, 1, 1), torch.zeros(1, 1, 4, 1), torch.zeros(1, 1, 4, 1), None, None)  # step 2, a window of 4
    assert keys[0, 0, 4:, 0].tolist() == [104.0, 105.0]  # the baseline's keys of positions 4 and 5 appended
    visible = (mask[0, :, 0] == 0).tolist()  # [head, key]: own keys of positions 4, 5, 6, 7, then the baseline's 4, 5
    assert visible[0] == [False, False, True, True, True, True]
    assert visible[1] == [True, True, True, True, False, False]
