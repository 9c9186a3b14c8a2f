"""Model adapters, keyed by the Hugging Face architecture class, and the one loading path.

Hub ids and local folders both load through ``from_pretrained``; the architecture is read from
the config first, so an unsupported model fails before any weights are loaded.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from attnwh.core.errors import ModelError, UsageError
from attnwh.core.registry import register
from attnwh.extract import regions
from attnwh.extract.forward import CAPTURE_ATTENTION, install_dispatch
from attnwh.extract.regions import RegionFunction

_REVISION_WINDOW = 1 << 20
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class Adapter:
    """Where one architecture keeps the parts attnwh touches.

    Module paths (transformers 5): the decoder is ``model.model.language_model``, its attention
    modules ``.layers[i].self_attn``, the final norm ``.norm``, the unembedding ``model.lm_head``.
    Image positions are the ``input_ids`` equal to the config's image token (after the processor
    expanded it; LLaVA-NeXT's row-newline features are among them). An architecture that keeps
    these elsewhere subclasses and overrides.
    """

    architecture: str
    family: str
    description: str
    prompt_formats: tuple[str, ...] = ("chat_template",)  # the first is suggested
    nested_images: bool = False  # the processor takes one list of images per prompt (Gemma 3)
    region_tokens: RegionFunction | None = None  # which image tokens a box mask covers (attnwh.extract.regions)

    def text_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.model.language_model

    def decoder_layers(self, model: torch.nn.Module) -> list[torch.nn.Module]:
        return list(self.text_model(model).layers)

    def attention_modules(self, model: torch.nn.Module) -> list[torch.nn.Module]:
        return [layer.self_attn for layer in self.decoder_layers(model)]

    def final_norm(self, model: torch.nn.Module) -> torch.nn.Module:
        return self.text_model(model).norm

    def lm_head(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.lm_head

    def processor_images(self, images: list) -> list:
        """The ``images`` argument of the processor for one image per prompt."""
        return [[image] for image in images] if self.nested_images else list(images)

    def image_token_ids(self, config) -> tuple[int, ...]:
        token = getattr(config, "image_token_id", None)
        if token is None:
            token = getattr(config, "image_token_index", None)
        if token is None:
            raise ModelError(f"{self.architecture} config names no image token id")
        return (int(token),)


ADAPTERS: dict[str, Adapter] = {}


def register_adapter(adapter: Adapter) -> Adapter:
    return register(ADAPTERS, adapter.architecture, adapter, "an adapter for")


_LLAVA_FORMATS = ("llava_v1", "chat_template", "llama3", "phi3", "mistral_instruct")
for _adapter in (
    Adapter("LlavaForConditionalGeneration", "llava", "LLaVA-1.5 (CLIP + Vicuna / Llama-3 / Phi-3)", _LLAVA_FORMATS, region_tokens=regions.llava_region),
    Adapter("LlavaNextForConditionalGeneration", "llava_next", "LLaVA-1.6 / NeXT (anyres tiles + row newlines)", _LLAVA_FORMATS, region_tokens=regions.llava_next_region),
    Adapter("VipLlavaForConditionalGeneration", "vipllava", "ViP-LLaVA (multi-layer CLIP features)", ("vip_llava", "chat_template"), region_tokens=regions.vip_llava_region),
    Adapter("LlavaOnevisionForConditionalGeneration", "llava_onevision", "LLaVA-OneVision (SigLIP + Qwen2, anyres)", region_tokens=regions.llava_onevision_region),
    Adapter("Qwen2VLForConditionalGeneration", "qwen2_vl", "Qwen2-VL (dynamic resolution, M-RoPE)", region_tokens=regions.qwen_vl_region),
    Adapter("Qwen2_5_VLForConditionalGeneration", "qwen2_5_vl", "Qwen2.5-VL (dynamic resolution, M-RoPE)", region_tokens=regions.qwen_vl_region),
    Adapter("Gemma3ForConditionalGeneration", "gemma3", "Gemma 3 (SigLIP, bidirectional image attention, sliding window)", nested_images=True, region_tokens=regions.gemma3_region),
):
    register_adapter(_adapter)


@dataclass(frozen=True)
class ModelSource:
    """What the user named (``label``), what ``from_pretrained`` gets (``location``), and its revision."""

    label: str
    location: str
    revision: str


@dataclass
class LoadedModel:
    source: ModelSource
    adapter: Adapter
    model: torch.nn.Module
    processor: Any
    device: torch.device
    dtype: torch.dtype
    eos_token_ids: tuple[int, ...] = ()  # the checkpoint's end-of-answer tokens

    def __post_init__(self) -> None:
        # the hooks that report to the calling context's forward call, installed before the model is shared
        install_dispatch(self.adapter.text_model(self.model), self.adapter.decoder_layers(self.model))

    @property
    def config(self):
        return self.model.config

    @property
    def info(self) -> dict[str, Any]:
        return model_info(self.config, self.adapter)


def model_info(config, adapter: Adapter) -> dict[str, Any]:
    text = config.get_text_config()
    n_heads = int(text.num_attention_heads)
    return {
        "architecture": adapter.architecture,
        "family": adapter.family,
        "n_layers": int(text.num_hidden_layers),
        "n_heads": n_heads,
        "n_kv_heads": int(getattr(text, "num_key_value_heads", None) or n_heads),
        "head_dim": int(getattr(text, "head_dim", None) or text.hidden_size // n_heads),
        "hidden_size": int(text.hidden_size),
        "vocab_size": int(text.vocab_size),
    }


def resolve_source(model: str) -> ModelSource:
    """A local folder or a hub id; the embedded default names are resolved by the caller."""
    folder = Path(model).expanduser()
    if folder.is_dir():
        return ModelSource(model, str(folder.resolve()), _folder_revision(folder))
    if folder.exists():
        raise ModelError(f"model path {model} is a file; give a model folder or a hub id")
    if model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise ModelError(f"model folder {model} does not exist")
    return ModelSource(model, model, "hub")


def _folder_revision(folder: Path) -> str:
    """A content digest of a local model: its config, and each weight file's name, size, first and last MiB.

    Reading whole 7B checkpoints would cost tens of seconds per command; the ends of a safetensors
    file hold its header (names, shapes, offsets) and tensor data, which any retraining changes.
    """
    digest = hashlib.sha256()
    config = folder / "config.json"
    if config.is_file():
        digest.update(config.read_bytes())
    for weights in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
        size = weights.stat().st_size
        digest.update(f"{weights.name}:{size}\n".encode())
        with open(weights, "rb") as handle:
            digest.update(handle.read(_REVISION_WINDOW))
            handle.seek(max(0, size - _REVISION_WINDOW))
            digest.update(handle.read(_REVISION_WINDOW))
    return "sha256:" + digest.hexdigest()[:16]


def load_config(source: ModelSource):
    """The model config, and its adapter; fails before any weights are read."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(source.location)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"cannot load a model config from {source.label}: {_short(exc)}") from exc
    architectures = getattr(config, "architectures", None) or []
    for architecture in architectures:
        if architecture in ADAPTERS:
            return config, ADAPTERS[architecture]
    raise ModelError(f"unsupported architecture {', '.join(architectures) or '(none in config)'} for {source.label}; supported: {', '.join(sorted(ADAPTERS))}")


def revision(source: ModelSource, config) -> str:
    """The revision that goes into a run's fingerprint: folder digest, or the hub commit."""
    if source.revision != "hub":
        return source.revision
    return "hub:" + str(getattr(config, "_commit_hash", None) or "unknown")


def resolve_device(device: str, local_rank: int | None = None) -> torch.device:
    """``auto``: the GPU of this rank on its node (``LOCAL_RANK``) or the first GPU, else the CPU."""
    if device == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device(f"cuda:{local_rank % torch.cuda.device_count()}" if local_rank is not None else "cuda")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise UsageError(f"unknown device {device!r}; choose auto, cpu or cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("device cuda was asked for, but no CUDA device is available")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device, config) -> torch.dtype:
    """``auto``: fp32 on CPU; on GPU the checkpoint's half precision (bf16 if it names none)."""
    if dtype == "auto":
        if device.type == "cpu":
            return torch.float32
        preferred = getattr(config.get_text_config(), "dtype", None) or getattr(config, "dtype", None)
        if preferred in (torch.float16, "float16"):
            return torch.float16
        return torch.bfloat16
    if dtype not in DTYPES:
        raise UsageError(f"unknown dtype {dtype!r}; choose auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def load_model(source: ModelSource, *, dtype: torch.dtype, device: torch.device) -> LoadedModel:
    """Load weights and processor through ``from_pretrained``, with capture attention on the text model."""
    from transformers import AutoModelForImageTextToText, GenerationConfig
    from transformers.utils import logging as hf_logging

    _, adapter = load_config(source)
    hf_logging.disable_progress_bar()
    processor = load_processor(source)
    # several GPUs: let accelerate spread a model that one card cannot hold
    spread = device.type == "cuda" and device.index is None and torch.cuda.device_count() > 1
    try:
        model = AutoModelForImageTextToText.from_pretrained(
            source.location, dtype=dtype, attn_implementation={"text_config": CAPTURE_ATTENTION, "vision_config": "sdpa"}, **({"device_map": "auto"} if spread else {})
        )
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"cannot load model weights from {source.label}: {_short(exc)}") from exc
    if spread:
        device = torch.device("cuda:0")
    else:
        model.to(device)
    model.eval()
    eos_token_ids = _end_tokens(model.generation_config.eos_token_id, processor.tokenizer.eos_token_id)
    # Decoding is plain greedy whatever the checkpoint's generation_config suggests (sampling,
    # repetition penalties): a clean config, so that nothing is merged into ``generate``'s settings.
    model.generation_config = GenerationConfig(pad_token_id=processor.tokenizer.pad_token_id)
    return LoadedModel(source, adapter, model, processor, device, dtype, eos_token_ids)


def load_processor(source: ModelSource):
    """The model's processor (image processor and tokenizer, left padding)."""
    from transformers import AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(source.location, backend="pil")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"cannot load a processor for {source.label}: {_short(exc)}") from exc
    if not hasattr(processor, "image_processor") or not hasattr(processor, "tokenizer"):
        raise ModelError(f"{source.label} has no image processor and tokenizer (found {type(processor).__name__})")
    processor.tokenizer.padding_side = "left"
    return processor


def load_geometry(source: ModelSource) -> LoadedModel:
    """Config, processor and the model's modules without weights (the meta device): what mapping
    boxes to image tokens needs (``extract.regions``), in seconds even for a 13B model."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForImageTextToText

    config, adapter = load_config(source)
    processor = load_processor(source)
    try:
        with init_empty_weights():
            model = AutoModelForImageTextToText.from_config(config)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"cannot build {source.label} from its config: {_short(exc)}") from exc
    return LoadedModel(source, adapter, model, processor, torch.device("cpu"), torch.float32)


def _end_tokens(configured, tokenizer_eos) -> tuple[int, ...]:
    if configured is None:
        configured = tokenizer_eos
    if configured is None:
        return ()
    return tuple(int(token) for token in (configured if isinstance(configured, (list, tuple)) else [configured]))


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
