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

LENS_COLUMNS = ("target_token", "target_rank", "target_prob", "top_token", "top_prob")


@dataclass
class LensResult:
    """Per (layer 0..L, sample): the final top-1 token's rank (1 = top) and probability, and the layer's own top-1."""

    target_token: torch.Tensor  # [batch] long: the model's final top-1 token at the position
    target_rank: torch.Tensor  # [L + 1, batch] long
    target_prob: torch.Tensor  # [L + 1, batch] fp32
    top_token: torch.Tensor  # [L + 1, batch] long
    top_prob: torch.Tensor  # [L + 1, batch] fp32


@torch.inference_mode()
def logit_lens(
    hidden: torch.Tensor,  # [L + 1, batch, hidden] before the final norm
    norm: torch.nn.Module,
    lm_head: torch.nn.Module,
    softcap: float | None = None,
) -> LensResult:
    logits = [_logits(hidden[layer], norm, lm_head, softcap) for layer in range(hidden.shape[0])]  # each [batch, vocab] fp32
    target = logits[-1].argmax(dim=-1)
    ranks, target_probs, top_tokens, top_probs = [], [], [], []
    for layer_logits in logits:
        target_logit = layer_logits.gather(-1, target[:, None])
        ranks.append(1 + (layer_logits > target_logit).sum(dim=-1))
        probs = torch.softmax(layer_logits, dim=-1)
        target_probs.append(probs.gather(-1, target[:, None]).squeeze(-1))
        top_prob, top_token = probs.max(dim=-1)
        top_tokens.append(top_token)
        top_probs.append(top_prob)
    return LensResult(target, torch.stack(ranks), torch.stack(target_probs), torch.stack(top_tokens), torch.stack(top_probs))


def _logits(hidden: torch.Tensor, norm: torch.nn.Module, lm_head: torch.nn.Module, softcap: float | None) -> torch.Tensor:
    weight = lm_head.weight
    normed = norm(hidden.to(weight.device, weight.dtype))
    logits = lm_head(normed).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return logits
