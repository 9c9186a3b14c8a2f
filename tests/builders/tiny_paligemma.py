"""Tiny PaliGemma models (SigLIP tower + linear projector + Gemma decoder), built offline: an architecture
attnwh knows nothing of by name (no ``Family`` data), captured through discovery alone.

As the other builders: the model, a word-level tokenizer and the real ``PaliGemmaProcessor`` with the
SigLIP image processor (PIL backend), saved with ``save_pretrained`` and loaded back through
``AutoProcessor`` / ``AutoModelForImageTextToText``. A 32×32 image with patch 8 gives 16 image tokens,
which the processor puts before the prompt (``<image>`` × 16, then ``<bos>``), with ``token_type_ids``
marking the prefix that PaliGemma attends to bidirectionally.
"""

from __future__ import annotations

from pathlib import Path

import torch

from attnwh.extract.toy.builder import randomise_norm_weights, save_tiny, set_generation_tokens

SPECIAL_TOKENS = ("<pad>", "<eos>", "<bos>", "<unk>", "<image>")
PAD_ID, EOS_ID, BOS_ID, UNK_ID, IMAGE_ID = range(len(SPECIAL_TOKENS))
IMAGE_SIZE, PATCH_SIZE = 32, 8
IMAGE_TOKENS = (IMAGE_SIZE // PATCH_SIZE) ** 2
# a user turn and the answer prompt; the processor itself puts the image tokens and <bos> in front
CHAT_TEMPLATE = (
    "{% for message in messages %}{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endfor %}"
    "{% if add_generation_prompt %}\n{% endif %}"
)


def build_tokenizer(words: list[str]):
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: index for index, token in enumerate(dict.fromkeys([*SPECIAL_TOKENS, *words]))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    backend.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in SPECIAL_TOKENS])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>", extra_special_tokens={"image_token": "<image>"}, padding_side="left"
    )


def build_processor(words: list[str]):
    from transformers import PaliGemmaProcessor
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    image_processor = SiglipImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    image_processor.image_seq_length = IMAGE_TOKENS
    return PaliGemmaProcessor(image_processor=image_processor, tokenizer=build_tokenizer(words), chat_template=CHAT_TEMPLATE)


def build_model(vocab_size: int, *, n_layers: int, n_heads: int, n_kv_heads: int, hidden_size: int, seed: int, randomise_norms: bool, text_model: str = "gemma"):
    from transformers import Gemma2Config, GemmaConfig, PaliGemmaConfig, PaliGemmaForConditionalGeneration, SiglipVisionConfig

    head_dim = hidden_size // n_heads
    # PaliGemma 2's Gemma 2 caps attention and final logits (50 and 30 there); small caps here, so that a tiny
    # random model's scores are really bent (tanh(x / cap) · cap ≈ x for |x| ≪ cap)
    capped = {"attn_logit_softcapping": 0.1, "final_logit_softcapping": 0.5, "sliding_window": 8} if text_model == "gemma2" else {}
    text = (Gemma2Config if text_model == "gemma2" else GemmaConfig)(
        **capped,
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv_heads,
        head_dim=head_dim,
        max_position_embeddings=512,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
    )
    vision = SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, projection_dim=hidden_size
    )
    config = PaliGemmaConfig(vision_config=vision, text_config=text, image_token_index=IMAGE_ID, projection_dim=hidden_size, hidden_size=hidden_size)
    torch.manual_seed(seed)
    model = PaliGemmaForConditionalGeneration(config)
    if randomise_norms:
        randomise_norm_weights(model.model.language_model, seed + 1, -0.5, 0.5)  # Gemma scales by 1 + weight
    return set_generation_tokens(model, PAD_ID, BOS_ID, EOS_ID).eval()


def save_tiny_paligemma(
    folder: Path, *, n_layers: int = 3, n_heads: int = 4, n_kv_heads: int = 2, hidden_size: int = 64, seed: int = 0, randomise_norms: bool = False, text_model: str = "gemma"
) -> Path:
    """Build a tiny PaliGemma (``text_model`` "gemma2": PaliGemma 2's text model) and save model + processor into ``folder``."""
    return save_tiny(
        folder,
        build_processor,
        build_model,
        None,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        hidden_size=hidden_size,
        seed=seed,
        randomise_norms=randomise_norms,
        text_model=text_model,
    )
