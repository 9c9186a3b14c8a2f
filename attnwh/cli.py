"""The ``attnwh`` command line: a thin layer over the library.

Library code raises ``AttnwhError`` subclasses; every command turns them into one line on stderr and
a non-zero exit code. Option mistakes caught by the parser also give one line. Anything else is a
bug: one line ``attnwh: internal error: ...`` and exit code 70, the traceback only with ``--debug``
or ``ATTNWH_DEBUG=1``. Only typer's public API is used (``typer.Exit``, ``typer.Abort``,
``typer.TyperException``), never its vendored click.
"""

from __future__ import annotations

import functools
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Annotated

import typer

from attnwh.errors import AttnwhError, UsageError

INTERNAL_ERROR_EXIT = 70  # EX_SOFTWARE in sysexits.h: a bug, not the user's mistake
DEBUG_ENV = "ATTNWH_DEBUG"

app = typer.Typer(
    name="attnwh",
    help="A data warehouse of attention statistics for vision-language models.\n\n"
    "Example: attnwh extract && attnwh report\n\n"
    "--debug (anywhere on the line) or ATTNWH_DEBUG=1 prints the traceback of an internal error.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

WarehouseOption = Annotated[
    str | None,
    typer.Option("--warehouse", "-w", help="Warehouse folder (default: $ATTNWH_WAREHOUSE, else ./attnwh-warehouse)."),
]
FormatOption = Annotated[str, typer.Option("--format", help="Output format: table, csv or json.")]


def one_line(text: str) -> str:
    """``text`` with every line break and control character escaped (``\\x1e``): a message is one line
    on any terminal and for ``str.splitlines``, whatever user input it quotes."""
    return "".join(char if char.isprintable() or char == " " else repr(char)[1:-1] for char in text)


def _fail(message: str, code: int) -> None:
    typer.echo(f"attnwh: error: {one_line(message)}", err=True)
    raise typer.Exit(code)


def handles_errors(command):
    """Turn library errors into one line on stderr and a non-zero exit."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except AttnwhError as exc:
            _fail(str(exc), exc.exit_code)
        except KeyboardInterrupt:
            _fail("interrupted; committed parts are kept, run the same command again to resume", 130)

    return wrapper


def _warn(lines: list[str]) -> None:
    for line in lines:
        typer.echo(f"attnwh: warning: {one_line(line)}", err=True)


class _session:
    """The query session of a read command; runs left out of it are named on stderr, never dropped silently."""

    def __init__(self, warehouse: str | None):
        self.warehouse = warehouse

    def __enter__(self):
        from attnwh.queries.library import open_session

        self.catalog = open_session(self.warehouse)
        _warn(self.catalog.warnings)
        return self.catalog

    def __exit__(self, *exc_info) -> None:
        self.catalog.close()


def _check_format(fmt: str) -> str:
    from attnwh.output import FORMATS

    if fmt not in FORMATS:
        raise UsageError(f"unknown format {fmt!r}; choose {', '.join(FORMATS)}")
    return fmt


@app.command()
@handles_errors
def extract(
    model: Annotated[str | None, typer.Option(help="Hub id or model folder (default: toy-llava, the embedded trained toy).")] = None,
    benchmark: Annotated[str | None, typer.Option(help="Benchmark name (default: toy-shapes).")] = None,
    data: Annotated[str | None, typer.Option(help="Benchmark data: a file or folder, or a hub dataset id.")] = None,
    split: Annotated[str | None, typer.Option(help="Benchmark split.")] = None,
    limit: Annotated[int | None, typer.Option(help="Use only the first N samples.")] = None,
    warehouse: WarehouseOption = None,
    queries: Annotated[str, typer.Option(help="Captured queries, comma-separated: prompt, gen1.")] = "prompt,gen1",
    rows: Annotated[bool, typer.Option("--rows/--no-rows", help="Store raw attention rows (Zarr).")] = True,
    lens: Annotated[bool, typer.Option("--lens/--no-lens", help="Store the logit lens per layer.")] = True,
    batch_size: Annotated[int, typer.Option(help="Samples per forward pass (left-padded).")] = 8,
    dtype: Annotated[str, typer.Option(help="auto, float32, bfloat16 or float16.")] = "auto",
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    part_size: Annotated[int | None, typer.Option(help="Samples per committed part (default 256; 32 for the toy).")] = None,
    max_new_tokens: Annotated[int | None, typer.Option(help="Generated tokens per answer (default: the benchmark's).")] = None,
    run: Annotated[str | None, typer.Option("--run", help="Resume (or create) the run with this id.")] = None,
    max_parts: Annotated[int | None, typer.Option(help="Stop after writing this many parts; rerun to resume.")] = None,
    prompt_format: Annotated[str, typer.Option(help="chat_template, llava_v1, vip_llava, llama3, phi3 or mistral_instruct.")] = "chat_template",
    prompt_style: Annotated[str, typer.Option(help="Question wording: llava-eval (LLaVA-1.5's eval scripts) or study (the study's code).")] = "llava-eval",
) -> None:
    """Run a model over a benchmark and store attention statistics, raw rows and answers.

    Running the same command again resumes the run: committed parts are skipped.

    Example: attnwh extract --limit 32 --batch-size 4
    """
    from attnwh.extract.run import ExtractOptions, run_extract
    from attnwh.extract.toy.default import DEFAULT_BENCHMARK

    options = ExtractOptions(
        model=model,
        benchmark=benchmark,
        data=data,
        split=split,
        limit=limit,
        queries=tuple(name.strip() for name in queries.split(",") if name.strip()),
        rows=rows,
        lens=lens,
        batch_size=batch_size,
        dtype=dtype,
        device=device,
        part_size=part_size or (32 if (benchmark or DEFAULT_BENCHMARK).startswith(DEFAULT_BENCHMARK) else None),
        max_new_tokens=max_new_tokens,
        run_id=run,
        max_parts=max_parts,
        prompt_format=prompt_format,
        prompt_style=prompt_style,
        command=["attnwh", *sys.argv[1:]],
    )
    with _progress() as on_progress:
        result = run_extract(warehouse, options, on_progress=on_progress)
    state = "complete" if result.parts_skipped + result.parts_written >= result.parts_total else "incomplete"
    typer.echo(
        f"run {result.run_id} ({state}): wrote {result.parts_written} part(s), {result.samples_written} sample(s), "
        f"{result.errors} error row(s); {result.parts_skipped} of {result.parts_total} part(s) were already committed"
    )
    typer.echo(f"run folder: {result.run_path}")


class _progress:
    """A progress bar on stderr showing items and items/s; shown from the first finished part."""

    def __init__(self, label: str = "extract", unit: str = "samples"):
        self.label, self.unit = label, unit

    def __enter__(self):
        self.progress = None
        return self.update

    def update(self, done: int, total: int) -> None:
        if self.progress is None:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(
                TextColumn(self.label),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]} " + self.unit + "/s"),
                TimeElapsedColumn(),
                console=Console(stderr=True),
            )
            self.started = time.perf_counter()
            self.task = self.progress.add_task(self.label, total=total, rate="-")
            self.progress.start()
        elapsed = time.perf_counter() - self.started
        self.progress.update(self.task, completed=done, rate=f"{done / elapsed:.1f}" if elapsed > 0 else "-")

    def __exit__(self, *exc_info) -> None:
        if self.progress is not None:
            self.progress.stop()


@app.command()
@handles_errors
def mask(
    model: Annotated[str | None, typer.Option(help="Hub id or model folder (default: toy-llava).")] = None,
    benchmark: Annotated[str | None, typer.Option(help="Benchmark name (default: toy-shapes).")] = None,
    data: Annotated[str | None, typer.Option(help="Benchmark data: a file or folder, or a hub dataset id.")] = None,
    split: Annotated[str | None, typer.Option(help="Benchmark split.")] = None,
    limit: Annotated[int | None, typer.Option(help="Use only the first N samples.")] = None,
    warehouse: WarehouseOption = None,
    strategy: Annotated[str, typer.Option(help="Head sets, comma-separated: top, random, bottom.")] = "top,random",
    stage: Annotated[str, typer.Option(help="Layer stages, comma-separated: early, mid, late, all.")] = "all",
    k: Annotated[str, typer.Option(help="Heads to mask, comma-separated counts or fractions of all heads (5, 0.1, 10%).")] = "0,0.05,0.1,0.2",
    seeds: Annotated[int, typer.Option(help="Seeds of the random strategy.")] = 3,
    mode: Annotated[str, typer.Option(help="zero (output zeroed), mean (mean output) or paper (uniform attention, unpadded).")] = "zero",
    ranking: Annotated[str, typer.Option(help="Score that ranks heads: concentration_x_sum, image_sum or concentration.")] = "concentration_x_sum",
    ranking_run: Annotated[str | None, typer.Option(help="Extraction run to rank heads by (default: the latest of this model and benchmark).")] = None,
    batch_size: Annotated[int, typer.Option(help="Samples per forward pass (paper mode: 1).")] = 8,
    dtype: Annotated[str, typer.Option(help="auto, float32, bfloat16 or float16.")] = "auto",
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    prompt_format: Annotated[str, typer.Option(help="As for attnwh extract.")] = "chat_template",
    prompt_style: Annotated[str, typer.Option(help="As for attnwh extract: llava-eval or study.")] = "llava-eval",
    run: Annotated[str | None, typer.Option("--run", help="Resume (or create) the mask run with this id.")] = None,
) -> None:
    """Switch heads off (top / random / bottom by stage, over a grid of k) and store accuracy per condition.

    Top heads are ranked over an extraction run of the same model and benchmark, so run attnwh extract
    first. Each condition is committed as it finishes; the same command again resumes the sweep.

    Example: attnwh extract && attnwh mask --strategy top,random --k 0,2,4,8 --seeds 3
    """
    from attnwh.extract.mask_run import MaskOptions
    from attnwh.workflows import mask_sweep
    from attnwh.output import render

    def names(text: str) -> tuple[str, ...]:
        return tuple(part.strip() for part in text.split(",") if part.strip())

    options = MaskOptions(
        model=model,
        benchmark=benchmark,
        data=data,
        split=split,
        limit=limit,
        strategies=names(strategy),
        stages=names(stage),
        k=names(k),
        seeds=seeds,
        mode=mode,
        ranking=ranking,
        ranking_run=ranking_run,
        batch_size=batch_size,
        dtype=dtype,
        device=device,
        prompt_format=prompt_format,
        prompt_style=prompt_style,
        run_id=run,
        command=["attnwh", *sys.argv[1:]],
    )
    with _progress("mask", "conditions") as on_progress:
        result, summary = mask_sweep(warehouse, options, on_progress=on_progress, warn=_warn)
    typer.echo(render(summary, "table"))
    typer.echo(
        f"mask run {result.run_id}: wrote {result.conditions_written} condition(s); "
        f"{result.conditions_skipped} of {result.conditions_total} were already committed"
    )
    typer.echo(f"run folder: {result.run_path}")


@app.command()
@handles_errors
def models(fmt: FormatOption = "table") -> None:
    """List the supported architectures, and the study's models with the HF-native ids to use for them.

    Example: attnwh models --format csv
    """
    import pyarrow as pa

    from attnwh.extract.models import ADAPTERS
    from attnwh.extract.study import BEYOND_LLAVA, STUDY_MODELS
    from attnwh.output import render

    _check_format(fmt)
    supported = pa.Table.from_pylist(
        [
            {"architecture": a.architecture, "family": a.family, "prompt_formats": ", ".join(a.prompt_formats), "about": a.description}
            for a in ADAPTERS.values()
        ]
    )
    listed = pa.Table.from_pylist(
        [
            {"group": group, "model": m.study_name, "hf_id": m.hf_id, "architecture": m.architecture, "prompt_format": m.prompt_format, "note": m.note}
            for group, entries in (("study", STUDY_MODELS), ("beyond", BEYOND_LLAVA))
            for m in entries
        ]
    )
    if fmt == "table":
        typer.echo("Supported architectures\n" + render(supported, fmt) + "\n\nModels\n" + render(listed, fmt))
    else:
        typer.echo(render(listed, fmt))


@app.command()
@handles_errors
def benchmarks(fmt: FormatOption = "table") -> None:
    """List the benchmarks: version, splits, prompt template, parser and the files --data accepts.

    Example: attnwh benchmarks --format csv
    """
    import pyarrow as pa

    from attnwh.extract.benchmarks.registry import all_benchmarks
    from attnwh.output import render

    _check_format(fmt)
    table = pa.Table.from_pylist(
        [
            {
                "benchmark": b.name,
                "version": b.version,
                "splits": ", ".join(b.splits),
                "default_split": b.default_split,
                "template": b.template,
                "study_template": b.template_for("study"),
                "max_new_tokens": b.max_new_tokens,
                "about": b.description,
                "data": b.data_help,
            }
            for b in all_benchmarks()
        ]
    )
    typer.echo(render(table, fmt))


toy_app = typer.Typer(help="The embedded toy: a tiny LLaVA trained on synthetic shapes.", no_args_is_help=True)
app.add_typer(toy_app, name="toy")


@toy_app.command("train")
@handles_errors
def toy_train(
    out: Annotated[Path | None, typer.Option(help="Model folder to write (default: $ATTNWH_HOME/models/toy-llava-trained).")] = None,
    steps: Annotated[int | None, typer.Option(help="Language-model training steps after the vision tower's (default 3000).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the initial weights (training data are fixed).")] = 0,
) -> None:
    """Train the toy LLaVA on toy-shapes on the CPU (about 3 minutes on 2 cores), deterministic from the seed.

    The trained model is saved with save_pretrained; use it with --model FOLDER. The embedded default
    (toy-llava) is this command's output with the default settings, shipped with attnwh.

    Example: attnwh toy train --out my-toy && attnwh extract --model my-toy
    """
    from attnwh.extract.toy.default import attnwh_home
    from attnwh.extract.toy.train import LANGUAGE_STEPS, train_toy

    steps = LANGUAGE_STEPS if steps is None else steps
    if steps < 1:
        raise UsageError(f"--steps must be at least 1, got {steps}")
    folder = out if out is not None else attnwh_home() / "models" / "toy-llava-trained"
    if folder.exists() and any(folder.iterdir()):
        raise UsageError(f"{folder} exists and is not empty; give another --out")
    metrics = train_toy(folder, steps=steps, seed=seed, log=lambda line: typer.echo(line, err=True))
    typer.echo(
        f"trained in {metrics['seconds']} s: held-out yes/no accuracy {metrics['accuracy_yes_no']:.3f}, "
        f"colour multiple choice {metrics['accuracy_colour']:.3f}"
    )
    typer.echo(f"model folder: {folder}")


@app.command()
@handles_errors
def sql(
    statement: Annotated[str | None, typer.Argument(help="One SELECT (or EXPLAIN) statement.")] = None,
    file: Annotated[Path | None, typer.Option("--file", "-f", help="Read the statement from this file.")] = None,
    fmt: FormatOption = "table",
    warehouse: WarehouseOption = None,
) -> None:
    """Run one read-only SQL statement over the warehouse (views: runs, samples, head_metrics, marts).

    Only SELECT and EXPLAIN run; files outside the warehouse cannot be read.

    Example: attnwh sql "select layer, avg(image_sum) from head_metrics where query = 'gen1' group by layer order by layer"
    """
    from attnwh.output import render

    _check_format(fmt)
    if (statement is None) == (file is None):
        raise UsageError("give either a SQL statement or --file, not both or neither")
    if file is not None:
        try:
            statement = file.read_text()
        except OSError as exc:
            raise UsageError(f"cannot read {file}: {exc.strerror or exc}") from exc
    with _session(warehouse) as session:
        table = session.user_query(statement)
    typer.echo(render(table, fmt))


@app.command()
@handles_errors
def query(
    name: Annotated[str | None, typer.Argument(help="A named query (see --list).")] = None,
    list_: Annotated[bool, typer.Option("--list", help="List the named queries and their descriptions.")] = False,
    param: Annotated[list[str] | None, typer.Option("--param", "-p", help="A parameter, KEY=VALUE (repeatable).")] = None,
    fmt: FormatOption = "table",
    warehouse: WarehouseOption = None,
) -> None:
    """Run a named query of the library (queries/marts); parameters are bound, never pasted into SQL.

    Example: attnwh query visual_heads --param k=5 --param score=image_sum
    """
    import pyarrow as pa

    from attnwh.output import render
    from attnwh.queries.library import marts, run_mart

    _check_format(fmt)
    if list_:
        rows = [
            {
                "query": mart.name,
                "grain": mart.grain,
                "parameters": ", ".join(f"{key}={spec.get('default', '?')}" for key, spec in mart.parameters.items()),
                "description": mart.description,
            }
            for mart in marts().values()
        ]
        typer.echo(render(pa.Table.from_pylist(rows), fmt))
        return
    if name is None:
        raise UsageError("name a query, or pass --list")
    given = {}
    for item in param or []:
        key, separator, value = item.partition("=")
        if not separator or not key.strip():
            raise UsageError(f"--param takes KEY=VALUE, got {item!r}")
        given[key.strip()] = value
    with _session(warehouse) as session:
        table = run_mart(session, name, given)
    typer.echo(render(table, fmt))


@app.command()
@handles_errors
def runs(fmt: FormatOption = "table", warehouse: WarehouseOption = None) -> None:
    """List the runs in the warehouse with their progress.

    Example: attnwh runs --format json
    """
    from attnwh.output import render

    _check_format(fmt)
    from attnwh.queries.library import run_mart

    with _session(warehouse) as session:
        table = run_mart(session, "run_list")
    typer.echo(render(table, fmt))


@app.command()
@handles_errors
def verify(
    run_id: Annotated[str | None, typer.Argument(help="Check only this run.")] = None,
    warehouse: WarehouseOption = None,
) -> None:
    """Check every committed file against its commit record (size and sha256); list anything unreferenced.

    Exits 1 if any problem is found.

    Example: attnwh verify
    """
    from attnwh.warehouse import parts
    from attnwh.warehouse.layout import open_warehouse

    store = open_warehouse(warehouse)
    runs_to_check = store.run_folders()
    if run_id is not None:
        found = store.find_run(run_id)
        if found is None:
            raise UsageError(f"no run {run_id!r} in {store.root}")
        runs_to_check = [found]
    failures = 0
    for run_paths in runs_to_check:
        problems = parts.verify(run_paths)
        name = run_paths.root.name.removeprefix("run=")
        n_parts = len(parts.committed_part_ids(run_paths))
        if problems:
            failures += len(problems)
            for problem in problems:
                typer.echo(f"{name}: {problem}")
        else:
            typer.echo(f"{name}: ok ({n_parts} committed part(s))")
    if failures:
        _fail(f"{failures} problem(s) found", 1)


@app.command()
@handles_errors
def report(
    out: Annotated[Path, typer.Option(help="Folder to write the pages (index.html, ...) into.")] = Path("attnwh-report"),
    warehouse: WarehouseOption = None,
    query: Annotated[str, typer.Option(help="Which captured query the head charts show: gen1 or prompt.")] = "gen1",
    fmt: Annotated[str, typer.Option("--format", help="html, or png / svg to also write every chart as a file under charts/.")] = "html",
    top: Annotated[int, typer.Option(help="Heads in the top-heads table.")] = 20,
) -> None:
    """Render the warehouse as self-contained HTML pages (work offline): heads, layers, logit lens, masking, samples.

    Example: attnwh report --out attnwh-report && open attnwh-report/index.html
    """
    from attnwh.reports.build import build_report

    if query not in ("gen1", "prompt"):
        raise UsageError(f"unknown query {query!r}; choose gen1 or prompt")
    if top < 1:
        raise UsageError(f"--top must be at least 1, got {top}")
    formats = ("html",) if fmt == "html" else ("html", fmt)
    target = build_report(warehouse, out, query=query, formats=formats, top=top, warn=_warn)
    typer.echo(f"report written to {target}")


def main(argv: list[str] | None = None) -> None:
    """Console entry point: parser errors become one line, like library errors; a bug one line too."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    args = [arg for arg in args if arg != "--debug"]
    try:
        code = app(args=args, prog_name="attnwh", standalone_mode=False)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        typer.echo("attnwh: error: aborted", err=True)
        sys.exit(130)
    except typer.TyperException as exc:  # the parser's errors (and its request for help on no arguments)
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        context = getattr(exc, "ctx", None)
        if context is not None and message == context.get_help():
            typer.echo(message)
            sys.exit(0)
        typer.echo(f"attnwh: error: {one_line(' '.join(message.split()))}", err=True)
        sys.exit(getattr(exc, "exit_code", 2))
    except KeyboardInterrupt:
        typer.echo("attnwh: error: interrupted", err=True)
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001  a bug: one line, the traceback on request
        if debug:
            traceback.print_exc()
        text = str(exc).strip()
        detail = f": {one_line(text.splitlines()[0])}" if text else ""
        hint = "" if debug else f" (--debug or {DEBUG_ENV}=1 shows the traceback)"
        typer.echo(f"attnwh: internal error: {type(exc).__name__}{detail}{hint}", err=True)
        sys.exit(INTERNAL_ERROR_EXIT)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
