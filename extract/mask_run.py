"""``attnwh mask``: a sweep of head-masking conditions over one model and benchmark.

Each condition (the unmasked baseline once, then stage × strategy × k × seed) is one part of a
``mask`` run: its ``mask_conditions`` row and its ``mask_results`` rows are committed together, so a
sweep resumes exactly like an extraction. ``top`` and ``bottom`` rank heads with the ``head_ranking``
query over an extraction run of the same model (same revision) and benchmark.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from attnwh.errors import UsageError
from attnwh.extract.benchmarks import Sample
from attnwh.extract.benchmarks.templates import DEFAULT_PROMPT_STYLE, render_question
from attnwh.extract.masking import STAGES, STRATEGIES, Condition, HeadMask, build_conditions, parse_k, recording_head_means
from attnwh.extract.models import LoadedModel, load_model
from attnwh.extract.prompts import PromptFormat
from attnwh.extract.run import encode_batch, generate_with_capture, letter_token_ids, prepare_run, score_answer
from attnwh.warehouse import parts
from attnwh.warehouse.layout import open_warehouse
from attnwh.warehouse.runs import Plan, open_or_create_run
from attnwh.warehouse.schema import MASK_CONDITIONS, MASK_RESULTS, with_metadata

RANKING_METRICS = ("concentration_x_sum", "image_sum", "concentration")
ProgressCallback = Callable[[int, int], None]


@dataclass
class MaskOptions:
    model: str | None = None
    benchmark: str | None = None
    data: Path | str | None = None
    split: str | None = None
    limit: int | None = None
    strategies: tuple[str, ...] = ("top", "random")
    stages: tuple[str, ...] = ("all",)
    k: tuple[str, ...] = ("0", "0.05", "0.1", "0.2")
    seeds: int = 3
    mode: str = "zero"
    ranking: str = "concentration_x_sum"
    ranking_query: str = "gen1"
    ranking_run: str | None = None  # default: the latest complete extraction run of the same model and benchmark
    batch_size: int = 8
    dtype: str = "auto"
    device: str = "auto"
    prompt_format: str = "chat_template"
    prompt_style: str = DEFAULT_PROMPT_STYLE
    max_new_tokens: int | None = None
    run_id: str | None = None
    command: list[str] = field(default_factory=lambda: list(sys.argv))


@dataclass
class MaskResult:
    run_id: str
    run_path: Path
    conditions_total: int
    conditions_skipped: int
    conditions_written: int
    summary: pa.Table  # accuracy per condition


def run_mask(warehouse_path: Path | str | None, options: MaskOptions, on_progress: ProgressCallback | None = None) -> MaskResult:
    _check_options(options)
    setup = prepare_run(options)
    info = setup.details["model_info"]
    model_label, benchmark = setup.model_label, setup.benchmark
    warehouse = open_warehouse(warehouse_path, create=True)

    ranking_run = options.ranking_run or find_ranking_run(warehouse.root, model_label, setup.spec["model_revision"], benchmark.name)
    ranking = rank_heads(warehouse.root, ranking_run, options.ranking, options.ranking_query)
    if len(ranking) != info["n_layers"] * info["n_heads"]:
        raise UsageError(f"extraction run {ranking_run} ranks {len(ranking)} heads; {model_label} has {info['n_layers'] * info['n_heads']}")
    ks = parse_k(options.k, info["n_layers"] * info["n_heads"])
    conditions = build_conditions(ranking, info["n_layers"], info["n_heads"], options.strategies, options.stages, ks, options.seeds)
    spec = {
        **setup.spec,
        "mode": options.mode,
        "batch_size": 1 if options.mode == "paper" else None,  # paper mode runs unpadded
        "ranking_run": ranking_run,
        "ranking_metric": options.ranking,
        "ranking_query": options.ranking_query,
        "conditions": [[c.strategy, c.stage, c.k, c.seed, [list(h) for h in c.heads]] for c in conditions],
    }
    # one part per condition: the plan's "samples" are the conditions
    plan = Plan([f"condition-{c.condition_id}" for c in conditions], 1)
    run, _ = open_or_create_run(
        warehouse, kind="mask", model=model_label, benchmark=benchmark.name, spec=spec, plan=plan, run_id=options.run_id, details=setup.details
    )
    parts.recover(run.paths)
    committed = parts.committed_part_ids(run.paths)
    pending = [c for c in conditions if c.condition_id not in committed]
    result = MaskResult(run.run_id, run.paths.root, len(conditions), len(committed), 0, pa.table({}))
    if pending:
        loaded = load_model(setup.source, dtype=setup.dtype, device=setup.device)
        batch_size = 1 if options.mode == "paper" else options.batch_size
        sweep = _Sweep(loaded, setup.prompt_format, setup.template, setup.samples, batch_size, setup.max_new_tokens)
        means = sweep.head_means() if options.mode == "mean" else {}
        if on_progress:
            on_progress(0, len(pending))
        for done, condition in enumerate(pending, start=1):
            mask = HeadMask(condition.heads, options.mode, {head: means[head] for head in condition.heads} if means else {})
            rows = sweep.evaluate(mask if condition.heads else None)
            record = parts.commit_part(
                run.paths, condition.condition_id, _ConditionPart(run.run_id, condition, options.mode, ranking_run, options.ranking, rows).write
            )
            result.conditions_written += record is not None
            if on_progress:
                on_progress(done, len(pending))
    result.summary = sweep_summary(warehouse.root, run.run_id)
    return result


def _check_options(options: MaskOptions) -> None:
    for name in ("batch_size", "limit", "max_new_tokens", "seeds"):
        value = getattr(options, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    for values, allowed, option in ((options.strategies, STRATEGIES, "strategy"), (options.stages, STAGES, "stage")):
        unknown = [value for value in values if value not in allowed]
        if unknown or not values:
            raise UsageError(f"--{option} takes {', '.join(allowed)}; got {', '.join(values) or 'nothing'}")
    if options.ranking not in RANKING_METRICS:
        raise UsageError(f"--ranking takes {', '.join(RANKING_METRICS)}; got {options.ranking!r}")
    if options.ranking_query not in ("prompt", "gen1"):
        raise UsageError(f"--ranking-query takes prompt or gen1; got {options.ranking_query!r}")
    HeadMask((), options.mode)  # checks the mode


def find_ranking_run(warehouse_root: Path, model: str, model_revision: str, benchmark: str) -> str:
    """The latest complete extraction run of this model (same revision) and benchmark."""
    from attnwh.queries.library import open_session

    with open_session(warehouse_root) as session:
        found = session.query(
            "select run_id, spec from runs where kind = 'extract' and model = $model and benchmark = $benchmark and complete "
            "order by created desc",
            {"model": model, "benchmark": benchmark},
        ).to_pylist()
    for row in found:
        if json.loads(row["spec"]).get("model_revision") == model_revision:
            return row["run_id"]
    raise UsageError(
        f"no complete extraction run of {model} (this revision) on {benchmark} in the warehouse to rank heads by; "
        f"run `attnwh extract --model {model} --benchmark {benchmark}` first, or pass --ranking-run"
    )


def rank_heads(warehouse_root: Path, run_id: str, metric: str, query: str) -> list[tuple[int, int]]:
    """Every head of the run, best first, by the ``head_ranking`` query."""
    from attnwh.queries.library import marts, open_session

    with open_session(warehouse_root) as session:
        rows = session.query(marts()["head_ranking"].sql, {"run_id": run_id, "metric": metric, "query": query}).to_pylist()
    if not rows:
        raise UsageError(f"extraction run {run_id} has no head metrics for query {query}")
    return [(row["layer"], row["head"]) for row in rows]


class _Sweep:
    """The sweep's samples, encoded once per batch; evaluated under one mask at a time."""

    def __init__(self, loaded: LoadedModel, prompt_format: PromptFormat, template: str, samples: list[Sample], batch_size: int, max_new_tokens: int):
        self.loaded, self.max_new_tokens = loaded, max_new_tokens
        self.errors: list[dict[str, Any]] = []
        self.batches: list[tuple[list[tuple[int, Sample]], dict[str, torch.Tensor]]] = []
        ready = []
        for index, sample in enumerate(samples):
            try:
                if sample.error is not None:
                    raise ValueError(f"data: {sample.error}")
                ready.append((index, sample, sample.load_image().convert("RGB")))
            except Exception as exc:  # noqa: BLE001  a broken sample fails alone
                self.errors.append({"sample_idx": index, "sample_key": sample.key, "status": "error", "error": str(exc)[:1000], "gold": sample.gold})
        for start in range(0, len(ready), batch_size):
            chunk = ready[start : start + batch_size]
            prompts = [prompt_format.render(loaded.processor, render_question(template, sample)) for _, sample, _ in chunk]
            encoded = encode_batch(loaded, [image for _, _, image in chunk], prompts)
            self.batches.append(([(index, sample) for index, sample, _ in chunk], encoded))
        self.letter_ids = letter_token_ids(loaded.processor.tokenizer)

    def head_means(self) -> dict[tuple[int, int], torch.Tensor]:
        """Each head's mean output over the real prefill positions of all samples (mode ``mean``)."""
        adapter, model = self.loaded.adapter, self.loaded.model
        modules = adapter.attention_modules(model)
        totals, count = None, 0
        for _, encoded in self.batches:
            with torch.inference_mode(), recording_head_means(modules, encoded["attention_mask"]) as recorders:
                model(**encoded)
            sums = torch.stack([recorder.total for recorder in recorders])  # [layer, head, head_dim]
            totals = sums if totals is None else totals + sums
            count += recorders[0].count
        means = (totals / count).cpu()
        return {(layer, head): means[layer, head] for layer in range(means.shape[0]) for head in range(means.shape[1])}

    def evaluate(self, mask: HeadMask | None) -> list[dict[str, Any]]:
        tokenizer = self.loaded.processor.tokenizer
        rows = [dict(row) for row in self.errors]
        for batch, encoded in self.batches:
            generation, _, _ = generate_with_capture(self.loaded, encoded, None, self.max_new_tokens, mask=mask)
            log_probs = torch.log_softmax(generation.first_logits, dim=-1)
            for position, ((index, sample), answer) in enumerate(zip(batch, generation.answers)):
                score = score_answer(tokenizer, sample, answer, log_probs[position], self.letter_ids)
                rows.append({"sample_idx": index, "sample_key": sample.key, "status": "ok", "gold": sample.gold, **score})
        return sorted(rows, key=lambda row: row["sample_idx"])


@dataclass
class _ConditionPart:
    run_id: str
    condition: Condition
    mode: str
    ranking_run: str
    ranking_metric: str
    rows: list[dict[str, Any]]

    def write(self, folder: Path) -> dict[str, int]:
        c = self.condition
        conditions = pa.Table.from_pylist(
            [
                {
                    "run_id": self.run_id,
                    "condition_id": c.condition_id,
                    "strategy": c.strategy,
                    "stage": c.stage,
                    "k": c.k,
                    "fraction": c.fraction,
                    "seed": c.seed,
                    "mode": self.mode,
                    "ranking_run_id": self.ranking_run,
                    "ranking_metric": self.ranking_metric,
                    "heads": [{"layer": layer, "head": head} for layer, head in c.heads],
                }
            ],
            schema=MASK_CONDITIONS,
        )
        results = pa.Table.from_pylist(
            [{"run_id": self.run_id, "condition_id": c.condition_id, "mode": self.mode, **row} for row in self.rows], schema=MASK_RESULTS
        )
        for table, name in ((conditions, "mask_conditions"), (results, "mask_results")):
            pq.write_table(table.replace_schema_metadata(with_metadata(name, table.schema).metadata), folder / f"{name}.parquet", compression="zstd")
        return {"mask_conditions": 1, "mask_results": results.num_rows}


def sweep_summary(warehouse_root: Path, run_id: str) -> pa.Table:
    """Accuracy per condition with its 95% Wilson interval and the paired difference to the baseline."""
    from attnwh.queries.library import open_session

    with open_session(warehouse_root) as session:
        return session.query(
            "select strategy, stage, k, round(fraction, 3) as fraction, seed, n, round(accuracy, 3) as accuracy, "
            "round(ci_low, 3) as ci_low, round(ci_high, 3) as ci_high, round(delta, 3) as delta, mcnemar_p "
            "from masking_accuracy where run_id = $run_id order by condition_id",
            {"run_id": run_id},
        )
