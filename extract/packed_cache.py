"""A KV cache layer that really holds only what each KV head keeps: pruned image keys are gone from memory.

After the prefill, a pruned layer's entry in the call's cache (transformers' ``DynamicLayer``: every key of
every KV head, ``[batch, kv_head, key, head_dim]``) is replaced by a ``PackedLayer``: each (row, KV head)'s
kept prompt keys and values, packed (variable length per head; left padding is not kept either: no real row
attends to it) into a few buckets of heads with about as many kept keys (``Bucket``: at most 1% padding
slots), and the keys generated after the prefill in an ordinary tail ``[batch, kv_head, step, head_dim]`` that
grows as ``DynamicLayer`` grows (every head keeps every generated key). Its memory is the kept keys' bytes
(and under 1% of padding and index), what ``nbytes`` reports from the tensors' storages.

Decoding attends over the packed keys and the tail (``packed_attention``): per bucket, one softmax over both,
so that only the kept keys are read. The layer keeps its logical length (the prompt plus the tail), so that
positions and masks are made as for the full cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers.cache_utils import DynamicLayer

PADDING = 0.01  # the most padding a packed layer may hold, as a share of its kept keys ...
MAX_RUNS = 64  # ... unless it would take more buckets than this (then the least padding in this many)
EXACT_RUNS = 8  # with fewer distinct widths than this, a bucket per width (no padding)


class PackedLayer(DynamicLayer):
    """One decoder layer's cache after pruning: each (row, KV head)'s kept prompt keys, then the generated tail.

    Packed in buckets: the (row, KV head) segments sorted by their number of kept keys and cut into as few runs
    as keep the padding (a shorter segment's empty slots, masked out) within ``PADDING`` of the kept keys; each
    bucket is one ``[segment, width, head_dim]`` tensor, so that a decode step is a batched matrix product per
    bucket, and the memory is the kept keys' within 1%."""

    is_croppable = False

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, kept: torch.Tensor):
        """From a full layer's ``keys`` / ``values`` ``[batch, kv_head, key, head_dim]`` (the prompt's, and any key
        after it) and ``kept`` bool ``[batch, kv_head, prompt_key]``: the prompt keys each row's KV head keeps."""
        super().__init__()
        batch, n_kv, n_prompt = kept.shape
        self.batch, self.n_kv, self.prompt = batch, n_kv, n_prompt
        flat = kept.reshape(batch * n_kv, n_prompt)
        self.counts = flat.sum(dim=-1)  # [segment]: kept keys per (row, KV head)
        order = torch.argsort(self.counts, descending=True, stable=True)
        widths = self.counts[order].tolist()
        key_rows, value_rows = keys[:, :, :n_prompt].reshape(batch * n_kv, n_prompt, -1), values[:, :, :n_prompt].reshape(batch * n_kv, n_prompt, -1)
        self.buckets: list[Bucket] = []
        for first, last in bucket_runs(widths, PADDING):
            segments = order[first:last]
            width = widths[first]
            chosen = flat[segments]  # [segment, prompt_key]
            slots = torch.argsort(chosen.to(torch.uint8), dim=-1, descending=True, stable=True)[:, :width]  # kept first, in position order
            valid = torch.arange(width, device=kept.device)[None, :] < self.counts[segments][:, None]
            at = slots[:, :, None].expand(-1, -1, key_rows.shape[-1])
            self.buckets.append(Bucket(segments, key_rows[segments].gather(1, at), value_rows[segments].gather(1, at), None if bool(valid.all()) else valid))
        self.keys = keys[:, :, n_prompt:].clone()  # the generated tail (empty right after the prefill)
        self.values = values[:, :, n_prompt:].clone()
        self.device, self.dtype, self.is_initialized = keys.device, keys.dtype, True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        """Append a decode step's keys to the tail; returns the tail (the packed keys are read by ``packed_attention``)."""
        self.keys = torch.cat([self.keys, key_states], dim=-2)
        self.values = torch.cat([self.values, value_states], dim=-2)
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.prompt + self.keys.shape[-2]

    def nbytes(self) -> int:
        """Bytes of the storages this layer holds: the buckets (keys, values, segment index, padding mask), counts and tail."""
        tensors = [self.counts, self.keys, self.values]
        for bucket in self.buckets:
            tensors += [bucket.segments, bucket.keys, bucket.values] + ([] if bucket.valid is None else [bucket.valid])
        storages = {tensor.untyped_storage().data_ptr(): tensor.untyped_storage().nbytes() for tensor in tensors}  # views of one storage (the buckets' segment index) counted once
        return sum(storages.values())

    def slots(self) -> int:
        """Key slots held for the prompt, padding included, summed over rows and KV heads."""
        return sum(int(bucket.keys.shape[0] * bucket.keys.shape[1]) for bucket in self.buckets)

    def kept_keys(self, segment: int) -> torch.Tensor:
        """``[kept, head_dim]``: the prompt keys segment ``segment`` (row · KV heads + KV head) keeps, in position order."""
        for bucket in self.buckets:
            hit = (bucket.segments == segment).nonzero()
            if hit.numel():
                return bucket.keys[int(hit[0, 0]), : int(self.counts[segment])]
        raise IndexError(segment)

    def batch_repeat_interleave(self, repeats: int) -> None:
        raise NotImplementedError("a packed (pruned) cache cannot be expanded for beam search")

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        raise NotImplementedError("a packed (pruned) cache cannot select beams")

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("a packed (pruned) cache cannot be cropped")


@dataclass
class Bucket:
    """Segments (row · KV heads + KV head) of about equal kept keys, packed to the widest of them."""

    segments: torch.Tensor  # long [segment]
    keys: torch.Tensor  # [segment, width, head_dim]
    values: torch.Tensor
    valid: torch.Tensor | None  # bool [segment, width]: False on a shorter segment's padding slots; None: no padding


def bucket_runs(widths: list[int], padding: float) -> list[tuple[int, int]]:
    """Cut ``widths`` (descending) into the fewest contiguous runs whose padding (each run padded to its first
    width) is at most ``padding`` of their sum; among those, the least padding. A dynamic programme over the
    number of runs, vectorised over the cut points."""
    n = len(widths)
    if n == 0:
        return []
    exact = [index for index in range(1, n) if widths[index] != widths[index - 1]]
    if len(exact) < EXACT_RUNS:  # few distinct widths: a run each, no padding
        return list(zip([0, *exact], [*exact, n]))
    w = np.asarray(widths, dtype=np.float64)
    total = np.concatenate([[0.0], np.cumsum(w)])
    allowed = padding * total[-1]
    # cost[j]: least padding of widths[:j] in k runs; a run i..j-1 costs w[i] * (j - i) - (total[j] - total[i])
    cost = np.full(n + 1, np.inf)
    cost[0] = 0.0
    cuts = []
    starts = np.arange(n)
    for _ in range(min(n, MAX_RUNS)):
        new, cut = np.full(n + 1, np.inf), np.zeros(n + 1, dtype=np.int64)
        for j in range(1, n + 1):
            options = cost[:j] + w[:j] * (j - starts[:j]) - (total[j] - total[:j])
            best = int(np.argmin(options))
            new[j], cut[j] = options[best], best
        cost = new
        cuts.append(cut)
        if cost[n] <= allowed + 1e-9:
            break
    runs, end = [], n
    for cut in reversed(cuts):
        runs.append((int(cut[end]), end))
        end = int(cut[end])
    return runs[::-1]


def packed_attention(
    query: torch.Tensor,  # [batch, head, 1, head_dim]: one decode step
    layer: PackedLayer,
    attention_mask: torch.Tensor | None,  # over the logical keys (prompt + tail), bool or additive, or None
    scaling: float | None,
) -> torch.Tensor:  # [batch, 1, head, head_dim], as transformers' attention functions return it
    """Softmax attention of one decode step over a packed layer: each head's kept prompt keys and the tail.

    Query head ``i`` reads KV head ``i // groups`` (as ``repeat_kv`` pairs them). Per bucket: the logits of its
    segments' query heads against its keys and against their tail keys, one softmax over both, the weighted sum
    of both values; logits and softmax in fp32 (as SDPA accumulates), the output cast back to the query's dtype."""
    batch, n_heads, n_query, head_dim = query.shape
    if n_query != 1:
        raise RuntimeError(f"a packed cache serves one decode step at a time, got {n_query} queries")
    groups, n_segments = n_heads // layer.n_kv, batch * layer.n_kv
    scale = scaling if scaling is not None else head_dim**-0.5
    q = query[:, :, 0, :].reshape(n_segments, groups, head_dim)  # [segment, group, head_dim]
    tail_keys = layer.keys.reshape(n_segments, -1, head_dim)  # [segment, step, head_dim]
    tail_values = layer.values.reshape(n_segments, -1, head_dim)
    n_tail = tail_keys.shape[1]
    tail_visible = None
    if attention_mask is not None and n_tail:
        visible = attention_mask[..., -1, -n_tail:]  # [batch, 1 or head, step]
        visible = visible if visible.dtype == torch.bool else visible > torch.finfo(visible.dtype).min / 2
        tail_visible = visible.expand(batch, n_heads, n_tail).reshape(n_segments, groups, n_tail)
    output = query.new_empty((n_segments, groups, head_dim))
    for bucket in layer.buckets:
        segments = bucket.segments
        q_b = q.index_select(0, segments).float() * scale  # [bucket, group, head_dim]
        logits = torch.matmul(q_b, bucket.keys.float().transpose(1, 2))  # [bucket, group, width]
        if bucket.valid is not None:
            logits = logits.masked_fill(~bucket.valid[:, None, :], float("-inf"))
        tail = torch.matmul(q_b, tail_keys.index_select(0, segments).float().transpose(1, 2))  # [bucket, group, step]
        if tail_visible is not None:
            tail = tail.masked_fill(~tail_visible.index_select(0, segments), float("-inf"))
        weights = torch.softmax(torch.cat([logits, tail], dim=-1), dim=-1)
        width = logits.shape[-1]
        mixed = torch.matmul(weights[..., :width], bucket.values.float()) + torch.matmul(weights[..., width:], tail_values.index_select(0, segments).float())
        output.index_copy_(0, segments, mixed.to(output.dtype))
    return output.reshape(batch, n_heads, head_dim)[:, None]


class SharedPrefixLayer(DynamicLayer):
    """A full-attention cache layer whose prompt keys and values are shared with other calls (a sweep's
    baseline prefill, recorded and replayed: extract.reuse) and never written: each decode step's keys go to a
    tail of the layer's own, and the step reads the prompt and the tail joined, a tensor made for the step and
    freed after it, as ``DynamicLayer`` makes a new one per step. A ``DynamicLayer`` sharing the prompt would
    instead hold a copy of it from the first step on, for as long as the call runs: one copy per call beside the
    shared one, what a sweep's peak memory would pay per layer replayed.

    ``keys`` / ``values`` read the whole (prompt and tail) and setting them replaces the whole, so that the
    inherited ``crop``, ``batch_select_indices``, ``reorder_cache`` and offloading see one layer as before."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor):
        super().__init__()
        self.keys, self.values = keys, values
        self.device, self.is_initialized = keys.device, True

    @property
    def keys(self) -> torch.Tensor | None:
        return _joined(self._prompt_keys, self._tail_keys)

    @keys.setter
    def keys(self, whole: torch.Tensor | None) -> None:
        self._prompt_keys, self._tail_keys = whole, None

    @property
    def values(self) -> torch.Tensor | None:
        return _joined(self._prompt_values, self._tail_values)

    @values.setter
    def values(self, whole: torch.Tensor | None) -> None:
        self._prompt_values, self._tail_values = whole, None

    def shared(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The prompt's keys and values, as shared (no tail)."""
        return self._prompt_keys, self._prompt_values

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        """Append a step's keys and values to the tail; returns the whole layer's, joined for this step."""
        if self._prompt_keys is None:  # after ``reset``: these keys begin the layer again, as they begin a ``DynamicLayer``
            self.keys, self.values = key_states.clone(), value_states.clone()
            self.device, self.is_initialized = key_states.device, True
            return self.keys, self.values
        self._tail_keys = key_states.clone() if self._tail_keys is None else torch.cat([self._tail_keys, key_states], dim=-2)
        self._tail_values = value_states.clone() if self._tail_values is None else torch.cat([self._tail_values, value_states], dim=-2)
        return self.keys, self.values

    def get_seq_length(self) -> int:
        if self._prompt_keys is None:
            return 0
        return self._prompt_keys.shape[-2] + (0 if self._tail_keys is None else self._tail_keys.shape[-2])


GROWTH = 64  # positions a reserved layer holds beyond what is filled, at most (and grows by, when full)


class ReservedLayer(DynamicLayer):
    """A full-attention cache layer that writes each step's keys and values into room reserved after the
    filled positions, where ``DynamicLayer`` concatenates the whole layer into a new tensor at every step: a
    copy of every layer's keys and values per decode step (on a CPU a sixth of a step at a 600-token prompt,
    and a growing share as answers grow).

    ``keys`` / ``values`` are views of the filled positions of larger buffers. A view handed out is never
    written afterwards (later steps write past its end), so what each step returns equals what
    ``DynamicLayer`` returns, tensor for tensor. The room: ``GROWTH`` positions at most, never more than the
    generation may still append (``room``, its token limit), so an 8-token answer reserves 8 positions and a
    long one copies its layer once per ``GROWTH`` steps. Where anything else replaces ``keys`` or ``values``
    (the inherited ``crop``, ``batch_select_indices``, ``batch_repeat_interleave``, ``reset``, offloading),
    the next step adopts them into new buffers."""

    def __init__(self, room: int):
        super().__init__()
        self.room = room  # positions the generation may append after the first update (the prefill)
        self._prompt: int | None = None  # positions after the first update
        self._buffers: tuple[torch.Tensor, torch.Tensor] | None = None
        self._handed: tuple[torch.Tensor, torch.Tensor] | None = None  # the views last handed out (``keys``, ``values``)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the step's keys and values after the filled positions; returns the views of all filled positions."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        length = self.get_seq_length()
        end = length + key_states.shape[-2]
        current = self._handed is not None and self.keys is self._handed[0] and self.values is self._handed[1]
        buffer = None if self._buffers is None else self._buffers[0]
        if not current or end > buffer.shape[-2] or buffer.shape[:-2] != key_states.shape[:-2] or buffer.dtype != key_states.dtype or buffer.device != key_states.device:
            self._adopt(key_states, value_states, length, end)
        keys, values = self._buffers
        keys[..., length:end, :] = key_states
        values[..., length:end, :] = value_states
        self.keys, self.values = keys[..., :end, :], values[..., :end, :]
        self._handed = (self.keys, self.values)
        return self.keys, self.values

    def _adopt(self, key_states: torch.Tensor, value_states: torch.Tensor, length: int, end: int) -> None:
        """New buffers holding the filled positions (what ``keys`` / ``values`` hold now) and room after ``end``."""
        if self._prompt is None or length == 0:  # the first keys (again, after a reset): what the generation appends counts from here
            self._prompt = end
        ahead = self.room - (end - self._prompt)  # what the generation may still append
        capacity = end + (min(GROWTH, ahead) if ahead > 0 else GROWTH if length > 0 else 0)
        buffers = []
        for filled, states in ((self.keys, key_states), (self.values, value_states)):
            buffer = states.new_empty((*states.shape[:-2], capacity, states.shape[-1]))
            if length:
                buffer[..., :length, :] = filled.to(buffer.device)
            buffers.append(buffer)
        self._buffers = (buffers[0], buffers[1])

    def reserved(self) -> int:
        """Positions this layer's buffers hold (filled and room)."""
        return 0 if self._buffers is None else self._buffers[0].shape[-2]


def reserve_room(cache: Any, room: int) -> None:
    """Make ``cache``'s empty full-attention dynamic layers ``ReservedLayer``s with ``room`` (the generation's
    token limit): before a generation's first pass, so that its decode steps write in place. Sliding-window,
    static, quantised and any other layers stay as they are, as does a cache without per-layer entries."""
    layers = getattr(cache, "layers", None)
    if not isinstance(layers, list):
        return
    for index, entry in enumerate(layers):
        if type(entry) is DynamicLayer and not entry.is_initialized:
            layers[index] = ReservedLayer(room)


def _joined(prompt: torch.Tensor | None, tail: torch.Tensor | None) -> torch.Tensor | None:
    return prompt if tail is None or prompt is None else torch.cat([prompt, tail], dim=-2)


def pack_layer(cache, layer: int, kept: torch.Tensor) -> PackedLayer | None:
    """Replace ``cache``'s entry of ``layer`` by its packed form keeping ``kept`` (bool ``[batch, kv_head,
    prompt_key]``); None (left as it is) where the entry is not a full-attention dynamic layer holding exactly
    the prompt (a sliding window, a static or quantised cache, ...): the gathered path serves those."""
    layers = getattr(cache, "layers", None)
    if layers is None or layer >= len(layers) or type(layers[layer]) not in (DynamicLayer, ReservedLayer, SharedPrefixLayer):
        return None
    entry = layers[layer]
    if not entry.is_initialized or entry.keys.shape[-2] != kept.shape[-1] or entry.keys.shape[:2] != kept.shape[:2]:
        return None
    packed = PackedLayer(entry.keys, entry.values, kept.to(entry.keys.device))
    layers[layer] = packed
    return packed


__all__ = ["PackedLayer", "ReservedLayer", "SharedPrefixLayer", "pack_layer", "packed_attention", "reserve_room"]
