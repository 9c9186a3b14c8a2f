"""Tiny LLaVA-architecture models (CLIP tower + projector + Llama), built offline from configs.

The model, its word-level tokenizer (with ``<image>`` and a chat template) and its image processor
are saved with ``save_pretrained``, so they load back through the same ``from_pretrained`` path a
hub id takes.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from attnwh.extract.toy import shapes

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>", "<image>")
PAD_ID, BOS_ID, EOS_ID, UNK_ID, IMAGE_ID = range(len(SPECIAL_TOKENS))
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: "
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<image>\n{% else %}{{ part['text'] }}{% endif %}{% endfor %}"
    "{% else %} {% for part in message['content'] %}{{ part['text'] }}{% endfor %}</s>{% endif %}"
    "{% endfor %}{% if add_generation_prompt %} ASSISTANT:{% endif %}"
)


@dataclass(frozen=True)
class TinyLlavaSpec:
    """Sizes of a tiny LLaVA. ``n_kv_heads < n_heads`` makes a GQA model."""

    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 4
    hidden_size: int = 64
    vision_layers: int = 2
    vision_hidden: int = 32
    image_size: int = shapes.IMAGE_SIZE
    patch_size: int = 16
    seed: int = 0
    randomise_norms: bool = False
    architecture: str = "llava"  # 'llava' | 'vipllava'


def build_tokenizer(words: list[str]):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: index for index, token in enumerate(dict.fromkeys([*SPECIAL_TOKENS, *words]))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", BOS_ID)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>", extra_special_tokens={"image_token": "<image>"}, padding_side="left"
    )
    return tokenizer


def build_processor(spec: TinyLlavaSpec, words: list[str]):
    from transformers import LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    image_processor = CLIPImageProcessorPil(size={"shortest_edge": spec.image_size}, crop_size={"height": spec.image_size, "width": spec.image_size})
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=build_tokenizer(words),
        patch_size=spec.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )


def build_model(spec: TinyLlavaSpec, vocab_size: int):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, VipLlavaConfig, VipLlavaForConditionalGeneration

    vision = CLIPVisionConfig(
        hidden_size=spec.vision_hidden,
        intermediate_size=spec.vision_hidden * 2,
        num_hidden_layers=spec.vision_layers,
        num_attention_heads=2,
        image_size=spec.image_size,
        patch_size=spec.patch_size,
        projection_dim=spec.vision_hidden,
    )
    text = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.hidden_size * 2,
        num_hidden_layers=spec.n_layers,
        num_attention_heads=spec.n_heads,
        num_key_value_heads=spec.n_kv_heads,
        max_position_embeddings=512,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
        tie_word_embeddings=False,
    )
    torch.manual_seed(spec.seed)
    if spec.architecture == "vipllava":
        # ViP-LLaVA concatenates several tower layers (the real one: 5 of a 24-layer CLIP)
        layers = list(range(-spec.vision_layers, 0))
        config = VipLlavaConfig(vision_config=vision, text_config=text, image_token_index=IMAGE_ID, vision_feature_layers=layers)
        model = VipLlavaForConditionalGeneration(config)
    elif spec.architecture == "llava":
        config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=IMAGE_ID, vision_feature_layer=-1, vision_feature_select_strategy="default")
        model = LlavaForConditionalGeneration(config)
    else:
        raise ValueError(f"unknown tiny architecture {spec.architecture!r}")
    if spec.randomise_norms:
        randomise_norm_weights(model.model.language_model, spec.seed + 1)
    return set_generation_tokens(model, PAD_ID, BOS_ID, EOS_ID).eval()


def randomise_norm_weights(text_model: torch.nn.Module, seed: int, low: float = 0.5, high: float = 1.5) -> None:
    """Norm weights of 1 hide a norm applied twice; tests randomise them."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in text_model.named_parameters():
            if name.endswith("norm.weight"):
                parameter.copy_(low + (high - low) * torch.rand(parameter.shape, generator=generator))


def set_generation_tokens(model, pad: int, bos: int, eos: int | list[int]):
    """The special tokens of the model's generation_config, as the family's real checkpoints set them."""
    model.generation_config.pad_token_id = pad
    model.generation_config.bos_token_id = bos
    model.generation_config.eos_token_id = eos
    return model


def save_tiny(folder: Path, build_processor, build_model, words: list[str] | None = None, **model_options) -> Path:
    """Build a family's processor (word-level vocabulary: the toy's unless ``words``), then its model sized to
    that tokenizer (``build_model(vocab_size, **model_options)``), and save both atomically into ``folder``."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    processor = build_processor(words if words is not None else shapes.vocabulary())
    model = build_model(len(processor.tokenizer), **model_options)
    return save_pretrained_atomically(folder, model, processor)


def save_pretrained_atomically(folder: Path, *objects) -> Path:
    """Save model and processor into a temporary sibling folder, then rename it into place."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        for item in objects:
            item.save_pretrained(staging)
        try:
            os.rename(staging, folder)
        except OSError:
            if not (folder / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def save_tiny_llava(folder: Path, spec: TinyLlavaSpec = TinyLlavaSpec(), words: list[str] | None = None) -> Path:
    """Build a tiny LLaVA and save model + processor into ``folder`` (created atomically)."""
    return save_tiny(folder, lambda vocabulary: build_processor(spec, vocabulary), lambda vocab_size: build_model(spec, vocab_size), words)
