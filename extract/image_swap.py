"""Ablation by a baseline image: a head's image keys and values replaced by those the same prompt gives with a
baseline image (``blank-image``: a uniform image of the processor's mean colour, its normalised pixels all 0;
``mean-image``: the mean of the sweep's images, pixel by pixel, where they share one pixel shape).

The head still attends to the text as the model computed it; only what it reads from the image is the
baseline's, as in activation patching from a counterfactual input (the "corrupted" image of causal tracing).
Per batch, one extra prefill with the baseline pixels records every layer's keys and values at the attention
function (after the rotary embedding and any key norm, as SDPA is handed them); each condition's ablated heads
then attend over the prompt's text keys and the baseline's image keys:

- the baseline's keys and values are appended to the layer's own (positions are already in the rotated keys,
  so where they sit in the key axis does not matter), and a per-head mask hides, for an ablated head, the
  original image keys and shows the appended image keys under the same causal and padding mask, and hides
  the appended keys from every other head. Grouped-query heads work alike: the mask is per query head, so
  one query head of a group can be ablated while the others read the group's own keys;
- decode steps do the same (the prompt's positions are the first keys of the cache; the cache itself keeps
  the model's own keys: nothing of the baseline is written into it).

Memory: the baseline's keys and values of one batch are held while its conditions run (for LLaVA-1.5-7B in
bfloat16, ~0.33 GB per sample); a few recent batches are kept per sweep (threads of a Dask worker each work
on their own batch), older ones are recomputed if asked again.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from attnwh.core.errors import ModelError, UsageError
from attnwh.extract.forward import BatchView, LayerIntervention
from attnwh.extract.masking import heads_by_layer
from attnwh.extract.pruning import as_bool_mask, window_start
from attnwh.extract.reuse import PIXEL_KEYS
from attnwh.extract.segments import IMAGE

BASELINE_IMAGES = ("blank-image", "mean-image")
IMAGE_PIXEL_KEYS = tuple(key for key in PIXEL_KEYS if "video" not in key)  # the inputs that carry a batch's images
KEPT_BATCHES = 4  # recent batches whose baseline keys and values a sweep keeps


class KVRecorder(LayerIntervention):
    """Keeps the keys and values one layer's first call (the prefill) is handed."""

    def __init__(self) -> None:
        self.key: torch.Tensor | None = None
        self.value: torch.Tensor | None = None

    def attend(self, query, key, value, attention_mask, scaling):
        if self.key is None:
            self.key, self.value = key.detach(), value.detach()
        return key, value, attention_mask


@dataclass
class KVRecording:
    """An intervention that changes nothing and records each layer's prefill keys and values."""

    kind = "record"
    recorders: dict[int, KVRecorder] = field(default_factory=dict)

    def bind(self, view: BatchView) -> dict[int, LayerIntervention]:
        self.recorders = {layer: KVRecorder() for layer in range(view.n_layers)}
        return dict(self.recorders)


def _pixel_key(encoded: dict[str, Any]) -> str | None:
    return next((key for key in IMAGE_PIXEL_KEYS if isinstance(encoded.get(key), torch.Tensor)), None)


def baseline_pixels(encoded: dict[str, Any], baseline: str, mean_pixels: torch.Tensor | None) -> dict[str, Any]:
    """``encoded`` with its pixels replaced by the baseline image's (every other input, sizes and grids
    included, kept: the prompt's tokens and positions are the same)."""
    key = _pixel_key(encoded)
    if key is None:
        raise ModelError(f"--ablation {baseline}: the batch's inputs hold no image pixels ({', '.join(IMAGE_PIXEL_KEYS)}) to replace")
    pixels = encoded[key]
    replaced = torch.zeros_like(pixels) if baseline == "blank-image" else mean_pixels.to(pixels.device, pixels.dtype).expand_as(pixels).clone()
    return {**encoded, key: replaced}


def mean_image(batches: Sequence[Any]) -> torch.Tensor:
    """The sweep's images averaged pixel by pixel (``[1, ...]``), in the processor's normalised space; refused
    where the images do not share one pixel shape per sample (tiles of varying count, flattened patches)."""
    total, count, shapes = None, 0, set()
    for batch in batches:
        key = _pixel_key(batch.encoded)
        pixels = batch.encoded.get(key) if key is not None else None
        rows = len(batch.items)
        if pixels is None or pixels.shape[0] != rows:
            shape = None if pixels is None else tuple(pixels.shape)
            raise UsageError(
                f"--ablation mean-image averages images of one pixel shape, one per sample; this model's processor gives pixels of shape {shape} for {rows} sample(s) "
                "(tiles or flattened patches): use --ablation blank-image"
            )
        shapes.add(tuple(pixels.shape[1:]))
        if len(shapes) > 1:
            raise UsageError(f"--ablation mean-image averages images of one pixel shape; this benchmark's images give shapes {sorted(shapes)}: use --ablation blank-image")
        summed = pixels.double().sum(dim=0, keepdim=True)
        total = summed if total is None else total + summed
        count += rows
    if total is None:
        raise UsageError("--ablation mean-image: no sample's image could be read")
    return (total / count).float()


def batch_key(encoded: dict[str, Any]) -> tuple:
    """What the baseline image's prefill of a batch depends on: every input but the pixels by its content, and the
    pixels' shape (they are replaced): equal for the same batch however often it is encoded or moved to the device."""
    pixel_key = _pixel_key(encoded)
    key = []
    for name in sorted(encoded):
        value = encoded[name]
        if not isinstance(value, torch.Tensor):
            key.append((name, repr(value)))
        elif name == pixel_key:
            key.append((name, tuple(value.shape), str(value.dtype)))
        else:
            content = value.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
            key.append((name, tuple(value.shape), str(value.dtype), hashlib.sha256(content).hexdigest()))
    return tuple(key)


class BaselineKV:
    """Per sweep: the baseline image's keys and values of each batch, computed once per batch (one prefill
    with the baseline pixels, no intervention) and kept for the few most recent batches. Safe to share
    between the threads of one worker (one computes at a time)."""

    def __init__(self, loaded, baseline: str, mean_pixels: torch.Tensor | None = None):
        if baseline not in BASELINE_IMAGES:
            raise UsageError(f"unknown baseline image {baseline!r}; choose {', '.join(BASELINE_IMAGES)}")
        self.loaded, self.baseline, self.mean_pixels = loaded, baseline, mean_pixels
        self._kept: OrderedDict[tuple, dict[int, tuple[torch.Tensor, torch.Tensor]]] = OrderedDict()  # by batch_key
        self._lock = threading.Lock()

    def of(self, encoded: dict[str, Any]) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """``{layer: (key, value)}`` of the prompt with the baseline image, each ``[batch, kv_head, prompt, head_dim]``."""
        from attnwh.extract.generation import prefill_with

        batch = batch_key(encoded)
        with self._lock:
            found = self._kept.get(batch)
            if found is not None:
                self._kept.move_to_end(batch)
                return found
            recording = KVRecording()
            inputs = baseline_pixels(encoded, self.baseline, self.mean_pixels)
            try:
                prefill_with(self.loaded, inputs, [recording])  # at the positions the sweep's own generation gives each row
            except (RuntimeError, ValueError, IndexError) as exc:  # a model that reads a uniform image otherwise (tiles of zeros taken for padding, ...)
                raise ModelError(
                    f"--ablation {self.baseline}: the model does not take the baseline image in place of the batch's ({type(exc).__name__}: {str(exc)[:200]})"
                ) from None
            missing = [layer for layer, recorder in recording.recorders.items() if recorder.key is None]
            if missing:
                raise ModelError(f"--ablation {self.baseline}: the attention of layers {missing} does not go through attnwh's attention function; its keys cannot be replaced")
            kv = {layer: (recorder.key, recorder.value) for layer, recorder in recording.recorders.items()}
            self._kept[batch] = kv
            while len(self._kept) > KEPT_BATCHES:
                self._kept.popitem(last=False)
            return kv


class LayerImageSwap(LayerIntervention):
    """One layer's ablated query heads read the baseline image's keys and values in place of the image's."""

    def __init__(self, heads: torch.Tensor, image: torch.Tensor, key: torch.Tensor, value: torch.Tensor):
        self.heads = heads  # long [n] query heads of this layer
        self.image = image  # bool [batch, prompt]: image positions
        self.key, self.value = key, value  # [batch, kv_head, prompt, head_dim]: the baseline's
        self.calls, self.generated = 0, 0  # calls so far (the first is the prefill) and tokens generated since

    def attend(self, query, key, value, attention_mask, scaling):
        batch, n_heads, n_query, _ = query.shape
        n_keys, n_prompt = key.shape[2], self.image.shape[1]
        if self.calls:
            self.generated += n_query
        self.calls += 1
        start = window_start(n_prompt, self.generated, n_keys)
        device = query.device
        ablated = torch.zeros(n_heads, dtype=torch.bool, device=device)
        ablated[self.heads.to(device)] = True
        window = self.image[:, start:].to(device)  # [batch, prompt - start]: image positions among the keys handed
        allowed = as_bool_mask(attention_mask, batch, n_query, n_keys, device).expand(batch, n_heads, n_query, n_keys)
        swapped = ablated[None, :, None, None] & window[:, None, None, :]  # [batch, head, 1, prompt - start]
        own = allowed.clone()
        own[..., : window.shape[1]] &= ~swapped
        appended = allowed[..., : window.shape[1]] & swapped
        mask = torch.cat([own, appended], dim=-1)
        key = torch.cat([key, self.key[:, :, start:].to(device, key.dtype)], dim=2)
        value = torch.cat([value, self.value[:, :, start:].to(device, value.dtype)], dim=2)
        # additive (as pruning's), so that a row that sees no key (left padding) averages as under the model's mask rather than become NaN
        return key, value, torch.where(mask, 0.0, torch.finfo(query.dtype).min).to(query.dtype)

    def observed_mask(self, query, key, attention_mask, scaling):
        raise RuntimeError("ablation by a baseline image is not observed: a capture session reads the model's own keys")


@dataclass
class ImageSwap:
    """An intervention: ``heads`` read the baseline image's keys and values (``BaselineKV``) in every pass."""

    heads: Sequence[tuple[int, int]]
    source: BaselineKV
    kind = "image-swap"

    def bind(self, view: BatchView) -> dict[int, LayerIntervention]:
        if view.inputs is None:
            raise RuntimeError("ablation by a baseline image is bound to a view that carries its batch's inputs")
        by_layer = heads_by_layer(self.heads, view.n_layers, view.n_heads)
        if not by_layer:
            return {}
        kv = self.source.of(view.inputs)
        image = view.segments == IMAGE
        return {layer: LayerImageSwap(torch.tensor(heads, dtype=torch.long), image, *kv[layer]) for layer, heads in by_layer.items()}


__all__ = ["BASELINE_IMAGES", "BaselineKV", "ImageSwap", "KVRecording", "LayerImageSwap", "baseline_pixels", "mean_image"]
