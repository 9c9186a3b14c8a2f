"""Discovery from the config and the module tree: the real configs of ``../shared/real/models`` on the meta
device, and refusals before any weight is read."""

from __future__ import annotations

import json

import pytest
import torch

from attnwh.core.errors import ModelError
from attnwh.extract.discovery import OutOfScope, describe, find_parts
from attnwh.extract.models import load_config, resolve_source
from tests.conformance.test_real_files import REAL

MODELS = REAL / "models"
real_files = pytest.mark.skipif(not MODELS.is_dir(), reason=f"the authors' files are not here ({MODELS}); set ATTNWH_REAL_FILES")


def _meta_model(config):
    from accelerate import init_empty_weights
    from transformers import AutoModelForImageTextToText

    with init_empty_weights():
        return AutoModelForImageTextToText.from_config(config)


@real_files
@pytest.mark.parametrize(
    "folder, architecture, layers, heads, kv_heads, head_dim, image_token",
    [
        # the numbers as the authors' config.json files state them (read raw below, not through transformers)
        ("llava-hf__llava-1.5-7b-hf", "LlavaForConditionalGeneration", 32, 32, 32, 128, 32000),
        ("Qwen__Qwen2.5-VL-3B-Instruct", "Qwen2_5_VLForConditionalGeneration", 36, 16, 2, 128, 151655),
    ],
)
def test_real_configs_are_discovered_on_the_meta_device(folder, architecture, layers, heads, kv_heads, head_dim, image_token):
    raw = json.loads((MODELS / folder / "config.json").read_text())
    text = {**raw, **raw.get("text_config", {})}
    # Qwen's file states its sizes; LLaVA-1.5's leaves Vicuna-7B's (Llama-2-7B's: 32 layers of 32 heads of 128) to the defaults
    for key, value in (("num_hidden_layers", layers), ("num_attention_heads", heads), ("num_key_value_heads", kv_heads)):
        assert text.get(key, value) == value
    assert raw.get("image_token_index", raw.get("image_token_id")) == image_token
    config, spec = load_config(resolve_source(str(MODELS / folder)))
    assert (spec.architecture, spec.n_layers, spec.n_heads, spec.n_kv_heads, spec.head_dim) == (architecture, layers, heads, kv_heads, head_dim)
    assert spec.image_token_ids[0] == image_token
    assert spec.attn_implementation("attnwh_capture") == {"text_config": "attnwh_capture"}
    model = _meta_model(config)
    parts = find_parts(model, spec)
    assert len(parts.attention_modules) == layers and len(parts.decoder_layers) == layers
    assert all(module.weight.device.type == "meta" for module in (parts.lm_head,))
    assert parts.lm_head.weight.shape[0] == spec.vocab_size
    assert parts.names["norm"] == "norm" and parts.names["attention"] == "self_attn"
    # the image tokens the processor places: LLaVA-1.5 expands <image> into (336 / 14)² = 576 tokens
    if architecture == "LlavaForConditionalGeneration":
        from attnwh.extract.models import load_processor

        processor = load_processor(resolve_source(str(MODELS / folder)))
        from PIL import Image

        encoded = processor(images=[Image.new("RGB", (500, 375))], text=["USER: <image>\nWhat is this? ASSISTANT:"], return_tensors="pt")
        assert int(torch.isin(encoded["input_ids"], torch.tensor(spec.image_token_ids)).sum()) == 576


@pytest.mark.parametrize(
    "model_type, reason",
    [
        ("florence2", "encoder-decoder"),
        ("t5gemma2", "encoder-decoder"),
        ("mllama", "cross-attention"),
        ("idefics", "cross-attention"),
        ("blip-2", "no image positions"),
        ("diffusion_gemma", "block-diffusion"),
        ("pi0", "vision-language-action"),
    ],
)
def test_out_of_scope_models_are_refused_from_the_config(model_type, reason):
    from transformers import AutoConfig

    with pytest.raises(OutOfScope, match=reason):
        describe(AutoConfig.for_model(model_type))


def test_out_of_scope_model_is_refused_before_weights_are_read(tmp_path):
    from transformers import AutoConfig

    folder = tmp_path / "florence"
    folder.mkdir()
    config = AutoConfig.for_model("florence2")
    config.architectures = ["Florence2ForConditionalGeneration"]
    config.save_pretrained(folder)
    (folder / "model.safetensors").write_bytes(b"not weights")  # would fail loudly if it were read
    with pytest.raises(OutOfScope, match=r"Florence2ForConditionalGeneration is out of scope: an encoder-decoder model"):
        load_config(resolve_source(str(folder)))


def test_hybrid_layers_are_read_from_layer_types():
    from transformers import AutoConfig

    config = AutoConfig.for_model("qwen3_5")
    text = config.get_text_config()
    text.num_hidden_layers = 8
    text.layer_types = ["linear_attention", "linear_attention", "linear_attention", "full_attention"] * 2
    spec = describe(config)
    assert spec.attention_layers == (3, 7) and spec.n_layers == 2 and spec.hybrid
    assert spec.info["attention_layers"] == [3, 7] and spec.info["n_decoder_layers"] == 8


def test_heads_that_do_not_group_are_refused():
    from transformers import AutoConfig

    config = AutoConfig.for_model("llava")
    config.text_config.num_key_value_heads = 3
    with pytest.raises(ModelError, match="do not group"):
        describe(config)


from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-3, 70000), st.text(max_size=4), st.lists(st.sampled_from(["full_attention", "linear_attention", "conv", 3]), max_size=6))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    changes=st.dictionaries(
        st.sampled_from(["num_hidden_layers", "num_attention_heads", "num_key_value_heads", "hidden_size", "head_dim", "layer_types", "vocab_size", "cross_attention_layers"]),
        _VALUES,
        max_size=4,
    ),
    image_token=_VALUES,
    encoder_decoder=st.booleans(),
)
def test_a_damaged_config_is_described_or_refused_in_one_line(tmp_path_factory, changes, image_token, encoder_decoder):
    # the way a user meets a damaged config: a config.json on disk, read before any weight
    from transformers import AutoConfig

    raw = AutoConfig.for_model("llava").to_dict()
    raw["architectures"] = ["LlavaForConditionalGeneration"]
    raw["text_config"].update(changes)
    raw["image_token_id"] = image_token
    raw["is_encoder_decoder"] = encoder_decoder
    folder = tmp_path_factory.mktemp("damaged")
    (folder / "config.json").write_text(json.dumps(raw))
    try:
        _, spec = load_config(resolve_source(str(folder)))
    except ModelError as exc:
        assert "\n" not in str(exc) and str(exc)
        return
    assert spec.n_layers >= 1 and spec.n_heads % spec.n_kv_heads == 0 and spec.image_token_ids
    assert all(0 <= index < spec.n_decoder_layers for index in spec.attention_layers)


@pytest.mark.parametrize("argument", ["position_bias", "sinks"])
def test_attention_arguments_capture_cannot_apply_are_refused(argument):
    # a model that hands its attention function a bias or per-token sinks: refused, never captured wrongly
    from attnwh.extract.forward import attention

    query = key = value = torch.zeros((1, 2, 3, 4))
    with pytest.raises(ModelError, match=f"passes {argument} to its attention function"):
        attention(torch.nn.Linear(1, 1), query, key, value, None, **{argument: torch.zeros(1)})
    output, _ = attention(torch.nn.Linear(1, 1), query, key, value, None, **{argument: None})
    assert output.shape == (1, 3, 2, 4)


def test_ovis2s_visual_indicator_tokens_are_image_positions():
    """Ovis2 writes its visual indicator tokens (``<IMG_START>`` before the image's tokens, ``<IMG_GRID>`` and ``<IMG_END>``
    after, ``<IMG_COL>`` / ``<IMG_ROW>`` between tiles: ``Ovis2Processor.replace_image_token``) from its visual embedding
    table, as it writes the image tokens from the vision tower: every position whose input embedding the model changes
    is image, and no other (they were system and prompt: 256 of 259 written positions typed image)."""
    from attnwh.extract import tiny_models
    from attnwh.extract.segments import IMAGE, prompt_segments

    model = tiny_models.build_tiny("ovis2")
    inputs = tiny_models.tiny_inputs("ovis2", model, batch=1)
    config = model.config
    start, grid, col, row, end = config.visual_indicator_token_ids
    ids = inputs["input_ids"][0].tolist()
    n, first = ids.count(config.image_token_id), ids.index(config.image_token_id)
    half = n // 2  # two tiles side by side, as the processor writes a grid: start, tile, col, tile, grid, end
    tiles = [start, *[config.image_token_id] * half, col, *[config.image_token_id] * (n - half), row, grid, end]
    inputs["input_ids"] = torch.tensor([ids[:first] + tiles + ids[first + n :]])
    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    given = {}

    def record(module, args, kwargs):
        given.setdefault("embeds", kwargs["inputs_embeds"].detach().clone())

    hook = model.get_decoder().register_forward_pre_hook(record, with_kwargs=True)
    with torch.no_grad():
        model(**inputs)
    hook.remove()
    plain = model.get_input_embeddings()(inputs["input_ids"])
    written = (given["embeds"] - plain).abs().amax(dim=-1)[0] > 1e-6
    segments = prompt_segments(inputs["input_ids"], inputs["attention_mask"], describe(config).image_token_ids)[0]
    assert int(written.sum()) == n + 5
    assert describe(config).image_marker_ids == tuple(config.visual_indicator_token_ids)  # named in a run's fingerprint (extract.setup)
    assert torch.equal(segments == IMAGE, written)
