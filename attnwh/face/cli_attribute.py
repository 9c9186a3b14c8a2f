"""``attnwh attribute``: causal head importance (patterns, single-head ablation or attribution patching) as a
ranking run beside the attention-based rankings (``extract.attribution``)."""

from __future__ import annotations

import inspect
import sys
from typing import Annotated

import typer

from attnwh.core.errors import UsageError
from attnwh.face.cli_run import (
    BenchmarkOption,
    DataOption,
    DeviceOption,
    DtypeOption,
    LimitOption,
    ModelOption,
    PromptFormatOption,
    PromptStyleOption,
    RankOption,
    ReuseOption,
    SchedulerOption,
    SplitOption,
    StackOption,
    ThreadsOption,
    WorldSizeOption,
)
from attnwh.face.console import WarehouseOption, handles_errors, progress, warn, warn_reuse_off

TOP_SHOWN = 10  # heads printed after a run
# the options a refit does not read (the run's model, samples, patterns and ablation are refitted as they were)
REFIT_IGNORES = (
    "model", "benchmark", "data", "split", "limit", "method", "ablation", "patterns", "fraction", "batch_size", "dtype", "device",
    "prompt_format", "prompt_style", "scheduler", "threads_per_worker", "rank", "world_size", "reuse", "stack",
)  # fmt: skip


@handles_errors
def attribute(
    model: ModelOption = None,
    benchmark: BenchmarkOption = None,
    data: DataOption = None,
    split: SplitOption = None,
    limit: LimitOption = None,
    warehouse: WarehouseOption = None,
    method: Annotated[
        str,
        typer.Option(
            help="patterns (random multi-head ablations and a linear fit), single (one head at a time, H passes a sample) or gradient (attribution patching: one forward and backward pass)."
        ),
    ] = "patterns",
    ablation: Annotated[
        str,
        typer.Option(
            help="How a head is ablated: zero (its output zeroed), mean (its mean output over the benchmark's samples), blank-image (it reads the keys and values "
            "of a blank image, the processor's mean colour, in place of the image's: one extra prefill a batch, its keys and values held meanwhile, ~0.33 GB a sample "
            "for LLaVA-1.5-7B in bf16) or mean-image (of the samples' mean image; images of one pixel shape). The image ablations: patterns and single."
        ),
    ] = "zero",
    target: Annotated[str, typer.Option(help="What an ablation changes: logprob (the gold option's log-probability) or margin (over the best wrong option).")] = "logprob",
    patterns: Annotated[int | None, typer.Option(help="patterns: N ablation patterns, each applied to every sample (default: 4 × heads, at least 64).")] = None,
    fraction: Annotated[
        float,
        typer.Option(
            help="patterns: p, the chance a pattern ablates each head (a fraction p of heads on average), strictly between 0 and 1; a head redundant with a partner scores about p × their joint effect, so a larger p (0.5) finds such pairs more surely."
        ),
    ] = 0.2,
    fit: Annotated[str, typer.Option(help="patterns: ridge (scikit-learn's RidgeCV), lasso (LassoCV) or ols (plain least squares: needs more patterns than heads).")] = "ridge",
    alpha: Annotated[float | None, typer.Option(help="patterns: the ridge / lasso regularisation (default: chosen by cross-validation).")] = None,
    bootstrap: Annotated[int, typer.Option(help="patterns: bootstrap resamples of the patterns for each head's interval (0: none).")] = 200,
    seed: Annotated[int, typer.Option(help="patterns: the seed of the patterns, the held-out split and the bootstrap.")] = 0,
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
    run: Annotated[str | None, typer.Option("--run", help="Resume (or create) the attribution run with this id.")] = None,
    refit: Annotated[
        str | None,
        typer.Option(
            "--refit",
            help="Fit again from this complete patterns or single run's stored targets, without running the model: a new run with this command's --fit, --alpha, "
            "--bootstrap, --seed (held-out split and bootstrap) and --target; the model, samples and patterns are the run's (the sweep's other options are not read).",
        ),
    ] = None,
) -> None:
    """Rank heads by what ablating them does to the gold answer, as a ranking run (kind attribution).

    Each head gets a score (the drop of the target when it is ablated), a standard error and a 95% interval.
    patterns and single are sweeps: each pattern or head is a condition, committed as it finishes, and the
    same command again resumes; the fit is committed once every condition is in. The run can be masked by
    (attnwh mask --ranking-run RUN), pruned by (attnwh prune --ranking-run RUN --allocation score),
    exported (attnwh heads export RUN) and compared with attention (attnwh query ranking_agreement).

    Example: attnwh attribute --benchmark toy-shapes-choice --limit 16 --patterns 128 --fraction 0.2
    Refit: attnwh attribute --refit RUN --fit lasso
    """
    from attnwh.core.output import render
    from attnwh.extract.attribution import AttributeOptions, prepare_attribute, refit_attribution, run_attribute
    from attnwh.queries.library import open_session, run_mart

    options = AttributeOptions(
        model=model,
        benchmark=benchmark,
        data=data,
        split=split,
        limit=limit,
        method=method,
        ablation=ablation,
        target=target,
        patterns=patterns,
        p=fraction,
        fit=fit,
        alpha=alpha,
        bootstrap=bootstrap,
        seed=seed,
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
        run_id=run,
        command=["attnwh", *sys.argv[1:]],
    )
    if refit is not None:
        arguments, defaults = locals(), inspect.signature(attribute).parameters
        ignored = [f"--{name.replace('_', '-')}" for name in REFIT_IGNORES if arguments[name] != defaults[name].default]
        if ignored:  # the run's own model, samples and patterns are refitted: these would be silently not read
            raise UsageError(f"--refit fits the run's stored targets again: {', '.join(ignored)} do not apply (it reads --fit, --alpha, --bootstrap, --seed, --target)")
        result = refit_attribution(warehouse, refit, options)
    else:
        setup = prepare_attribute(options)
        with progress("attribute", "conditions") as on_progress:
            result = run_attribute(warehouse, setup, on_progress=on_progress)
        warn_reuse_off(result.reuse_off)
        warn([result.stack_lowered] if result.stack_lowered else [])
    if not result.fitted:
        typer.echo(
            f"attribution run {result.run_id}: wrote {result.conditions_written} of {result.conditions_total} condition(s); the fit follows once every condition is committed"
        )
        return
    with open_session(warehouse) as session:
        top = run_mart(session, "attribution_ranking", {"run_id": result.run_id}).slice(0, TOP_SHOWN)
    typer.echo(render(top.select(["rank", "layer", "head", "stage", "score", "std_error", "ci_low", "ci_high"]), "table"))
    fitted = result.fit
    quality = ""
    if fitted.get("r2_heldout") is not None:
        quality = f"; held-out R² {fitted['r2_heldout']:.3f}, Spearman {fitted['spearman_heldout'] if fitted['spearman_heldout'] is not None else float('nan'):.3f}"
    alpha_text = f", alpha {fitted['alpha']:.3g}" if fitted.get("alpha") is not None else ""
    ablations = f"{fitted['n_conditions']} ablation(s) and the baseline, " if fitted.get("n_conditions") else ""  # gradient: none
    typer.echo(f"attribution run {result.run_id} ({result.method}, {ablations}{fitted.get('n_samples')} sample(s){alpha_text}{quality})")
    typer.echo(f"mask by it: attnwh mask --ranking-run {result.run_id} ...; compare: attnwh query ranking_agreement -p run_a=RUN -p run_b={result.run_id}")
