"""The commands that run models: ``attnwh extract``, ``attnwh mask`` and ``attnwh toy train``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from attnwh.core.errors import UsageError
from attnwh.face.console import SCORE_HELP, WarehouseOption, check_new_folder, handles_errors, head_score, output_path, progress, stack_size, warn, warn_reuse_off

MAX_SEED = 2**63 - 1  # torch seeds are 64-bit; the toy's norms are seeded with seed + 1

# the options extract and mask share
ModelOption = Annotated[str | None, typer.Option(help="Hub id or model folder (default: toy-llava, the embedded trained toy).")]
BenchmarkOption = Annotated[str | None, typer.Option(help="Benchmark name (default: toy-shapes).")]
DataOption = Annotated[str | None, typer.Option(help="Benchmark data: a file or folder, or a hub dataset id.")]
SplitOption = Annotated[str | None, typer.Option(help="Benchmark split.")]
LimitOption = Annotated[int | None, typer.Option(help="Use only the first N samples.")]
DtypeOption = Annotated[str, typer.Option(help="auto, float32, bfloat16 or float16.")]
DeviceOption = Annotated[str, typer.Option(help="auto, cpu or cuda.")]
PromptFormatOption = Annotated[str, typer.Option(help="chat_template, llava_v1, vip_llava, llama3, phi3 or mistral_instruct.")]
PromptStyleOption = Annotated[str, typer.Option(help="Question wording: llava-eval (LLaVA-1.5's eval scripts) or study (the study's code).")]
RankOption = Annotated[int | None, typer.Option(help="This process's rank (default: from torchrun / accelerate / SLURM, else 0).")]
WorldSizeOption = Annotated[int | None, typer.Option(help="How many ranks share the run: rank r takes the parts with part_id % world_size == r.")]
SchedulerOption = Annotated[
    str | None,
    typer.Option(help="local, local:N (N Dask workers here, at most one per CPU core), tcp://HOST:PORT or scheduler.json (default: $DASK_SCHEDULER_ADDRESS, else local)."),
]
ThreadsOption = Annotated[int, typer.Option(help="Threads per Dask worker with local:N.")]
StackOption = Annotated[
    int | None,
    typer.Option(
        parser=stack_size,
        metavar="auto|N",
        show_default="auto",
        help="With reuse: conditions of the same samples per forward pass, each on its own rows (rows: N × batch size; memory grows "
        "with them; weights are read once per step for all). auto: on a GPU as many as 80% of its free memory holds by what the "
        "first batch's passes took (at most 16), on a CPU 1 (a stacked pass is slower there). A stack that runs out of memory is "
        "run in halves, and later stacks are no larger.",
    ),
]
ReuseOption = Annotated[
    bool,
    typer.Option(
        "--reuse/--no-reuse",
        help="Share what conditions have in common: each batch's images encoded once, the baseline's layers before a condition's first "
        "masked or pruned layer run once and each condition started there (their output and KV cache are kept for the "
        "batch at hand only: the device holds one batch's), and each prefill's last layer computed for the final position "
        "alone (the logits read nothing else); checked against the plain path on the first batch, and "
        "turned off if they differ. --no-reuse: each condition from scratch. Either way the processor's output for "
        "every batch is held on the host, without the pictures, up to a quarter of the memory this process may use "
        "(the machine's or its cgroup's, divided among the launch's processes on the machine; a Dask worker's memory "
        "limit); batches past it are encoded again each time they are evaluated.",
    ),
]
SweepTokensOption = Annotated[
    int | None,
    typer.Option(help="Generated tokens per answer (default: stop each answer once its parser has decided it, within the benchmark's limit; the text up to there is stored)."),
]


@handles_errors
def extract(
    model: ModelOption = None,
    benchmark: BenchmarkOption = None,
    data: DataOption = None,
    split: SplitOption = None,
    limit: LimitOption = None,
    warehouse: WarehouseOption = None,
    queries: Annotated[
        str,
        typer.Option(
            help="Captured queries, comma-separated: prompt (the last prompt position), gen1 (the first generated token), gen "
            "(every generated position up to --max-new-tokens: statistics per step, layer and head, the generated tokens "
            "and their words, and the lens rank of each generated token; raw rows only with --gen-rows)."
        ),
    ] = "prompt,gen1",
    rows: Annotated[bool, typer.Option("--rows/--no-rows", help="Store raw attention rows (Zarr).")] = True,
    lens: Annotated[bool, typer.Option("--lens/--no-lens", help="Store the logit lens per layer.")] = True,
    gen_rows: Annotated[
        bool,
        typer.Option(
            "--gen-rows/--no-gen-rows",
            help="With gen: store the raw rows of every generated step too (Zarr, float16): steps × layers × heads × keys × 2 bytes "
            "a sample, 84 MB for 64 tokens of a 32-layer, 32-head model at 640 keys; a part's rows are held in memory until it is written.",
        ),
    ] = False,
    batch_size: Annotated[int, typer.Option(help="Samples per forward pass (left-padded).")] = 8,
    dtype: DtypeOption = "auto",
    device: DeviceOption = "auto",
    part_size: Annotated[int | None, typer.Option(help="Samples per committed part (default: the benchmark's, 32 for the toy, else 256).")] = None,
    max_new_tokens: Annotated[int | None, typer.Option(help="Generated tokens per answer, 1 to 4096 (default: the benchmark's).")] = None,
    run: Annotated[str | None, typer.Option("--run", help="Resume (or create) the run with this id.")] = None,
    max_parts: Annotated[int | None, typer.Option(help="Stop after writing this many parts; rerun to resume.")] = None,
    prompt_format: PromptFormatOption = "chat_template",
    prompt_style: PromptStyleOption = "llava-eval",
    rank: RankOption = None,
    world_size: WorldSizeOption = None,
    scheduler: SchedulerOption = None,
    threads_per_worker: ThreadsOption = 1,
) -> None:
    """Run a model over a benchmark and store attention statistics, raw rows and answers.

    Running the same command again resumes the run: committed parts are skipped.

    Example: attnwh extract --limit 32 --batch-size 4
    """
    from attnwh.extract.run import ExtractOptions, run_extract

    options = ExtractOptions(
        model=model,
        benchmark=benchmark,
        data=data,
        split=split,
        limit=limit,
        queries=tuple(name.strip() for name in queries.split(",") if name.strip()),
        rows=rows,
        lens=lens,
        gen_rows=gen_rows,
        batch_size=batch_size,
        dtype=dtype,
        device=device,
        part_size=part_size,
        max_new_tokens=max_new_tokens,
        run_id=run,
        max_parts=max_parts,
        prompt_format=prompt_format,
        prompt_style=prompt_style,
        rank=rank,
        world_size=world_size,
        scheduler=scheduler,
        threads_per_worker=threads_per_worker,
        command=["attnwh", *sys.argv[1:]],
    )
    with progress() as on_progress:
        result = run_extract(warehouse, options, on_progress=on_progress)
    if result.damaged:
        warn([f"{result.damaged}; its committed parts are not computed again (--run NAME extracts into a new run)"])
    if result.errors:
        warn([error_rows_warning(result)])
    state = _state(result)
    typer.echo(
        f"run {result.run_id} ({state}): wrote {result.parts_written} part(s), {result.samples_written} sample(s), "
        f"{result.errors} error row(s); {result.parts_skipped} of {result.parts_total} part(s) were already committed"
    )
    _echo_dashboard(result)
    typer.echo(f"run folder: {result.run_path}")
    if result.errors and result.errors == result.samples_written:
        raise typer.Exit(1)  # nothing was extracted: a script should not go on to mask or report it


def error_rows_warning(result) -> str:
    """One line on the error rows this extraction wrote: how many, the first reason, and where they are listed; when
    every sample was one, that the run is committed with them (a resume does not read them again)."""
    every = result.errors == result.samples_written
    share = f"all {result.errors}" if every else f"{result.errors} of {result.samples_written}"
    line = f"{share} sample(s) written are error rows (first: {result.first_error}); attnwh sql \"select sample_key, error from samples where run_id = '{result.run_id}' and status = 'error'\" lists them"
    if every:
        line += "; the run is committed with them and resuming it reads none again: check --data, then extract into a new run (--run NAME)"
    return line


@handles_errors
def prune(
    model: ModelOption = None,
    benchmark: BenchmarkOption = None,
    data: DataOption = None,
    split: SplitOption = None,
    limit: LimitOption = None,
    warehouse: WarehouseOption = None,
    kv_share: Annotated[str, typer.Option(help="Shares of all image KV kept, comma-separated (1 = the full cache, the reference).")] = "1,0.5,0.25,0.1,0.05",
    allocation: Annotated[
        str, typer.Option(help="Budgets per KV head, comma-separated: score (floor + in proportion to the head score), uniform, random.")
    ] = "score,uniform,random",
    keep: Annotated[
        str,
        typer.Option(
            help="Image keys a head keeps within its budget: attention (the keys its attention ranks highest: with --phase cache SnapKV's "
            "observation window of the last 32 prompt positions, pooled; with prefill its last prompt row) or stride (evenly spaced); comma-separated."
        ),
    ] = "attention",
    phase: Annotated[
        str,
        typer.Option(
            help="When removed keys leave a head's softmax: cache (the prefill attends over every key, so the first answer token is the full "
            "cache's; after it each head keeps its budget and decoding reads only those, as SnapKV and SparseMM) or prefill (in the prefill "
            "too, for every query); comma-separated."
        ),
    ] = "cache",
    floor: Annotated[float, typer.Option(help="score / random: every KV head's floor budget, as a share of the kept share.")] = 0.1,
    seeds: Annotated[int, typer.Option(help="Seeds of the random allocation.")] = 3,
    score: Annotated[str, typer.Option(parser=head_score, metavar="SCORE", help=f"Head score the score allocation follows: {SCORE_HELP}.")] = "concentration_x_sum",
    ranking_run: Annotated[
        str | None, typer.Option(help="Extraction run (or imported ranking) whose head scores set the budgets (default: the latest extraction of this model and benchmark).")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Samples per forward pass.")] = 8,
    dtype: DtypeOption = "auto",
    device: DeviceOption = "auto",
    prompt_format: PromptFormatOption = "chat_template",
    prompt_style: PromptStyleOption = "llava-eval",
    scheduler: SchedulerOption = None,
    threads_per_worker: ThreadsOption = 1,
    rank: RankOption = None,
    world_size: WorldSizeOption = None,
    reuse: ReuseOption = True,
    stack: StackOption = None,
    max_new_tokens: SweepTokensOption = None,
    run: Annotated[str | None, typer.Option("--run", help="Resume (or create) the prune run with this id.")] = None,
) -> None:
    """Prune each head's image KV cache (budgets by head score, uniform or random) and store accuracy and KV bytes per condition.

    By default (--phase cache) the prefill runs over every key and, after it, each head keeps its budget of
    image keys: every decode step leaves the others out of that head's softmax, exactly what evicting them
    from its cache does (--phase prefill: they leave it in the prefill too); text keys are always kept.
    Budgets follow the head scores of an extraction run (or a ranking imported with attnwh heads import),
    so run attnwh extract first.

    Example: attnwh extract && attnwh prune --kv-share 1,0.25,0.1 --allocation score,uniform --seeds 2
    """
    from attnwh.extract.prune_run import PruneOptions
    from attnwh.face.workflows import prune_sweep

    options = PruneOptions(
        model=model,
        benchmark=benchmark,
        data=data,
        split=split,
        limit=limit,
        kv_shares=_names(kv_share),
        allocations=_names(allocation),
        keep=_names(keep),
        phase=_names(phase),
        floor=floor,
        seeds=seeds,
        score=score,
        ranking_run=ranking_run,
        batch_size=batch_size,
        dtype=dtype,
        device=device,
        prompt_format=prompt_format,
        prompt_style=prompt_style,
        rank=rank,
        world_size=world_size,
        scheduler=scheduler,
        threads_per_worker=threads_per_worker,
        reuse=reuse,
        stack=stack,
        max_new_tokens=max_new_tokens,
        run_id=run,
        command=["attnwh", *sys.argv[1:]],
    )
    _run_sweep("prune", prune_sweep, warehouse, options)


@handles_errors
def mask(
    model: ModelOption = None,
    benchmark: BenchmarkOption = None,
    data: DataOption = None,
    split: SplitOption = None,
    limit: LimitOption = None,
    warehouse: WarehouseOption = None,
    strategy: Annotated[str, typer.Option(help="Head sets, comma-separated: top, random, bottom.")] = "top,random",
    stage: Annotated[str, typer.Option(help="Layer stages, comma-separated: early, mid, late, all.")] = "all",
    k: Annotated[str, typer.Option(help="Heads to mask, comma-separated counts or fractions of all heads (5, 0.1, 10%).")] = "0,0.05,0.1,0.2",
    seeds: Annotated[int, typer.Option(help="Seeds of the random strategy.")] = 3,
    mode: Annotated[str, typer.Option(help="zero (output zeroed), mean (mean output) or paper (uniform attention, unpadded).")] = "zero",
    score: Annotated[
        str,
        typer.Option(
            "--score", "--ranking", parser=head_score, metavar="SCORE", help=f"Head score that ranks heads: {SCORE_HELP} (region_hit: boxed benchmarks; --ranking: its old name)."
        ),
    ] = "concentration_x_sum",
    ranking_run: Annotated[str | None, typer.Option(help="Extraction run to rank heads by (default: the latest of this model and benchmark).")] = None,
    batch_size: Annotated[int, typer.Option(help="Samples per forward pass (paper mode: 1).")] = 8,
    dtype: DtypeOption = "auto",
    device: DeviceOption = "auto",
    prompt_format: PromptFormatOption = "chat_template",
    prompt_style: PromptStyleOption = "llava-eval",
    scheduler: SchedulerOption = None,
    threads_per_worker: ThreadsOption = 1,
    rank: RankOption = None,
    world_size: WorldSizeOption = None,
    reuse: ReuseOption = True,
    stack: StackOption = None,
    max_new_tokens: SweepTokensOption = None,
    run: Annotated[str | None, typer.Option("--run", help="Resume (or create) the mask run with this id.")] = None,
) -> None:
    """Switch heads off (top / random / bottom by stage, over a grid of k) and store accuracy per condition.

    Top heads are ranked over an extraction run of the same model and benchmark, so run attnwh extract
    first. Each condition is committed as it finishes; the same command again resumes the sweep.

    Example: attnwh extract && attnwh mask --strategy top,random --k 0,2,4,8 --seeds 3
    """
    from attnwh.extract.mask_run import MaskOptions
    from attnwh.face.workflows import mask_sweep

    options = MaskOptions(
        model=model,
        benchmark=benchmark,
        data=data,
        split=split,
        limit=limit,
        strategies=_names(strategy),
        stages=_names(stage),
        k=_names(k),
        seeds=seeds,
        mode=mode,
        score=score,
        ranking_run=ranking_run,
        batch_size=batch_size,
        dtype=dtype,
        device=device,
        prompt_format=prompt_format,
        prompt_style=prompt_style,
        rank=rank,
        world_size=world_size,
        scheduler=scheduler,
        threads_per_worker=threads_per_worker,
        reuse=reuse,
        stack=stack,
        max_new_tokens=max_new_tokens,
        run_id=run,
        command=["attnwh", *sys.argv[1:]],
    )
    _run_sweep("mask", mask_sweep, warehouse, options)


def _names(text: str) -> tuple[str, ...]:
    """A comma-separated option's values."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _run_sweep(kind: str, sweep, warehouse: str | None, options) -> None:
    """Run (or resume) a sweep with a progress bar, then print its table and what was committed."""
    from attnwh.core.output import render

    with progress(kind, "conditions") as on_progress:
        result, summary = sweep(warehouse, options, on_progress=on_progress, warn=warn)
    warn_reuse_off(result.reuse_off)
    warn([*result.left_out, *([result.stack_lowered] if result.stack_lowered else [])])
    typer.echo(render(summary, "table"))
    typer.echo(f"{kind} run {result.run_id}: wrote {result.conditions_written} condition(s); {result.conditions_skipped} of {result.conditions_total} were already committed")
    typer.echo(f"run folder: {result.run_path}")


@handles_errors
def toy_train(
    out: Annotated[Path | None, typer.Option(parser=output_path, metavar="PATH", help="Model folder to write (default: $ATTNWH_HOME/models/toy-llava-SIZE-trained).")] = None,
    steps: Annotated[int | None, typer.Option(help="Language-model training steps after the vision tower's (default 3000).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the initial weights (training data are fixed).")] = 0,
    size: Annotated[str, typer.Option(help="small (4 layers x 8 heads, hidden 64), medium (6 x 12, 96) or large (8 x 16, 128).")] = "small",
) -> None:
    """Train a toy LLaVA on toy-shapes on the CPU (small: about 3 minutes on 2 cores), deterministic from the seed.

    The trained model is saved with save_pretrained; use it with --model FOLDER. The shipped toys
    (toy-llava-small, alias toy-llava; toy-llava-medium; toy-llava-large) are this command's output
    with the default settings and each --size.

    Example: attnwh toy train --out my-toy && attnwh extract --model my-toy
    """
    from attnwh.core.home import attnwh_home
    from attnwh.extract.toy.train import LANGUAGE_STEPS, TRAINED_SPECS, train_toy

    if size not in TRAINED_SPECS:
        raise UsageError(f"--size takes {', '.join(TRAINED_SPECS)}; got {size!r}")
    steps = LANGUAGE_STEPS if steps is None else steps
    if steps < 1:
        raise UsageError(f"--steps must be at least 1, got {steps}")
    if not 0 <= seed <= MAX_SEED:
        raise UsageError(f"--seed takes 0 to {MAX_SEED} (a 64-bit seed), got {seed}")
    folder = out if out is not None else attnwh_home() / "models" / f"toy-llava-{size}-trained"
    check_new_folder(folder, "--out")
    if folder.exists() and any(folder.iterdir()):
        raise UsageError(f"{folder} exists and is not empty; give another --out")
    metrics = train_toy(folder, steps=steps, seed=seed, size=size, log=lambda line: typer.echo(line, err=True))
    typer.echo(f"trained in {metrics['seconds']} s: held-out yes/no accuracy {metrics['accuracy_yes_no']:.3f}, colour multiple choice {metrics['accuracy_colour']:.3f}")
    typer.echo(
        f"held-out captions: exact {metrics['caption_exact']:.3f}, ending with </s> {metrics['caption_eos_rate']:.3f}, "
        f"CHAIR {metrics['caption_chair']:.1f}%, Cover {metrics['caption_cover']:.1f}%, Hal {metrics['caption_hal']:.1f}%"
    )
    typer.echo(f"model folder: {folder}")


@handles_errors
def toy_zoo(
    warehouse: WarehouseOption = None,
    limit: Annotated[int, typer.Option(help="Samples per benchmark (256: the whole test split).")] = 256,
    k: Annotated[str, typer.Option(help="Heads to mask, comma-separated counts or fractions of all heads.")] = "0,0.1,0.2",
    seeds: Annotated[int, typer.Option(help="Seeds of the random heads.")] = 3,
    device: DeviceOption = "auto",
) -> None:
    """Extract every shipped toy (small, medium, large) on every toy benchmark and sweep masking on each
    (but toy-shapes-region, whose questions are toy-shapes-choice's: its sweep would repeat that one).

    Three toys of three scales, as the study compares 3.8B, 7B and 13B models, on yes / no,
    colour-choice and boxed-region questions and on descriptions of the shapes (toy-shapes-caption,
    captured at every generated token, its object words counted against the scene): then attnwh
    report shows the study's comparisons across models and benchmarks, and its Long answers page.
    The small toy is also attributed on the colour choices (attnwh attribute: random ablation patterns on the
    first 64 samples) and masked by that ranking: the report's page Attention against causal importance.
    The same command again resumes.

    Example: attnwh toy zoo && attnwh report
    """
    from attnwh.face.workflows import ZOO_SAME_QUESTIONS
    from attnwh.face.workflows import toy_zoo as run_zoo

    if limit < 1:
        raise UsageError(f"--limit must be at least 1, got {limit}")
    done = run_zoo(warehouse, limit, _names(k), seeds, device, on_step=lambda line: typer.echo(line, err=True), warn=warn, progress_bar=progress)
    for model, benchmark, extraction, mask in done:
        typer.echo(f"{model:<18} {benchmark:<19} extraction {extraction}  mask {mask or f'none ({ZOO_SAME_QUESTIONS[benchmark]} asks the same questions)'}")


@handles_errors
def recompute(
    run_id: Annotated[str, typer.Argument(metavar="RUN_ID", help="The extraction run whose raw rows are read.")],
    statistic: Annotated[str, typer.Option(help="topk_mass (--k), image_sum_without_sinks (--tau, --share) or region (--regions).")],
    name: Annotated[str, typer.Option(help="The view to read the derived table through in SQL (a lower-case identifier).")],
    k: Annotated[int | None, typer.Option(help="topk_mass: the image tokens counted.")] = None,
    tau: Annotated[float | None, typer.Option(help="Sinks: a head votes for an image token holding more than this share of its image attention.")] = None,
    share: Annotated[float | None, typer.Option(help="Sinks: a token is a sink when at least this share of the sample's heads vote for it.")] = None,
    regions: Annotated[str | None, typer.Option(help='region: a JSON-lines file of {"sample_key": ..., "boxes": [[x0, y0, x1, y1], ...]} in pixels.')] = None,
    data: Annotated[str | None, typer.Option(help="region: the benchmark's data, if it moved since extraction.")] = None,
    model: Annotated[str | None, typer.Option(help="region: the model folder or hub id, if it moved since extraction.")] = None,
    warehouse: WarehouseOption = None,
    scheduler: SchedulerOption = None,
    threads_per_worker: ThreadsOption = 1,
    max_parts: Annotated[int | None, typer.Option(help="Stop after writing this many parts; rerun to resume.")] = None,
) -> None:
    """Compute a new statistic per (sample, query, layer, head) from a run's raw rows, without a model.

    The derived table is committed part by part (rerun to resume) and read in SQL through the view
    NAME, whose run_id is the extraction run's: it joins head_metrics.

    Example: attnwh recompute RUN_ID --statistic topk_mass --k 5 --name top5_mass
    """
    from attnwh.extract.recompute import RecomputeOptions
    from attnwh.face.workflows import recompute as run_recompute

    options = RecomputeOptions(
        source_run=run_id,
        statistic=statistic,
        name=name,
        k=k,
        tau=tau,
        share=share,
        regions=Path(regions) if regions else None,
        data=Path(data) if data else None,
        model=model,
        scheduler=scheduler,
        threads_per_worker=threads_per_worker,
        max_parts=max_parts,
        command=["attnwh", *sys.argv[1:]],
    )
    with progress(label="recompute", unit="parts") as on_progress:
        result = run_recompute(warehouse, options, on_progress=on_progress)
    state = _state(result)
    typer.echo(
        f"derived run {result.run_id} ({state}) of run {result.source_run_id}: wrote {result.parts_written} part(s), "
        f"{result.rows_written} row(s); {result.parts_skipped} of {result.parts_total} part(s) were already computed"
    )
    _echo_dashboard(result)
    typer.echo(f'query it: attnwh sql "select * from {result.name} join head_metrics using (run_id, sample_idx, query, layer, head) limit 5"')


def _state(result) -> str:
    """An extraction's or recomputation's result: complete when every part is committed (by this process or, where
    the result counted them at its end, by any: another writer's parts too)."""
    committed = getattr(result, "parts_committed", None)
    return "complete" if (committed if committed is not None else result.parts_skipped + result.parts_written) >= result.parts_total else "incomplete"


def _echo_dashboard(result) -> None:
    if result.dashboard:
        typer.echo(f"dask dashboard: {result.dashboard}")
