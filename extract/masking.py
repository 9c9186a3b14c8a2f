"""Head masking (DESIGN §7): switch chosen attention heads off inside the capture attention function.

Modes, recorded on every result row:

- ``zero``: the head's output is zero (what an ``o_proj`` input hook zeroing the head's slice does);
- ``mean``: the head's output is replaced by its mean output over a reference set (the prefill
  positions of the sweep's own samples, unmasked);
- ``paper``: the reference code's behaviour: the pre-softmax scores are set to 0 *after* the causal
  mask, so the head attends uniformly to every key, future and padding included; its output is the
  mean of its value vectors over all keys. Padding changes the result, so this mode runs unpadded.

Stages are the ``stage`` macro's (warehouse/sql/definitions.sql: for 32 layers early 0–9, mid 10–19,
late 20–31; for 40 layers 0–12, 13–26, 27–39, as the reference study split them; otherwise thirds,
rounded), and ``all``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from attnwh.core.errors import UsageError
from attnwh.extract.forward import BatchView, LayerIntervention
from attnwh.warehouse.definitions import heads_at_share, layer_stages

MODES = ("zero", "mean", "paper")
STAGES = ("early", "mid", "late", "all")
STRATEGIES = ("top", "random", "bottom")

Head = tuple[int, int]  # (layer, head)


def stage_layers(n_layers: int, stage: str) -> range:
    """The layers of a stage, by the ``stage`` macro of the warehouse's definitions (the study's split
    for 32 and 40 layers, else thirds rounded); stages are contiguous."""
    if stage == "all":
        return range(n_layers)
    if stage not in STAGES:
        raise UsageError(f"unknown stage {stage!r}; choose {', '.join(STAGES)}")
    layers = [layer for layer, name in enumerate(layer_stages(n_layers)) if name == stage]
    return range(layers[0], layers[-1] + 1) if layers else range(0)


@dataclass
class LayerMask(LayerIntervention):
    """The heads of one layer to switch off, and how."""

    heads: torch.Tensor  # long [n]
    mode: str
    n_kv_groups: int  # query heads per KV head
    means: torch.Tensor | None = None  # [n, head_dim] for mode 'mean'

    def output(self, output: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """``output`` [batch, query, head, head_dim]; ``value`` [batch, kv_head, key, head_dim]."""
        if self.heads.numel() == 0:
            return output
        heads = self.heads.to(output.device)
        if self.mode == "zero":
            output[:, :, heads, :] = 0
        elif self.mode == "mean":
            output[:, :, heads, :] = self.means.to(output.device, output.dtype)[None, None]
        elif self.mode == "paper":
            uniform = value[:, heads // self.n_kv_groups].float().mean(dim=2)  # [batch, n, head_dim]
            output[:, :, heads, :] = uniform[:, None].to(output.dtype)
        else:  # pragma: no cover  (checked when the mask is built)
            raise ValueError(self.mode)
        return output


def heads_by_layer(heads: Sequence[Head], n_layers: int, n_heads: int) -> dict[int, list[int]]:
    """``{layer: its heads, ascending}`` of ``heads``; a head the model does not have is refused in one line."""
    by_layer: dict[int, set[int]] = {}
    for layer, head in heads:
        if not (0 <= layer < n_layers and 0 <= head < n_heads):
            raise UsageError(f"head ({layer}, {head}) does not exist in a model of {n_layers} layers × {n_heads} heads")
        by_layer.setdefault(layer, set()).add(head)
    return {layer: sorted(layer_heads) for layer, layer_heads in by_layer.items()}


@dataclass
class HeadMask:
    """An intervention: heads to switch off per layer, for every forward pass (prefill and decode) of a call."""

    kind = "mask"
    heads: Sequence[Head]
    mode: str = "zero"
    means: dict[Head, torch.Tensor] = field(default_factory=dict)  # mode 'mean': (layer, head) -> [head_dim]

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise UsageError(f"unknown masking mode {self.mode!r}; choose {', '.join(MODES)}")
        if self.mode == "mean" and any(head not in self.means for head in self.heads):
            raise ValueError("mode 'mean' needs the mean output of every masked head")

    def layer_masks(self, n_layers: int, n_heads: int, n_kv_heads: int) -> dict[int, LayerMask]:
        masks = {}
        for layer, heads in heads_by_layer(self.heads, n_layers, n_heads).items():
            means = torch.stack([self.means[(layer, head)] for head in heads]) if self.mode == "mean" else None
            masks[layer] = LayerMask(torch.tensor(heads, dtype=torch.long), self.mode, n_heads // n_kv_heads, means)
        return masks

    def bind(self, view: BatchView) -> dict[int, LayerIntervention]:
        return self.layer_masks(view.n_layers, view.n_heads, view.n_kv_heads)


class MeanRecorder(LayerIntervention):
    """Sums each head's output over real (non-pad) prefill positions of one layer; changes nothing."""

    def __init__(self, real: torch.Tensor):
        self.real = real  # [batch, position] bool
        self.total: torch.Tensor | None = None  # [head, head_dim] fp32
        self.count = 0

    def output(self, output: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        if output.shape[1] == self.real.shape[1]:  # the prefill pass
            selected = output[self.real.to(output.device)].float()  # [positions, head, head_dim]
            total = selected.sum(dim=0)
            self.total = total if self.total is None else self.total + total
            self.count += selected.shape[0]
        return output


@dataclass
class HeadMeans:
    """An intervention that records each head's output sums over one batch's prefill (mode ``mean``'s reference)."""

    kind = "record"
    recorders: list[MeanRecorder] = field(default_factory=list)  # one per layer, after ``bind``

    def bind(self, view: BatchView) -> dict[int, LayerIntervention]:
        self.recorders = [MeanRecorder(view.attention_mask.bool()) for _ in range(view.n_layers)]
        return dict(enumerate(self.recorders))


@dataclass(frozen=True)
class Condition:
    """One masking condition of a sweep."""

    condition_id: int
    strategy: str  # 'none' for the baseline
    stage: str
    k: int
    fraction: float  # k / all heads of the model
    seed: int | None
    heads: tuple[Head, ...]


def parse_k(values: Sequence[str], total_heads: int) -> list[int]:
    """Counts (``5``) or fractions of all heads (``0.1``, ``10%``) → head counts."""
    counts = []
    for value in values:
        text = str(value).strip()
        try:
            number = float(text[:-1]) / 100 if text.endswith("%") else float(text) if "." in text else int(text)
            if not math.isfinite(number):
                raise ValueError(text)
        except ValueError as exc:
            raise UsageError(f"--k takes counts or fractions of all heads (5, 0.1, 10%); got {text!r}") from exc
        if number < 0:
            raise UsageError(f"--k {text} is negative: k counts heads (0 to {total_heads}) or is a share of them (0 to 1, 0% to 100%)")
        count = number if isinstance(number, int) else heads_at_share(number, total_heads)
        if count > total_heads:
            raise UsageError(f"--k {text} is {count} heads; the model has {total_heads}")
        counts.append(count)
    return sorted(set(counts))


def build_conditions(
    ranking: Sequence[Head],  # every head of the model, best first
    n_layers: int,
    n_heads: int,
    strategies: Sequence[str],
    stages: Sequence[str],
    ks: Sequence[int],
    seeds: int,
    left_out: list[str] | None = None,
) -> list[Condition]:
    """The sweep: the unmasked baseline once (condition 0), then stage × strategy × k (× seed for random).

    ``top`` takes the stage's k best-ranked heads, ``bottom`` its k worst; ``random`` draws k of the
    stage's heads outside its top k (as the reference did), seeded per (stage, k, seed). A k larger than a
    stage's heads is left out for that stage (its top and bottom would both be every head of the stage, under
    another k), and so is ``random`` where the stage has no more than k heads outside its top k (every draw
    would be its k worst heads, the ``bottom`` condition, or fewer than k): a control that is not one is absent
    rather than plotted. Each leaves a line in ``left_out``.
    """
    for strategy in strategies:
        if strategy not in STRATEGIES:
            raise UsageError(f"unknown strategy {strategy!r}; choose {', '.join(STRATEGIES)}")
    total = n_layers * n_heads
    conditions = [Condition(0, "none", "all", 0, 0.0, None, ())]
    for stage in stages:
        layers = set(stage_layers(n_layers, stage))
        ranked = [head for head in ranking if head[0] in layers]
        for k in ks:
            if k == 0:
                continue
            if k > len(ranked):
                if left_out is not None:
                    left_out.append(f"k = {k} is more than the {len(ranked)} heads of stage {stage}: its conditions there are left out")
                continue
            k_stage = k
            for strategy in strategies:
                if strategy == "random":
                    pool = ranked[k_stage:]
                    if len(pool) <= k_stage:
                        if left_out is not None:
                            left_out.append(
                                f"random k = {k} in stage {stage} is left out: the stage has {len(pool)} {'head' if len(pool) == 1 else 'heads'} outside its top {k}, so no draw would be random"
                            )
                        continue
                    for seed in range(seeds):
                        rng = random.Random(f"{stage}:{k}:{seed}")
                        heads = tuple(sorted(rng.sample(pool, min(k_stage, len(pool)))))
                        conditions.append(Condition(len(conditions), strategy, stage, len(heads), len(heads) / total, seed, heads))
                    continue
                chosen = ranked[:k_stage] if strategy == "top" else ranked[len(ranked) - k_stage :]
                conditions.append(Condition(len(conditions), strategy, stage, k_stage, k_stage / total, None, tuple(sorted(chosen))))
    return conditions
