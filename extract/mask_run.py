"""``attnwh mask``: a sweep of head-masking conditions over one model and benchmark.

A sweep (``extract.sweep``) whose intervention is a ``HeadMask``: each condition (the unmasked baseline
once, then stage × strategy × k × seed) is one part of a ``mask`` run. ``top`` and ``bottom`` take heads
in the order of a ``HeadRanking`` the caller brings (``attnwh.face.workflows`` asks the ``head_ranking`` query over an extraction
run of the same model, same revision, and benchmark): this stage runs models, it opens no query
session.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

from attnwh.core.errors import UsageError
from attnwh.extract.masking import STAGES, STRATEGIES, Condition, Head, HeadMask, HeadMeans, build_conditions, parse_k
from attnwh.extract.sweep import HeadRanking, ProgressCallback, SweepCondition, SweepOptions, SweepResult, SweepSamples, SweepSetup, check_sweep_options, prepare_sweep, run_sweep


@dataclass
class MaskOptions(SweepOptions):
    strategies: tuple[str, ...] = ("top", "random")
    stages: tuple[str, ...] = ("all",)
    k: tuple[str, ...] = ("0", "0.05", "0.1", "0.2")
    mode: str = "zero"


@dataclass(frozen=True)
class MaskSweep:
    """The masking sweep's kind: heads switched off in one mode; ``mean`` substitutes each head's mean output
    over the sweep's own samples (prepared once per model)."""

    mode: str
    kind = "mask"

    def batch_size(self, options: SweepOptions) -> int:
        return 1 if self.mode == "paper" else options.batch_size  # paper mode runs unpadded

    def prepare(self, samples: SweepSamples) -> dict[Head, torch.Tensor]:
        return head_means(samples) if self.mode == "mean" else {}

    def interventions(self, condition: SweepCondition, prepared: dict[Head, torch.Tensor]) -> list[HeadMask]:
        heads = condition.heads
        return [HeadMask(heads, self.mode, {head: prepared[head] for head in heads} if prepared else {})] if heads else []


def head_means(samples: SweepSamples) -> dict[Head, torch.Tensor]:
    """Each head's mean output over the real prefill positions of all samples (mode ``mean``)."""
    totals, count = None, 0
    for (recording,) in samples.forward_each(lambda: [HeadMeans()]):
        sums = torch.stack([recorder.total for recorder in recording.recorders])  # [layer, head, head_dim]
        totals = sums if totals is None else totals + sums
        count += recording.recorders[0].count
    means = (totals / count).cpu()
    return {(layer, head): means[layer, head] for layer in range(means.shape[0]) for head in range(means.shape[1])}


def mask_condition(condition: Condition, mode: str) -> SweepCondition:
    """A masking condition as the sweep stores it (its settings, typed again by ``stg_mask_conditions``)."""
    settings = {"strategy": condition.strategy, "stage": condition.stage, "k": condition.k, "fraction": condition.fraction, "seed": condition.seed, "mode": mode}
    return SweepCondition(condition.condition_id, settings, condition.heads)


def prepare_mask(options: MaskOptions) -> SweepSetup:
    """Options checked; benchmark, samples, model config and prompt resolved (the ranking is the caller's to find)."""
    check_mask_options(options)
    return prepare_sweep(options)


def run_mask(warehouse_path, setup: SweepSetup, ranking: HeadRanking, on_progress: ProgressCallback | None = None) -> SweepResult:
    """Run (or resume) the sweep of ``setup`` with heads taken in the order of ``ranking``."""
    options, info = setup.options, setup.run.details["model_info"]
    if len(ranking.heads) != setup.n_heads:
        raise UsageError(f"extraction run {ranking.run_id} ranks {len(ranking.heads)} heads; {setup.run.model_label} has {setup.n_heads}")
    ks = parse_k(options.k, setup.n_heads)
    left_out: list[str] = []
    conditions = build_conditions(ranking.heads, info["n_layers"], info["n_heads"], options.strategies, options.stages, ks, options.seeds, left_out)
    spec: dict[str, Any] = {
        **setup.run.spec,
        "mode": options.mode,
        "batch_size": 1 if options.mode == "paper" else None,  # paper mode runs unpadded
        "ranking_run": ranking.run_id,
        "ranking_metric": ranking.score,  # the ranking's score under its first name (kept: it is in every run's fingerprint)
        "ranking_query": ranking.query,
        "conditions": [[c.strategy, c.stage, c.k, c.seed, [list(h) for h in c.heads]] for c in conditions],
    }
    sweep_conditions = [mask_condition(condition, options.mode) for condition in conditions]
    result = run_sweep(warehouse_path, setup, MaskSweep(options.mode), spec, sweep_conditions, ranking, on_progress)
    return replace(result, left_out=tuple(left_out))


def check_mask_options(options: MaskOptions) -> None:
    check_sweep_options(options, ((options.strategies, STRATEGIES, "strategy"), (options.stages, STAGES, "stage")))
    if not options.k:
        raise UsageError("--k takes at least one count or fraction of heads (5, 0.1, 10%); got nothing")
    HeadMask((), options.mode)  # checks the mode
