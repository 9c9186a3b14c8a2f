"""Tiny random-weight image-text-to-text models, and one batch of inputs for each, built offline.

Every architecture in ``MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES`` is built from its default config
(``AutoConfig.for_model``) shrunk generically (:func:`tiny_config`): a text decoder of 2-4 layers (for
hybrids with ``layer_types``: just enough layers that every layer kind appears), hidden 64, 4 query heads,
2 KV heads, head_dim 16, small MLP / MoE; every other sub-config (vision, audio, VQ, ...) 1-2 layers,
hidden 32.  Vocab sizes and token ids stay as the default config has them.

:func:`tiny_inputs` makes one left-padded batch: the pixel tensors come from the architecture's own image
processor ('pil' backend) applied to a small random PIL image; the number of image-token ids put into
``input_ids`` is read off the model itself (the size of ``get_image_features(...)``'s output), never from a
hand formula.  Extra tensors the model wants (``mm_token_type_ids``, ``image_sizes``, ``image_grid_thw``,
``pixel_attention_mask``, ...) are passed on from the processor when the model's ``forward`` names them.

Per-architecture exceptions are DATA, in ``tiny_overrides.json`` next to this module, keyed by model_type::

    {"<model_type>": {
        "skip": "one-line reason",           # cannot be made here -> TinyModelError(reason)
        "checkpoint_sets": ["image_token_id"], # keys the default config leaves unset and checkpoints set: a skipped
                                             #   architecture is then "not built here", not out of scope (conformance)
        "config": {"a.b.c": value},          # set by dotted path on the shrunk config (after the generic shrink)
        "image": {"size": [w, h]},           # size of the random PIL image (default [140, 112])
        "processor_class": "Name",           # image processor class (a transformers attribute) when the
                                             #   auto mapping has none, or only a torchvision one
        "processor": {"kw": value},          # image processor constructor kwargs ("$config.a.b" = value
                                             #   read from the tiny config by dotted path)
        "pixels": {"pixel_values": [...]},   # hand-made tensors instead of a processor: a shape whose
                                             #   items are ints, "$config.a.b", "batch" or "batch*K"
                                             #   (K rows per image); filled with randn.  Or a literal
                                             #   {"value": [...], "dtype": "long"} repeated per image
                                             #   (grids, positions); "offset_per_image": N adds i*N to
                                             #   image i's entries >= 0 (indices into the batch's patches)
        "extra": {"token_type_ids": "image"}, # extra per-token tensors: "image" = 1 on image tokens, "zeros"
        "note": "free text"
    }}

Keys starting with "_" are comments.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import warnings
from pathlib import Path

import numpy as np
import torch

__all__ = ["TinyModelError", "tiny_config", "build_tiny", "tiny_inputs", "image_token_count", "tiny_overrides", "model_types"]

_OVERRIDES = Path(__file__).with_name("tiny_overrides.json")
_DEFAULT_IMAGE = (140, 112)  # (w, h): not square, so row/column mix-ups show

_TEXT = dict(
    hidden_size=64,
    intermediate_size=128,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    moe_intermediate_size=32,
    shared_expert_intermediate_size=32,
    num_experts=4,
    num_local_experts=4,
    n_routed_experts=4,
    num_experts_per_tok=2,
    n_shared_experts=1,
    n_group=1,
    topk_group=1,
    first_k_dense_replace=1,
    q_lora_rank=32,
    kv_lora_rank=16,
    qk_rope_head_dim=8,
    qk_nope_head_dim=8,
    v_head_dim=16,
    linear_num_key_heads=2,
    linear_num_value_heads=4,
    linear_key_head_dim=16,
    linear_value_head_dim=16,
    max_position_embeddings=4096,
    sliding_window=4096,
    hidden_size_per_layer_input=16,
)
_VISION = dict(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_heads=2, embed_dim=32, projection_dim=32, num_key_value_heads=2, head_dim=16)
_LAYER_KEYS = ("num_hidden_layers", "depth", "num_layers")


class TinyModelError(Exception):
    """A tiny model, or its inputs, cannot be made for this architecture here (one-line reason)."""


@functools.cache
def tiny_overrides() -> dict:
    """The per-architecture override data (``tiny_overrides.json``), comments dropped."""
    data = json.loads(_OVERRIDES.read_text())
    return {k: v for k, v in data.items() if not k.startswith("_")}


def _ov(model_type: str) -> dict:
    return tiny_overrides().get(model_type, {})


def model_types() -> list[str]:
    """All model_types of the image-text-to-text mapping, sorted."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    return sorted(MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES)


# ----------------------------------------------------------------------------------------------- config


def _get_path(obj, path: str):
    for part in path.split("."):
        obj = obj[part] if isinstance(obj, dict) else getattr(obj, part)
    return obj


def _set_path(obj, path: str, value) -> None:
    *head, last = path.split(".")
    for part in head:
        obj = obj[part] if isinstance(obj, dict) else getattr(obj, part)
    if isinstance(obj, dict):
        obj[last] = value
    else:
        setattr(obj, last, value)


def _shrink(cfg, role: str, text_hidden: int) -> None:
    per_layer = None
    if getattr(cfg, "is_heterogeneous", False):  # per-layer overrides: drop them, shrink, put them back scaled
        spec = cfg._heterogeneity_spec
        glob = {k: cfg._getattr_without_heterogeneous_validation(k, None) for k in spec.per_layer_attributes}
        per_layer = {int(i): dict(o) for i, o in spec.per_layer_overrides.items()}
        cfg.per_layer_config = None
        for k, v in glob.items():
            setattr(cfg, k, v)
    _shrink_flat(cfg, role, text_hidden)
    if per_layer:
        n = cfg.num_hidden_layers
        small = {}
        for i, o in per_layer.items():
            if i >= n:
                continue
            small[i] = {}
            for k, v in o.items():
                g, new = glob.get(k), getattr(cfg, k, None)
                if isinstance(v, int) and isinstance(g, int) and g and isinstance(new, int):
                    v = max(1, round(new * min(4.0, v / g)))
                small[i][k] = v
        if small:
            cfg.per_layer_config = small


def _shrink_flat(cfg, role: str, text_hidden: int) -> None:
    values = _TEXT if role == "text" else _VISION
    if role == "text" and hasattr(cfg, "head_dim") and cfg.head_dim is None:
        cfg.head_dim = _TEXT["head_dim"]
    for k, v in values.items():
        cur = getattr(cfg, k, None)
        if cur is not None and not isinstance(cur, (list, dict)):
            try:
                setattr(cfg, k, v)
            except Exception:  # noqa: BLE001 - read-only properties
                pass
    n = 2
    lt = getattr(cfg, "layer_types", None) if role == "text" else None
    if isinstance(lt, list) and lt:
        kinds = list(dict.fromkeys(lt))
        n = min(len(lt), max(2, max(lt.index(k) for k in kinds) + 1))
        cfg.layer_types = lt[:n]
    for k in _LAYER_KEYS:
        if isinstance(getattr(cfg, k, None), int):
            setattr(cfg, k, n)
    if role == "vision":
        for k in ("out_hidden_size", "text_hidden_size"):
            if hasattr(cfg, k):
                setattr(cfg, k, text_hidden)
        for k in ("fullatt_block_indexes", "global_attn_indexes"):
            if isinstance(getattr(cfg, k, None), (list, tuple)):
                setattr(cfg, k, [n - 1])
        if hasattr(cfg, "deepstack_visual_indexes"):
            cfg.deepstack_visual_indexes = [0]
    if role == "vision" and isinstance(getattr(cfg, "embed_dim", None), int) and isinstance(getattr(cfg, "hidden_size", None), int):
        cfg.hidden_size = text_hidden  # Qwen2-VL style: embed_dim is the tower width, hidden_size the merger output
    if role == "vision" and isinstance(getattr(cfg, "projection_dim", None), int):
        cfg.projection_dim = text_hidden  # PaliGemma style projector output
    if role == "text" and isinstance(getattr(cfg, "qk_rope_head_dim", None), int) and isinstance(getattr(cfg, "head_dim", None), int):
        cfg.head_dim = cfg.qk_rope_head_dim  # MLA: the rotary part is head_dim
        if isinstance(getattr(cfg, "num_key_value_heads", None), int):
            cfg.num_key_value_heads = cfg.num_attention_heads  # MLA: no GQA
    rp = getattr(cfg, "rope_parameters", None)
    wants_mrope = "mrope_section" in (getattr(type(cfg), "ignore_keys_at_rope_validation", None) or ()) or _modeling_mentions(cfg, "mrope_section")
    if role == "text" and isinstance(rp, dict) and ("mrope_section" in rp or wants_mrope):
        hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        prf = rp.get("partial_rotary_factor", getattr(cfg, "partial_rotary_factor", None)) or 1.0
        rp["mrope_section"] = _scale_sections(rp.get("mrope_section") or _modeling_default_mrope(cfg), int(hd * prf) // 2)


@functools.cache
def _modeling_source(config_module: str) -> str:
    import importlib.util

    spec = importlib.util.find_spec(config_module.replace(".configuration_", ".modeling_"))
    return Path(spec.origin).read_text() if spec is not None and spec.origin else ""


def _modeling_mentions(cfg, word: str) -> bool:
    try:
        return word in _modeling_source(type(cfg).__module__)
    except Exception:  # noqa: BLE001
        return False


def _scale_sections(sections: list[int], total: int) -> list[int]:
    """``sections`` scaled to sum to ``total`` (largest remainders first), keeping equal parts equal where it can."""
    raw = [x * total / sum(sections) for x in sections]
    out = [max(1, int(r)) for r in raw]
    order = sorted(range(len(raw)), key=lambda i: -(raw[i] - int(raw[i])))
    k = 0
    while sum(out) < total:
        out[order[k % len(out)]] += 1
        k += 1
    while sum(out) > total:
        i = max(range(len(out)), key=lambda j: out[j])
        out[i] -= 1
    return out


def _modeling_default_mrope(cfg) -> list[int]:
    """The ``mrope_section`` the modeling code falls back to when the config has none."""
    import re

    try:
        m = re.search(r'get\("mrope_section", \[(\d+), *(\d+), *(\d+)\]\)', _modeling_source(type(cfg).__module__))
    except Exception:  # noqa: BLE001
        m = None
    return [int(x) for x in m.groups()] if m else [16, 24, 24]


def _sub_configs(cfg):
    for name in getattr(cfg, "sub_configs", {}) or {}:
        sub = getattr(cfg, name, None)
        if sub is not None and hasattr(sub, "to_dict"):
            yield name, sub


def tiny_config(model_type: str, settings: dict | None = None):
    """The default config of ``model_type`` shrunk to a tiny model (see the module docstring); ``settings``
    (dotted paths, as the overrides' "config") are set last: a variant of the architecture."""
    from transformers import AutoConfig

    ov = _ov(model_type)
    if "skip" in ov:
        raise TinyModelError(ov["skip"])
    try:
        cfg = AutoConfig.for_model(model_type)
    except Exception as e:  # noqa: BLE001
        raise TinyModelError(f"no default config: {type(e).__name__}: {e}") from e
    for name, cls in (getattr(cfg, "sub_configs", {}) or {}).items():  # a default without a vision tower config
        if "vision" in name and getattr(cfg, name, None) is None and isinstance(cls, type):
            setattr(cfg, name, cls())
    text = cfg.get_text_config()
    text_hidden = _TEXT["hidden_size"]
    if text is not cfg and isinstance(getattr(cfg, "hidden_size", None), int):
        cfg.hidden_size = text_hidden  # a top-level copy of the text width (e.g. Ovis2's visual embedding table)
    seen = set()

    def walk(c, depth=0):
        for _, sub in _sub_configs(c):
            if id(sub) in seen:
                continue
            seen.add(id(sub))
            walk(sub, depth + 1)
            _shrink(sub, "text" if sub is text else "vision", text_hidden)

    walk(cfg)
    if text is cfg:
        _shrink(cfg, "text", text_hidden)
    _fix_top(cfg, text)
    for path, value in {**ov.get("config", {}), **(settings or {})}.items():
        _set_path(cfg, path, value)
    return cfg


def _fix_top(cfg, text) -> None:
    """Keep the top-level links valid after the shrink: feature-layer indices, token ids inside the vocab."""
    vc = _vision_config(cfg)
    n = getattr(vc, "num_hidden_layers", None) if vc is not None else None
    if isinstance(n, int):
        for k in ("vision_feature_layer", "vision_feature_layers"):
            v = getattr(cfg, k, None)
            if v is None or isinstance(v, bool):
                continue
            fix = lambda i: i if -(n + 1) <= i <= n else i % (n + 1)  # noqa: E731
            try:
                setattr(cfg, k, fix(v) if isinstance(v, int) else type(v)(fix(i) for i in v))
            except Exception:  # noqa: BLE001
                pass
    vocab = getattr(text, "vocab_size", None)
    if isinstance(vocab, int):
        top = max(_token_ids(cfg, set()) | {0})
        if top >= vocab:  # default text config smaller than the checkpoint's: make the special ids valid
            text.vocab_size = top + 1
            if getattr(cfg, "vocab_size", None) == vocab and cfg is not text:
                cfg.vocab_size = top + 1


def build_tiny(model_type: str, *, attn_implementation=None, seed: int = 0, settings: dict | None = None) -> torch.nn.Module:
    """``AutoModelForImageTextToText.from_config(tiny_config(model_type, settings))``: fp32, eval(), seeded weights."""
    from transformers import AutoModelForImageTextToText

    cfg = tiny_config(model_type, settings)
    torch.manual_seed(seed)
    kw = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = AutoModelForImageTextToText.from_config(cfg, dtype=torch.float32, **kw)
    except ImportError as e:
        raise TinyModelError(f"needs an optional package: {str(e).strip().splitlines()[0].split('. ')[0][:200] if str(e).strip() else type(e).__name__}") from e
    return model.float().eval()


# ----------------------------------------------------------------------------------------------- inputs


def _token_ids(obj, out: set, depth: int = 0) -> set:
    """Every int (or list of ints) stored under a key naming a token id / index, recursively."""
    if depth > 4:
        return out
    d = obj.to_dict() if hasattr(obj, "to_dict") else obj
    if not isinstance(d, dict):
        return out
    for k, v in d.items():
        k = str(k)
        if isinstance(v, dict):
            _token_ids(v, out, depth + 1)
        elif "token" in k and ("id" in k or "index" in k):
            vals = v if isinstance(v, (list, tuple)) else [v]
            for x in vals:
                if isinstance(x, int) and not isinstance(x, bool):
                    out.add(x)
                elif isinstance(x, (list, tuple)):
                    out.update(y for y in x if isinstance(y, int))
    return out


def _image_token_id(cfg) -> int:
    for c in (cfg, cfg.get_text_config()):
        for k in ("image_token_id", "image_token_index", "image_pad_token_id", "image_patch_token_id", "image_token"):
            v = getattr(c, k, None)
            if isinstance(v, int) and not isinstance(v, bool):
                return v
    raise TinyModelError("config has no image token id (not an image-token model)")


def _resolve(value, cfg):
    if isinstance(value, str) and value.startswith("$config."):
        return _get_path(cfg, value[len("$config.") :])
    if isinstance(value, list):
        return [_resolve(v, cfg) for v in value]
    if isinstance(value, dict):
        return {k: _resolve(v, cfg) for k, v in value.items()}
    return value


def _processor_class(model_type: str):
    import transformers
    from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING_NAMES

    ov = _ov(model_type)
    names = []
    if "processor_class" in ov:
        names.append(ov["processor_class"])
    m = IMAGE_PROCESSOR_MAPPING_NAMES.get(model_type) or {}
    if isinstance(m, dict):
        if m.get("pil"):
            names.append(m["pil"])
        if m.get("torchvision"):
            names.append(m["torchvision"] + "Pil")
    for name in names:
        cls = getattr(transformers, name, None)
        if cls is None:  # a class the top-level namespace does not export: look in the model's module
            try:
                mod = importlib.import_module(f"transformers.models.{model_type.replace('-', '_')}")
                cls = getattr(mod, name, None)
            except Exception:  # noqa: BLE001
                cls = None
        if cls is not None:
            return cls
    return None


def _sync_processor_kwargs(proc_cls, cfg) -> dict:
    """Constructor kwargs tying a fixed-size image processor to the tiny config (image size, grid pinpoints)."""
    kw = {}
    try:
        defaults = proc_cls()
    except Exception:  # noqa: BLE001
        return kw
    if getattr(defaults, "image_grid_pinpoints", None) is not None and getattr(cfg, "image_grid_pinpoints", None) is not None:
        kw["image_grid_pinpoints"] = cfg.image_grid_pinpoints
    vc = _vision_config(cfg)
    if vc is None:
        return kw
    for pa, ca in (("patch_size", "patch_size"), ("temporal_patch_size", "temporal_patch_size"), ("merge_size", "spatial_merge_size")):
        if isinstance(getattr(defaults, pa, None), int) and isinstance(getattr(vc, ca, None), int):
            kw[pa] = getattr(vc, ca)
    side = getattr(vc, "image_size", None)
    if isinstance(side, (list, tuple)) and len(side) == 2 and side[0] == side[1]:
        side = side[0]
    if isinstance(side, int):
        for pa in ("size", "crop_size"):
            cur = getattr(defaults, pa, None)
            if isinstance(cur, dict) and cur:
                keys = {k for k, v in cur.items() if v is not None}
                if keys == {"height", "width"}:
                    kw[pa] = {"height": side, "width": side}
                elif keys == {"shortest_edge"} and pa == "crop_size":
                    kw[pa] = {"shortest_edge": side}
            elif hasattr(cur, "height") and getattr(cur, "height", None) is not None and getattr(cur, "width", None) is not None:
                kw[pa] = {"height": side, "width": side}
    return kw


def _vision_config(cfg):
    """The sub-config of the vision tower: the first sub-config with a patch size or image size."""
    for name in ("vision_config", "vision_tower_config", "visual_config"):
        sub = getattr(cfg, name, None)
        if sub is not None and hasattr(sub, "to_dict"):
            return sub
    for _, sub in _sub_configs(cfg):
        if hasattr(sub, "patch_size") or hasattr(sub, "image_size"):
            return sub
    return None


def _random_image(size, rng: np.random.Generator):
    from PIL import Image

    w, h = size
    return Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8), "RGB")


def _forward_params(model) -> set:
    return set(inspect.signature(model.forward).parameters)


def _pixel_inputs(model_type: str, model, batch: int, rng: np.random.Generator) -> dict:
    """The vision tensors for ``batch`` images (one per row), from the image processor or a data recipe."""
    ov = _ov(model_type)
    cfg = model.config
    if "pixels" in ov:
        out = {}
        g = torch.Generator().manual_seed(int(rng.integers(0, 2**31)))
        for key, spec in _resolve(ov["pixels"], cfg).items():
            if isinstance(spec, dict):  # {"value": [...], "dtype": "long"} literal tensor, repeated per image
                t = torch.tensor(spec["value"], dtype=getattr(torch, spec.get("dtype", "long")))
                step = int(spec.get("offset_per_image", 0))  # indices into the batch's flattened patches
                copies = [torch.where(t >= 0, t + i * step, t) if step else t for i in range(batch)]
                out[key] = torch.cat(copies) if spec.get("per_image", True) else t
            else:
                out[key] = torch.randn(*[_dim(s, batch) for s in spec], generator=g)
        return out
    cls = _processor_class(model_type)
    if cls is None:
        raise TinyModelError("no 'pil' image processor (torchvision-only) and no pixel recipe")
    kw = _sync_processor_kwargs(cls, cfg)
    kw.update(_resolve(ov.get("processor", {}), cfg))
    try:
        proc = cls(**kw)
    except ImportError as e:
        raise TinyModelError(f"image processor needs an optional package: {e}") from e
    size = tuple(ov.get("image", {}).get("size", _DEFAULT_IMAGE))
    images = [_random_image(size, rng) for _ in range(batch)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        feats = proc(images=images, return_tensors="pt", **ov.get("processor_call", {}))
    return {k: v for k, v in dict(feats).items() if isinstance(v, torch.Tensor)}


def _dim(item, batch: int) -> int:
    """One item of a recipe shape: an int, "batch", or "batch*K" (K patches / crops per image)."""
    if isinstance(item, str) and item.startswith("batch"):
        return batch * (int(item.split("*", 1)[1]) if "*" in item else 1)
    return int(item)


def _feature_count(out) -> int:
    """Number of feature vectors in a ``get_image_features`` result (tensor, list of tensors, or model output)."""
    if hasattr(out, "pooler_output") and out.pooler_output is not None:
        out = out.pooler_output
    elif hasattr(out, "image_features") and out.image_features is not None:
        out = out.image_features
    elif hasattr(out, "last_hidden_state") and not isinstance(out, torch.Tensor):
        out = out.last_hidden_state
    if isinstance(out, torch.Tensor):
        return out.numel() // out.shape[-1]
    if isinstance(out, (list, tuple)):
        return sum(_feature_count(o) for o in out if o is not None)
    raise TinyModelError(f"cannot count image features in a {type(out).__name__}")


def _call_get_image_features(model, pix: dict):
    fn = None
    for owner in (model, getattr(model, "model", None)):
        if owner is not None and hasattr(owner, "get_image_features"):
            fn = owner.get_image_features
            break
    if fn is None:
        raise TinyModelError("model has no get_image_features")
    params = inspect.signature(fn).parameters
    has_var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    fwd = _forward_params(model)
    args = {k: v for k, v in pix.items() if k in params or (has_var_kw and k in fwd)}
    with torch.no_grad():
        return fn(**args)


def image_token_count(model_type: str, model, pixel_inputs: dict, batch: int) -> int:
    """Image-token ids one image (one row) needs: the model's own ``get_image_features`` output size / batch."""
    ov = _ov(model_type)
    if "image_tokens" in ov:  # fixed count given as data
        return int(_resolve(ov["image_tokens"], model.config))
    total = _feature_count(_call_get_image_features(model, pixel_inputs))
    if total % batch:
        raise TinyModelError(f"{total} image features do not split evenly over {batch} images")
    return total // batch


def tiny_inputs(model_type: str, model, *, batch: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    """One left-padded batch with one image per row (see the module docstring)."""
    ov = _ov(model_type)
    if "skip" in ov:
        raise TinyModelError(ov["skip"])
    cfg = model.config
    rng = np.random.default_rng(seed)
    image_id = _image_token_id(cfg)
    pix = _pixel_inputs(model_type, model, batch, rng)
    n_img = image_token_count(model_type, model, pix, batch)
    text_cfg = cfg.get_text_config()
    vocab = int(getattr(text_cfg, "vocab_size", None) or getattr(cfg, "vocab_size"))
    specials = _token_ids(cfg, set())
    pad = getattr(text_cfg, "pad_token_id", None)
    if pad is None:
        pad = getattr(cfg, "pad_token_id", None)
    if not isinstance(pad, int) or pad == image_id:
        pad = 0 if image_id != 0 else 1
    lo, hi = min(100, vocab // 4), min(vocab, 30000)
    pool = np.setdiff1d(np.arange(lo, hi), np.array(sorted(specials | {pad, image_id}), dtype=np.int64))
    rows = []
    for i in range(batch):
        pre = int(rng.integers(2, 5))
        post = 6 + 2 * i  # row 0 shortest -> left padding
        ids = [*rng.choice(pool, pre).tolist(), *([image_id] * n_img), *rng.choice(pool, post).tolist()]
        rows.append(ids)
    length = max(len(r) for r in rows)
    if len(rows[0]) == length and batch > 1:
        rows[0] = rows[0][:-1] if len(rows[0]) > n_img + 2 else rows[0]
    input_ids = torch.full((batch, length), pad, dtype=torch.long)
    attention_mask = torch.zeros((batch, length), dtype=torch.long)
    for i, r in enumerate(rows):
        input_ids[i, length - len(r) :] = torch.tensor(r)
        attention_mask[i, length - len(r) :] = 1
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
    fwd = _forward_params(model)
    is_img = (input_ids == image_id).long()
    if "mm_token_type_ids" in fwd:
        inputs["mm_token_type_ids"] = is_img
    for key, how in ov.get("extra", {}).items():
        inputs[key] = is_img.clone() if how == "image" else torch.zeros_like(input_ids)
    for k, v in pix.items():
        if k in fwd and k not in inputs:
            inputs[k] = v
    return inputs
