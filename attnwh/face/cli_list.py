"""The commands that list what attnwh supports: ``attnwh models`` and ``attnwh benchmarks``."""

from __future__ import annotations

from typing import Annotated

import typer

from attnwh.core.errors import UsageError
from attnwh.face.console import FormatOption, check_format, handles_errors

DEFAULT_WORKERS = 2  # allowed on a machine of fewer cores too


@handles_errors
def models(
    fmt: FormatOption = "table",
    all_architectures: Annotated[
        bool,
        typer.Option(
            "--all",
            help="The conformance matrix: every image-text-to-text architecture of the installed transformers, checked on a tiny random model "
            "(captured / out of scope / not built here / failed, with a one-line reason). About 2-4 s per architecture the first time; cached per transformers version.",
        ),
    ] = False,
    refresh: Annotated[bool, typer.Option("--refresh", help="With --all: run the checks again instead of reading the cached verdicts.")] = False,
    only: Annotated[list[str] | None, typer.Option("--only", help="With --all: check only these model types (repeatable, or comma-separated), e.g. --only qwen3_vl,llava.")] = None,
    workers: Annotated[int, typer.Option("--workers", min=1, help="With --all: processes that run the checks (each uses one thread; at most one per CPU core).")] = DEFAULT_WORKERS,
) -> None:
    """List the model families attnwh knows by name and the study's models; --all checks every architecture of transformers.

    Any architecture the matrix lists as captured works with `attnwh extract --model DIR` without a flag.

    Example: attnwh models --format csv      (csv and json: the models' table alone; the families are in the terminal table)

    Example: attnwh models --all --format json
    """
    import pyarrow as pa

    if all_architectures:
        names = [name.strip() for item in only or [] for name in item.split(",") if name.strip()]
        if only and not names:
            raise UsageError(f"--only names no model type: {', '.join(map(repr, only))}")
        _conformance_matrix(fmt, refresh, names, workers)
        return

    from attnwh.core.output import render
    from attnwh.extract.discovery import FAMILIES
    from attnwh.extract.study import BEYOND_LLAVA, STUDY_MODELS
    from attnwh.extract.toy.train import TRAINED_SPECS

    check_format(fmt)
    supported = pa.Table.from_pylist(
        [{"family": f.model_type, "prompt_formats": ", ".join(f.prompt_formats), "regions": "yes" if f.image_tokens else "no", "about": f.description} for f in FAMILIES.values()]
    )
    toys = [
        {
            "group": "toy",
            "model": name,
            "hf_id": name,
            "architecture": "LlavaForConditionalGeneration",
            "prompt_format": "chat_template",
            "note": f"shipped ({spec.n_layers} layers x {spec.n_heads} heads, hidden {spec.hidden_size}); attnwh toy train --size {size}",
        }
        for name, size in (("toy-llava-small", "small"), ("toy-llava-medium", "medium"), ("toy-llava-large", "large"))
        for spec in [TRAINED_SPECS[size]]
    ]
    listed = pa.Table.from_pylist(
        [
            {"group": group, "model": m.study_name, "hf_id": m.hf_id, "architecture": m.architecture, "prompt_format": m.prompt_format, "note": m.note}
            for group, entries in (("study", STUDY_MODELS), ("beyond", BEYOND_LLAVA))
            for m in entries
        ]
        + toys
    )
    if fmt == "table":
        typer.echo("Supported architectures\n" + render(supported, fmt) + "\n\nModels\n" + render(listed, fmt))
    else:
        typer.echo(render(listed, fmt))


@handles_errors
def benchmarks(fmt: FormatOption = "table") -> None:
    """List the benchmarks: version, splits, prompt template, parser and the files --data accepts.

    Example: attnwh benchmarks --format csv
    """
    import pyarrow as pa

    from attnwh.core.output import render
    from attnwh.extract.benchmarks.registry import all_benchmarks

    check_format(fmt)
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


def _conformance_matrix(fmt: str, refresh: bool, only: list[str], workers: int) -> None:
    """``attnwh models --all``: the verdicts of ``extract.conformance``, computed once per transformers version."""
    import pyarrow as pa

    from attnwh.core.home import attnwh_home
    from attnwh.core.output import render
    from attnwh.extract import conformance
    from attnwh.extract.executors import usable_cores
    from attnwh.face.console import progress

    check_format(fmt)
    cores = usable_cores()
    if workers > max(DEFAULT_WORKERS, cores):
        raise UsageError(f"--workers takes 1 to {max(DEFAULT_WORKERS, cores)} on this machine ({cores} CPU cores; each worker is a process), got {workers}")
    names = conformance.matrix_names()
    unknown = [name for name in only if name not in names]
    if unknown:
        raise UsageError(f"unknown model type {', '.join(unknown)}; `attnwh models --all` lists them")
    wanted = only or names
    cache = _matrix_cache(attnwh_home())
    verdicts = {} if refresh else conformance.load_cached(cache)
    missing = [name for name in wanted if name not in verdicts]
    if missing:
        with progress("conformance", "architectures") as update:

            def checked(verdict) -> None:  # as each verdict comes (run_matrix's list comes once all are checked)
                verdicts[verdict.model_type] = verdict
                update(sum(name in verdicts for name in missing), len(missing))

            conformance.run_matrix(missing, workers, on_verdict=checked)
        conformance.save_cached(cache, verdicts.values())
    rows = [verdicts[name].as_row() for name in wanted]
    table = pa.Table.from_pylist(rows)
    if fmt != "table":
        typer.echo(render(table, fmt))
        return
    shown = table.select(["model_type", "architecture", "status", "layers", "heads", "kv_heads", "image_tokens", "reuse", "reason"])
    architectures = [row for row in rows if row["model_type"] not in conformance.VARIANTS]
    counts = {status: sum(row["status"] == status for row in architectures) for status in conformance.STATUSES}
    summary = ", ".join(f"{count} {status}" for status, count in counts.items()) + f" of {len(architectures)} architectures (transformers {_transformers_version()})"
    variants = len(rows) - len(architectures)
    typer.echo(render(shown, fmt) + "\n\n" + summary + (f"; and {variants} variants of them" if variants else ""))


def _matrix_cache(home):
    """Where ``attnwh models --all`` keeps the verdicts of the installed transformers and attnwh."""
    from attnwh import __version__
    from attnwh.extract.conformance import CHECKS_VERSION

    return home / "conformance" / f"transformers-{_transformers_version()}-attnwh-{__version__}-checks-{CHECKS_VERSION}.json"


def _transformers_version() -> str:
    import transformers

    return transformers.__version__
