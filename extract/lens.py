"""Logit lens (DESIGN §6): what each layer's hidden state would predict at the captured positions.

``logits_ℓ = lm_head(norm(h_ℓ))`` for ℓ = 0 (the embeddings, the input of the first decoder layer)
to L (the output of the last layer). The hidden states come from hooks on the decoder layers, all
*before* the final norm, so every layer gets the norm exactly once and layer L reproduces the
model's own logits (transformers' ``output_hidden_states`` would hand over layer L already normed).
What a model does to ``lm_head``'s logits before it hands them out (final-logit soft-capping: Gemma 2,
PaliGemma, Gemma 4; a scale: Granite's ``logits_scaling``, Cohere's ``logit_scale``; nothing: Gemma 3's
image-text model, whose config names a cap it does not apply) changes probabilities, not ranks. It is not
read from the config alone: each batch's lens is matched against the model's own logits at the same
positions (``matching_transform``), and where no known transform reproduces them the lens keeps its ranks
and leaves its probabilities out (NaN: stored as null).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch


@dataclass(frozen=True)
class HeadTransform:
    """``logits → tanh(logits / cap) · cap`` (when ``cap``), then ``· scale``."""

    cap: float | None = None
    scale: float = 1.0

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        if self.cap:
            logits = torch.tanh(logits / self.cap) * self.cap
        return logits * self.scale if self.scale != 1.0 else logits


def head_transforms(cap: float | None, scales: Sequence[float]) -> list[HeadTransform]:
    """The transforms a model of this config may apply (``cap``: its final-logit soft-capping; ``scales``: the
    factors its config names, each as a factor and as a divisor), the configured one (the cap, if any) first."""
    candidates = [HeadTransform(cap=cap)] if cap else []
    candidates.append(HeadTransform())
    for scale in scales:
        if scale and scale > 0 and scale != 1.0:
            candidates += [HeadTransform(scale=float(scale)), HeadTransform(scale=1.0 / float(scale))]
    return list(dict.fromkeys(candidates))


def matching_transform(raw: torch.Tensor, model_logits: torch.Tensor, candidates: Sequence[HeadTransform], tolerance: float) -> HeadTransform | None:
    """Of ``candidates``, the one under which ``raw`` (``lm_head(norm(h))`` of the last layer, [rows, vocab]) gives
    the model's own probabilities (``model_logits``, the same rows), or None when none does within ``tolerance``
    (the largest difference of a probability)."""
    expected = torch.softmax(model_logits.float().to(raw.device), dim=-1)
    best, error = None, math.inf
    for candidate in candidates:
        difference = (torch.softmax(candidate(raw.float()), dim=-1) - expected).abs().max().item()
        if difference < error:
            best, error = candidate, difference
    return best if error <= tolerance else None


def without_probabilities(result: LensResult) -> LensResult:
    """``result`` with its probabilities left out (NaN), its ranks and tokens kept."""
    return replace(result, target_prob=torch.full_like(result.target_prob, math.nan), top_prob=torch.full_like(result.top_prob, math.nan))


@dataclass
class LensResult:
    """Per (layer 0..L, sample): the final top-1 token's rank (1 = top) and probability, and the layer's own top-1."""

    target_token: torch.Tensor  # [batch] long: the model's final top-1 token at the position
    target_rank: torch.Tensor  # [L + 1, batch] long
    target_prob: torch.Tensor  # [L + 1, batch] fp32
    top_token: torch.Tensor  # [L + 1, batch] long
    top_prob: torch.Tensor  # [L + 1, batch] fp32


LOGIT_CHUNK = 1 << 24  # logits held at once (floats): 64 MiB in fp32


@torch.inference_mode()
def logit_lens(
    hidden: torch.Tensor,  # [L + 1, batch, hidden] before the final norm
    norm: torch.nn.Module,
    lm_head: torch.nn.Module,
    transform: HeadTransform | None = None,
) -> LensResult:
    """All layers in as few lm_head calls as memory allows (one for small vocabularies)."""
    n_layers, batch = hidden.shape[:2]
    flat = hidden.reshape(n_layers * batch, *hidden.shape[2:])  # [..., hidden], or [..., stream, hidden] with hyper-connections
    vocab = lm_head.weight.shape[0]
    per_chunk = max(1, LOGIT_CHUNK // vocab)
    ranks, target_probs, top_tokens, top_probs = [], [], [], []
    final = _logits(hidden[-1], norm, lm_head, transform)
    target = final.argmax(dim=-1)  # [batch]
    targets = target.repeat(n_layers)  # row r of ``flat`` is (layer r // batch, sample r % batch)
    for start in range(0, flat.shape[0], per_chunk):
        logits = _logits(flat[start : start + per_chunk], norm, lm_head, transform)
        wanted = targets[start : start + per_chunk, None].to(logits.device)
        target_logit = logits.gather(-1, wanted)
        ranks.append(1 + (logits > target_logit).sum(dim=-1))
        probs = torch.softmax(logits, dim=-1)
        target_probs.append(probs.gather(-1, wanted).squeeze(-1))
        top_prob, top_token = probs.max(dim=-1)
        top_tokens.append(top_token)
        top_probs.append(top_prob)

    def shaped(parts: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(parts).reshape(n_layers, batch)

    return LensResult(target, shaped(ranks), shaped(target_probs), shaped(top_tokens), shaped(top_probs))


def head_logits(hidden: torch.Tensor, norm: torch.nn.Module, lm_head: torch.nn.Module) -> torch.Tensor:
    """``lm_head(norm(hidden))`` in fp32, before any transform of the model's."""
    weight = lm_head.weight
    return lm_head(norm(hidden.to(weight.device, weight.dtype))).float()


def _logits(hidden: torch.Tensor, norm: torch.nn.Module, lm_head: torch.nn.Module, transform: HeadTransform | None) -> torch.Tensor:
    logits = head_logits(hidden, norm, lm_head)
    return transform(logits) if transform is not None else logits
