"""Tiny Gemma 3 image-text models (SigLIP tower + pooled soft-token projector + Gemma 3 decoder), built offline.

Like :mod:`attnwh.extract.toy.builder`, the model, a word-level tokenizer with Gemma's special
tokens and a Gemma-style chat template, and the Gemma 3 image processor (PIL backend) are saved with
``save_pretrained``, so they load back through ``AutoProcessor`` / ``AutoModelForImageTextToText``.

Sizes: a 32×32 image, patch 8 → 4×4 SigLIP patches, average-pooled to ``MM_TOKENS_PER_IMAGE`` = 4
soft tokens. The processor expands the template's ``<start_of_image>`` into
``\\n\\n<start_of_image>`` + 4 × ``<image_soft_token>`` + ``<end_of_image>\\n\\n`` (the newlines vanish
in the word-level tokenizer). The decoder alternates sliding-window (window ``SLIDING_WINDOW``) and
global layers with pattern ``SLIDING_WINDOW_PATTERN`` (every 2nd layer global), so both mask paths
run; image soft tokens attend to each other bidirectionally when ``token_type_ids`` are passed.
"""

from __future__ import annotations

from pathlib import Path

import torch

from attnwh.extract.toy.builder import randomise_norm_weights, save_tiny, set_generation_tokens

SPECIAL_TOKENS = ("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>", "<image_soft_token>")
# pad 0, eos 1, bos 2, unk 3: the same ids as the real Gemma 3 vocabulary
(PAD_ID, EOS_ID, BOS_ID, UNK_ID, START_OF_TURN_ID, END_OF_TURN_ID, BOI_ID, EOI_ID, IMAGE_ID) = range(len(SPECIAL_TOKENS))
TEMPLATE_WORDS = ("user", "model")

# Gemma 3 style (without the leading ``{{ bos_token }}``: the tokenizer's post-processor adds ``<bos>``,
# so both ``tokenize=False`` + ``processor(text=...)`` and ``tokenize=True`` give exactly one BOS).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}"
    "<start_of_turn>{{ role }}\n"
    "{% if message['content'] is string %}{{ message['content'] | trim }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<start_of_image>"
    "{% elif part['type'] == 'text' %}{{ part['text'] | trim }}{% endif %}"
    "{% endfor %}{% endif %}"
    "<end_of_turn>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)

IMAGE_SIZE = 32
PATCH_SIZE = 8
MM_TOKENS_PER_IMAGE = 4  # (32/8)² = 16 patches, 2×2 average pool → 4 soft tokens
VISION_HIDDEN = 32
VISION_LAYERS = 2
SLIDING_WINDOW = 8
SLIDING_WINDOW_PATTERN = 2  # layers 0, 2, ... sliding; 1, 3, ... global


def build_tokenizer(words: list[str]):
    """Word-level tokenizer (as in ``builder.build_tokenizer``) with Gemma's turn / image special tokens; adds ``<bos>``."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: index for index, token in enumerate(dict.fromkeys([*SPECIAL_TOKENS, *TEMPLATE_WORDS, *words]))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    backend.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in SPECIAL_TOKENS])
    backend.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", BOS_ID)])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        extra_special_tokens={
            "boi_token": "<start_of_image>",
            "eoi_token": "<end_of_image>",
            "image_token": "<image_soft_token>",
            "start_of_turn_token": "<start_of_turn>",
            "end_of_turn_token": "<end_of_turn>",
        },
        padding_side="left",
    )


def build_processor(words: list[str]):
    from transformers import Gemma3Processor
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    image_processor = Gemma3ImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, do_pan_and_scan=False)
    return Gemma3Processor(image_processor=image_processor, tokenizer=build_tokenizer(words), chat_template=CHAT_TEMPLATE, image_seq_length=MM_TOKENS_PER_IMAGE)


def build_model(vocab_size: int, *, n_layers: int, n_heads: int, n_kv_heads: int, hidden_size: int, seed: int, randomise_norms: bool):
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3TextConfig, SiglipVisionConfig

    if hidden_size % n_heads or n_heads % n_kv_heads:
        raise ValueError(f"hidden_size {hidden_size} / n_heads {n_heads} / n_kv_heads {n_kv_heads} do not divide")
    head_dim = hidden_size // n_heads
    layer_types = ["full_attention" if (i + 1) % SLIDING_WINDOW_PATTERN == 0 else "sliding_attention" for i in range(n_layers)]
    if n_layers >= 2 and "full_attention" not in layer_types:
        layer_types[-1] = "full_attention"
    text = Gemma3TextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv_heads,
        head_dim=head_dim,
        query_pre_attn_scalar=head_dim,  # scaling = head_dim ** -0.5, as the real 4B/12B checkpoints
        max_position_embeddings=512,
        sliding_window=SLIDING_WINDOW,
        layer_types=layer_types,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
        tie_word_embeddings=True,
    )
    vision = SiglipVisionConfig(
        hidden_size=VISION_HIDDEN,
        intermediate_size=VISION_HIDDEN * 2,
        num_hidden_layers=VISION_LAYERS,
        num_attention_heads=2,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        vision_use_head=False,  # as Gemma 3's tower: no attention-pool head
    )
    config = Gemma3Config(
        text_config=text,
        vision_config=vision,
        mm_tokens_per_image=MM_TOKENS_PER_IMAGE,
        boi_token_index=BOI_ID,
        eoi_token_index=EOI_ID,
        image_token_index=IMAGE_ID,
        tie_word_embeddings=True,  # lm_head shares model.model.language_model.embed_tokens.weight, as the real model
    )
    torch.manual_seed(seed)
    model = Gemma3ForConditionalGeneration(config)
    # _init_weights zeroes the soft-token projection, which would make every image token identical
    generator = torch.Generator().manual_seed(seed + 2)
    with torch.no_grad():
        projection = model.model.multi_modal_projector.mm_input_projection_weight
        projection.copy_(torch.randn(projection.shape, generator=generator) * VISION_HIDDEN**-0.5)
    if randomise_norms:
        randomise_norm_weights(model.model.language_model, seed + 1, -0.5, 0.5)  # Gemma scales by 1 + weight
    # as the real -it checkpoints: <eos>, <end_of_turn>
    return set_generation_tokens(model, PAD_ID, BOS_ID, [EOS_ID, END_OF_TURN_ID]).eval()


def save_tiny_gemma3(
    folder: Path, *, n_layers: int = 3, n_heads: int = 4, n_kv_heads: int = 2, hidden_size: int = 64, seed: int = 0, randomise_norms: bool = False, words: list[str] | None = None
) -> Path:
    """Build a tiny Gemma 3 (``Gemma3ForConditionalGeneration``) and save model + processor into ``folder``."""
    return save_tiny(
        folder, build_processor, build_model, words, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv_heads, hidden_size=hidden_size, seed=seed, randomise_norms=randomise_norms
    )
