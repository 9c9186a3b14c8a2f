"""A KV cache layer that really holds only what each KV head keeps: pruned image keys are gone from memory.

After the prefill, a pruned layer's entry in the call's cache (transformers' ``DynamicLayer``: every key of
every KV head, ``[batch, kv_head, key, head_dim]``) is replaced by a ``PackedLayer``: each (row, KV head)'s
kept prompt keys and values, packed one after the other into ``[kept, head_dim]`` tensors (variable length
per head; left padding is not kept either: no real row attends to it), and the keys generated after the
prefill in an ordinary tail ``[batch, kv_head, step, head_dim]`` that grows as ``DynamicLayer`` grows (every
head keeps every generated key). Its memory is the kept keys' bytes plus one index entry per kept key,
what ``nbytes`` reports from the tensors' storages.

Decoding attends over the packed keys and the tail (``packed_attention``): one softmax over both, computed
with the packed keys' segment (row × KV head) as the index of a scatter, so that only the kept keys are read.
The layer keeps its logical length (the prompt plus the tail), so that positions and masks are made as for
the full cache.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicLayer


class PackedLayer(DynamicLayer):
    """One decoder layer's cache after pruning: packed prompt keys per (row, KV head), then the generated tail."""

    is_croppable = False

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, kept: torch.Tensor):
        """From a full layer's ``keys`` / ``values`` ``[batch, kv_head, key, head_dim]`` (the prompt's, and any key
        after it) and ``kept`` bool ``[batch, kv_head, prompt_key]``: the prompt keys each row's KV head keeps."""
        super().__init__()
        batch, n_kv, n_prompt = kept.shape
        row, head, position = kept.nonzero(as_tuple=True)  # row-major: each (row, head)'s keys together, in position order
        self.batch, self.n_kv, self.prompt = batch, n_kv, n_prompt
        self.packed_keys = keys[row, head, position]  # [kept, head_dim]: advanced indexing copies into new storage
        self.packed_values = values[row, head, position]
        self.segment = (row * n_kv + head).to(torch.int32 if n_kv * batch < 2**31 else torch.int64)  # [kept]
        self.counts = kept.sum(dim=-1).reshape(-1)  # [batch · kv_head]
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
        """Bytes of the storages this layer holds: packed keys and values, their segment index, counts and tail."""
        tensors = (self.packed_keys, self.packed_values, self.segment, self.counts, self.keys, self.values)
        return sum(tensor.untyped_storage().nbytes() for tensor in tensors)

    def kept_keys(self) -> int:
        """Keys held, summed over rows and KV heads: packed prompt keys plus the tail's."""
        return int(self.packed_keys.shape[0]) + self.batch * self.n_kv * int(self.keys.shape[-2])

    def batch_repeat_interleave(self, repeats: int) -> None:
        raise NotImplementedError("a packed (pruned) cache cannot be expanded for beam search")

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        raise NotImplementedError("a packed (pruned) cache cannot select beams")

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("a packed (pruned) cache cannot be cropped")


def packed_attention(
    query: torch.Tensor,  # [batch, head, 1, head_dim]: one decode step
    layer: PackedLayer,
    attention_mask: torch.Tensor | None,  # over the logical keys (prompt + tail), bool or additive, or None
    scaling: float | None,
) -> torch.Tensor:  # [batch, 1, head, head_dim], as transformers' attention functions return it
    """Softmax attention of one decode step over a packed layer: each head's kept prompt keys and the tail.

    Query head ``i`` reads KV head ``i // groups`` (as ``repeat_kv`` pairs them). Logits and the softmax are
    computed in fp32 (as SDPA accumulates), the output cast back to the query's dtype."""
    batch, n_heads, n_query, head_dim = query.shape
    if n_query != 1:
        raise RuntimeError(f"a packed cache serves one decode step at a time, got {n_query} queries")
    groups, n_segments = n_heads // layer.n_kv, batch * layer.n_kv
    scale = scaling if scaling is not None else head_dim**-0.5
    q = query[:, :, 0, :].float().reshape(n_segments, groups, head_dim) * scale  # [segment, group, head_dim]
    segment = layer.segment.long()
    packed = torch.einsum("nd,ngd->ng", layer.packed_keys.float(), q.index_select(0, segment))  # [kept, group]
    tail_keys = layer.keys.float().reshape(n_segments, -1, head_dim)  # [segment, step, head_dim]
    tail = torch.matmul(q, tail_keys.transpose(1, 2))  # [segment, group, step]
    n_tail = tail.shape[-1]
    if attention_mask is not None and n_tail:
        visible = attention_mask[..., -1, -n_tail:]  # [batch, 1 or head, step]
        visible = visible if visible.dtype == torch.bool else visible > torch.finfo(visible.dtype).min / 2
        visible = visible.expand(batch, n_heads, n_tail).reshape(n_segments, groups, n_tail)
        tail = tail.masked_fill(~visible, float("-inf"))
    top = torch.full((n_segments, groups), float("-inf"), device=query.device)
    top = top.scatter_reduce(0, segment[:, None].expand(-1, groups), packed, reduce="amax")
    if n_tail:
        top = torch.maximum(top, tail.amax(dim=-1))
    top = torch.where(torch.isfinite(top), top, 0.0)  # a head that sees no key (not in greedy decoding): zero output
    weights = torch.exp(packed - top.index_select(0, segment))  # [kept, group]
    tail_weights = torch.exp(tail - top[..., None])  # [segment, group, step]
    total = torch.zeros_like(top).index_add_(0, segment, weights) + tail_weights.sum(dim=-1)
    output = torch.zeros((n_segments, groups, head_dim), device=query.device).index_add_(0, segment, weights[:, :, None] * layer.packed_values.float()[:, None, :])
    output = output + torch.matmul(tail_weights, layer.values.float().reshape(n_segments, -1, head_dim))
    output = output / total.clamp(min=torch.finfo(torch.float32).tiny)[..., None]
    return output.reshape(batch, n_heads, head_dim)[:, None].to(query.dtype)


def pack_layer(cache, layer: int, kept: torch.Tensor) -> PackedLayer | None:
    """Replace ``cache``'s entry of ``layer`` by its packed form keeping ``kept`` (bool ``[batch, kv_head,
    prompt_key]``); None (left as it is) where the entry is not a full-attention dynamic layer holding exactly
    the prompt (a sliding window, a static or quantised cache, ...): the gathered path serves those."""
    layers = getattr(cache, "layers", None)
    if layers is None or layer >= len(layers) or type(layers[layer]) is not DynamicLayer:
        return None
    entry = layers[layer]
    if not entry.is_initialized or entry.keys.shape[-2] != kept.shape[-1] or entry.keys.shape[:2] != kept.shape[:2]:
        return None
    packed = PackedLayer(entry.keys, entry.values, kept.to(entry.keys.device))
    layers[layer] = packed
    return packed


__all__ = ["PackedLayer", "pack_layer", "packed_attention"]
