"""Captured rows against transformers' eager attention on the same weights (an independent reference)."""

from __future__ import annotations

import pytest
import torch

from attnwh.extract.benchmarks import get_benchmark
from attnwh.extract.capture import CaptureSpec, capture_session
from attnwh.extract.generation import generate_with_capture
from attnwh.extract.models import load_model, resolve_source
from attnwh.extract.prompts import FORMATS
from attnwh.extract.segments import prompt_segments
from tests.reference import reference_generate

TOLERANCE = 1e-6


def _encode(loaded, samples):
    prompts = [FORMATS["chat_template"].render(loaded.processor, sample.question) for sample in samples]
    images = [sample.load_image() for sample in samples]
    encoded = loaded.processor(images=images, text=prompts, return_tensors="pt", padding=True)
    return dict(encoded)


def _samples(count):
    samples = get_benchmark("toy-shapes").load(None, "test")
    return samples[:count]


@pytest.mark.parametrize("batch", [1, 3], ids=["single", "padded-batch"])
def test_prompt_and_gen1_rows_equal_eager_attention(tiny_model, batch):
    loaded = load_model(resolve_source(str(tiny_model)), dtype=torch.float32, device=torch.device("cpu"))
    samples = _samples(batch)
    encoded = _encode(loaded, samples)
    if batch > 1:  # the point of the batch case: different prompt lengths, so real left padding
        lengths = encoded["attention_mask"].sum(1)
        assert len(set(lengths.tolist())) > 1
    _, session, _ = generate_with_capture(loaded, encoded, CaptureSpec(("prompt", "gen1"), rows=True), max_new_tokens=2)
    reference = reference_generate(tiny_model, encoded, 2, output_attentions=True)
    captured = session.stacked_rows()  # query -> [layer, batch, head, key]
    n_layers = loaded.info["n_layers"]
    for layer in range(n_layers):
        prompt_ref = reference.attentions[0][layer][:, :, -1, :]  # [batch, head, key]
        gen1_ref = reference.attentions[1][layer][:, :, -1, :]
        assert captured["prompt"][layer].shape == prompt_ref.shape
        assert captured["gen1"][layer].shape == gen1_ref.shape
        assert (captured["prompt"][layer] - prompt_ref).abs().max().item() <= TOLERANCE
        assert (captured["gen1"][layer] - gen1_ref).abs().max().item() <= TOLERANCE
    # padding keys get exactly zero attention
    pad = (encoded["attention_mask"] == 0)[None, :, None, :]  # [1, batch, 1, key]
    assert bool(pad.any()) == (batch > 1)
    assert (captured["prompt"] * pad).abs().max().item() == 0


def test_logits_with_capture_equal_plain_sdpa(tiny_model):
    loaded = load_model(resolve_source(str(tiny_model)), dtype=torch.float32, device=torch.device("cpu"))
    encoded = _encode(loaded, _samples(3))
    plain = reference_generate(tiny_model, encoded, 3, attn_implementation="sdpa", output_logits=True)
    with torch.inference_mode():
        segments = prompt_segments(encoded["input_ids"], encoded["attention_mask"], loaded.spec.image_token_ids)
        parts = loaded.parts
        with capture_session(parts.text_model, parts.attention_modules, CaptureSpec(), segments, None, parts.decoder_layers) as session:
            captured = loaded.model.generate(**encoded, max_new_tokens=3, do_sample=False, eos_token_id=None, output_logits=True, return_dict_in_generate=True)
    assert session.complete()
    assert torch.equal(plain.sequences, captured.sequences)
    for step_plain, step_captured in zip(plain.logits, captured.logits, strict=True):
        assert torch.equal(step_plain, step_captured)


def test_captured_tensors_hold_only_their_own_memory(tiny_model):
    # what the session keeps for a batch must not pin the model's activations: a view of a layer's
    # output would keep its whole [batch, position, hidden] tensor alive until the batch ends
    loaded = load_model(resolve_source(str(tiny_model)), dtype=torch.float32, device=torch.device("cpu"))
    encoded = _encode(loaded, _samples(3))
    _, session, _ = generate_with_capture(loaded, encoded, CaptureSpec(("prompt", "gen1"), rows=True, lens=True), max_new_tokens=2)
    kept = [tensor for layers in (*session.hidden.values(), *session.rows.values()) for tensor in layers]
    assert kept and all(tensor is not None for tensor in kept)
    for tensor in kept:
        assert tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size()


def test_a_call_leaves_nothing_on_the_model(tiny_mha):
    # per-call state travels with the call (a context variable), never as attributes or hooks of the shared model
    from attnwh.extract.forward import ACTIVE_CALL

    loaded = load_model(resolve_source(str(tiny_mha)), dtype=torch.float32, device=torch.device("cpu"))
    modules, layers, text_model = loaded.parts.attention_modules, loaded.parts.decoder_layers, loaded.parts.text_model

    def state():
        return [(sorted(vars(module)), len(module._forward_hooks), len(module._forward_pre_hooks)) for module in (*modules, *layers, text_model)]

    before = state()
    segments = torch.zeros((1, 4), dtype=torch.int8)
    with pytest.raises(RuntimeError):
        with capture_session(text_model, modules, CaptureSpec(), segments, None, layers):
            assert ACTIVE_CALL.get() is not None
            assert state() == before
            raise RuntimeError("boom")
    assert ACTIVE_CALL.get() is None
    assert state() == before
