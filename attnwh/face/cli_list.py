"""The commands that list what attnwh supports: ``attnwh models`` and ``attnwh benchmarks``."""

from __future__ import annotations

import typer

from attnwh.face.console import FormatOption, check_format, handles_errors


@handles_errors
def models(fmt: FormatOption = "table") -> None:
    """List the supported architectures, and the study's models with the HF-native ids to use for them.

    Example: attnwh models --format csv
    """
    import pyarrow as pa

    from attnwh.core.output import render
    from attnwh.extract.discovery import FAMILIES
    from attnwh.extract.study import BEYOND_LLAVA, STUDY_MODELS
    from attnwh.extract.toy.train import TRAINED_SPECS

    check_format(fmt)
    supported = pa.Table.from_pylist(
        [{"family": f.model_type, "prompt_formats": ", ".join(f.prompt_formats), "regions": "yes" if f.region_tokens else "no", "about": f.description} for f in FAMILIES.values()]
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
