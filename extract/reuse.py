"""What the conditions of a sweep share, computed once (issue 29): image features, the baseline's prefix
of layers, the weights' reads of one pass, and the tokens after the answer is decided.

A sweep evaluates a grid of conditions over the same samples. Conditions differ only from the first layer
their interventions touch; everything before it is the baseline's, and the image encoder's output is the
same for all of them. Per batch of samples the sweep therefore:

1. **encodes the images once** (``encode_media``): the vision tower and projector run through the model's
   own ``get_image_features`` / ``get_video_features`` and their outputs go to ``generate`` as
   ``mm_encoder_outputs`` in place of the pixels (grids and sizes stay: Qwen's M-RoPE places image tokens by
   them), so every condition reads them instead of re-encoding the pixels;
2. **runs the baseline once and keeps its prefix** (``PrefixRecording``): the output of the decoder layers
   where some condition starts, and the KV cache of the layers before the deepest start;
3. **starts each stack of conditions at its first intervened layer** (``PrefixReplay``): in the prefill, a
   layer before the start is not run; its cache entry is the baseline's, and its output the baseline's
   output at the start's boundary; decode steps run every layer (their inputs are new tokens). An
   intervention that leaves the prefill as the plain model computes it (pruning in the ``cache`` phase, as
   SnapKV and SparseMM prune: after the prefill) does not count as a start: its layers are replayed too, and
   it chooses what its cache keeps from the baseline's prefill (the observation window's query rows and the
   keys, recorded), after which the layer's cache is packed as its own prefill would have left it. A
   condition of such pruning alone replays the whole prefill: only its decode steps run;
4. **stacks several conditions of the same samples in one pass** (``stack_interventions``): the samples'
   rows repeated once per condition, each condition's interventions acting on its rows only, so that the
   weights are read once per step for all of them; conditions are ordered by first intervened layer and
   stacked only where sharing the earliest start costs no more than running them apart would
   (``plan_stacks``);
5. **computes a condition once** however often the grid names it (``same_conditions``): conditions whose
   interventions are equal field by field share one generation, and a condition whose interventions touch no
   layer is the baseline.
6. **computes the last decoder layer for the final position alone** in every prefill (``FinalRows``): the
   sweep reads the logits there only, so that layer's feed-forward and attention output projection are handed
   the final position, while its attention computes every position's keys and values for the decode steps.

Memory stays near the plain path's (issue 29 asks for 1.2× at the same batch size): the recorded prefix is
the only thing held beside what a condition holds on its own, and it is held once. The baseline decodes
through transformers' own cache layers, and the recording holds those layers (not a copy of their prompt),
taking their prompt once the baseline is done; every replayed condition's cache layers over it are
``SharedPrefixLayer`` objects (decode steps append to a tail of their own, where a ``DynamicLayer`` would copy
the prompt at its first step and hold the copy; for answers that may run past ``GROWTH`` tokens the prompt is copied
once into a ``ReservedLayer`` instead, ``_copy_entry``), so the first batch's check compares the two kinds of layer;
stacks that start at layer 0 run before the recording exists; the others run deepest first, and after each
the recording drops the boundaries and cache entries no stack left to run reads (``PrefixRecording.keep_for``).

Reuse relies on what a model does with the pieces: its forward must place pre-encoded images as it places
pixels, and a decoder layer must pass nothing to the next but its output and the cache. That holds for the
families tested and may not for every architecture (a layer handing an index to the next, a shared KV store
outside the cache, a grid the forward needs beside the features). So the first batch of every sweep checks
it (``extract.sweep.SweepSamples``): what the text model is handed with the images encoded once (and tiled
for a stack) equals what it is handed from the pixels (``text_model_inputs``, ``compare_inputs``: the pass
stops at the text model), and the baseline started at the deepest recorded layer answers as the recorded
baseline did (its last layer computed whole, against the recording's final position alone); otherwise reuse is
turned off for the run and every condition runs the plain way.

The state of each call lives in the call (``ForwardCall.prefix``); the layer wrapper that consults it is
installed once per model (``install_replay``), like the dispatch hooks of ``extract.forward``.
"""

from __future__ import annotations

import copy
import inspect
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

import numpy as np
import torch
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

from attnwh.extract.discovery import position_wise_modules
from attnwh.extract.forward import ACTIVE_CALL, LayerIntervention, forward_call, pack_pruned
from attnwh.extract.packed_cache import GROWTH, ReservedLayer, SharedPrefixLayer
from attnwh.extract.pruning import SNAPKV_WINDOW, as_bool_mask

FINAL_ROWS_MARKER = "attnwh_final_rows_hooks"  # set once on a last decoder layer whose FinalRows hooks are installed (structural, not per call)
PIXEL_KEYS = ("pixel_values", "pixel_values_images", "pixel_values_videos", "image_patches")


class ReuseError(RuntimeError):
    """A model on which a prefix cannot be replayed (no cache handed to its layers, ...)."""


# -- 1. image features once -------------------------------------------------------------------------------


def supports_media_reuse(model: torch.nn.Module) -> bool:
    """Whether the model's forward takes pre-computed encoder outputs (``mm_encoder_outputs``)."""
    return "mm_encoder_outputs" in inspect.signature(model.forward).parameters


def encode_media(model: torch.nn.Module, encoded: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The model's inputs with the pixels replaced by their encoder outputs: per modality (image, video),
    the base model's ``get_<modality>_features`` called with the inputs its signature names, the pixels
    removed, the outputs under ``mm_encoder_outputs`` (the forward's own argument for pre-encoded media).
    Inputs unchanged for a model whose forward does not take encoder outputs."""
    if not supports_media_reuse(model):
        return dict(encoded)
    inputs, outputs, consumed = dict(encoded), {}, set()
    for modality in ("image", "video"):
        encoder = getattr(model.base_model, f"get_{modality}_features", None)
        if encoder is None:
            continue
        arguments = {key: encoded[key] for key in inspect.signature(encoder).parameters if key != "kwargs" and key in encoded}
        if not any(key in arguments for key in PIXEL_KEYS):
            continue
        with torch.inference_mode():
            output = encoder(**arguments, return_dict=True)
        for field_name in ("hidden_states", "attentions"):  # every vision layer's states: read by no forward, kept for no condition
            if getattr(output, field_name, None) is not None:
                output[field_name] = None
        outputs[modality] = output
        consumed.update(key for key in arguments if key in PIXEL_KEYS)
    for key in consumed:  # only the pixels: a grid or size the encoder read may still place the tokens (Qwen's M-RoPE)
        inputs.pop(key, None)
    if outputs:
        inputs["mm_encoder_outputs"] = outputs
    return inputs


def tile(value: Any, times: int) -> Any:
    """``value`` for ``times`` copies of a batch, condition-major (rows ``[a, b] -> [a, b, a, b]``): tensors
    repeated along their first axis (rows, images or patches, in batch order), encoder outputs field by field:
    a per-image list of features (``pooler_output``'s, and any list of tensors of the same lengths nested in
    another field: Qwen3-Omni's deepstack features per layer and image) repeated as a list, as ``generate``
    expands them; other lists (per-layer tensors, each over every image's tokens) element-wise."""
    if times == 1 or value is None:
        return value
    if isinstance(value, torch.Tensor):
        return value.repeat((times,) + (1,) * (value.ndim - 1)) if value.ndim else value
    if isinstance(value, dict) and not hasattr(value, "to_tuple"):
        return {key: tile(item, times) for key, item in value.items()}
    if hasattr(value, "to_tuple"):  # a ModelOutput
        pooled = value.get("pooler_output")
        per_image = [item.shape[0] for item in pooled] if isinstance(pooled, (list, tuple)) and all(isinstance(item, torch.Tensor) for item in pooled) else None
        fields = {}
        for key, item in value.items():
            if key == "pooler_output" and isinstance(item, (list, tuple)):
                fields[key] = list(item) * times
            elif isinstance(item, (list, tuple)):
                fields[key] = type(item)(_tile_nested(element, times, per_image) for element in item)
            else:
                fields[key] = tile(item, times)
        return type(value)(**fields)
    if isinstance(value, (list, tuple)):
        return type(value)(tile(element, times) for element in value)
    return value


def _tile_nested(value: Any, times: int, per_image: list[int] | None) -> Any:
    """An element of an encoder output's list field: a list of one tensor per image (as long as ``pooler_output``'s
    per-image features) repeated as a list, anything else tiled."""
    if isinstance(value, (list, tuple)):
        if per_image is not None and [item.shape[0] if isinstance(item, torch.Tensor) else None for item in value] == per_image:
            return list(value) * times
        return type(value)(_tile_nested(item, times, per_image) for item in value)
    return tile(value, times)


# -- 2 and 3. the baseline's prefix, recorded and replayed -------------------------------------------------


def install_replay(decoder_layers: Sequence[torch.nn.Module]) -> None:
    """Wrap, once per model, each decoder layer's ``forward`` so that the calling context's prefix (if any)
    may record its output or stand in for it, and hook the last layer's position-wise modules so that a call's
    prefill may compute its final position alone there (``FinalRows``). Call it before the model is shared
    (``LoadedModel`` does)."""
    for index, layer in enumerate(decoder_layers):
        if not isinstance(vars(layer).get("forward"), _ReplayableForward):  # installed already: the wrapper says so itself
            layer.forward = _ReplayableForward(index, layer.forward)
    last = decoder_layers[-1] if decoder_layers else None
    if last is not None and getattr(last, FINAL_ROWS_MARKER, None) is None:
        earlier = {id(module) for layer in decoder_layers[:-1] for module in layer.modules()}
        modules = position_wise_modules(last)
        if any(id(module) in earlier for module in modules):  # a module shared with earlier layers (Zamba's shared block) runs whole
            modules = []
        for module in modules:
            module.register_forward_pre_hook(FinalRows(last), with_kwargs=True)
        setattr(last, FINAL_ROWS_MARKER, bool(modules))


def has_final_rows(decoder_layers: Sequence[torch.nn.Module]) -> bool:
    """Whether ``install_replay`` hooked the last decoder layer's position-wise modules (``FinalRows``)."""
    return bool(decoder_layers) and bool(getattr(decoder_layers[-1], FINAL_ROWS_MARKER, False))


class FinalRows:
    """Forward pre-hook of the last decoder layer's feed-forward and attention output projection
    (``discovery.position_wise_modules``): in a prefill of a call that reads only the final position's logits
    (``ForwardCall.final_rows``: a sweep's conditions, which observe nothing), the module is handed the final
    position alone. What the layer adds to the residual there is then computed for that position only; at the other
    positions the layer's output is not the model's (the residual plus the final position's update, broadcast), and
    nothing reads it: ``generate`` keeps the final position's logits, the next token's pass reads this layer's keys
    and values (computed for every position, before the projection), and no recorded boundary is this layer's
    output but the one a whole replayed prefill hands on, of which again only the final position is read. The
    first batch's check compares it with the whole layer (``extract.sweep.SweepSamples._check_replay``)."""

    def __init__(self, layer: torch.nn.Module):
        self.layer = layer

    def __call__(self, module: torch.nn.Module, args: tuple, kwargs: dict):
        call = ACTIVE_CALL.get()
        if call is None or not call.final_rows or call.observer is not None or not call.decoder_layers or call.decoder_layers[-1] is not self.layer:
            return None
        hidden = args[0] if args else None
        if not isinstance(hidden, torch.Tensor) or hidden.ndim != 3 or hidden.shape[1] <= 1:  # a decode step: one position already
            return None
        if any(isinstance(value, torch.Tensor) for value in (*args[1:], *kwargs.values())):
            return None  # handed more than the hidden states (Ernie 4.5's MoE: its tokens' types, per position): run whole
        return (hidden[:, -1:], *args[1:]), kwargs


class _ReplayableForward:
    def __init__(self, index: int, forward):
        self.index, self.forward = index, forward

    def __call__(self, *args, **kwargs):
        call = ACTIVE_CALL.get()
        prefix = None if call is None else call.prefix
        if prefix is None:
            return self.forward(*args, **kwargs)
        return prefix.layer(self.index, self.forward, args, kwargs)


def _cache_of(kwargs: dict[str, Any]):
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    if cache is None or not hasattr(cache, "layers"):
        raise ReuseError("the decoder layers are not handed a cache with per-layer entries")
    return cache


# cache layers whose decode steps concatenate into new tensors: the recorded prefill's tensors can be shared
_CONCATENATING = (DynamicLayer, DynamicSlidingWindowLayer)


def _copy_entry(entry: Any, times: int = 1, room: int | None = None) -> Any:
    """A cache entry (one layer's keys, values, states) as a new object, its batch-first tensors tiled ``times``. A
    dynamic layer's tensors are shared (its decode steps concatenate into new ones, so the recorded ones stay as the
    prefill left them); any other layer's are cloned, with its dicts and lists: a linear-attention layer's
    convolution and recurrent states, or a static layer's keys, are written in place by its decode steps, which must
    not reach the recording (nor one condition's steps another's). A shared prompt (``PrefixRecording.entry``'s
    full-attention layers) stays shared: a new ``SharedPrefixLayer`` over it, whose decode steps do not copy it into
    the call's memory but join it with their tail at each step; for a generation that may append more than
    ``GROWTH`` tokens (``room``: a long answer) those joins would copy the prompt more often than once per
    ``GROWTH`` steps, so the prompt is copied once into a ``ReservedLayer`` (the plain path's memory for the layer)."""
    if isinstance(entry, SharedPrefixLayer):
        keys, values = entry.shared()
        keys, values = tile(keys, times), tile(values, times)
        if room is not None and room > GROWTH:
            reserved = ReservedLayer(room)
            reserved.update(keys, values)
            return reserved
        return SharedPrefixLayer(keys, values)
    clone = type(entry) not in _CONCATENATING
    copied = copy.copy(entry)
    for name, item in vars(entry).items():
        setattr(copied, name, _copied(item, times, clone))
    return copied


def _copied(value: Any, times: int, clone: bool) -> Any:
    if isinstance(value, torch.Tensor):
        if value.ndim >= 2 and times > 1:
            return tile(value, times)  # a new tensor
        return value.clone() if clone else value
    if clone and isinstance(value, dict):
        return {key: _copied(item, times, clone) for key, item in value.items()}
    if clone and isinstance(value, list):
        return [_copied(item, times, clone) for item in value]
    return value


@dataclass
class _Live:
    """A recorded cache entry that is still the baseline's own layer: its decode steps run as transformers runs
    them (so the first batch's check compares replays with transformers' own cache), and its prompt is taken
    once the baseline is done (``PrefixRecording.entry``) without a copy of it held meanwhile."""

    layer: DynamicLayer
    prompt: int  # the prompt's keys: the prefill's length


@dataclass
class PrefixRecording:
    """The baseline's prefill, recorded: each ``boundaries`` layer's output, the cache entries of the layers
    before ``depth``, and (``windows``) each attention layer's last query rows, keys and mask, from which a
    replayed layer's cache-pruning intervention chooses its keys. Active in the baseline's call; read by the
    replays after it."""

    boundaries: frozenset[int]  # layer indices whose output a stack starts after (start - 1)
    depth: int  # the deepest start: cache entries of layers 0 .. depth - 1 are kept
    windows: bool = False  # whether some condition replays a layer it prunes (``LayerIntervention.prefill_unchanged``)
    outputs: dict[int, Any] = field(default_factory=dict)
    entries: dict[int, Any] = field(default_factory=dict)
    attended: dict[int, tuple[torch.Tensor, torch.Tensor | int, torch.Tensor | None, float | None]] = field(
        default_factory=dict
    )  # attention layer -> (query rows, keys or the decoder layer whose entry holds them, mask rows, scaling)
    passes: int = 0

    def begin_forward(self, kwargs: dict[str, Any]) -> None:
        self.passes += 1

    def attention(self, layer: int, query, key, attention_mask, scaling) -> None:
        if self.windows and self.passes == 1:
            rows = min(SNAPKV_WINDOW, query.shape[2])
            mask = None if attention_mask is None else attention_mask[:, :, -rows:, :].clone() if attention_mask.shape[2] > 1 else attention_mask
            self.attended[layer] = (query[:, :, -rows:, :].clone(), key, mask, scaling)

    def layer(self, index: int, forward, args, kwargs):
        output = forward(*args, **kwargs)
        if self.passes == 1:
            if index in self.boundaries:
                self.outputs[index] = output
            if index < self.depth:
                entry = _cache_of(kwargs).layers[index]
                if type(entry) in (DynamicLayer, ReservedLayer) and entry.is_initialized:  # its prompt's tensors are never written again
                    self.entries[index] = _Live(entry, entry.keys.shape[-2])
                    for layer, (rows, key, mask, scaling) in self.attended.items():
                        if key is entry.keys:  # read from the entry when replayed: not held a second time
                            self.attended[layer] = (rows, index, mask, scaling)
                else:
                    self.entries[index] = _copy_entry(entry)
        return output

    def entry(self, index: int) -> Any:
        """Decoder layer ``index``'s recorded cache entry; the baseline's own layers become a ``SharedPrefixLayer``
        over their prompt's keys and values when first read (by then the baseline is done)."""
        entry = self.entries[index]
        if isinstance(entry, _Live):
            keys, values = entry.layer.keys, entry.layer.values
            entry = self.entries[index] = SharedPrefixLayer(keys[:, :, : entry.prompt], values[:, :, : entry.prompt])
        return entry

    def window(self, layer: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, float | None]:
        """Attention layer ``layer``'s recorded query rows, keys, mask rows and scaling."""
        rows, key, mask, scaling = self.attended[layer]
        return rows, self.entry(key).shared()[0] if isinstance(key, int) else key, mask, scaling

    def keep_for(self, starts: Sequence[int]) -> None:
        """Drop what no stack still to run from ``starts`` reads: the other boundaries' outputs, and the cache
        entries from the deepest of them on (a sweep's peak memory falls as its deepest stacks finish)."""
        depth = max(starts, default=0)
        for index in [index for index in self.outputs if index + 1 not in starts]:
            del self.outputs[index]
        for index in [index for index in self.entries if index >= depth]:
            del self.entries[index]


@dataclass
class PrefixReplay:
    """A stack's prefill started at layer ``start`` from a recording, for ``times`` copies of its batch."""

    recording: PrefixRecording
    start: int
    times: int
    passes: int = 0
    _output: Any = None

    def begin_forward(self, kwargs: dict[str, Any]) -> None:
        self.passes += 1

    def attention(self, layer: int, query, key, attention_mask, scaling) -> None:
        pass

    def layer(self, index: int, forward, args, kwargs):
        if self.passes != 1 or index >= self.start:
            return forward(*args, **kwargs)
        cache = _cache_of(kwargs)
        call = ACTIVE_CALL.get()
        entry = _copy_entry(self.recording.entry(index), self.times, None if call is None else call.kv_room)
        if index < len(cache.layers):
            cache.layers[index] = entry
        elif index == len(cache.layers):  # a cache that grows its entries as layers first write to it
            cache.layers.append(entry)
        else:
            raise ReuseError(f"the cache has {len(cache.layers)} entries when layer {index} runs")
        self._replay_interventions(index, cache)
        if self._output is None:
            self._output = tile(self.recording.outputs[self.start - 1], self.times)
        return self._output  # every skipped layer returns the boundary's output: the next skipped layer ignores it

    def _replay_interventions(self, index: int, cache) -> None:
        """The interventions of the attention layers inside replayed decoder layer ``index`` (each leaves the
        prefill unchanged) are handed the baseline's prefill of their layer, and the layer's cache is packed as
        their own prefill would have left it."""
        call = ACTIVE_CALL.get()
        for module in call.decoder_layers[index].modules():
            layer = call.layer_of.get(id(module))
            edits = call.edits.get(layer) if layer is not None else None
            if not edits:
                continue
            if layer not in self.recording.attended:
                raise ReuseError(f"attention layer {layer} is replayed with an intervention but its prefill was not recorded")
            query, key, mask, scaling = self.recording.window(layer)
            query, key = tile(query, self.times), tile(key, self.times)
            mask = mask if mask is None or mask.shape[0] == 1 else tile(mask, self.times)  # a mask shared by every row stays shared, as the live pass hands it
            for edit in edits:
                edit.replay_prefill(query, key, mask, scaling)
            if call.observer is None:
                pack_pruned(cache, getattr(module, "layer_idx", layer), edits, key, mask)


# -- the check: what the text model is handed ----------------------------------------------------------


class _Probed(Exception):
    """Ends a forward pass once the text model has been handed its inputs (``InputProbe``)."""


@dataclass
class InputProbe:
    """Keeps what the text model is handed in a forward pass and stops the pass there."""

    kwargs: dict[str, Any] | None = None

    def begin_forward(self, kwargs: dict[str, Any]) -> None:
        self.kwargs = dict(kwargs)
        raise _Probed

    def attention(self, layer: int, query, key, attention_mask, scaling) -> None:  # pragma: no cover  (the pass stops before any layer)
        pass

    def layer(self, index: int, forward, args, kwargs):  # pragma: no cover  (the pass stops before any layer)
        return forward(*args, **kwargs)


def text_model_inputs(loaded, inputs: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments the text model receives when the whole model is run on ``inputs`` (its vision
    tower, projector and merge run; its layers do not)."""
    parts = loaded.parts
    probe = InputProbe()
    with torch.inference_mode(), forward_call(parts.text_model, parts.attention_modules, parts.decoder_layers, prefix=probe):
        try:
            loaded.model(**inputs)
        except _Probed:
            pass
    if probe.kwargs is None:
        raise ReuseError("the model's forward did not reach its text model")
    return probe.kwargs


def compare_inputs(plain: dict[str, Any], reused: dict[str, Any], blocks: int = 1) -> str | None:
    """None when every tensor ``reused`` hands the text model equals ``plain``'s, in lists and dicts too (Qwen3-VL's
    deepstack features per layer), for ``blocks`` stacked copies each block along the axis that grew; else the name
    of the first that differs."""
    for name in sorted(set(plain) | set(reused)):
        expected, got = plain.get(name), reused.get(name)
        if isinstance(expected, (list, tuple, dict)) or isinstance(got, (list, tuple, dict)):
            if type(expected) is not type(got) or len(expected) != len(got):
                return name
            if isinstance(expected, dict):
                if set(expected) != set(got):
                    return name
                differs = compare_inputs({str(key): item for key, item in expected.items()}, {str(key): item for key, item in got.items()}, blocks)
            else:
                differs = compare_inputs({str(index): item for index, item in enumerate(expected)}, {str(index): item for index, item in enumerate(got)}, blocks)
            if differs is not None:
                return f"{name}[{differs}]"
            continue
        if not isinstance(expected, torch.Tensor) and not isinstance(got, torch.Tensor):
            continue
        if not isinstance(expected, torch.Tensor) or not isinstance(got, torch.Tensor):
            return name
        if blocks > 1:
            axis = next((axis for axis in range(expected.ndim) if got.shape[axis] == blocks * expected.shape[axis] and got.ndim == expected.ndim), None)
            if axis is None:
                if got.shape != expected.shape:
                    return name
                pieces = [got]
            else:
                pieces = list(got.chunk(blocks, dim=axis))
        else:
            pieces = [got]
        for piece in pieces:
            if piece.shape != expected.shape or piece.dtype != expected.dtype:
                return name
            if piece.is_floating_point():
                if not torch.allclose(piece, expected, rtol=1e-5, atol=1e-6):
                    return name
            elif not torch.equal(piece, expected):
                return name
    return None


# -- 4. conditions stacked in one pass ---------------------------------------------------------------------


def first_layer(bound: Sequence[dict[int, LayerIntervention]], n_layers: int) -> int:
    """The first layer whose prefill a condition's bound interventions change (``n_layers`` when none): a layer
    whose interventions all leave the prefill unchanged (cache pruning) is replayed from the baseline."""
    return min((layer for edits in bound for layer, edit in edits.items() if not edit.prefill_unchanged()), default=n_layers)


def replays_interventions(bound: Sequence[Sequence[dict[int, LayerIntervention]]]) -> bool:
    """Whether some condition of a group has an intervention in a layer it replays (then the baseline's
    recording keeps each layer's prefill for it to choose from)."""
    return any(edit.prefill_unchanged() for condition in bound for edits in condition for edit in edits.values())


def plan_stacks(starts: Sequence[int], n_layers: int, most: int, slack: float = 1.1) -> list[list[int]]:
    """Conditions (by index into ``starts``, their first intervened layers) in stacks of at most ``most``,
    ordered by start; a stack runs from its earliest start, so a condition joins it only while the stack's
    layers computed stay within ``slack`` of running its conditions apart."""
    order = sorted(range(len(starts)), key=lambda index: (starts[index], index))
    stacks: list[list[int]] = []
    for index in order:
        if stacks and len(stacks[-1]) < most:
            stack = stacks[-1] + [index]
            together = len(stack) * (n_layers - starts[stack[0]])
            apart = sum(n_layers - starts[member] for member in stack)
            if together <= slack * apart:
                stacks[-1] = stack
                continue
        stacks.append([index])
    return stacks


AUTO_STACK_MOST = (
    16  # --stack auto's ceiling: 16 conditions × a batch of 16 = 256 rows a step, past which a decode step on an H100 / H200 is no longer bound by reading the weights
)
STACK_MEMORY_SHARE = 0.8  # the share of the device's free memory stacked passes may fill (the rest: fragmentation, a batch of longer prompts)


def stack_fitting(free_bytes: int, per_condition_bytes: int, most: int = AUTO_STACK_MOST) -> int:
    """Conditions per pass (1..``most``) whose passes fit in ``STACK_MEMORY_SHARE`` of ``free_bytes`` when one
    condition's pass takes ``per_condition_bytes`` beyond what is held before it, one condition's worth kept
    for the baseline's recording of the batch (a full prefill: no more than a pass holds)."""
    if per_condition_bytes <= 0:
        return most
    return max(1, min(most, int(STACK_MEMORY_SHARE * free_bytes) // per_condition_bytes - 1))


def out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is a pass that did not fit: the GPU allocator's, cuBLAS's or cuDNN's workspace, the CPU
    allocator's (a process under a memory limit, ``ulimit -v``) or Python's own."""
    if isinstance(error, torch.OutOfMemoryError | MemoryError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and any(sign in text for sign in ("can't allocate memory", "CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED"))


class StackSize:
    """How many conditions of a batch go through one pass (``--stack``): a fixed number, or (``auto``: ``fixed``
    None) on a GPU as many as its free memory holds by what one condition's pass was measured to take
    (``stack_fitting``; the first batch runs them one at a time and is measured), and one on a CPU, where a
    stacked pass costs more than its conditions apart (bench/RESULTS.md). A stack that runs out of memory is
    run in halves (``did_not_fit``), and no later stack is larger than a half; ``lowered`` says so.

    One per sweep's samples, shared by the threads that evaluate them (a Dask worker's): what one pass measures
    or runs out of sizes the next passes."""

    def __init__(self, fixed: int | None, device: torch.device):
        self.fixed, self.device = fixed, device
        self.measures = fixed is None and device.type == "cuda"
        self.per_condition = 0  # the most bytes a measured pass took per condition beyond what was held before it
        self.ceiling: int | None = None  # lowered when a stack did not fit
        self.failed: list[int] = []  # the sizes of the stacks that did not fit, in order
        self.largest = 0  # the largest stack run (to its end)
        self.peak_bytes = 0  # the device's highest allocation seen in a measured pass (its counter is reset for each)
        self.lowered: str | None = None  # a warning line, once a stack did not fit
        self._lock = threading.Lock()

    @property
    def may_stack(self) -> bool:
        """Whether some pass of the sweep may take more than one condition."""
        return (self.fixed or 0) > 1 or self.measures

    def most(self) -> int:
        """The largest stack for the batch about to be evaluated."""
        if self.fixed is not None:
            size = self.fixed
        elif not self.measures or not self.per_condition:
            size = 1
        else:
            free, _ = torch.cuda.mem_get_info(self.device)
            cached = torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device)  # freed, kept by the allocator
            size = stack_fitting(free + cached, self.per_condition)
        return size if self.ceiling is None else min(size, self.ceiling)

    @contextmanager
    def measured(self, times: int) -> Iterator[None]:
        """Around a pass of ``times`` conditions: what it took beyond what was held before it, per condition (auto, on a GPU)."""
        if self.measures:
            torch.cuda.reset_peak_memory_stats(self.device)
            before = torch.cuda.memory_allocated(self.device)
        yield
        with self._lock:
            self.largest = max(self.largest, times)
            if self.measures:
                peak = torch.cuda.max_memory_allocated(self.device)
                self.per_condition = max(self.per_condition, (peak - before) // times)
                self.peak_bytes = max(self.peak_bytes, peak)

    def did_not_fit(self, times: int) -> int:
        """A stack of ``times`` conditions ran out of memory: the size its parts run at, and every later stack's ceiling."""
        with self._lock:
            self.ceiling = min(self.ceiling or times, (times + 1) // 2)
            self.failed.append(times)
            self.lowered = f"a stack of {self.failed[0]} conditions per pass ran out of memory: stacks of at most {self.ceiling} from there on (--stack)"
            ceiling = self.ceiling
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        return ceiling


def stack_interventions(bound: Sequence[Sequence[dict[int, LayerIntervention]]], rows: int) -> dict[int, LayerIntervention]:
    """Per layer, one intervention over a stacked batch whose ``rows``-row blocks are the conditions of
    ``bound`` in order (each condition's interventions, bound to its block); each acts on its block only."""
    layers: dict[int, list[tuple[slice, list[LayerIntervention]]]] = {}
    for position, condition in enumerate(bound):
        block = slice(position * rows, (position + 1) * rows)
        for edits in condition:
            for layer, edit in edits.items():
                parts = layers.setdefault(layer, [])
                if parts and parts[-1][0] == block:
                    parts[-1][1].append(edit)
                else:
                    parts.append((block, [edit]))
    return {layer: StackedLayer(parts) for layer, parts in layers.items()}


def _rows(mask: torch.Tensor | None, block: slice) -> torch.Tensor | None:
    return None if mask is None or mask.shape[0] == 1 else mask[block]


class StackedLayer(LayerIntervention):
    """One layer's interventions of several conditions over their blocks of a stacked batch.

    ``attend``: each block's keys, values and mask as its condition's intervention makes them; where the
    blocks then differ in key count, every block's keys are padded to the widest with keys masked out (they
    get exactly zero attention) and the masks merged into one additive mask. ``output``: each block's output as its condition's intervention makes it."""

    def __init__(self, parts: list[tuple[slice, list[LayerIntervention]]]):
        self.parts = parts

    def prefill_unchanged(self) -> bool:
        return all(edit.prefill_unchanged() for _, edits in self.parts for edit in edits)

    def replay_prefill(self, query, key, attention_mask, scaling) -> None:
        for block, edits in self.parts:
            for edit in edits:
                edit.replay_prefill(query[block], key[block], _rows(attention_mask, block), scaling)

    def attend(self, query, key, value, attention_mask, scaling):
        changed = []
        for block, edits in self.parts:
            block_key, block_value, block_mask = key[block], value[block], _rows(attention_mask, block)
            new_key, new_value, new_mask = block_key, block_value, block_mask
            for edit in edits:
                new_key, new_value, new_mask = edit.attend(query[block], new_key, new_value, new_mask, scaling)
            if new_key is not block_key or new_value is not block_value or new_mask is not block_mask:
                changed.append((block, new_key, new_value, new_mask))
        if not changed:
            return key, value, attention_mask
        batch, n_heads, n_query, _ = query.shape
        width = max([key.shape[2]] + [new_key.shape[2] for _, new_key, _, _ in changed])
        keys = key.new_zeros((key.shape[0], key.shape[1], width, key.shape[3]))
        values = value.new_zeros((value.shape[0], value.shape[1], width, value.shape[3]))
        masks = torch.zeros((batch, n_heads, n_query, width), dtype=torch.bool, device=query.device)
        keys[:, :, : key.shape[2]], values[:, :, : value.shape[2]] = key, value
        masks[..., : key.shape[2]] = as_bool_mask(attention_mask, batch, n_query, key.shape[2], query.device)
        for block, new_key, new_value, new_mask in changed:
            n = new_key.shape[2]
            keys[block] = 0
            values[block] = 0
            masks[block] = False
            keys[block, :, :n], values[block, :, :n] = new_key, new_value
            masks[block, :, :, :n] = as_bool_mask(new_mask, new_key.shape[0], n_query, n, query.device)
        # additive, so that a row that sees no key (left padding) averages its values as under the model's own
        # mask, rather than becoming NaN (which the padding's keys would hand on to every row through 0 · NaN)
        return keys, values, torch.where(masks, 0.0, torch.finfo(query.dtype).min).to(query.dtype)

    def observed_mask(self, query, key, attention_mask, scaling):
        raise RuntimeError("stacked conditions are not observed: a capture session runs one condition per call")

    def cache_keeps(self, key):
        """Each block's keys as its condition's cache keeps them (a block without a cache-pruning intervention
        here keeps every key); None where some intervention of a block does not prune the cache."""
        kept = []
        for block, edits in self.parts:
            for edit in edits:
                block_keeps = edit.cache_keeps(key[block])
                if block_keeps is None:  # (every decode step, and every masking layer, ends here: nothing allocated)
                    return None
                kept.append((block, block_keeps))
        keeps = torch.ones(key.shape[:3], dtype=torch.bool, device=key.device)
        for block, block_keeps in kept:
            keeps[block] &= block_keeps
        return keeps

    def output(self, output, value):
        for block, edits in self.parts:
            block_output = output[block]
            for edit in edits:
                block_output = edit.output(block_output, value[block])
            if block_output.data_ptr() != output[block].data_ptr():
                output[block] = block_output
        return output


# -- 5. a condition once ------------------------------------------------------------------------------------


BASELINE_KEY = ("baseline",)


def same_conditions(group: Sequence[Sequence[Any]], bound: Sequence[Sequence[dict[int, LayerIntervention]]]) -> list[int]:
    """Per condition of a group, the first condition that computes exactly what it computes (itself if none
    before it does): conditions whose bound interventions touch no layer compute the baseline's; otherwise
    conditions whose interventions are equal field by field (``intervention_key``). A grid repeats conditions
    more often than it seems: the ``all`` stage's k worst heads are often one stage's k worst, a pruning grid's
    full cache is the baseline."""
    first: dict[Any, int] = {}
    same = []
    for index, (interventions, edits) in enumerate(zip(group, bound)):
        key = BASELINE_KEY if not any(edits) else tuple(intervention_key(intervention) for intervention in interventions)
        same.append(first.setdefault(key, index))
    return same


def intervention_key(value: Any) -> Any:
    """A value that two interventions share exactly when they are equal field by field (dataclasses' fields,
    tensors and arrays by dtype, shape and bytes, containers item by item); any other object stands for itself
    (its identity), so that interventions over a shared state (a baseline image's keys) are equal only when they
    share it."""
    if is_dataclass(value) and not isinstance(value, type):
        return (type(value).__qualname__, tuple((item.name, intervention_key(getattr(value, item.name))) for item in fields(value)))
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        return ("tensor", str(value.dtype), tuple(value.shape), value.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    if isinstance(value, np.ndarray):
        return ("array", value.dtype.str, value.shape, np.ascontiguousarray(value).tobytes())
    if isinstance(value, dict):
        return ("dict", tuple(sorted(((intervention_key(key), intervention_key(item)) for key, item in value.items()), key=repr)))
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(intervention_key(item) for item in value))
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return ("object", id(value))


__all__ = [
    "FinalRows",
    "PrefixRecording",
    "PrefixReplay",
    "ReuseError",
    "StackedLayer",
    "encode_media",
    "first_layer",
    "has_final_rows",
    "install_replay",
    "intervention_key",
    "plan_stacks",
    "replays_interventions",
    "same_conditions",
    "stack_interventions",
    "supports_media_reuse",
    "tile",
]
