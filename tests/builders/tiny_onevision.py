"""Tiny LLaVA-NeXT and LLaVA-OneVision models (anyres tiling + image_newline), built offline.

Like :mod:`attnwh.extract.toy.builder`, the model, a word-level tokenizer (``builder.build_tokenizer``,
plus ``<video>`` for OneVision) with a chat template, and the family's anyres image processor (PIL
backend) are saved with ``save_pretrained``, so they load back through ``AutoProcessor`` /
``AutoModelForImageTextToText``.

Both towers see 32×32 crops in 8×8 patches (4×4 = 16 patch features per crop). An image is resized
and padded onto the best of ``image_grid_pinpoints`` (the real checkpoints' grids, scaled to a 32 px
crop), cut into 32×32 crops, and the crops' features are unpadded back to the image's aspect ratio
with one ``image_newline`` feature after each row, after the 16 features of a 32×32 base view.
The processor expands each ``<image>`` into exactly that many ``<image>`` ids (newlines included):

* LLaVA-NeXT (CLIP + Llama/Mistral, grid ``NEXT_PINPOINTS``, CLS dropped): 64×64 → 88 image tokens,
  96×48 (w×h) → 52, 48×96 → 56.
* LLaVA-OneVision (SigLIP + Qwen2, ``ONEVISION_PINPOINTS``: the 6×6 grid's pinpoints of at most 9
  crops, ``anyres_max_9``): 64×64 → 88, 96×48 → 94, 48×96 → 100. Its processor is a
  ``LlavaNextProcessor`` (``LlavaOnevisionProcessor`` needs torchvision; see
  :func:`build_onevision_processor`), so it handles images only, and every image of a multi-image
  sample is tiled (real OneVision gives those 16 base features + 1 newline each).

Image positions are the ``<image>`` ids (``IMAGE_ID`` = 4) in ``input_ids``; their count per image
equals ``processor._get_num_multimodal_tokens(image_sizes=...)["num_image_tokens"]``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from attnwh.extract.toy.builder import BOS_ID, CHAT_TEMPLATE, EOS_ID, IMAGE_ID, PAD_ID, SPECIAL_TOKENS, build_tokenizer, randomise_norm_weights, save_tiny, set_generation_tokens

IMAGE_SIZE = 32  # one crop, and the base view
PATCH_SIZE = 8
PATCHES_PER_CROP = (IMAGE_SIZE // PATCH_SIZE) ** 2  # 16
VISION_HIDDEN = 32
VISION_LAYERS = 2
# llava-v1.6: [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]] scaled to a 32 px crop
NEXT_PINPOINTS = [[32, 64], [64, 32], [64, 64], [96, 32], [32, 96]]
# llava-onevision: (384 i, 384 j) for i, j in 1..6, scaled to a 32 px crop, keeping grids of at most 9
# crops: then anyres_max_9 never down-samples (it does past 9 × 1.1² crops' worth of features), which
# keeps LlavaNextProcessor's token count exact (see build_onevision_processor)
ONEVISION_PINPOINTS = [[IMAGE_SIZE * i, IMAGE_SIZE * j] for i in range(1, 7) for j in range(1, 7) if i * j <= 9]
VISION_ASPECT_RATIO = "anyres_max_9"
TEXT_MODELS = ("llama", "mistral")

VIDEO_ID = len(SPECIAL_TOKENS)  # 5, right after builder's <pad> <s> </s> <unk> <image>
# builder's template plus video parts
ONEVISION_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: "
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<image>\n"
    "{% elif part['type'] == 'video' %}<video>\n{% else %}{{ part['text'] }}{% endif %}{% endfor %}"
    "{% else %} {% for part in message['content'] %}{{ part['text'] }}{% endfor %}</s>{% endif %}"
    "{% endfor %}{% if add_generation_prompt %} ASSISTANT:{% endif %}"
)


def build_onevision_tokenizer(words: list[str]):
    """``builder.build_tokenizer`` with ``<video>`` as one more special token (id ``VIDEO_ID``).

    The word-level backend (vocabulary, pre-tokenizer, ``<s>`` post-processor) is builder's; only the
    wrapper is re-made, to name ``<video>`` as the ``video_token`` special token.
    """
    from transformers import PreTrainedTokenizerFast

    base = build_tokenizer(["<video>", *words])  # <video> gets id 5, right after builder's specials
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=base.backend_tokenizer,
        bos_token=base.bos_token,
        eos_token=base.eos_token,
        pad_token=base.pad_token,
        unk_token=base.unk_token,
        extra_special_tokens={"image_token": "<image>", "video_token": "<video>"},
        padding_side="left",
    )
    if (tokenizer.image_token_id, tokenizer.video_token_id) != (IMAGE_ID, VIDEO_ID):
        raise AssertionError("<image> / <video> did not get the expected ids")
    return tokenizer


def _text_config(kind: str, vocab_size: int, *, n_layers: int, n_heads: int, n_kv_heads: int, hidden_size: int):
    from transformers import LlamaConfig, MistralConfig, Qwen2Config

    if hidden_size % n_heads or n_heads % n_kv_heads:
        raise ValueError(f"hidden_size {hidden_size} / n_heads {n_heads} / n_kv_heads {n_kv_heads} do not divide")
    classes = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config}
    extra = {"sliding_window": None} if kind == "mistral" else {}
    return classes[kind](
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv_heads,
        max_position_embeddings=512,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
        tie_word_embeddings=False,
        **extra,
    )


def _finish(model, seed: int, randomise_norms: bool):
    if randomise_norms:
        randomise_norm_weights(model.model.language_model, seed + 1)
    return set_generation_tokens(model, PAD_ID, BOS_ID, EOS_ID).eval()


def build_llava_next_processor(words: list[str]):
    from transformers import LlavaNextProcessor
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    image_processor = LlavaNextImageProcessorPil(size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, image_grid_pinpoints=NEXT_PINPOINTS)
    return LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=build_tokenizer(words),
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS
        chat_template=CHAT_TEMPLATE,
    )


def build_llava_next_model(vocab_size: int, *, text_model: str = "llama", seed: int = 0, randomise_norms: bool = False, **sizes):
    from transformers import CLIPVisionConfig, LlavaNextConfig, LlavaNextForConditionalGeneration

    if text_model not in TEXT_MODELS:
        raise ValueError(f"unknown LLaVA-NeXT text model {text_model!r}; choose {', '.join(TEXT_MODELS)}")
    vision = CLIPVisionConfig(
        hidden_size=VISION_HIDDEN,
        intermediate_size=VISION_HIDDEN * 2,
        num_hidden_layers=VISION_LAYERS,
        num_attention_heads=2,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        projection_dim=VISION_HIDDEN,
    )
    config = LlavaNextConfig(
        vision_config=vision,
        text_config=_text_config(text_model, vocab_size, **sizes),
        image_token_id=IMAGE_ID,
        vision_feature_layer=-2,  # as llava-v1.6: the penultimate tower layer
        vision_feature_select_strategy="default",
        image_grid_pinpoints=NEXT_PINPOINTS,
        image_seq_length=PATCHES_PER_CROP,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    return _finish(LlavaNextForConditionalGeneration(config), seed, randomise_norms)


def build_onevision_processor(words: list[str]):
    """The OneVision image processor (PIL backend) + tokenizer + chat template, in ``LlavaNextProcessor``.

    ``LlavaOnevisionProcessor`` takes a video processor, and video processors need torchvision: without
    it the processor can be neither built nor loaded by ``AutoProcessor``. For single images its token
    count is LLaVA-NeXT's (``16`` base features, no CLS: ``num_additional_image_tokens=0`` and the
    ``"full"`` strategy; unpadded crop features + one newline per row) except for the ``anyres_max_9``
    down-sampling, which cannot trigger with ``ONEVISION_PINPOINTS`` (at most 9 crops), so
    ``LlavaNextProcessor`` expands ``<image>`` exactly as the model packs the features.
    """
    from transformers import LlavaNextProcessor
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import LlavaOnevisionImageProcessorPil

    image_processor = LlavaOnevisionImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, image_grid_pinpoints=ONEVISION_PINPOINTS)
    return LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=build_onevision_tokenizer(words),
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="full",
        num_additional_image_tokens=0,  # SigLIP has no CLS
        chat_template=ONEVISION_CHAT_TEMPLATE,
    )


def build_onevision_model(vocab_size: int, *, seed: int = 0, randomise_norms: bool = False, **sizes):
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration, SiglipVisionConfig

    vision = SiglipVisionConfig(
        hidden_size=VISION_HIDDEN,
        intermediate_size=VISION_HIDDEN * 2,
        num_hidden_layers=VISION_LAYERS,
        num_attention_heads=2,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        vision_use_head=False,
    )
    config = LlavaOnevisionConfig(
        vision_config=vision,
        text_config=_text_config("qwen2", vocab_size, **sizes),
        image_token_id=IMAGE_ID,
        video_token_id=VIDEO_ID,
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        image_grid_pinpoints=ONEVISION_PINPOINTS,
        vision_aspect_ratio=VISION_ASPECT_RATIO,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    return _finish(LlavaOnevisionForConditionalGeneration(config), seed, randomise_norms)


def save_tiny_llava_next(
    folder: Path,
    *,
    n_layers: int = 3,
    n_heads: int = 4,
    n_kv_heads: int = 2,
    hidden_size: int = 64,
    seed: int = 0,
    randomise_norms: bool = False,
    words: list[str] | None = None,
    text_model: str = "llama",
) -> Path:
    """Build a tiny LLaVA-NeXT (CLIP + Llama, or Mistral with ``text_model="mistral"``) and save model + processor."""
    return save_tiny(
        folder,
        build_llava_next_processor,
        build_llava_next_model,
        words,
        text_model=text_model,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        hidden_size=hidden_size,
        seed=seed,
        randomise_norms=randomise_norms,
    )


def save_tiny_onevision(
    folder: Path, *, n_layers: int = 3, n_heads: int = 4, n_kv_heads: int = 2, hidden_size: int = 64, seed: int = 0, randomise_norms: bool = False, words: list[str] | None = None
) -> Path:
    """Build a tiny LLaVA-OneVision (SigLIP + Qwen2) and save model + processor into ``folder``."""
    return save_tiny(
        folder,
        build_onevision_processor,
        build_onevision_model,
        words,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        hidden_size=hidden_size,
        seed=seed,
        randomise_norms=randomise_norms,
    )
