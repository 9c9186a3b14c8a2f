"""Tiny Qwen2.5-VL / Qwen2-VL models (windowed ViT + patch merger + Qwen2 decoder with M-RoPE), built offline.

Like :mod:`attnwh.extract.toy.builder`, the model, a word-level tokenizer with the family's special
tokens and chat template, and the family's dynamic-resolution image processor are saved with
``save_pretrained``, so they load back through ``AutoProcessor`` / ``AutoModelForImageTextToText``.

The image processor is tuned so that a 64×64 image gives 4 image tokens (patch 16, merge 2: one
token per 32×32 pixels) and images of other sizes give other counts (96×48 → 6).
"""

from __future__ import annotations

from pathlib import Path

import torch

from attnwh.extract.toy.builder import randomise_norm_weights, save_tiny, set_generation_tokens

SPECIAL_TOKENS = (
    "<|endoftext|>",  # pad (and the generation config's bos, as in the real checkpoints)
    "<|im_start|>",
    "<|im_end|>",  # eos
    "<unk>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
PAD_ID, IM_START_ID, EOS_ID, UNK_ID, VISION_START_ID, VISION_END_ID, IMAGE_ID, VIDEO_ID = range(len(SPECIAL_TOKENS))
BOS_ID = PAD_ID
TEMPLATE_WORDS = ("system", "user", "assistant", "You", "are", "a", "helpful", ".")

# Qwen2-VL / Qwen2.5-VL style: a default system turn, image placeholders wrapped in vision_start/end.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant .<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

PATCH_SIZE = 16
MERGE_SIZE = 2
TEMPORAL_PATCH_SIZE = 2
VISION_HIDDEN = 32
VISION_LAYERS = 2
MIN_PIXELS = 32 * 32  # one image token at least
MAX_PIXELS = 128 * 128  # sixteen image tokens at most
VARIANTS = ("qwen2_5_vl", "qwen2_vl")


def build_tokenizer(words: list[str]):
    """Word-level tokenizer (as in ``builder.build_tokenizer``) with the Qwen chat / vision special tokens, no BOS."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: index for index, token in enumerate(dict.fromkeys([*SPECIAL_TOKENS, *TEMPLATE_WORDS, *words]))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    backend.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in SPECIAL_TOKENS])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<unk>",
        extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>", "vision_start_token": "<|vision_start|>", "vision_end_token": "<|vision_end|>"},
        padding_side="left",
    )


def build_processor(words: list[str]):
    """The Qwen2-VL image processor (PIL backend) + tokenizer + chat template, in an image-only processor class.

    ``Qwen2VLProcessor`` / ``Qwen2_5_VLProcessor`` take a video processor, and video processors need
    torchvision: without it they can be neither built nor loaded by ``AutoProcessor``. For images the
    Qwen processors do only the generic ``ProcessorMixin`` work plus ``replace_image_token`` (one
    ``<|image_pad|>`` per ``grid_t*grid_h*grid_w / merge_size**2``) and ``mm_token_type_ids``;
    ``PaddleOCRVLProcessor`` does exactly that with no video processor, so it stands in for them.
    """
    from transformers import PaddleOCRVLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    image_processor = Qwen2VLImageProcessorPil(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS, patch_size=PATCH_SIZE, merge_size=MERGE_SIZE, temporal_patch_size=TEMPORAL_PATCH_SIZE)
    return PaddleOCRVLProcessor(image_processor=image_processor, tokenizer=build_tokenizer(words), chat_template=CHAT_TEMPLATE)


def mrope_section(head_dim: int) -> list[int]:
    """Split head_dim/2 rotary frequencies over (temporal, height, width) in the real 16:24:24 proportions."""
    half = head_dim // 2
    temporal = max(1, half // 4)
    height = (half - temporal) // 2
    return [temporal, height, half - temporal - height]


def build_model(vocab_size: int, *, variant: str, n_layers: int, n_heads: int, n_kv_heads: int, hidden_size: int, seed: int, randomise_norms: bool):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLConfig, Qwen2VLForConditionalGeneration

    if hidden_size % n_heads or n_heads % n_kv_heads:
        raise ValueError(f"hidden_size {hidden_size} / n_heads {n_heads} / n_kv_heads {n_kv_heads} do not divide")
    text = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv_heads,
        max_position_embeddings=512,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": mrope_section(hidden_size // n_heads)},
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
    )
    common = dict(depth=VISION_LAYERS, num_heads=2, in_channels=3, patch_size=PATCH_SIZE, spatial_merge_size=MERGE_SIZE, temporal_patch_size=TEMPORAL_PATCH_SIZE)
    ids = dict(image_token_id=IMAGE_ID, video_token_id=VIDEO_ID, vision_start_token_id=VISION_START_ID, vision_end_token_id=VISION_END_ID)
    if variant == "qwen2_5_vl":
        vision = dict(
            common,
            hidden_size=VISION_HIDDEN,
            intermediate_size=VISION_HIDDEN * 2,
            out_hidden_size=hidden_size,
            window_size=2 * MERGE_SIZE * PATCH_SIZE,  # windows of 2×2 merged tokens; the last block attends fully
            fullatt_block_indexes=[VISION_LAYERS - 1],
            tokens_per_second=2,
        )
        config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False, **ids)
        model_class = Qwen2_5_VLForConditionalGeneration
    elif variant == "qwen2_vl":
        vision = dict(common, embed_dim=VISION_HIDDEN, hidden_size=hidden_size, mlp_ratio=2)
        config = Qwen2VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False, **ids)
        model_class = Qwen2VLForConditionalGeneration
    else:
        raise ValueError(f"unknown Qwen variant {variant!r}; choose {', '.join(VARIANTS)}")
    torch.manual_seed(seed)
    model = model_class(config)
    if randomise_norms:
        randomise_norm_weights(model.model.language_model, seed + 1)
    return set_generation_tokens(model, PAD_ID, BOS_ID, EOS_ID).eval()


def save_tiny_qwen2_5_vl(
    folder: Path,
    *,
    n_layers: int = 3,
    n_heads: int = 4,
    n_kv_heads: int = 2,
    hidden_size: int = 64,
    seed: int = 0,
    randomise_norms: bool = False,
    words: list[str] | None = None,
    variant: str = "qwen2_5_vl",
) -> Path:
    """Build a tiny Qwen2.5-VL (or, with ``variant="qwen2_vl"``, Qwen2-VL) and save model + processor into ``folder``."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown Qwen variant {variant!r}; choose {', '.join(VARIANTS)}")
    return save_tiny(
        folder,
        build_processor,
        build_model,
        words,
        variant=variant,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        hidden_size=hidden_size,
        seed=seed,
        randomise_norms=randomise_norms,
    )


def save_tiny_qwen2_vl(folder: Path, **kwargs) -> Path:
    """Tiny Qwen2-VL: the same tokenizer, processor settings and decoder, with the Qwen2-VL vision tower."""
    return save_tiny_qwen2_5_vl(folder, variant="qwen2_vl", **kwargs)
