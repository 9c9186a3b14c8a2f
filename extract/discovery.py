"""Discovery (DESIGN §17): what attnwh needs of a model, read from its config and its module tree.

No adapter per architecture. From the **config** alone (before any weight is read, ``describe``):
the architecture and ``model_type``, the text config (``config.get_text_config()``) and the key it
sits under (``config.sub_configs``), its layers, heads, key-value heads and head size, which decoder
layers are attention layers in a hybrid (``layer_types``), and the token ids that mark image and
video positions (``image_token_id`` / ``image_token_index``, with Ovis2's ``visual_indicator_token_ids``; ``video_token_id`` / ...). A model
attnwh cannot capture is refused here, in one line naming the reason (``OutOfScope``).

From the **module tree** (``find_parts``): the decoder (``get_decoder()``, descended to the module
that owns the list of decoder layers), its decoder layers (the one ``ModuleList`` of
``num_hidden_layers`` modules), each attention layer's self-attention module (the first module of
the layer whose class is an attention class; cross- and linear attention are not), the final norm
(the decoder's own norm child) and the output embeddings (``get_output_embeddings()``).

Family knowledge that discovery cannot read is data (``FAMILIES``: prompt formats, the region
mapping, how the processor takes images) and the few named exceptions below, each with its test.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from attnwh.core.errors import ModelError
from attnwh.extract import regions
from attnwh.extract.regions import TokenFunction

IMAGE_TOKEN_KEYS = ("image_token_id", "image_token_index")
# other ids the model overwrites with vision-side embeddings, image positions as well: Ovis2's visual indicator tokens
# around its image tokens (<IMG_START>, <IMG_GRID>, <IMG_COL>, <IMG_ROW>, <IMG_END>), rows of its visual embedding table
IMAGE_MARKER_KEYS = ("visual_indicator_token_ids",)
VIDEO_TOKEN_KEYS = ("video_token_id", "video_token_index")
# layer kinds (config.layer_types) whose layers attend through the attention interface; anything else
# ('linear_attention', 'conv', 'mamba', 'mlp', 'moe', ...) is not an attention layer
ATTENTION_LAYER_KINDS = ("full_attention", "sliding_attention", "chunked_attention", "indexed_attention", "hybrid", "hybrid_sliding", "reference_sliding_attention")
NORM_CLASS_SUFFIXES = ("Norm", "LayerNorm", "RMSNorm")


class OutOfScope(ModelError):
    """A model attnwh does not capture, with the reason (one line)."""


@dataclass(frozen=True)
class Family:
    """What attnwh knows of a family beyond what discovery reads: data, keyed by ``config.model_type``."""

    model_type: str
    description: str
    prompt_formats: tuple[str, ...] = ("chat_template",)  # the first is suggested
    nested_images: bool = False  # the processor takes one list of images per prompt (Gemma 3)
    image_tokens: TokenFunction | None = None  # which processed pixels each image token reads: regions and overlays (attnwh.extract.regions)


_LLAVA_FORMATS = ("llava_v1", "chat_template", "llama3", "phi3", "mistral_instruct")
FAMILIES: dict[str, Family] = {
    family.model_type: family
    for family in (
        Family("llava", "LLaVA-1.5 (CLIP + Vicuna / Llama-3 / Phi-3)", _LLAVA_FORMATS, image_tokens=regions.llava_tokens),
        Family("llava_next", "LLaVA-1.6 / NeXT (anyres tiles + row newlines)", _LLAVA_FORMATS, image_tokens=regions.llava_next_tokens),
        Family("vipllava", "ViP-LLaVA (multi-layer CLIP features)", ("vip_llava", "llava_v1", "chat_template"), image_tokens=regions.vip_llava_tokens),
        Family("llava_onevision", "LLaVA-OneVision (SigLIP + Qwen2, anyres)", image_tokens=regions.llava_onevision_tokens),
        Family("qwen2_vl", "Qwen2-VL (dynamic resolution, M-RoPE)", image_tokens=regions.qwen_vl_tokens),
        Family("qwen2_5_vl", "Qwen2.5-VL (dynamic resolution, M-RoPE)", image_tokens=regions.qwen_vl_tokens),
        Family("gemma3", "Gemma 3 (SigLIP, bidirectional image attention, sliding window)", nested_images=True, image_tokens=regions.gemma3_tokens),
    )
}

# Models whose config cannot say why they are out of scope (the generic rules in ``describe`` say it for
# the rest: encoder-decoder, images by cross-attention, no image token, no attention layer).
OUT_OF_SCOPE: dict[str, str] = {
    "diffusion_gemma": "a block-diffusion decoder: text is denoised in blocks, not generated token by token",
    "pi0": "a vision-language-action model: it outputs robot actions, not text",
    "evolla": "a protein-text model: no images",
    "idefics": "images by cross-attention (gated cross-attention layers), not by image tokens in the decoder's sequence",
    "mllama": "images by cross-attention (cross-attention layers), not by image tokens in the decoder's sequence",
}


def family_of(model_type: str) -> Family:
    """The family's data, or the generic family (the model's chat template, no region mapping)."""
    return FAMILIES.get(model_type) or Family(model_type, "discovered from the config")


@dataclass(frozen=True)
class ModelSpec:
    """What attnwh reads of a model from its config, before any weight is read."""

    architecture: str
    model_type: str
    family: Family
    text_key: str | None  # the sub-config key of the text config (None: the config is the text config)
    n_decoder_layers: int
    attention_layers: tuple[int, ...]  # decoder-layer indices of the attention layers (all of them unless hybrid)
    n_heads: int
    n_kv_heads: int
    head_dim: int | None  # None: it differs between attention layers
    hidden_size: int
    vocab_size: int
    image_token_ids: tuple[int, ...]  # every id typed image: the image tokens', then ``image_marker_ids``
    video_token_ids: tuple[int, ...] = ()
    image_marker_ids: tuple[int, ...] = ()  # Ovis2's visual indicator tokens (written from its visual embedding table)
    final_logit_softcapping: float | None = None  # Gemma: logits are tanh-capped (changes probabilities, not ranks)
    logit_scales: tuple[float, ...] = ()  # factors the text config names for the logits (logits_scaling, logit_scale): extract.lens.head_transforms

    @property
    def n_layers(self) -> int:
        """Attention layers: what the warehouse's ``layer`` column counts (0 .. n_layers − 1)."""
        return len(self.attention_layers)

    @property
    def hybrid(self) -> bool:
        return self.n_layers != self.n_decoder_layers

    @property
    def info(self) -> dict[str, Any]:
        info = {
            "architecture": self.architecture,
            "family": self.model_type,
            "n_layers": self.n_layers,
            "n_heads": self.n_heads,
            "n_kv_heads": self.n_kv_heads,
            "head_dim": self.head_dim,
            "hidden_size": self.hidden_size,
            "vocab_size": self.vocab_size,
        }
        if self.hybrid:
            info["n_decoder_layers"] = self.n_decoder_layers
            info["attention_layers"] = list(self.attention_layers)
        return info

    def attn_implementation(self, capture: str) -> str | dict[str, str]:
        """The text model gets ``capture``; every other sub-model keeps its default (SDPA where it supports it)."""
        return capture if self.text_key is None else {self.text_key: capture}


def describe(config) -> ModelSpec:
    """The model's spec from its config, or ``OutOfScope`` with the reason in one line."""
    architectures = list(getattr(config, "architectures", None) or [])
    model_type = str(getattr(config, "model_type", "") or "")
    architecture = architectures[0] if architectures else type(config).__name__.removesuffix("Config") + " (no architectures in config)"
    if model_type in OUT_OF_SCOPE:
        raise OutOfScope(f"{architecture} is out of scope: {OUT_OF_SCOPE[model_type]}")
    if getattr(config, "is_encoder_decoder", False):
        raise OutOfScope(f"{architecture} is out of scope: an encoder-decoder model (its decoder reads the image through cross-attention to the encoder)")
    try:
        text = config.get_text_config(decoder=True)
    except (AttributeError, ValueError) as exc:
        raise OutOfScope(f"{architecture} is out of scope: no text decoder config ({exc})") from exc
    if getattr(text, "cross_attention_layers", None):
        raise OutOfScope(f"{architecture} is out of scope: images by cross-attention layers, not by image tokens in the decoder's sequence")
    image_ids = _token_ids(config, text, IMAGE_TOKEN_KEYS)
    if not image_ids:
        raise OutOfScope(f"{architecture} is out of scope: its config marks no image positions by a token id ({' / '.join(IMAGE_TOKEN_KEYS)})")
    markers = tuple(marker for marker in _token_ids(config, text, IMAGE_MARKER_KEYS) if marker not in image_ids)
    image_ids += markers
    n_decoder_layers = _int(text, "num_hidden_layers", architecture)
    layer_types = _attribute(text, "layer_types")
    if isinstance(layer_types, (list, tuple)) and layer_types and len(layer_types) != n_decoder_layers:
        raise ModelError(f"{architecture}: its text config names {len(layer_types)} layer types for {n_decoder_layers} layers")
    if isinstance(layer_types, (list, tuple)) and len(layer_types) == n_decoder_layers:
        attention_layers = tuple(index for index, kind in enumerate(layer_types) if kind in ATTENTION_LAYER_KINDS)
        if not attention_layers:
            raise OutOfScope(f"{architecture} is out of scope: no attention layer among its layer types ({', '.join(sorted(set(map(str, layer_types))))})")
    else:
        attention_layers = tuple(range(n_decoder_layers))
    n_heads = _int(text, "num_attention_heads", architecture)
    n_kv_heads = _int(text, "num_key_value_heads", architecture, default=n_heads)
    hidden_size = _int(text, "hidden_size", architecture)
    head_dim = _head_dim(text, attention_layers, hidden_size // n_heads, architecture)
    if n_heads % n_kv_heads:
        raise ModelError(f"{architecture}: {n_heads} attention heads do not group into {n_kv_heads} key-value heads")
    return ModelSpec(
        architecture=architecture,
        model_type=model_type,
        family=family_of(model_type),
        text_key=_text_key(config, text),
        n_decoder_layers=n_decoder_layers,
        attention_layers=attention_layers,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        head_dim=head_dim,
        hidden_size=hidden_size,
        vocab_size=_int(text, "vocab_size", architecture),
        image_token_ids=image_ids,
        image_marker_ids=markers,
        video_token_ids=_token_ids(config, text, VIDEO_TOKEN_KEYS),
        final_logit_softcapping=_attribute(text, "final_logit_softcapping") or None,
        logit_scales=tuple(
            float(value) for value in (_attribute(text, key) for key in ("logits_scaling", "logit_scale")) if isinstance(value, int | float) and not isinstance(value, bool)
        ),
    )


class _PerLayer(ModelError):
    """A config value that differs between layers (a heterogeneous config)."""


def _attribute(config, key: str):
    """A config attribute, or None; heterogeneous (per-layer) configs refuse ambiguous global reads."""
    try:
        return getattr(config, key, None)
    except Exception as exc:  # transformers' AmbiguousGlobalPerLayerAttributeError and kin
        raise _PerLayer(f"{type(config).__name__}.{key} differs between layers; attnwh needs one value for every attention layer") from exc


def _head_dim(text, attention_layers: tuple[int, ...], default: int, architecture: str) -> int | None:
    """The attention layers' head size; None when it differs between layers (Gemma 4's global layers
    have twice its sliding layers' head size): figures that need one head size are then absent."""
    try:
        return _int(text, "head_dim", architecture, default)
    except _PerLayer:  # a heterogeneous config: read it per layer
        per_layer = text.per_layer_config
        sizes = {int(getattr(per_layer[index], "head_dim", None) or default) for index in attention_layers}
        return sizes.pop() if len(sizes) == 1 else None


def _int(config, key: str, architecture: str, default: int | None = None) -> int:
    """A positive integer of the config (``default`` when the config leaves it unset)."""
    value = _attribute(config, key)
    if value is None and default is not None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ModelError(f"{architecture}: its text config has no positive integer {key} (found {value!r})")
    return value


def _token_ids(config, text, keys: tuple[str, ...]) -> tuple[int, ...]:
    ids: list[int] = []
    for source in (config, text):
        for key in keys:
            value = _attribute(source, key)
            for item in value if isinstance(value, list | tuple) else [value]:
                if isinstance(item, int) and not isinstance(item, bool) and item >= 0 and item not in ids:
                    ids.append(item)
    return tuple(ids)


def _text_key(config, text) -> str | None:
    if text is config:
        return None
    for key in getattr(config, "sub_configs", None) or {}:
        if getattr(config, key, None) is text:
            return key
    raise ModelError(f"{type(config).__name__}: the text config is not one of its sub-configs ({', '.join(getattr(config, 'sub_configs', None) or {}) or 'none'})")


@dataclass(frozen=True)
class ModelParts:
    """The modules attnwh touches, found in the module tree."""

    text_model: torch.nn.Module  # owns the decoder layers (and the final norm)
    decoder_layers: list[torch.nn.Module]
    attention_modules: list[torch.nn.Module]  # one per attention layer, in order (ModelSpec.attention_layers)
    final_norm: torch.nn.Module
    lm_head: torch.nn.Module
    names: Mapping[str, str] = field(default_factory=dict)  # where each part sits (for messages and `attnwh models --all`)


def find_parts(model: torch.nn.Module, spec: ModelSpec) -> ModelParts:
    """The decoder, its layers, attention modules, final norm and output embeddings of ``model``."""
    names = {id(module): name for name, module in model.named_modules()}
    decoder = _decoder(model)
    owner, layers = _layer_list(decoder, spec)
    found = [_attention_module(layer) for layer in layers]
    missing = [index for index in spec.attention_layers if found[index] is None]
    if missing and spec.hybrid:
        raise ModelError(f"{spec.architecture}: decoder layers {missing} ({type(layers[missing[0]]).__name__}) have no self-attention module")
    if missing:
        raise ModelError(f"{spec.architecture}: decoder layers {missing} have no self-attention module, and its config names no layer types")
    attention = [found[index] for index in spec.attention_layers]
    norm = _final_norm(owner, spec)
    lm_head = model.get_output_embeddings()
    if lm_head is None or not hasattr(lm_head, "weight"):
        raise ModelError(f"{spec.architecture}: no output embeddings (get_output_embeddings())")
    where = {
        "text_model": names.get(id(owner), "?"),
        "layers": names.get(id(layers[0]), "?").rsplit(".", 1)[0],
        "attention": names.get(id(attention[0]), "?").split(".")[-1],
        "norm": names.get(id(norm), "?").split(".")[-1],
        "lm_head": names.get(id(lm_head), "?"),
    }
    return ModelParts(owner, list(layers), attention, norm, lm_head, where)


def _decoder(model: torch.nn.Module) -> torch.nn.Module:
    try:
        decoder = model.get_decoder()
    except (AttributeError, NotImplementedError, ValueError):
        decoder = None
    return decoder if isinstance(decoder, torch.nn.Module) else model


def _layer_list(decoder: torch.nn.Module, spec: ModelSpec) -> tuple[torch.nn.Module, torch.nn.ModuleList]:
    """The module owning the decoder layers, and the layers: the shallowest ``ModuleList`` of the right length."""
    candidates = []
    for name, module in decoder.named_modules():
        for child_name, child in module.named_children():
            if isinstance(child, torch.nn.ModuleList) and len(child) == spec.n_decoder_layers and any(_attention_module(layer) is not None for layer in child):
                candidates.append((name.count(".") + (1 if name else 0), child_name != "layers", module, child))
    if not candidates:
        raise ModelError(f"{spec.architecture}: no list of {spec.n_decoder_layers} decoder layers with attention under {type(decoder).__name__}")
    _, _, owner, layers = min(candidates, key=lambda item: item[:2])
    return owner, layers


def _is_attention(module: torch.nn.Module) -> bool:
    name = type(module).__name__
    return name.endswith(("Attention", "SelfAttention")) and "Cross" not in name and "Linear" not in name


def _attention_module(layer: torch.nn.Module) -> torch.nn.Module | None:
    """The layer's self-attention module: the first attention-class module, searched breadth-first."""
    frontier = [layer]
    while frontier:
        following = []
        for module in frontier:
            for child in module.children():
                if _is_attention(child):
                    return child
                following.append(child)
        frontier = following
    return None


def _is_norm(module: torch.nn.Module) -> bool:
    return type(module).__name__.endswith(NORM_CLASS_SUFFIXES) or isinstance(module, torch.nn.LayerNorm)


def position_wise_modules(layer: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules of decoder layer ``layer`` that compute each position from that position alone, and whose output
    reaches the layer's output only at that position: its feed-forward (the one child with weights besides its
    self-attention and its norms) and its attention's output projection (``o_proj``, transformers' name for it). Empty
    where the layer is of another form (several such children: AltUp, hyper-connections, a linear-attention mixer, a
    cross-attention layer), so that nothing is assumed of layers whose shape is not this one."""
    attention = _attention_module(layer)
    if attention is None:
        return []
    others = [
        child for child in layer.children() if not _is_norm(child) and not any(module is attention for module in child.modules()) and next(child.parameters(), None) is not None
    ]
    if len(others) != 1:
        return []
    projection = getattr(attention, "o_proj", None)
    return others + ([projection] if isinstance(projection, torch.nn.Linear) else [])


class StreamsThenNorm(torch.nn.Module):
    """Named exception: hyper-connections (HY-V4-VL, GLM-5-Next). The residual is several streams, merged by the
    decoder's ``hc_head`` before its final norm (``norm(hc_head(h))``); the logit lens does the same."""

    def __init__(self, merge: torch.nn.Module, norm: torch.nn.Module):
        super().__init__()
        self.merge, self.norm = merge, norm

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # [position, stream, hidden] -> [position, hidden]
        return self.norm(self.merge(hidden.unsqueeze(1)).squeeze(1))  # the merge takes [batch, sequence, stream, hidden]


def _final_norm(owner: torch.nn.Module, spec: ModelSpec) -> torch.nn.Module:
    norm = _plain_final_norm(owner, spec)
    merge = getattr(owner, "hc_head", None)
    return StreamsThenNorm(merge, norm) if isinstance(merge, torch.nn.Module) else norm


def _plain_final_norm(owner: torch.nn.Module, spec: ModelSpec) -> torch.nn.Module:
    norms = [(name, child) for name, child in owner.named_children() if _is_norm(child)]
    named = [child for name, child in norms if name in ("norm", "final_layernorm", "final_norm", "ln_f", "norm_f")]
    if len(named) == 1:
        return named[0]
    if len(norms) == 1:
        return norms[0][1]
    found = ", ".join(name for name, _ in norms) or "none"
    raise ModelError(f"{spec.architecture}: cannot tell the final norm among the decoder's norms ({found})")


__all__ = ["FAMILIES", "Family", "ModelParts", "ModelSpec", "OUT_OF_SCOPE", "OutOfScope", "describe", "family_of", "find_parts"]
