"""A cache layer that writes decode steps into reserved room (extract.packed_cache.ReservedLayer) behaves as
transformers' own ``DynamicLayer`` step for step, never changes a tensor it handed out, and holds no more
room than ``GROWTH`` positions or what the generation may still append."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.cache_utils import DynamicCache, DynamicLayer, DynamicSlidingWindowLayer

from attnwh.extract.packed_cache import GROWTH, ReservedLayer, reserve_room


@settings(max_examples=40, deadline=None)
@given(
    batch=st.integers(1, 3),
    prompt=st.integers(1, 70),
    room=st.integers(0, 80),
    steps=st.lists(st.integers(1, 3), max_size=30),
    operation=st.sampled_from(["none", "crop", "select", "repeat", "reset", "offload"]),
    at=st.integers(0, 30),
    seed=st.integers(0, 2**16),
)
def test_reserved_layer_equals_a_dynamic_layer(batch, prompt, room, steps, operation, at, seed):
    generator = torch.Generator().manual_seed(seed)
    reference, reserved = DynamicLayer(), ReservedLayer(room)
    handed = []  # every tensor the layer handed out, with a copy of what it held then

    def step(width: int, rows: int) -> None:
        # values of another head size than keys (as DeepSeek's attention has): the buffers follow each
        keys, values = torch.randn(rows, 2, width, 4, generator=generator), torch.randn(rows, 2, width, 3, generator=generator)
        want, got = reference.update(keys, values), reserved.update(keys, values)
        assert torch.equal(want[0], got[0]) and torch.equal(want[1], got[1])
        assert reserved.get_seq_length() == reference.get_seq_length()
        assert reserved.get_mask_sizes(1) == reference.get_mask_sizes(1)
        handed.extend((tensor, tensor.clone()) for tensor in got)

    step(prompt, batch)
    assert reserved.reserved() == prompt + min(room, GROWTH)  # the prefill reserves what the generation may append, within GROWTH
    for index, width in enumerate(steps):
        if index == at:
            if operation == "crop" and reference.get_seq_length() > 1:
                reference.crop(-1)
                reserved.crop(-1)
            elif operation == "select":
                indices = torch.arange(reference.keys.shape[0] - 1, -1, -1)
                reference.batch_select_indices(indices)
                reserved.batch_select_indices(indices)
            elif operation == "repeat":
                reference.batch_repeat_interleave(2)
                reserved.batch_repeat_interleave(2)
            elif operation == "reset":  # emptied: the next keys begin the layer again, with the room counted from them
                reference.reset()
                reserved.reset()
                assert reserved.get_seq_length() == reference.get_seq_length() == 0
                step(prompt + 1, batch)
                assert reserved.reserved() == prompt + 1 + min(room, GROWTH)
            elif operation == "offload":  # another tensor put in place of the layer's (as offloading does)
                reserved.keys, reserved.values = reserved.keys.clone(), reserved.values.clone()
        step(width, reference.keys.shape[0] if reference.get_seq_length() else batch)
        assert reserved.reserved() - reserved.get_seq_length() <= GROWTH
    for tensor, then in handed:  # a later step never wrote into what an earlier one returned
        assert torch.equal(tensor, then)


def test_decode_steps_copy_the_layer_once_per_growth():
    """The point of the layer: 200 single-token steps after a 500-position prompt write into ceil(200 / GROWTH)
    buffers, the prefill's included (``DynamicLayer`` makes a new tensor per step)."""
    layer, made = ReservedLayer(10_000), {}
    layer.update(torch.zeros(1, 1, 500, 2), torch.zeros(1, 1, 500, 2))
    for _ in range(200):
        keys, _values = layer.update(torch.ones(1, 1, 1, 2), torch.ones(1, 1, 1, 2))
        made[keys.untyped_storage().data_ptr()] = keys  # held, so that no later buffer takes a freed one's address
    assert len(made) == -(-200 // GROWTH)
    assert keys.shape[-2] == 700 and float(keys[..., 500:, :].min()) == 1.0


def test_reserve_room_replaces_only_empty_full_attention_dynamic_layers():
    cache = DynamicCache()
    filled = DynamicLayer()
    filled.update(torch.zeros(1, 1, 3, 2), torch.zeros(1, 1, 3, 2))
    cache.layers = [DynamicLayer(), DynamicSlidingWindowLayer(sliding_window=4), filled]
    reserve_room(cache, 8)
    assert [type(layer) for layer in cache.layers] == [ReservedLayer, DynamicSlidingWindowLayer, DynamicLayer]
    assert cache.layers[2] is filled and cache.layers[0].room == 8
    reserve_room(object(), 8)  # a cache without per-layer entries: left as it is


@pytest.mark.parametrize("room", [0, 1, 5])
def test_a_step_past_the_room_grows_by_growth(room):
    layer = ReservedLayer(room)
    layer.update(torch.zeros(1, 1, 4, 2), torch.zeros(1, 1, 4, 2))
    assert layer.reserved() == 4 + room
    for _ in range(room + 1):
        layer.update(torch.ones(1, 1, 1, 2), torch.ones(1, 1, 1, 2))
    assert layer.reserved() == 4 + room + 1 + GROWTH  # the step that did not fit, and GROWTH more


def test_after_a_reset_the_room_counts_from_the_new_keys():
    layer = ReservedLayer(10)
    layer.update(torch.zeros(1, 1, 4, 2), torch.zeros(1, 1, 4, 2))
    for _ in range(6):
        layer.update(torch.ones(1, 1, 1, 2), torch.ones(1, 1, 1, 2))
    layer.reset()
    layer.update(torch.zeros(1, 1, 7, 2), torch.zeros(1, 1, 7, 2))
    assert layer.get_seq_length() == 7 and layer.reserved() == 7 + 10


def test_keys_of_another_dtype_are_adopted_into_buffers_of_that_dtype():
    """As ``DynamicLayer`` would fail or promote, never silently cast: the layer's buffers follow the keys' dtype."""
    layer = ReservedLayer(8)
    layer.update(torch.zeros(1, 1, 3, 2), torch.zeros(1, 1, 3, 2))
    keys, values = layer.update(torch.ones(1, 1, 1, 2, dtype=torch.float64), torch.ones(1, 1, 1, 2, dtype=torch.float64))
    assert keys.dtype == torch.float64 and keys.shape[-2] == 4 and float(keys[..., 3, :].min()) == 1.0
