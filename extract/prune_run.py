"""``attnwh prune``: a sweep of head-wise image-KV pruning conditions over one model and benchmark.

A sweep (``extract.sweep``) whose intervention is a ``KVPrune``: each condition (``full`` once: every key
kept, the reference; then phase × keep rule × kept share × allocation, × seed for ``random``) is one part
of a ``prune`` run. ``score`` budgets come from the head scores of a ranking the caller brings
(``attnwh.face.workflows`` asks them of an extraction run or an imported ranking).

A kept share of 1 keeps every key whatever the allocation: it is the ``full`` condition, not repeated.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from attnwh.core.errors import UsageError
from attnwh.extract.pruning import ALLOCATIONS, BUDGET_ROUNDING, KEEP, PHASES, SNAPKV_KERNEL, SNAPKV_WINDOW, KVPrune, allocate
from attnwh.extract.sweep import HeadRanking, ProgressCallback, SweepCondition, SweepOptions, SweepResult, SweepSamples, SweepSetup, check_sweep_options, prepare_sweep, run_sweep

DEFAULT_SHARES = ("1", "0.5", "0.25", "0.1", "0.05")


@dataclass
class PruneOptions(SweepOptions):
    kv_shares: tuple[str, ...] = DEFAULT_SHARES
    allocations: tuple[str, ...] = ("score", "uniform", "random")
    keep: tuple[str, ...] = ("attention",)
    phase: tuple[str, ...] = ("cache",)
    floor: float = 0.1


@dataclass(frozen=True)
class PruneCondition:
    condition_id: int
    allocation: str
    kv_share: float
    keep: str
    floor: float | None
    seed: int | None
    kept: np.ndarray  # [layer, kv_head] shares kept
    phase: str = "cache"

    def as_sweep(self) -> SweepCondition:
        """As the sweep stores it (its settings, typed again by ``stg_prune_conditions``); only ``score``
        budgets follow the ranking."""
        settings = {
            "allocation": self.allocation,
            "kv_share": self.kv_share,
            "keep": self.keep,
            "phase": self.phase,
            "floor": self.floor,
            "seed": self.seed,
            "kept_shares": self.kept.ravel().tolist(),
            "kv_heads": int(self.kept.shape[1]),
        }
        return SweepCondition(self.condition_id, settings, ranked=self.allocation == "score")

    def fingerprint(self) -> list:
        """What the run's fingerprint lists of the condition; its phase only where it is not ``prefill``, so that a
        run written before phases existed (all ``prefill``) keeps its fingerprint and resumes."""
        entry = [self.allocation, self.kv_share, self.keep, self.floor, self.seed, np.round(self.kept, 9).ravel().tolist()]
        return entry if self.phase == "prefill" else [*entry, self.phase]


@dataclass(frozen=True)
class PruneSweep:
    """The pruning sweep's kind: each condition's budgets per (layer, KV head), from its stored shares."""

    kind = "prune"

    def batch_size(self, options: SweepOptions) -> int:
        return options.batch_size

    def prepare(self, samples: SweepSamples) -> None:
        return None

    def interventions(self, condition: SweepCondition, prepared: None) -> list[KVPrune]:
        settings = condition.settings
        kept = np.asarray(settings["kept_shares"], dtype=np.float64).reshape(-1, settings["kv_heads"])
        return [KVPrune(kept, settings["keep"], settings.get("phase", "prefill"))]  # settings written before phases: prefill


def parse_shares(values: tuple[str, ...]) -> list[float]:
    """Kept shares of image KV (``0.25`` or ``25%``), each in (0, 1]; sorted, largest first."""
    shares = []
    for value in values:
        text = str(value).strip()
        try:
            share = float(text[:-1]) / 100 if text.endswith("%") else float(text)
        except ValueError as exc:
            raise UsageError(f"--kv-share takes shares of the image KV cache kept (1, 0.5, 25%); got {text!r}") from exc
        if not 0.0 < share <= 1.0:
            raise UsageError(f"--kv-share {text} is outside (0, 1]")
        shares.append(share)
    if not shares:
        raise UsageError("--kv-share needs at least one share")
    return sorted(set(shares), reverse=True)


def kv_head_scores(scores: dict[tuple[int, int], float], n_layers: int, n_heads: int, n_kv_heads: int) -> np.ndarray:
    """[layer, kv_head]: the sum of the scores of each KV head's query heads (GQA; as SparseMM sums them), a negative
    score (an attribution run's) counted as 0 first, as ``attnwh heads export`` writes it for SparseMM: a query head
    that hurts the answer does not take budget from its group's other heads."""
    table = np.zeros((n_layers, n_kv_heads))
    group = n_heads // n_kv_heads
    for (layer, head), value in scores.items():
        if 0 <= layer < n_layers and 0 <= head < n_heads and value is not None and np.isfinite(value):
            table[layer, head // group] += max(value, 0.0)
    return table


def build_prune_conditions(
    shares: list[float], allocations: tuple[str, ...], keeps: tuple[str, ...], seeds: int, floor: float, kv_scores: np.ndarray, phases: tuple[str, ...] = ("cache",), group: int = 1
) -> list[PruneCondition]:
    """``full`` (condition 0: every key kept, the same under either phase), then phase × keep × share ×
    allocation (× seed for random), shares below 1 only; ``group``: query heads per KV head (``random`` draws per query head)."""
    conditions = [PruneCondition(0, "full", 1.0, keeps[0], None, None, np.ones(kv_scores.shape), phases[0])]
    for phase in phases:
        for keep in keeps:
            for share in shares:
                if share >= 1.0:
                    continue
                for allocation in allocations:
                    if allocation == "full":
                        continue
                    for seed in range(seeds) if allocation == "random" else [None]:
                        kept = allocate(allocation, share, kv_scores, floor, seed or 0, group)
                        floor_of = floor if allocation in ("score", "random") else None
                        conditions.append(PruneCondition(len(conditions), allocation, share, keep, floor_of, seed, kept, phase))
    return conditions


def prepare_prune(options: PruneOptions) -> SweepSetup:
    _check_options(options)
    return prepare_sweep(options)


def run_prune(warehouse_path, setup: SweepSetup, ranking: HeadRanking, on_progress: ProgressCallback | None = None) -> SweepResult:
    """Run (or resume) the pruning sweep of ``setup``; ``score`` budgets follow ``ranking``."""
    options, info = setup.options, setup.info
    kv_scores = kv_head_scores(ranking.scores, info["n_layers"], info["n_heads"], info["n_kv_heads"])
    group = info["n_heads"] // info["n_kv_heads"]
    conditions = build_prune_conditions(parse_shares(options.kv_shares), options.allocations, options.keep, options.seeds, options.floor, kv_scores, options.phase, group)
    spec = {
        **setup.run.spec,
        "ranking_run": ranking.run_id,
        "ranking_score": ranking.score,
        "ranking_query": options.ranking_query,
        "conditions": [c.fingerprint() for c in conditions],
        "budget_rounding": BUDGET_ROUNDING,  # how shares become keys per sample (not stored per condition): a run rounded otherwise is not resumed
    }
    if any(c.phase == "cache" and c.keep == "attention" and c.allocation != "full" for c in conditions):
        spec["observation_window"] = {"window": SNAPKV_WINDOW, "kernel": SNAPKV_KERNEL, "pooling": "avgpool"}  # SnapKV's choice of the kept keys
    sweep_conditions = [condition.as_sweep() for condition in conditions]
    return run_sweep(warehouse_path, setup, PruneSweep(), spec, sweep_conditions, ranking, on_progress)


def _check_options(options: PruneOptions) -> None:
    check_sweep_options(options, ((options.allocations, ALLOCATIONS, "allocation"), (options.keep, KEEP, "keep"), (options.phase, PHASES, "phase")))
    if not 0.0 <= options.floor <= 1.0:
        raise UsageError(f"--floor must lie in [0, 1], got {options.floor}")
    parse_shares(options.kv_shares)
