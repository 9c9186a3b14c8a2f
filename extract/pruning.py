"""Head-wise pruning of the image KV cache: chosen in the prefill inside the capture attention function, held
for real after it (each pruned layer's cache packed to the kept keys: ``extract.packed_cache``).

The study's supplement proposes pruning "the KV cache corresponding to non-essential heads"; SparseMM
(ICCV 2025) gives each head a budget of image keys from visual-head scores. attnwh evaluates that
for any ranking: per layer and **KV head**, a budget of image keys the head keeps; its other image
keys are removed from the head's softmax (what evicting them from that head's cache does). Text keys
(system, question, generated) are always kept.

When keys are dropped (the phase):

- ``cache`` (the default; what SnapKV and SparseMM do): the prefill attends over every key, exactly as
  the plain model does (so the first answer token and its log-probabilities are the full cache's);
  after it, each KV head keeps its budget of image keys and every decode step attends only to those
  (and to every text and generated key);
- ``prefill``: the removed keys leave the head's softmax in the prefill too, for every query including
  the one that produces the first answer token (attnwh's first simulation).

GQA: the query heads of one KV head share its cache, so budgets are per KV head, and a score per KV
head is the sum of its query heads' scores (as SparseMM sums them).

Allocations of a total share ``s`` of all image KV (every budget a share of the sample's image keys):

- ``full``: no pruning (the reference);
- ``uniform``: every KV head keeps ``s`` (the baseline);
- ``score``: every KV head gets the floor ``floor · s``; the rest, ``(1 − floor) · s`` on average,
  goes in proportion to the head's score; a share above 1 is capped and its excess handed on to the
  others in proportion again (water-filling), so the mean stays ``s``;
- ``random``: ``score`` with scores drawn uniformly at random (seeded), one per **query** head and summed per
  KV head as real scores are (SparseMM's random baseline: a KV head of g query heads scores a sum of g draws).

Which image keys a head keeps within its budget: ``attention`` or ``stride`` (evenly spaced). With
``attention`` the ``cache`` phase chooses as SnapKV does (``window_scores``: the attention of an
observation window of the prompt's last positions, summed over the window and pooled along the keys);
the ``prefill`` phase keeps attnwh's first rule, the last prompt row's attention. Either sums over the
KV head's query heads (GQA). Budgets in keys are rounded
so that their sum over heads is the rounded total (largest remainders; heads tied on their remainder, as every
head of ``uniform`` is, take the leftover keys evenly spaced over the layers and heads, not the first layers first).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from attnwh.core.errors import UsageError
from attnwh.extract.capture import last_query_rows
from attnwh.extract.forward import BatchView, LayerIntervention
from attnwh.extract.segments import IMAGE

ALLOCATIONS = ("full", "uniform", "score", "random")
KEEP = ("attention", "stride")
PHASES = ("cache", "prefill")  # when removed keys leave a head's softmax: after the prefill (as SnapKV / SparseMM), or in it too

# SnapKV's defaults (Li et al., NeurIPS 2024; FasterDecoding/SnapKV, snapkv/monkeypatch/snapkv_utils.py,
# ``init_snapkv``: window_size 32, kernel_size 5, pooling 'avgpool'; its LongBench example runs w32 k7 maxpool)
SNAPKV_WINDOW = 32  # observation window: the prompt's last positions whose attention chooses the kept keys
SNAPKV_KERNEL = 5  # average pooling along the keys (stride 1, zero-padded by kernel // 2 each side, divided by the kernel)
BUDGET_ROUNDING = "largest remainders, ties evenly spaced"  # ``budgets``: named in a prune run's fingerprint (runs rounded before it, ties to the first heads, are not resumed)


def allocate(allocation: str, share: float, scores: np.ndarray | None, floor: float = 0.1, seed: int = 0, group: int = 1) -> np.ndarray:
    """The kept share of image keys per (layer, KV head), each in [0, 1], their mean ``share``.

    ``scores`` [layer, kv_head] (``score``; negative scores count as 0); ``random`` draws its own
    from ``seed``, one per query head (``group`` query heads per KV head) summed per KV head;
    ``uniform`` and ``full`` need none (``full`` keeps everything).
    """
    if allocation not in ALLOCATIONS:
        raise UsageError(f"--allocation takes {', '.join(ALLOCATIONS)}; got {allocation!r}")
    if not 0.0 <= share <= 1.0:
        raise UsageError(f"a kept share of image KV must lie in [0, 1], got {share}")
    if not 0.0 <= floor <= 1.0:
        raise UsageError(f"--floor must lie in [0, 1], got {floor}")
    if allocation == "random":
        shape = scores.shape if scores is not None else None
        if shape is None:
            raise ValueError("random allocation needs the model's shape (pass any score table)")
        scores = np.random.default_rng(seed).random((shape[0], shape[1] * group)).reshape(shape[0], shape[1], group).sum(axis=2)  # group 1: one draw per head
    if scores is None:
        raise ValueError(f"{allocation} allocation needs the model's shape (pass a score table)")
    if allocation == "full":
        return np.ones(scores.shape)
    if allocation == "uniform":
        return np.full(scores.shape, float(share))
    weights = np.clip(np.asarray(scores, dtype=np.float64), 0.0, None)
    n = weights.size
    kept = np.full(weights.shape, floor * share)
    _water_fill(kept, weights, (1.0 - floor) * share * n)
    return kept


def _water_fill(kept: np.ndarray, weights: np.ndarray, amount: float) -> None:
    """Add ``amount`` to ``kept`` in proportion to ``weights`` (evenly where all weights are 0),
    never above 1 per head; what a capped head cannot take goes to the others, in proportion again."""
    flat, w = kept.reshape(-1), weights.reshape(-1)
    while amount > 1e-12:
        open_heads = flat < 1.0 - 1e-12
        if not open_heads.any():
            return
        share_w = np.where(open_heads, w, 0.0)
        if share_w.sum() <= 0:
            share_w = open_heads.astype(np.float64)
        offer = amount * share_w / share_w.sum()
        taken = np.minimum(offer, 1.0 - flat)
        flat += taken
        amount -= taken.sum()


def budgets(kept: np.ndarray, n_image: int) -> np.ndarray:
    """Image keys kept per (layer, KV head) for a sample of ``n_image`` image tokens: ``kept · n_image``
    rounded so that the sum is the rounded total (largest remainders), each within [0, n_image].

    Heads tied on their remainder (every head of ``uniform``; the floor-only heads of ``score``) share the
    last leftover keys evenly spaced in (layer, KV head) order: 26 keys for 4 layers × 8 heads of remainder
    0.8 give the layers 6, 7, 6 and 7 keys, where the first 26 heads would leave the last layer's six heads
    with no image key at all."""
    exact = kept.reshape(-1) * n_image
    total = int(round(float(exact.sum())))
    counts = np.floor(exact + 1e-9).astype(np.int64)
    missing = total - int(counts.sum())
    open_heads = np.flatnonzero(counts < n_image)
    if missing > 0 and len(open_heads):
        remainders = np.round(exact - counts, 9)[open_heads]  # equal shares give equal remainders to the rounding of a float
        levels, sizes = np.unique(remainders, return_counts=True)  # ascending
        levels, taken = levels[::-1], np.cumsum(sizes[::-1])  # largest first; heads taken by the end of each level
        whole = int(np.searchsorted(taken, missing, side="right"))  # levels whose every head takes a key
        if whole:
            counts[open_heads[remainders >= levels[whole - 1]]] += 1
        left = missing - (int(taken[whole - 1]) if whole else 0)
        if left > 0 and whole < len(levels):
            tied = open_heads[remainders == levels[whole]]
            counts[tied[((np.arange(left) + 0.5) * len(tied) / left).astype(np.int64)]] += 1  # evenly spaced
    return np.clip(counts, 0, n_image).reshape(kept.shape)


def kv_bytes(keys: int, head_dim: int | None, bytes_per_value: int) -> int | None:
    """Bytes of a KV cache holding ``keys`` keys summed over layers and KV heads (kept keys × layers ×
    KV heads when every head keeps as many): a key and a value of ``head_dim`` values each; absent
    (None) for a model whose head size differs between layers."""
    return None if head_dim is None else int(keys) * head_dim * 2 * bytes_per_value


class MaskBuffer:
    """Memory reused for the gathered attention masks of one batch's layers (``LayerPrune.attend``).

    Each layer's mask is consumed by its SDPA call before the next layer builds its own, so the layers of a
    pruning block share one buffer. A fresh ``[batch, head, query, width]`` tensor is tens of MB in a
    prefill: the allocator maps new pages for it every time, and faulting them in cost ~5x the gather
    that fills them (LLaVA-1.5 shape on the CPU: 22 ms fresh, 4 ms into a reused buffer)."""

    def __init__(self) -> None:
        self._flat: torch.Tensor | None = None

    def take(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """Uninitialised memory of ``shape``, valid until the next ``take``."""
        numel = math.prod(shape)
        flat = self._flat
        if flat is None or flat.numel() < numel or flat.dtype != dtype or flat.device != device:
            flat = self._flat = torch.empty(numel, dtype=dtype, device=device)
        return flat[:numel].view(shape)


@dataclass
class LayerPrune(LayerIntervention):
    """One layer's pruning for one call: which image keys each KV head keeps (chosen by the layer's first call,
    the prefill) and from when they are dropped (``phase``: ``cache``, from the first decode step; ``prefill``,
    in the prefill too)."""

    budgets: torch.Tensor  # long [batch, kv_head]
    image: torch.Tensor  # bool [batch, prompt_position]: image keys
    keep: str  # attention | stride
    n_kv_groups: int  # query heads per KV head
    phase: str = "cache"  # cache | prefill
    prompt_tokens: torch.Tensor | None = None  # long [batch]: real (not padding) prompt tokens, for the observation window; None: every position
    kept: torch.Tensor | None = None  # bool [batch, kv_head, prompt_position], chosen in the prefill
    decoding: bool = False  # whether the layer's current call comes after its prefill
    generated: int = 0  # tokens generated so far (query rows of the calls after the prefill): where a sliding window's keys start
    keeps_all: bool = False
    slots: torch.Tensor | None = None  # long [batch, kv_head, width]: each KV head's kept prompt positions, ascending; then -1
    buffer: MaskBuffer = field(default_factory=MaskBuffer)  # shared by the layers of one call
    packs: bool = True  # whether the layer's cache is packed after the prefill (extract.packed_cache); False: gathered at every step

    def prefill_unchanged(self) -> bool:
        """``cache`` phase: the prefill attends over every key, as the plain model's does."""
        return self.phase == "cache"

    def replay_prefill(self, query, key, attention_mask, scaling) -> None:
        """The kept keys chosen from the baseline's prefill (the observation window's rows), as the prefill's own call would."""
        self.kept = self._choose(query, key, attention_mask, scaling)
        self.keeps_all = bool(self.kept.all())

    def cache_keeps(self, key: torch.Tensor) -> torch.Tensor | None:
        """After the layer's prefill, the prompt keys each KV head's cache keeps (``extract.forward`` packs the
        cache to them, and the decode steps attend over the packed cache instead of gathering); None otherwise."""
        if not self.packs or self.decoding or self.kept is None or self.kept.shape[-1] != key.shape[2]:
            return None
        return self.kept

    def attend(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: torch.Tensor | None, scaling: float | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(key, value, attention_mask)`` for SDPA with each KV head's removed image keys evicted, or the inputs
        unchanged where every head keeps every image key (then bit-identical to plain SDPA).

        Each KV head's kept keys are gathered, in position order, into ``[batch, kv_head, width, head_dim]``
        (``width``: the most keys any KV head of the batch keeps), and the model's attention mask alike into
        ``[batch, head, query, width]``, additive in the query's dtype, written into ``buffer`` (valid until the
        next layer's call); a head that keeps fewer than ``width`` keys has its extra slots masked out. A head's
        removed keys are absent from its softmax: they get exactly zero attention and its kept keys sum to one,
        as under :meth:`observed_mask` (the same logits up to float rounding, ~1e-7 in fp32). Only rows that see no key
        at all (left padding, whose outputs no real row reads) differ: they average the gathered values where
        the mask over all keys averages all of them.

        Gathered rather than masked: a per-head mask over all keys (:meth:`observed_mask`) has to be built as a
        ``[batch, head, query, key]`` tensor in every layer's prefill (~50 ms for bench/bench_prune.py's
        LLaVA-1.5-shaped layer on the CPU, most of it faulting in fresh memory) and SDPA still runs over every
        key (75 ms, against 55 ms with the shared mask): the pruned pass cost 1.10-1.13x a plain one. Gathered,
        SDPA runs over the kept keys only; that layer's prefill takes ~45 ms with a quarter of the image KV kept
        (uniform budgets; score budgets, whose widest head keeps more, ~46 ms), choosing the keys included, and a
        pruned pass costs 0.92-1.01x a plain one (bench/bench_prune.py, medians of paired rounds, quiet machine).

        ``cache`` phase: the layer's first call (the prefill) only chooses the kept keys and returns its inputs
        unchanged (bit-identical to plain SDPA); the decode steps after it gather as above."""
        self.decoding = self.kept is not None  # the layer's first call is the prefill
        if self.decoding:
            self.generated += query.shape[2]
        if self._keeps_all(query, key, attention_mask, scaling) or self._attends_all():
            return key, value, attention_mask
        if self.slots is None:
            self.slots = _slots(self.kept)
        batch, n_heads, n_query, _ = query.shape
        n_keys, n_prompt = key.shape[2], self.image.shape[1]
        if window_start(n_prompt, self.generated, n_keys) == 0:  # the prompt's slots, then the generated keys (kept by every head)
            generated = torch.arange(n_prompt, n_keys, device=key.device).expand(*self.slots.shape[:2], -1)
            slots = torch.cat([self.slots, generated], dim=-1)
        else:  # a sliding-window layer's cache: only the last keys
            slots = _slots(self._kept_over(n_keys))
        at = slots.clamp(min=0)[..., None]  # extra slots: any key, masked out below
        key = key.gather(2, at.expand(-1, -1, -1, key.shape[-1]))
        value = value.gather(2, at.expand(-1, -1, -1, value.shape[-1]))
        # additive, as ``mask`` builds it (SDPA given a bool mask of this size would convert it itself, into fresh memory)
        lowest = torch.finfo(query.dtype).min
        additive = torch.where(as_bool_mask(attention_mask, batch, n_query, n_keys, query.device), 0.0, lowest).to(query.dtype)
        # a first key column masked in every row, for the extra slots (-1 + 1); key k is column k + 1
        additive = torch.cat([additive.new_full((*additive.shape[:-1], 1), lowest), additive], dim=-1)
        index = (slots + 1).repeat_interleave(self.n_kv_groups, dim=1)[:, :, None, :].expand(batch, n_heads, n_query, -1)
        mask = self.buffer.take(index.shape, query.dtype, query.device)
        torch.gather(additive.expand(batch, n_heads, n_query, n_keys + 1), 3, index, out=mask)
        return key, value, mask

    def observed_mask(self, query: torch.Tensor, key: torch.Tensor, attention_mask: torch.Tensor | None, scaling: float | None) -> torch.Tensor | None:
        """The attention mask over all keys with each head's removed image keys masked out (additive,
        ``[batch, head, query, key]``: 0 = attend, the dtype's lowest value = not), or the mask unchanged where
        every head keeps every image key or (``cache`` phase) in the prefill: what :meth:`attend` evicts, as a
        mask (the capture session observes the last query row through it)."""
        if self._attends_all() or self._keeps_all(query, key, attention_mask, scaling):
            return attention_mask
        batch, _, n_query, _ = query.shape
        n_keys = key.shape[2]
        kept = self._kept_over(n_keys).repeat_interleave(self.n_kv_groups, dim=1)[:, :, None, :]  # [batch, head, 1, key]
        base = as_bool_mask(attention_mask, batch, n_query, n_keys, query.device)
        return torch.where(base & kept, 0.0, torch.finfo(query.dtype).min).to(query.dtype)

    def _kept_over(self, n_keys: int) -> torch.Tensor:
        """bool ``[batch, kv_head, n_keys]``: whether each key this call is handed is kept. The keys are the last
        ``n_keys`` of the positions so far (the prompt's, then the generated: all of them, except in a
        sliding-window layer, whose cache holds only the last ones); generated keys are always kept."""
        n_prompt = self.image.shape[1]
        offset = window_start(n_prompt, self.generated, n_keys)
        kept = torch.ones((*self.kept.shape[:2], n_keys), dtype=torch.bool, device=self.kept.device)
        prompt = self.kept[:, :, max(offset, 0) : n_prompt]
        kept[:, :, : min(prompt.shape[-1], n_keys)] = prompt[:, :, :n_keys]
        return kept

    def _attends_all(self) -> bool:
        """Whether this call attends over every key whatever the budgets: a ``cache``-phase prefill."""
        return self.phase == "cache" and not self.decoding

    def _keeps_all(self, query, key, attention_mask, scaling) -> bool:
        """Whether every head keeps every image key; the keys are chosen by the layer's first call (the prefill)."""
        if self.kept is None:
            self.kept = self._choose(query, key, attention_mask, scaling)
            self.keeps_all = bool(self.kept.all())
        return self.keeps_all

    def _choose(self, query, key, attention_mask, scaling) -> torch.Tensor:
        """bool [batch, kv_head, prompt_position]: the keys each KV head keeps (text keys, and its budget of image keys)."""
        batch, n_prompt = self.image.shape
        n_kv = self.budgets.shape[1]
        image = self.image[:, None, :].expand(batch, n_kv, n_prompt)
        budgets = self.budgets[:, :, None]  # [batch, kv_head, 1]
        if self.keep == "attention":
            if self.phase == "cache":
                rows = window_scores(query, key, attention_mask, scaling, self.prompt_tokens)[..., :n_prompt]  # [batch, kv_head, key]
            else:
                rows = last_query_rows(query, key, attention_mask, scaling)[..., :n_prompt].reshape(batch, n_kv, self.n_kv_groups, n_prompt).sum(dim=2)
            rows = rows.masked_fill(~image, float("-inf"))
            rank = rows.argsort(dim=-1, descending=True, stable=True).argsort(dim=-1)  # 0 = the image key attended most
            chosen = image & (rank < budgets)
        else:  # evenly spaced: of n image keys keep those at (2k + 1) n // 2b, k < b (the centres of b equal spans)
            index = self.image.long().cumsum(dim=1) - 1  # [batch, prompt]: the image key's index among the sample's image keys
            n_image = self.image.sum(dim=1)[:, None, None]  # [batch, 1, 1]
            k = torch.arange(n_prompt, device=self.image.device)[None, None, :]  # candidate k, any index < n_prompt
            picked = torch.where(k < budgets, ((2 * k + 1) * n_image) // (2 * budgets.clamp(min=1)), -1)  # [batch, kv, k]
            hit = torch.zeros(batch, n_kv, n_prompt + 1, dtype=torch.bool, device=self.image.device)
            hit.scatter_(2, picked.clamp(min=-1) + 1, True)  # slot 0 collects the unused k
            chosen = image & hit[:, :, 1:].gather(2, (index.clamp(min=0))[:, None, :].expand(batch, n_kv, n_prompt))
        return ~image | chosen


def window_scores(
    query: torch.Tensor,  # [batch, head, query, head_dim]: the prefill's
    key: torch.Tensor,  # [batch, kv_head, key, head_dim]
    attention_mask: torch.Tensor | None,
    scaling: float | None,
    prompt_tokens: torch.Tensor | None = None,  # long [batch]: real prompt tokens (left padding before them); None: every position
    window: int = SNAPKV_WINDOW,
    kernel: int = SNAPKV_KERNEL,
) -> torch.Tensor:  # [batch, kv_head, key] fp32
    """SnapKV's vote of each key, per KV head: the attention probabilities (fp32, under the model's mask) of the
    observation window, a sample's last ``min(window, its prompt tokens)`` positions, summed over the window's
    rows and the KV head's query heads, then average-pooled along the keys (kernel ``kernel``, stride 1, zero
    padding, divided by ``kernel``: ``avg_pool1d``'s defaults, as SnapKV calls it). SnapKV pools the keys before
    the window and keeps the window's keys whole; here every key is pooled, since a budget counts image keys
    only and an image key inside the window competes for it like the others (the window's text keys are kept
    anyway). The window shrinks with a prompt shorter than it, so a sample's choice does not depend on its batch."""
    batch, n_heads, n_query, head_dim = query.shape
    n_kv, n_keys = key.shape[1], key.shape[2]
    groups, rows = n_heads // n_kv, min(window, n_query)
    scale = scaling if scaling is not None else head_dim**-0.5
    q = query[:, :, -rows:, :].float().reshape(batch, n_kv, groups, rows, head_dim)
    logits = torch.matmul(q, key.float()[:, :, None].transpose(-1, -2)) * scale  # [batch, kv_head, group, row, key]
    allowed = as_bool_mask(attention_mask, batch, n_query, n_keys, query.device)[:, :, -rows:, :n_keys]  # [batch, 1 or head, row, key]
    allowed = allowed.expand(batch, n_heads, rows, n_keys).reshape(batch, n_kv, groups, rows, n_keys)
    probabilities = torch.softmax(logits.masked_fill(~allowed, float("-inf")), dim=-1)
    lengths = torch.full((batch,), rows, device=query.device) if prompt_tokens is None else prompt_tokens.to(query.device).clamp(max=rows)
    in_window = torch.arange(rows, device=query.device)[None, :] >= rows - lengths[:, None]  # [batch, row]: left padding's rows are not
    probabilities = torch.where(in_window[:, None, None, :, None], probabilities, 0.0)  # (a padding row that sees no key is NaN)
    votes = probabilities.sum(dim=(2, 3))  # [batch, kv_head, key]
    return torch.nn.functional.avg_pool1d(votes, kernel, stride=1, padding=kernel // 2)


def _slots(kept: torch.Tensor) -> torch.Tensor:
    """long [batch, kv_head, width] from bool [batch, kv_head, key]: each KV head's kept positions, ascending,
    then -1 up to ``width``, the most any head keeps."""
    counts = kept.sum(dim=-1, keepdim=True)  # [batch, kv_head, 1]
    width = int(counts.max())
    order = kept.to(torch.uint8).argsort(dim=-1, descending=True, stable=True)[:, :, :width]  # kept first, in position order
    return torch.where(torch.arange(width, device=kept.device) < counts, order, -1)


def window_start(n_prompt: int, generated: int, n_keys: int) -> int:
    """The position of the first of the ``n_keys`` keys a call is handed after ``generated`` tokens: 0 where the
    cache holds every key, later in a sliding-window layer's decode steps (its cache holds only the last keys)."""
    return n_prompt + generated - n_keys


def as_bool_mask(attention_mask: torch.Tensor | None, batch: int, n_query: int, n_keys: int, device) -> torch.Tensor:
    """``[batch, 1 or head, query, key]`` bool (True = attend) from the mask SDPA was given (None: causal)."""
    if attention_mask is None:
        causal = torch.ones(n_query, n_keys, dtype=torch.bool, device=device).tril(diagonal=n_keys - n_query)
        return causal[None, None].expand(batch, 1, n_query, n_keys)
    mask = attention_mask[:, :, :, :n_keys]
    if mask.dtype == torch.bool:
        return mask
    return mask > torch.finfo(mask.dtype).min / 2


@dataclass
class KVPrune:
    """An intervention: the kept share of image keys per (layer, KV head), how keys are chosen, and when they
    are dropped (``phase``: ``cache``, after the prefill; ``prefill``, in it too)."""

    kind = "prune"
    kept: np.ndarray  # [layer, kv_head] in [0, 1]
    keep: str = "attention"
    phase: str = "cache"
    packed: bool = True  # the cache holds only the kept keys after the prefill; False: every key stays and each step gathers the kept

    def __post_init__(self) -> None:
        if self.keep not in KEEP:
            raise UsageError(f"--keep takes {', '.join(KEEP)}; got {self.keep!r}")
        if self.phase not in PHASES:
            raise UsageError(f"--phase takes {', '.join(PHASES)}; got {self.phase!r}")

    def counts(self, n_image: int) -> np.ndarray:
        return budgets(self.kept, n_image)

    def kept_image_keys(self, n_image: int) -> int:
        """Image keys the pruned cache holds for a sample of ``n_image`` image tokens, summed over layers and KV heads."""
        return int(self.counts(n_image).sum())

    def bind(self, view: BatchView) -> dict[int, LayerIntervention]:
        """Each layer's budgets for this batch's samples, and one mask buffer for all layers (they run one after the other).
        With ``packed`` the layers' caches are packed after the prefill (``extract.forward`` does it when every
        intervention of a layer prunes the cache); otherwise every key stays and each decode step gathers."""
        if self.kept.shape != (view.n_layers, view.n_kv_heads):
            raise UsageError(f"a pruning condition for {self.kept.shape[0]} layers × {self.kept.shape[1]} KV heads does not fit a model of {view.n_layers} × {view.n_kv_heads}")
        image = view.segments == IMAGE
        per_sample = [torch.from_numpy(self.counts(int(n))) for n in image.sum(dim=1).tolist()]  # [layer, kv_head] each
        prompt_tokens = view.attention_mask.sum(dim=1).to(image.device)
        buffer = MaskBuffer()
        layers = [layer for layer in range(view.n_layers) if (self.kept[layer] < 1.0).any()]  # a layer whose every KV head keeps every image key is not touched
        return {
            layer: LayerPrune(
                torch.stack([counts[layer] for counts in per_sample]).to(image.device),
                image,
                self.keep,
                view.n_kv_groups,
                self.phase,
                prompt_tokens,
                buffer=buffer,
                packs=self.packed,
            )
            for layer in layers
        }
