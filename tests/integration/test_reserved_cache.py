"""attnwh's generations write decode steps into room reserved in their cache (``packed_cache.ReservedLayer``,
``generation.generate``): every step's logits equal transformers' own ``generate`` with its ``DynamicCache``
(SDPA, the same weights), past the first ``GROWTH`` steps too, on a family with grouped KV heads, one with
M-RoPE and one with sliding-window layers (which keep transformers' own layer)."""

from __future__ import annotations

import pytest
import torch

from attnwh.extract.forward import forward_call
from attnwh.extract.generation import StopRows, generate
from attnwh.extract.packed_cache import GROWTH, ReservedLayer
from tests.integration.test_families import FAMILIES
from tests.integration.test_masking import _encoded, _loaded
from tests.reference import reference_generate

STEPS = GROWTH + 6  # the reserved room is outgrown once


@pytest.mark.parametrize("name", ["llava", "qwen2_5_vl", "gemma3"])
def test_every_decode_step_equals_transformers_dynamic_cache(name, tmp_path):
    family = next(family for family in FAMILIES if family.name == name)
    folder = family.build(tmp_path / name)
    loaded = _loaded(folder)
    encoded = _encoded(loaded, 2)  # left-padded
    parts = loaded.parts
    logits, caches = [], []
    hooks = [
        parts.lm_head.register_forward_hook(lambda module, args, output: logits.append(output[:, -1].float().clone())),
        parts.text_model.register_forward_pre_hook(lambda module, args, kwargs: caches.append(kwargs.get("cache", kwargs.get("past_key_values"))), with_kwargs=True),
    ]
    try:
        with forward_call(parts.text_model, parts.attention_modules, parts.decoder_layers):
            generation = generate(loaded, encoded, STEPS, StopRows(encoded["input_ids"].shape[1], ()))
    finally:
        for hook in hooks:
            hook.remove()
    reference = reference_generate(folder, encoded, STEPS, attn_implementation="sdpa", output_logits=True)
    assert len(logits) == len(reference.logits) == STEPS
    for step, (mine, theirs) in enumerate(zip(logits, reference.logits)):
        assert (mine - theirs.float()).abs().max().item() <= 1e-5, step
    tokens = reference.sequences[:, encoded["input_ids"].shape[1] :]
    assert torch.equal(torch.stack([step.argmax(dim=-1) for step in logits], dim=1), tokens)  # the same tokens fed back
    assert generation.steps == [row[: next((i + 1 for i, token in enumerate(row) if token in loaded.eos_token_ids), len(row))] for row in tokens.tolist()]
    cache = caches[-1]
    assert cache is caches[0]  # one cache for the whole generation
    reserved = [layer for layer in cache.layers if type(layer) is ReservedLayer]
    assert reserved, [type(layer).__name__ for layer in cache.layers]  # every full-attention layer wrote in place
    if name == "gemma3":  # its sliding-window layers stay transformers' own
        assert any(type(layer).__name__ == "DynamicSlidingWindowLayer" for layer in cache.layers)
        assert len(reserved) < len(cache.layers)
    else:
        assert len(reserved) == len(cache.layers)
    filled = encoded["input_ids"].shape[1] + STEPS - 1  # the last token is generated, never fed
    for layer in reserved:
        assert layer.get_seq_length() == filled and filled < layer.reserved() <= filled + GROWTH
