"""Head masking against independent references: plain SDPA, an ``o_proj`` input hook, and an eager
attention that zeroes the scores after the causal mask (the reference code's behaviour)."""

from __future__ import annotations

import torch
from transformers import AttentionInterface, AutoModelForImageTextToText
from transformers.masking_utils import AttentionMaskInterface, eager_mask

from attnwh.extract.benchmarks import get_benchmark
from attnwh.extract.generation import encode_batch, generate_with_capture
from attnwh.extract.masking import HeadMask, build_conditions, stage_layers
from attnwh.extract.models import load_model, resolve_source
from attnwh.extract.prompts import FORMATS
from tests.reference import reference_generate

HEADS = ((0, 1), (1, 0), (1, 3), (2, 2))  # (layer, head) of a 3-layer × 4-head model


def _encoded(loaded, count: int, start: int = 0):
    samples = get_benchmark("toy-shapes").load(None, "test")[start : start + count]
    prompts = [FORMATS["chat_template"].render(loaded.processor, sample.question) for sample in samples]
    return encode_batch(loaded, [sample.load_image() for sample in samples], prompts)


def _loaded(folder):
    return load_model(resolve_source(str(folder)), dtype=torch.float32, device=torch.device("cpu"))


def test_masking_no_heads_leaves_logits_bit_identical(tiny_model):
    loaded = _loaded(tiny_model)
    encoded = _encoded(loaded, 3)
    generation, _, _ = generate_with_capture(loaded, encoded, None, 1, interventions=[HeadMask((), "zero")])
    plain = reference_generate(tiny_model, encoded, 1, attn_implementation="sdpa", output_logits=True)
    assert torch.equal(generation.first_logits, plain.logits[0])


def test_zero_mode_equals_an_o_proj_input_hook(tiny_model):
    loaded = _loaded(tiny_model)
    encoded = _encoded(loaded, 3)
    generation, _, _ = generate_with_capture(loaded, encoded, None, 3, interventions=[HeadMask(HEADS, "zero")])

    reference = AutoModelForImageTextToText.from_pretrained(tiny_model, dtype=torch.float32, attn_implementation="sdpa").eval()
    head_dim = reference.config.text_config.hidden_size // reference.config.text_config.num_attention_heads

    def zero_heads(heads):
        def hook(module, args):
            (hidden,) = args
            hidden = hidden.clone()
            for head in heads:
                hidden[..., head * head_dim : (head + 1) * head_dim] = 0
            return (hidden,)

        return hook

    for layer_index, layer in enumerate(reference.model.language_model.layers):
        layer.self_attn.o_proj.register_forward_pre_hook(zero_heads([h for masked_layer, h in HEADS if masked_layer == layer_index]))
    with torch.inference_mode():
        logits = reference(**encoded).logits[:, -1]
    assert torch.allclose(generation.first_logits, logits, atol=1e-6)
    unmasked, _, _ = generate_with_capture(loaded, encoded, None, 1)
    assert not torch.allclose(unmasked.first_logits, logits, atol=1e-3), "the masked heads must matter"


def _paper_reference(heads_by_layer: dict[int, list[int]]):
    """Eager attention whose scores of the masked heads are set to 0 after the causal mask is added."""

    def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        groups = query.shape[1] // key.shape[1]
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
        scores = torch.matmul(query, key.transpose(2, 3)) * scaling
        if attention_mask is not None:
            if attention_mask.dtype == torch.bool:
                scores = scores.masked_fill(~attention_mask[:, :, :, : key.shape[-2]], float("-inf"))
            else:
                scores = scores + attention_mask[:, :, :, : key.shape[-2]]
        heads = heads_by_layer.get(module.layer_idx, [])
        if heads:
            scores[:, heads] = 0
        weights = torch.softmax(scores.float(), dim=-1).to(query.dtype)
        return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights

    return attention


def test_paper_mode_equals_zeroed_scores_after_the_causal_mask(tiny_model):
    loaded = _loaded(tiny_model)
    encoded = _encoded(loaded, 1)  # unpadded, as paper mode runs
    generation, _, _ = generate_with_capture(loaded, encoded, None, 3, interventions=[HeadMask(HEADS, "paper")])

    heads_by_layer: dict[int, list[int]] = {}
    for layer, head in HEADS:
        heads_by_layer.setdefault(layer, []).append(head)
    AttentionInterface.register("test_paper_reference", _paper_reference(heads_by_layer))
    AttentionMaskInterface.register("test_paper_reference", eager_mask)
    reference = AutoModelForImageTextToText.from_pretrained(
        tiny_model, dtype=torch.float32, attn_implementation={"text_config": "test_paper_reference", "vision_config": "sdpa"}
    ).eval()
    with torch.inference_mode():
        logits = reference(**encoded).logits[:, -1]
    assert torch.allclose(generation.first_logits, logits, atol=1e-5)
    zeroed, _, _ = generate_with_capture(loaded, encoded, None, 1, interventions=[HeadMask(HEADS, "zero")])
    assert not torch.allclose(zeroed.first_logits, logits, atol=1e-3), "paper mode must differ from zero mode"


def test_stages_follow_the_study_split():
    assert (stage_layers(32, "early"), stage_layers(32, "mid"), stage_layers(32, "late")) == (range(0, 10), range(10, 20), range(20, 32))
    assert (stage_layers(40, "early"), stage_layers(40, "mid"), stage_layers(40, "late")) == (range(0, 13), range(13, 27), range(27, 40))
    assert (stage_layers(4, "early"), stage_layers(4, "mid"), stage_layers(4, "late")) == (range(0, 1), range(1, 3), range(3, 4))
    assert stage_layers(4, "all") == range(4)


def test_conditions_top_random_bottom():
    ranking = [(1, 0), (0, 1), (1, 1), (0, 0)]  # 2 layers × 2 heads, best first
    conditions = build_conditions(ranking, 2, 2, ["top", "random", "bottom"], ["all"], [0, 1, 2], seeds=2)
    assert conditions[0].strategy == "none" and conditions[0].heads == ()
    by = {(c.strategy, c.k, c.seed): c.heads for c in conditions[1:]}
    assert by[("top", 1, None)] == ((1, 0),)
    assert by[("top", 2, None)] == ((0, 1), (1, 0))
    assert by[("bottom", 2, None)] == ((0, 0), (1, 1))
    for seed in (0, 1):  # random heads never include the top k
        assert len(by[("random", 1, seed)]) == 1 and not set(by[("random", 1, seed)]) & {(1, 0)}
    assert build_conditions(ranking, 2, 2, ["random"], ["all"], [1], seeds=1) == build_conditions(ranking, 2, 2, ["random"], ["all"], [1], seeds=1)


def test_controls_that_are_not_ones_are_left_out_with_a_line_each():
    """random k = 2 of 4 heads could only draw the 2 heads outside the top 2 (the bottom condition, for every seed),
    and a k above a stage's heads would mask the whole stage under another k: both are absent, each with a line."""
    ranking = [(1, 0), (0, 1), (1, 1), (0, 0), (2, 0), (2, 1)]  # 3 layers × 2 heads; early = layer 0, late = layer 2
    left_out: list[str] = []
    conditions = build_conditions(ranking, 3, 2, ["top", "random", "bottom"], ["early", "all"], [1, 2, 3], seeds=3, left_out=left_out)
    made = {(c.strategy, c.stage, c.k) for c in conditions[1:]}
    assert made == {
        ("top", "early", 1), ("bottom", "early", 1), ("top", "early", 2), ("bottom", "early", 2),
        ("top", "all", 1), ("random", "all", 1), ("bottom", "all", 1),
        ("top", "all", 2), ("random", "all", 2), ("bottom", "all", 2),
        ("top", "all", 3), ("bottom", "all", 3),
    }  # fmt: skip
    assert left_out == [
        "random k = 1 in stage early is left out: the stage has 1 head outside its top 1, so no draw would be random",
        "random k = 2 in stage early is left out: the stage has 0 heads outside its top 2, so no draw would be random",
        "k = 3 is more than the 2 heads of stage early: its conditions there are left out",
        "random k = 3 in stage all is left out: the stage has 3 heads outside its top 3, so no draw would be random",
    ]
    draws = {c.heads for c in conditions if c.strategy == "random" and c.k == 2}
    assert len(draws) > 1 and all(len(heads) == 2 and not set(heads) & {(1, 0), (0, 1)} for heads in draws)


def test_mean_mode_equals_an_o_proj_hook_with_independently_recorded_means(tiny_model):
    """Means recorded by an o_proj input hook over the real prefill positions, then substituted by the hook."""
    from attnwh.extract.generation import forward_with
    from attnwh.extract.masking import HeadMeans

    loaded = _loaded(tiny_model)
    encoded = _encoded(loaded, 3)
    recording = HeadMeans()
    forward_with(loaded, encoded, [recording])
    recorders = recording.recorders
    means = {(layer, head): recorders[layer].total[head] / recorders[layer].count for layer, head in HEADS}
    generation, _, _ = generate_with_capture(loaded, encoded, None, 1, interventions=[HeadMask(HEADS, "mean", means)])

    reference = AutoModelForImageTextToText.from_pretrained(tiny_model, dtype=torch.float32, attn_implementation="sdpa").eval()
    text = reference.config.text_config
    head_dim = text.hidden_size // text.num_attention_heads
    real = encoded["attention_mask"].bool()
    recorded: dict[int, torch.Tensor] = {}

    def record(layer):
        def hook(module, args):
            recorded[layer] = args[0][real].reshape(-1, text.num_attention_heads, head_dim).mean(dim=0)

        return hook

    layers = reference.model.language_model.layers
    handles = [layer.self_attn.o_proj.register_forward_pre_hook(record(index)) for index, layer in enumerate(layers)]
    with torch.inference_mode():
        reference(**encoded)
    for handle in handles:
        handle.remove()
    for layer, head in HEADS:  # the means agree with an independent recording
        assert torch.allclose(means[(layer, head)], recorded[layer][head], atol=1e-5)

    def substitute(layer):
        def hook(module, args):
            hidden = args[0].clone()
            for masked_layer, head in HEADS:
                if masked_layer == layer:
                    hidden[..., head * head_dim : (head + 1) * head_dim] = recorded[layer][head]
            return (hidden,)

        return hook

    for index, layer in enumerate(layers):
        layer.self_attn.o_proj.register_forward_pre_hook(substitute(index))
    with torch.inference_mode():
        logits = reference(**encoded).logits[:, -1]
    assert torch.allclose(generation.first_logits, logits, atol=1e-5)
