"""One forward call's state, and the one attention function that reads it: where reading and intervening meet.

attnwh registers one attention function with transformers (``attnwh_capture`` in ``AttentionInterface``,
and the same name in ``AttentionMaskInterface`` mapped to the SDPA mask: without it padding masks are
silently dropped). It computes exactly the stock SDPA output unless a ``ForwardCall`` is active in the
calling context; then, per layer, it lets the call's interventions change what the layer attends to
(``LayerIntervention.attend``: pruning evicts keys) and what it outputs (``LayerIntervention.output``:
masking switches heads off), and shows the call's observer (the capture session, ``extract.capture``)
the last query row as the layer saw it. Reading and intervening go through this one mechanism, as
TransformerLens' hook points do; an intervention is one module that builds ``LayerIntervention`` objects.

**State of one call travels with the call.** The active ``ForwardCall`` lives in a ``ContextVar``
(``forward_call`` sets it around the block and resets it on exit), so it belongs to the calling thread
and task: several conditions may run at once on one model, as they do on a Dask worker with several
threads. Nothing per call is stored on the model. The forward hooks that tell the observer where a
forward pass starts and what each decoder layer outputs (the logit lens) are installed once per model
(``install_dispatch``, when a ``LoadedModel`` is made, before the model is shared) and dispatch to the
calling context's ``ForwardCall``; they do nothing when none is active or when it belongs to another model.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from attnwh.core.errors import ModelError
from attnwh.extract.packed_cache import PackedLayer, pack_layer, packed_attention, reserve_room

CAPTURE_ATTENTION = "attnwh_capture"
# what some models hand their attention function that changes the attention weights, and that attnwh
# does not apply yet (a per-key bias; per-token sinks): refused rather than captured wrongly
UNREAD_ARGUMENTS = ("position_bias", "sinks")
DISPATCH_MARKER = "attnwh_dispatch_hooks"  # set once on a text model whose dispatch hooks are installed (structural, not per call)


class LayerIntervention:
    """What one intervention changes in one layer's attention during one call; each method defaults to no change."""

    def attend(
        self,
        query: torch.Tensor,  # [batch, head, query, head_dim]
        key: torch.Tensor,  # [batch, kv_head, key, head_dim]
        value: torch.Tensor,  # [batch, kv_head, key, head_dim]
        attention_mask: torch.Tensor | None,
        scaling: float | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(key, value, attention_mask)`` SDPA runs over."""
        return key, value, attention_mask

    def observed_mask(self, query: torch.Tensor, key: torch.Tensor, attention_mask: torch.Tensor | None, scaling: float | None) -> torch.Tensor | None:
        """The mask over all ``key`` positions through which the observer sees the last query row (``query``
        and ``attention_mask`` cut to that row): what the layer really attended to."""
        return attention_mask

    def output(self, output: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """The layer's attention output ``[batch, query, head, head_dim]`` after the intervention."""
        return output

    def prefill_unchanged(self) -> bool:
        """Whether the layer's prefill is exactly the plain model's under this intervention (it only prunes the
        cache after it): a sweep may then replay the baseline's prefill of the layer (``extract.reuse``) and
        hand the intervention what that prefill showed it (:meth:`replay_prefill`) instead of running it."""
        return False

    def replay_prefill(self, query: torch.Tensor, key: torch.Tensor, attention_mask: torch.Tensor | None, scaling: float | None) -> None:
        """The layer's prefill replayed from the baseline's: ``query`` the prompt's last rows (up to SnapKV's
        observation window, ``extract.pruning.SNAPKV_WINDOW``), ``key`` every prompt key, ``attention_mask``
        those rows' mask (None: causal). Only for an intervention whose :meth:`prefill_unchanged` is True."""
        raise NotImplementedError(f"{type(self).__name__} changes the prefill; its layer is not replayed")

    def cache_keeps(self, key: torch.Tensor) -> torch.Tensor | None:
        """For an intervention that prunes the KV cache: after this call (the prefill, ``key`` its keys
        ``[batch, kv_head, key, head_dim]``), bool ``[batch, kv_head, key]``, the keys each KV head's cache keeps
        from now on. None: not a cache-pruning intervention (then the layer's cache is left whole)."""
        return None


@dataclass(frozen=True)
class BatchView:
    """What an intervention is told of the model and the batch it is bound to."""

    n_layers: int
    n_heads: int
    n_kv_heads: int
    segments: torch.Tensor  # [batch, prompt_position] segment codes (extract.segments)
    attention_mask: torch.Tensor  # [batch, prompt_position] 1 = real token, 0 = left padding
    # the batch's encoded inputs, for an intervention that runs the same prompt once more (ablation by a baseline image)
    inputs: Any = field(default=None, compare=False, repr=False)

    @property
    def n_kv_groups(self) -> int:
        return self.n_heads // self.n_kv_heads


class Intervention(Protocol):
    """A condition's change to attention (masking, pruning, an ablation pattern, ...): bound to one batch per call."""

    kind: str  # what the sweep records in its condition rows ('mask', 'prune', ...)

    def bind(self, view: BatchView) -> dict[int, LayerIntervention]:
        """The per-layer interventions for one call over this batch (fresh objects: they may hold per-call state)."""
        ...


class Observer(Protocol):
    """What reads a call's attention (``extract.capture.CaptureSession``)."""

    def begin_forward(self) -> None: ...

    def observe(self, layer: int, query, key, attention_mask, scaling, sinks=None, softcap=None) -> None: ...

    def observe_hidden(self, index: int, hidden: torch.Tensor) -> None: ...


@dataclass
class ForwardCall:
    """One call's observer and interventions, by layer, for the modules of one model."""

    text_model: torch.nn.Module
    decoder_layers: list[torch.nn.Module]
    layer_of: dict[int, int]  # id(attention module) -> layer index
    edits: dict[int, list[LayerIntervention]] = field(default_factory=dict)  # layer -> interventions, in the order given
    observer: Observer | None = None
    lens: bool = False  # whether the observer wants each decoder layer's output
    prefix: Any = None  # a recorded or replayed prefix of layers (extract.reuse), for a sweep's conditions
    cache: Any = None  # the KV cache the current forward pass is handed (set as each pass starts), packed where pruned
    final_rows: bool = False  # whether a prefill's last decoder layer computes the final position alone (extract.reuse: only its logits are read)
    kv_room: int | None = None  # the token limit of the generation running in the call: its cache's dynamic layers reserve room for it (packed_cache.ReservedLayer)


ACTIVE_CALL: ContextVar[ForwardCall | None] = ContextVar("attnwh_forward_call", default=None)


def attention(
    module: torch.nn.Module,
    query: torch.Tensor,  # [batch, head, query, head_dim]
    key: torch.Tensor,  # [batch, kv_head, key, head_dim]
    value: torch.Tensor,  # [batch, kv_head, key, head_dim]
    attention_mask: torch.Tensor | None,  # bool [batch, 1, query, key] (True = attend), float additive, or None
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Stock SDPA attention, changed by the active call's interventions of this layer and observed by its
    observer (output ``[batch, query, head, head_dim]``)."""
    for name in UNREAD_ARGUMENTS:
        if kwargs.get(name) is not None:
            raise ModelError(f"{type(module).__name__} passes {name} to its attention function, which attnwh's capture does not apply: its rows would be wrong")
    indices = kwargs.pop("indices", None)
    if indices is not None:
        attention_mask = _with_sparse_indices(attention_mask, indices, key.shape[2])
    head_sinks = getattr(module, "sinks", None)  # learned per-head sinks (a parameter), not the per-token ``sinks`` argument
    softcap = kwargs.get("softcap")  # attention-logit soft-capping (Gemma 2: PaliGemma 2); _sdpa applies it
    if softcap is not None and head_sinks is not None:
        raise ModelError(f"{type(module).__name__} caps its attention logits and has attention sinks; attnwh's capture applies one or the other")
    call = ACTIVE_CALL.get()
    layer = None if call is None else call.layer_of.get(id(module))
    if layer is None:  # no call in this context, or a call over another model
        return _sdpa(module, query, key, value, attention_mask, dropout, scaling, head_sinks, **kwargs), None
    edits = call.edits.get(layer, ())
    if softcap is not None and any(type(edit).attend is not LayerIntervention.attend for edit in edits):
        # pruning chooses keys by attention scores (its own, its replayed prefill's, a packed cache's), all without the cap
        raise ModelError(f"{type(module).__name__} caps its attention logits (softcap {softcap}): attnwh captures and masks it, but does not prune its cache")
    if call.prefix is not None:
        call.prefix.attention(layer, query, key, attention_mask, scaling)
    cache_index = getattr(module, "layer_idx", layer)
    packed = _packed_layer(call.cache, cache_index) if edits else None
    if packed is not None:  # a pruned layer's decode step: over the keys its cache really holds
        if call.observer is not None:
            raise RuntimeError("a packed (pruned) cache is not observed: a capture session keeps the gathered path")
        output = packed_attention(query, packed, attention_mask, scaling)
        for edit in edits:
            output = edit.output(output, value)
        return output, None
    attended_key, attended_value, attended_mask = key, value, attention_mask
    for edit in edits:
        attended_key, attended_value, attended_mask = edit.attend(query, attended_key, attended_value, attended_mask, scaling)
    output = _sdpa(module, query, attended_key, attended_value, attended_mask, dropout, scaling, head_sinks, **kwargs)
    if call.observer is not None:
        observed = attention_mask
        if edits:
            last_query = query[:, :, -1:, :]
            observed = None if attention_mask is None else attention_mask[:, :, -1:, :]
            for edit in edits:
                observed = edit.observed_mask(last_query, key, observed, scaling)
        call.observer.observe(layer, query, key, observed, scaling, head_sinks, softcap)
    for edit in edits:
        output = edit.output(output, value)
    if edits and call.cache is not None and call.observer is None:
        pack_pruned(call.cache, cache_index, edits, key, attention_mask)
    return output, None


def _packed_layer(cache: Any, index: int) -> PackedLayer | None:
    layers = getattr(cache, "layers", None)
    entry = layers[index] if layers is not None and index < len(layers) else None
    return entry if isinstance(entry, PackedLayer) else None


def pack_pruned(cache: Any, index: int, edits: Sequence[LayerIntervention], key: torch.Tensor, attention_mask: torch.Tensor | None) -> None:
    """After a layer's prefill: where every intervention of the layer prunes the cache and some key goes, the
    layer's cache entry is replaced by its packed form (``extract.packed_cache``): the kept keys of each KV
    head, without the left padding no real row reads."""
    keeps = None
    for edit in edits:
        kept = edit.cache_keeps(key)
        if kept is None:
            return
        keeps = kept if keeps is None else keeps & kept
    batch, n_kv, n_keys = key.shape[:3]
    if attention_mask is not None:  # what the prompt's last row sees: every real key
        last = attention_mask[:, :, -1, :n_keys]
        visible = last if last.dtype == torch.bool else last > torch.finfo(last.dtype).min / 2
        keeps = keeps & visible.any(dim=1, keepdim=True).expand(batch, 1, n_keys)
    if not bool(keeps.all()):
        pack_layer(cache, index, keeps)


def _sdpa(module, query, key, value, attention_mask, dropout, scaling, head_sinks: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
    """transformers' SDPA attention, output ``[batch, query, head, head_dim]``.

    Named exception: attention sinks (``module.sinks``, one learned logit per head: GPT-OSS, HY-V4-VL, ...).
    Their eager attention puts the sink into each row's softmax and drops it after, so that a row's
    probabilities over the keys sum to less than 1; transformers' SDPA function has no sinks. Here a sink
    is an extra key whose score is the sink (a zero key, the sink as its additive mask) and whose value is
    zero, which is the same softmax and output."""
    softcap = kwargs.pop("softcap", None)
    if softcap is not None:
        return _softcapped(query, key, value, attention_mask, scaling, softcap)
    if head_sinks is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)[0]
    batch, n_heads, n_query, _ = query.shape
    n_keys = key.shape[2]
    bias = _additive_mask(attention_mask, query, n_keys)
    sink = head_sinks.reshape(1, -1, 1, 1).to(query.dtype).expand(batch, n_heads, n_query, 1)
    bias = torch.cat([bias.expand(batch, n_heads, n_query, n_keys), sink], dim=-1)
    zero = key.new_zeros((*key.shape[:2], 1, key.shape[-1]))
    key, value = torch.cat([key, zero], dim=2), torch.cat([value, zero.to(value.dtype)], dim=2)
    return sdpa_attention_forward(module, query, key, value, bias, dropout=dropout, scaling=scaling, **kwargs)[0]


def _additive_mask(attention_mask: torch.Tensor | None, query: torch.Tensor, n_keys: int) -> torch.Tensor:
    """The mask as scores to add (``[batch, 1 or head, query, key]``, 0 or the dtype's lowest), for the paths that
    compute attention themselves: None is causal, as SDPA's is_causal (query i sees keys up to n_keys - n_query + i)."""
    batch, _, n_query, _ = query.shape
    lowest = torch.finfo(query.dtype).min
    if attention_mask is None:
        bias = torch.zeros((batch, 1, n_query, n_keys), dtype=query.dtype, device=query.device)
        if n_query > 1:
            hidden = torch.ones((n_query, n_keys), dtype=torch.bool, device=query.device).triu(n_keys - n_query + 1)
            bias = bias.masked_fill(hidden, lowest)
        return bias
    if attention_mask.dtype == torch.bool:
        return torch.zeros(attention_mask.shape, dtype=query.dtype, device=query.device).masked_fill(~attention_mask, lowest)[..., :n_keys]
    return attention_mask[..., :n_keys].to(query.dtype)


def _softcapped(query, key, value, attention_mask, scaling: float | None, softcap: float) -> torch.Tensor:
    """Named exception: attention-logit soft-capping (Gemma 2), which transformers' SDPA function refuses. The
    model's eager attention, written out: scores ``tanh(q·kᵀ·scale / cap) · cap``, then the mask
    (``_additive_mask``), softmax in fp32; output ``[batch, query, head, head_dim]``."""
    n_heads, n_kv_heads = query.shape[1], key.shape[1]
    key = key.repeat_interleave(n_heads // n_kv_heads, dim=1)
    value = value.repeat_interleave(n_heads // n_kv_heads, dim=1)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    scores = torch.matmul(query, key.transpose(-1, -2)) * scale
    scores = torch.tanh(scores / softcap) * softcap + _additive_mask(attention_mask, query, key.shape[2])
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    return torch.matmul(weights, value).transpose(1, 2).contiguous()


def _with_sparse_indices(attention_mask: torch.Tensor | None, indices: torch.Tensor, n_keys: int) -> torch.Tensor:
    """Named exception: DeepSeek sparse attention ("indexed_attention" layers: Mistral Large 4, GLM-5, ...)
    hands the keys its indexer chose (``indices`` [batch, query, top-k]) to attention functions other than
    eager and SDPA, for kernels that read them (FlashMLA), and masks the other keys itself only for eager
    and SDPA. attnwh's function is SDPA underneath, so it applies them as the model does for SDPA."""
    chosen = torch.zeros((indices.shape[0], indices.shape[1], n_keys), dtype=torch.bool, device=indices.device)
    chosen = chosen.scatter(-1, indices.long(), True).unsqueeze(1)  # [batch, 1, query, key]
    if attention_mask is None:
        return chosen
    if attention_mask.dtype == torch.bool:
        return attention_mask & chosen
    return attention_mask.masked_fill(~chosen, torch.finfo(attention_mask.dtype).min)


AttentionInterface.register(CAPTURE_ATTENTION, attention)
AttentionMaskInterface.register(CAPTURE_ATTENTION, sdpa_mask)


def install_dispatch(text_model: torch.nn.Module, decoder_layers: Sequence[torch.nn.Module]) -> None:
    """Install, once per model, the hooks that report forward starts and decoder-layer outputs to the
    active call's observer. Call it before the model is shared between threads (``LoadedModel`` does)."""
    if getattr(text_model, DISPATCH_MARKER, False):
        return
    text_model.register_forward_pre_hook(_forward_start, with_kwargs=True)
    if decoder_layers:
        decoder_layers[0].register_forward_pre_hook(_embedding_input, with_kwargs=True)
        for index, layer in enumerate(decoder_layers):
            layer.register_forward_hook(_LayerOutput(index))
    setattr(text_model, DISPATCH_MARKER, True)


def _observing(text_model: torch.nn.Module | None = None) -> ForwardCall | None:
    call = ACTIVE_CALL.get()
    if call is None or call.observer is None or (text_model is not None and call.text_model is not text_model):
        return None
    return call


def _forward_start(module, args, kwargs) -> None:
    call = ACTIVE_CALL.get()
    if call is None or call.text_model is not module:
        return
    if call.observer is not None:
        call.observer.begin_forward()
    if call.prefix is not None:
        call.prefix.begin_forward(kwargs)
    call.cache = kwargs.get("cache", kwargs.get("past_key_values"))
    if call.kv_room is not None:
        reserve_room(call.cache, call.kv_room)


def _embedding_input(module, args, kwargs) -> None:
    call = _observing()
    if call is not None and call.lens and call.decoder_layers and call.decoder_layers[0] is module:
        call.observer.observe_hidden(0, args[0] if args else kwargs["hidden_states"])


class _LayerOutput:
    """Forward hook of decoder layer ``index``: its output is the logit lens's hidden state ``index + 1``."""

    def __init__(self, index: int):
        self.index = index

    def __call__(self, module, args, output) -> None:
        call = _observing()
        if call is not None and call.lens and self.index < len(call.decoder_layers) and call.decoder_layers[self.index] is module:
            call.observer.observe_hidden(self.index + 1, output[0] if isinstance(output, tuple) else output)


@contextmanager
def forward_call(
    text_model: torch.nn.Module,
    attention_modules: Sequence[torch.nn.Module],
    decoder_layers: Sequence[torch.nn.Module],
    layer_edits: Sequence[dict[int, LayerIntervention]] = (),
    observer: Observer | None = None,
    lens: bool = False,
    prefix: Any = None,
    final_rows: bool = False,
) -> Iterator[ForwardCall]:
    """Make a call's interventions (each a ``{layer: LayerIntervention}`` from ``Intervention.bind``) and
    observer active for the forward passes this thread or task runs inside the block."""
    if ACTIVE_CALL.get() is not None:
        raise RuntimeError("a forward call is already active in this context: calls do not nest")
    install_dispatch(text_model, decoder_layers)
    edits: dict[int, list[LayerIntervention]] = {}
    for bound in layer_edits:
        for layer, edit in bound.items():
            edits.setdefault(layer, []).append(edit)
    call = ForwardCall(
        text_model, list(decoder_layers), {id(module): index for index, module in enumerate(attention_modules)}, edits, observer, lens, prefix, final_rows=final_rows
    )
    token = ACTIVE_CALL.set(call)
    try:
        yield call
    finally:
        ACTIVE_CALL.reset(token)


__all__ = [
    "ACTIVE_CALL",
    "BatchView",
    "CAPTURE_ATTENTION",
    "ForwardCall",
    "Intervention",
    "LayerIntervention",
    "Observer",
    "attention",
    "forward_call",
    "install_dispatch",
    "pack_pruned",
]
