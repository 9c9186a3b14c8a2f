"""The one loading path: hub ids and local folders both load through ``from_pretrained``.

The model is described from its config first (``extract.discovery.describe``), so a model attnwh
cannot capture fails before any weight is read; its modules are then found in the module tree
(``extract.discovery.find_parts``). No adapter per architecture.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from attnwh.core.errors import ModelError, UsageError
from attnwh.extract.discovery import IMAGE_TOKEN_KEYS, VIDEO_TOKEN_KEYS, ModelParts, ModelSpec, describe, find_parts
from attnwh.extract.forward import CAPTURE_ATTENTION, install_dispatch
from attnwh.extract.reuse import install_replay

_REVISION_WINDOW = 1 << 20
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# config fields that count something (a zero leaves transformers' own checks dividing by it)
_COUNT_KEYS = ("num_attention_heads", "num_key_value_heads", "num_hidden_layers", "hidden_size", "head_dim", "vocab_size")


@dataclass(frozen=True)
class ModelSource:
    """What the user named (``label``), what ``from_pretrained`` gets (``location``), and its revision."""

    label: str
    location: str
    revision: str


@dataclass
class LoadedModel:
    source: ModelSource
    spec: ModelSpec
    model: torch.nn.Module
    processor: Any
    device: torch.device
    dtype: torch.dtype
    eos_token_ids: tuple[int, ...] = ()  # the checkpoint's end-of-answer tokens
    parts: ModelParts = field(init=False)

    def __post_init__(self) -> None:
        self.parts = find_parts(self.model, self.spec)
        # the hooks that report to the calling context's forward call, installed before the model is shared
        install_dispatch(self.parts.text_model, self.parts.decoder_layers)
        install_replay(self.parts.decoder_layers)

    @property
    def config(self):
        return self.model.config

    @property
    def pad_token_id(self) -> int | None:
        """What ``generate`` pads finished rows with: the tokenizer's pad token (a model loaded without a processor,
        as the conformance matrix's tiny models are: its text config's)."""
        tokenizer = getattr(self.processor, "tokenizer", None)
        if tokenizer is not None:
            return tokenizer.pad_token_id
        return getattr(self.config.get_text_config(), "pad_token_id", None)

    @property
    def info(self) -> dict[str, Any]:
        return self.spec.info


# the files of a model folder besides its weights that change what a run computes: the config, the generation config
# (where its answers end), the tokenizer and processor (its prompts' tokens, its images' pixels) and the chat template
_SETTINGS_FILES = ("*.json", "*.model", "*.jinja", "merges.txt")


def resolve_source(model: str) -> ModelSource:
    """A local folder or a hub id; the embedded default names are resolved by the caller."""
    if not model.strip():  # Path("") is the current folder: its (absent) config.json was the message
        raise ModelError("the model name is empty; give a model folder or hub id (without --model: the embedded toy)")
    folder = Path(model).expanduser()
    if folder.is_dir():
        return ModelSource(model, str(folder.resolve()), _folder_revision(folder))
    if folder.exists():
        raise ModelError(f"model path {model} is a file; give a model folder or a hub id")
    if model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise ModelError(f"model folder {model} does not exist")
    return ModelSource(model, model, "hub")


def _folder_revision(folder: Path) -> str:
    """A content digest of a local model: its settings files whole (the config, ``generation_config.json``'s end-of-answer
    tokens, the tokenizer's and processor's files, the chat template), and each weight file's name, size, first and last MiB.

    Reading whole 7B checkpoints would cost tens of seconds per command; the ends of a safetensors
    file hold its header (names, shapes, offsets) and tensor data, which any retraining changes.
    """
    digest = hashlib.sha256()
    for settings in sorted(path for pattern in _SETTINGS_FILES for path in folder.glob(pattern) if path.is_file()):
        digest.update(f"{settings.name}\n".encode())
        digest.update(settings.read_bytes())
    for weights in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
        size = weights.stat().st_size
        digest.update(f"{weights.name}:{size}\n".encode())
        with open(weights, "rb") as handle:
            digest.update(handle.read(_REVISION_WINDOW))
            handle.seek(max(0, size - _REVISION_WINDOW))
            digest.update(handle.read(_REVISION_WINDOW))
    return "sha256:" + digest.hexdigest()[:16]


def load_config(source: ModelSource):
    """The model config, and what discovery reads of it; fails before any weights are read."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(source.location)
    except Exception as exc:  # any failure to parse a config.json (strict config fields raise their own errors) is a bad model folder
        reason = _bad_count(Path(source.location) / "config.json") if source.revision != "hub" else None
        raise ModelError(f"cannot load a model config from {source.label}: {reason or _short(exc)}") from exc
    try:
        spec = describe(config)
    except ModelError as exc:
        raise type(exc)(f"{source.label}: {exc}") from exc
    _check_token_ids(source, config, spec)
    return config, spec


def _bad_count(config_file: Path) -> str | None:
    """The first count field of a config.json (its sub-configs included) that is not a positive integer, said in words; None
    when there is none or the file cannot be read (transformers' own message then says what is wrong)."""
    try:
        document = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    pending: list[tuple[str, object]] = [("", document)]
    while pending:
        prefix, node = pending.pop(0)
        if not isinstance(node, dict):
            continue
        for key, value in node.items():
            if key in _COUNT_KEYS and value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                return f"{prefix}{key} is {value!r}; it must be a positive integer"
            pending.append((f"{prefix}{key}.", value))
    return None


def _check_token_ids(source: ModelSource, config, spec: ModelSpec) -> None:
    """Every token id that marks image (or video) positions is one the tokenizer can write: another marks none of the
    prompt's positions, and the model's forward would refuse the first batch. An id past the text model's
    ``vocab_size`` is not wrong in itself (PaliGemma and Gemma 3 replace their image tokens before the embedding
    lookup), so only such an id sends for the tokenizer, whose size decides."""
    keys = (*IMAGE_TOKEN_KEYS, *VIDEO_TOKEN_KEYS)
    ids = [
        (key, value)
        for owner in (config, config.get_text_config(decoder=True))
        for key in keys
        if isinstance(value := getattr(owner, key, None), int) and not isinstance(value, bool)
    ]
    beyond = max((value for _, value in ids if value >= spec.vocab_size), default=None)
    if beyond is not None and beyond >= (tokens := _tokenizer_size(source)):  # the tokenizer read once, and only for such an id
        names = " / ".join(dict.fromkeys(key for key, value in ids if value == beyond))
        raise ModelError(
            f"{source.label}: the config's {names} {beyond} is beyond the vocabulary (vocab_size {spec.vocab_size}, {tokens} tokens in the tokenizer);"
            " no token would mark a position"
        )


def _tokenizer_size(source: ModelSource) -> int:
    """How many tokens the model's tokenizer has; unbounded where it cannot be read (loading the processor then says why)."""
    from transformers import AutoTokenizer

    try:
        return len(AutoTokenizer.from_pretrained(source.location))
    except Exception:  # noqa: BLE001  any failure to read the tokenizer is the processor's to report, later and in its own words
        return sys.maxsize


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

    _, spec = load_config(source)
    hf_logging.disable_progress_bar()
    processor = load_processor(source)
    # several GPUs: let accelerate spread a model that one card cannot hold
    spread = device.type == "cuda" and device.index is None and torch.cuda.device_count() > 1
    try:
        model = AutoModelForImageTextToText.from_pretrained(
            source.location, dtype=dtype, attn_implementation=spec.attn_implementation(CAPTURE_ATTENTION), **({"device_map": "auto"} if spread else {})
        )
    except Exception as exc:  # noqa: BLE001  any failure to read the folder's weights (safetensors' own errors, shapes the config does not fit) is the model's
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
    return LoadedModel(source, spec, model, processor, device, dtype, eos_token_ids)


def load_processor(source: ModelSource):
    """The model's processor (image processor and tokenizer, left padding)."""
    from transformers import AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(source.location, backend="pil")
    except Exception as exc:  # noqa: BLE001  any failure to read the folder's processor files (a broken template, a tokenizer file) is the model's
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

    config, spec = load_config(source)
    processor = load_processor(source)
    try:
        with init_empty_weights():
            model = AutoModelForImageTextToText.from_config(config)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"cannot build {source.label} from its config: {_short(exc)}") from exc
    return LoadedModel(source, spec, model, processor, torch.device("cpu"), torch.float32)


def _end_tokens(configured, tokenizer_eos) -> tuple[int, ...]:
    if configured is None:
        configured = tokenizer_eos
    if configured is None:
        return ()
    return tuple(int(token) for token in (configured if isinstance(configured, (list, tuple)) else [configured]))


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
