"""Logit lens (DESIGN §6): what each layer's hidden state would predict at the captured positions.

``logits_ℓ = lm_head(norm(h_ℓ))`` for ℓ = 0 (the embeddings, the input of the first decoder layer)
to L (the output of the last layer). The hidden states come from hooks on the decoder layers, all
*before* the final norm, so every layer gets the norm exactly once and layer L reproduces the
model's own logits (transformers' ``output_hidden_states`` would hand over layer L already normed).
Final-logit soft-capping (Gemma) is applied when the config has it; it changes probabilities, not
ranks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


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
    softcap: float | None = None,
) -> LensResult:
    """All layers in as few lm_head calls as memory allows (one for small vocabularies)."""
    n_layers, batch = hidden.shape[:2]
    flat = hidden.reshape(n_layers * batch, *hidden.shape[2:])  # [..., hidden], or [..., stream, hidden] with hyper-connections
    vocab = lm_head.weight.shape[0]
    per_chunk = max(1, LOGIT_CHUNK // vocab)
    ranks, target_probs, top_tokens, top_probs = [], [], [], []
    final = _logits(hidden[-1], norm, lm_head, softcap)
    target = final.argmax(dim=-1)  # [batch]
    targets = target.repeat(n_layers)  # row r of ``flat`` is (layer r // batch, sample r % batch)
    for start in range(0, flat.shape[0], per_chunk):
        logits = _logits(flat[start : start + per_chunk], norm, lm_head, softcap)
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


def _logits(hidden: torch.Tensor, norm: torch.nn.Module, lm_head: torch.nn.Module, softcap: float | None) -> torch.Tensor:
    weight = lm_head.weight
    normed = norm(hidden.to(weight.device, weight.dtype))
    logits = lm_head(normed).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return logits
