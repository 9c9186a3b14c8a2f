"""A tiny LLaVA whose heads have planted, known effects on the answer: the recovery proof of ``attnwh attribute``.

The model is a real ``LlavaForConditionalGeneration`` (CLIP tower, projector, Llama decoder of 4 layers × 4 heads,
hidden size 64, head size 16), built by :func:`attnwh.extract.toy.builder.build_model` and saved with
``save_pretrained`` beside the toy's word-level processor, so attnwh loads it through its normal
``from_pretrained`` path. Its decoder's weights are then set by hand so that ablating heads (zeroing their
output before ``o_proj``, ``--ablation zero``) changes the yes / no margin at the answer position by amounts
known in closed form (:meth:`PlantedHeads.drop`).

Residual dimensions: ``BIAS`` = 0, ``GOLD`` (u) = 1, ``PAIR_DIMS`` (r_A, r_B) = 2, 3, ``JUNK`` = 4 (written, read by
nothing), ``NOISE`` = 8..63 (token identity: read by queries and keys only).

- **A constant value per head.** Every token's embedding, and the projector's output for every image token, is
  ``SCALE`` on ``BIAS`` plus a small token- (or image-) dependent vector on the noise dimensions (≤ ``NOISE_STD`` per
  dimension). Queries and keys read only the noise dimensions (random weights: real, position- and image-dependent
  attention patterns), but every head's ``v_proj`` reads only ``BIAS`` (its first value component, weight
  1/√64), so its value vector is (1, 0, ...) at every position, up to the norm's tolerance below, and its output
  is that vector whatever its attention pattern.
- **Graded heads** (``PlantedHeads.graded``; by default 8 heads, c_h = 2.0, 1.75, ..., 0.25): ``o_proj`` writes
  c_h × the first value component onto u. **Null heads** (``nulls``; by default 4) write 1 onto ``JUNK``, which
  nothing reads: their output is not zero, but their ablation changes nothing. **Redundant pairs** (``pairs``;
  by default (0,1)+(2,3), P = 3, its OR in layer 2's MLP, and (1,2)+(1,3), P = 2, in layer 3's): both heads of a
  pair write 1 onto the pair's dimension r, and the MLP of a later layer computes a saturating OR of r and
  writes P × OR(r) onto u, with two SiLU units of its own: OR(r) = (silu(k r) − silu(k (r − 1))) / k,
  k = ``OR_GAIN`` (the constant 1 taken from ``BIAS``): OR(0) = σ(−k), OR(1) = σ(k), OR(2) = 2σ(2k) − σ(k):
  0, 1 and 1 within 3e-9 for k = 20. Ablating one head of a pair changes nothing; ablating both removes P.
  Every other MLP weight is 0.
- **The answer.** The final norm's weights are 1; ``lm_head`` gives every token that spells "yes" (``yes``) the logit
  +u/2 and every "no" token −u/2 (in the residual's units), every other token 0. The margin target (the gold
  option's log-probability less the other's, each a logsumexp over its spellings) is therefore u + a constant:
  with gold "yes" on every sample, ablating a set S of heads lowers it by

      drop(S) = Σ_{h ∈ S} c_h + Σ_{pairs (a, b) ⊆ S} P_pair.

- **Tolerance.** RMSNorm divides by the residual's root mean square, which ``SCALE`` = 10⁴ on ``BIAS`` dominates:
  everything else the residual holds is at most about 20 in norm (u ≤ 14, r ≤ 2, the noise ≤ ``NOISE_STD`` × √56),
  so every normalised value is within a relative 2e-6 of the linear reading above (∑ others² / 2·SCALE²), and a
  drop of at most 14 is exact within 3e-5. Measured in float32: within 2.4e-5 of the closed form in stock
  transformers, within 1e-5 in attnwh's runs; the tests allow 1e-3.

Under random ablation patterns (each head ablated with probability p, independently), the least-squares fit of
the drop on the 0/1 ablation indicators has, in the population, coefficient c_h for a graded head and p × P for
each head of a pair (z_a z_b = p z_a + p z_b − p² + (z_a − p)(z_b − p), whose last term is uncorrelated with every
indicator): :meth:`PlantedHeads.expected_fit`. Single-head ablation gives a pair's heads 0, and attribution
patching (dT/dg at g = 1, where the OR is saturated at r = 2) also gives them 0 (within k e^{−k}).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from attnwh.extract.toy import shapes
from attnwh.extract.toy.builder import TinyLlavaSpec, build_model, build_processor, save_pretrained_atomically

Head = tuple[int, int]
BIAS, GOLD, JUNK = 0, 1, 4
PAIR_DIMS = (2, 3)
NOISE = range(8, 64)
SCALE = 10000.0  # the bias dimension's value in every embedding: it dominates the residual's norm
NOISE_STD = 1.0
OR_GAIN = 20.0  # k of the SiLU OR
YES_WORDS, NO_WORDS = ("yes", "Yes", "YES"), ("no", "No", "NO")


def _default_graded() -> dict[Head, float]:
    heads = [(0, 0), (0, 3), (1, 1), (1, 0), (2, 0), (2, 2), (3, 1), (3, 3)]
    return dict(zip(heads, (2.0, 1.75, 1.5, 1.25, 1.0, 0.75, 0.5, 0.25)))


def _default_pairs() -> dict[tuple[Head, Head], tuple[float, int]]:
    # pair -> (joint effect P, the layer whose MLP computes the OR): one pair across layers, one within a layer
    return {((0, 1), (2, 3)): (3.0, 2), ((1, 2), (1, 3)): (2.0, 3)}


@dataclass(frozen=True)
class PlantedHeads:
    """The planted effects (drops of the yes / no margin) of a 4-layer × 4-head LLaVA."""

    graded: dict[Head, float] = field(default_factory=_default_graded)
    pairs: dict[tuple[Head, Head], tuple[float, int]] = field(default_factory=_default_pairs)
    nulls: tuple[Head, ...] = ((0, 2), (2, 1), (3, 0), (3, 2))
    n_layers: int = 4
    n_heads: int = 4
    seed: int = 0

    def __post_init__(self):
        named = [*self.graded, *(head for pair in self.pairs for head in pair), *self.nulls]
        if sorted(named) != self.heads or len(set(named)) != len(named):
            raise ValueError("every head must be graded, in one pair, or null, exactly once")
        if len(self.pairs) > len(PAIR_DIMS):
            raise ValueError(f"at most {len(PAIR_DIMS)} pairs")
        for (a, b), (_, layer) in self.pairs.items():
            if max(a[0], b[0]) > layer or layer >= self.n_layers:
                raise ValueError(f"the OR of pair {a, b} must be computed in a layer at or after both heads'")

    @property
    def heads(self) -> list[Head]:
        return [(layer, head) for layer in range(self.n_layers) for head in range(self.n_heads)]

    @property
    def paired(self) -> list[Head]:
        return [head for pair in self.pairs for head in pair]

    def drop(self, ablated) -> float:
        """The closed form: how much ablating the heads ``ablated`` lowers the margin."""
        ablated = set(ablated)
        single = sum(effect for head, effect in self.graded.items() if head in ablated)
        return single + sum(effect for (a, b), (effect, _) in self.pairs.items() if a in ablated and b in ablated)

    def single_effects(self) -> dict[Head, float]:
        """What ablating each head alone does (a pair's heads: nothing)."""
        return {head: self.drop({head}) for head in self.heads}

    def expected_fit(self, p: float) -> dict[Head, float]:
        """The population least-squares coefficient of each head under independent ablation with probability p."""
        expected = {head: self.graded.get(head, 0.0) for head in self.heads}
        for pair, (effect, _) in self.pairs.items():
            for head in pair:
                expected[head] = p * effect
        return expected


def set_planted_weights(model, planted: PlantedHeads) -> None:
    """Overwrite the projector's and decoder's weights of a tiny LLaVA (hidden 64, 4 × 16 heads) with the construction."""
    text = model.model.language_model
    hidden = text.config.hidden_size
    head_dim = hidden // text.config.num_attention_heads
    root = math.sqrt(hidden)  # a normalised residual reads x · √hidden / SCALE
    unit = SCALE / root  # the weight that turns a normalised coordinate back into the residual's units
    generator = torch.Generator().manual_seed(planted.seed)
    noise = list(NOISE)

    def randn(*shape):
        return torch.randn(*shape, generator=generator)

    with torch.no_grad():
        for parameter in text.parameters():
            parameter.zero_()
        embed = text.embed_tokens.weight
        embed[:, BIAS] = SCALE
        embed[:, noise] = NOISE_STD * (2 * torch.rand(embed.shape[0], len(noise), generator=generator) - 1)
        projector = model.model.multi_modal_projector
        projector.linear_2.weight.zero_()
        projector.linear_2.weight[noise] = 0.05 * randn(len(noise), projector.linear_2.weight.shape[1])
        projector.linear_2.bias.zero_()
        projector.linear_2.bias[BIAS] = SCALE
        for layer in text.layers:
            layer.input_layernorm.weight.fill_(1.0)
            layer.post_attention_layernorm.weight.fill_(1.0)
            attention = layer.self_attn
            # queries and keys from the token's identity: a real, non-uniform pattern
            attention.q_proj.weight[:, noise] = 8 * unit * randn(hidden, len(noise)) / len(noise) ** 0.5
            attention.k_proj.weight[:, noise] = unit * randn(hidden, len(noise)) / len(noise) ** 0.5 / head_dim**0.5
            for head in range(text.config.num_attention_heads):
                attention.v_proj.weight[head * head_dim, BIAS] = 1.0 / root  # the head's value: (1, 0, ...) everywhere
        text.norm.weight.fill_(1.0)
        for (layer, head), effect in planted.graded.items():
            text.layers[layer].self_attn.o_proj.weight[GOLD, head * head_dim] = effect
        for layer, head in planted.nulls:
            text.layers[layer].self_attn.o_proj.weight[JUNK, head * head_dim] = 1.0
        for dim, (pair, (effect, or_layer)) in zip(PAIR_DIMS, planted.pairs.items()):
            for layer, head in pair:
                text.layers[layer].self_attn.o_proj.weight[dim, head * head_dim] = 1.0
            mlp, units = text.layers[or_layer].mlp, (2 * dim, 2 * dim + 1)  # two SiLU units of their own per pair
            mlp.gate_proj.weight[units[0], dim] = OR_GAIN * unit  # k r
            mlp.gate_proj.weight[units[1], dim] = OR_GAIN * unit
            mlp.gate_proj.weight[units[1], BIAS] = -OR_GAIN / root  # k (r − 1)
            mlp.up_proj.weight[units[0], BIAS] = 1.0 / (OR_GAIN * root)  # × 1/k
            mlp.up_proj.weight[units[1], BIAS] = -1.0 / (OR_GAIN * root)  # × −1/k
            mlp.down_proj.weight[GOLD, list(units)] = effect  # P × OR(r) onto u


def set_answer_head(model, tokenizer) -> None:
    """lm_head: +u/2 for every "yes" token, −u/2 for every "no" token, 0 for the rest."""
    hidden = model.config.text_config.hidden_size
    half = SCALE / math.sqrt(hidden) / 2
    with torch.no_grad():
        model.lm_head.weight.zero_()
        for words, sign in ((YES_WORDS, 1.0), (NO_WORDS, -1.0)):
            for word in words:
                token = tokenizer.convert_tokens_to_ids(word)
                if token is not None and token != tokenizer.unk_token_id:
                    model.lm_head.weight[token, GOLD] = sign * half


def save_planted_llava(folder: Path, planted: PlantedHeads = PlantedHeads()) -> Path:
    """Build the planted LLaVA with the toy's processor and save model + processor into ``folder``."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    spec = TinyLlavaSpec(n_layers=planted.n_layers, n_heads=planted.n_heads, n_kv_heads=planted.n_heads, hidden_size=64, seed=planted.seed)
    processor = build_processor(spec, shapes.vocabulary())
    model = build_model(spec, len(processor.tokenizer))
    set_planted_weights(model, planted)
    set_answer_head(model, processor.tokenizer)
    return save_pretrained_atomically(folder, model.eval(), processor)
