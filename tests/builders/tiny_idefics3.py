"""A tiny Idefics3 with the real ``Idefics3Processor`` and image splitting, built offline.

A 64×64 image is split into 2×2 tiles of 32 px plus a global view, each tile 4 ``<image>`` tokens (``image_seq_len``),
so one image is 5 runs of image tokens separated by text tokens: ``<fake_token_around_image><row_i_col_j>`` before
each tile, ``<fake_token_around_image><global-img>`` before the global view. The image span of a sample therefore
holds more positions than its image tokens.
"""

from __future__ import annotations

from pathlib import Path

import torch

from attnwh.extract.toy.builder import randomise_norm_weights, save_tiny, set_generation_tokens

ROW_COL = tuple(f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6))
SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>", "<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>", *ROW_COL)
PAD_ID, BOS_ID, EOS_ID, UNK_ID, FAKE_ID, IMAGE_ID, END_OF_UTTERANCE_ID, GLOBAL_ID = range(8)
IMAGE_SEQ_LEN = 4
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] | capitalize }}:"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>{% elif part['type'] == 'text' %} {{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
)


def build_tokenizer(words: list[str]):
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: index for index, token in enumerate(dict.fromkeys([*SPECIAL_TOKENS, "User", "Assistant", ":", *words]))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    backend.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in SPECIAL_TOKENS])
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", BOS_ID)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>", padding_side="left")


def build_processor(words: list[str]):
    from transformers import Idefics3Processor
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    image_processor = Idefics3ImageProcessorPil(size={"longest_edge": 64}, max_image_size={"longest_edge": 32}, do_image_splitting=True)
    return Idefics3Processor(image_processor=image_processor, tokenizer=build_tokenizer(words), image_seq_len=IMAGE_SEQ_LEN, chat_template=CHAT_TEMPLATE)


def build_model(vocab_size: int, *, seed: int):
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3VisionConfig, LlamaConfig

    vision = Idefics3VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8)
    text = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
        tie_word_embeddings=False,
    )
    config = Idefics3Config(vision_config=vision, text_config=text, image_token_id=IMAGE_ID, scale_factor=2, pad_token_id=PAD_ID)
    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration(config)
    randomise_norm_weights(model.model.text_model, seed + 1)
    return set_generation_tokens(model, PAD_ID, BOS_ID, EOS_ID).eval()


def save_tiny_idefics3(folder: Path, *, seed: int = 13) -> Path:
    """Build a tiny Idefics3 (image splitting on) and save model + processor into ``folder``."""
    return save_tiny(folder, build_processor, build_model, None, seed=seed)
