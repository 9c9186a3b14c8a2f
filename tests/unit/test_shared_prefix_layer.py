"""A cache layer over a shared prompt (extract.packed_cache.SharedPrefixLayer) behaves as transformers' own
``DynamicLayer`` holding the same keys, and never writes or copies the shared prompt."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.cache_utils import DynamicLayer

from attnwh.extract.packed_cache import SharedPrefixLayer


def _layers(prompt_keys, prompt_values):
    reference = DynamicLayer()
    reference.update(prompt_keys, prompt_values)
    return reference, SharedPrefixLayer(prompt_keys, prompt_values)


@settings(max_examples=25, deadline=None)
@given(
    batch=st.integers(1, 3),
    prompt=st.integers(1, 6),
    steps=st.lists(st.integers(1, 3), max_size=4),
    operation=st.sampled_from(["none", "crop", "select", "repeat", "reset"]),
    seed=st.integers(0, 2**16),
)
def test_shared_prefix_layer_equals_a_dynamic_layer(batch, prompt, steps, operation, seed):
    generator = torch.Generator().manual_seed(seed)
    prompt_keys, prompt_values = torch.randn(batch, 2, prompt, 4, generator=generator), torch.randn(batch, 2, prompt, 4, generator=generator)
    untouched = (prompt_keys.clone(), prompt_values.clone())
    reference, shared = _layers(prompt_keys, prompt_values)
    for width in steps:
        new_keys, new_values = torch.randn(batch, 2, width, 4, generator=generator), torch.randn(batch, 2, width, 4, generator=generator)
        want, got = reference.update(new_keys, new_values), shared.update(new_keys, new_values)
        assert torch.equal(want[0], got[0]) and torch.equal(want[1], got[1])
        assert shared.get_seq_length() == reference.get_seq_length()
        assert shared.get_mask_sizes(1) == reference.get_mask_sizes(1)
    assert torch.equal(prompt_keys, untouched[0]) and torch.equal(prompt_values, untouched[1])  # never written
    assert shared.shared()[0] is prompt_keys  # nor copied
    if operation == "crop" and reference.get_seq_length() > 1:
        reference.crop(-1)
        shared.crop(-1)
    elif operation == "select":
        indices = torch.arange(batch - 1, -1, -1)
        reference.batch_select_indices(indices)
        shared.batch_select_indices(indices)
    elif operation == "repeat":
        reference.batch_repeat_interleave(2)
        shared.batch_repeat_interleave(2)
    elif operation == "reset":  # emptied: the next keys begin the layer again
        reference.reset()
        shared.reset()
        assert shared.get_seq_length() == reference.get_seq_length() == 0
        fresh_keys, fresh_values = torch.randn(batch, 2, 2, 4, generator=generator), torch.randn(batch, 2, 2, 4, generator=generator)
        reference.update(fresh_keys, fresh_values)
        shared.update(fresh_keys, fresh_values)
    assert torch.equal(shared.keys, reference.keys) and torch.equal(shared.values, reference.values)
    assert shared.get_seq_length() == reference.get_seq_length()
    new_keys, new_values = torch.randn(shared.keys.shape[0], 2, 1, 4, generator=generator), torch.randn(shared.keys.shape[0], 2, 1, 4, generator=generator)
    want, got = reference.update(new_keys, new_values), shared.update(new_keys, new_values)
    assert torch.equal(want[0], got[0]) and torch.equal(want[1], got[1])
