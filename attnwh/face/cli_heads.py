"""``attnwh heads export`` / ``attnwh heads import``: head rankings in the files other tools read and write."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from attnwh.face.console import SCORE_HELP, WarehouseOption, check_outside_warehouse, handles_errors, head_score, output_path, read_session, warn

HeadsFormatOption = Annotated[str, typer.Option("--format", help="retrieval-json (Retrieval_Head, SparseMM) or duo-tsv (DuoAttention, kvpress).")]


@handles_errors
def export(
    run_id: Annotated[str, typer.Argument(metavar="RUN_ID", help="An extraction, attribution or imported ranking run.")],
    fmt: HeadsFormatOption = "retrieval-json",
    score: Annotated[str, typer.Option(parser=head_score, metavar="SCORE", help=f"Head score: {SCORE_HELP}.")] = "concentration_x_sum",
    query: Annotated[str, typer.Option(help="Captured query: gen1 or prompt.")] = "gen1",
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", parser=output_path, metavar="PATH", help="Write here (default: standard output); duo-tsv: also a config.json beside it, as DuoAttention reads it."
        ),
    ] = None,
    warehouse: WarehouseOption = None,
) -> None:
    """Write a run's head scores as a Retrieval_Head / SparseMM JSON or a DuoAttention TSV.

    Example: attnwh heads export RUN_ID --format duo-tsv --out full_attention_heads.tsv
    """
    from attnwh.core.errors import UsageError
    from attnwh.queries.rankings import export_heads

    with read_session(warehouse) as session:
        text = export_heads(session, run_id, fmt, score, query, warn)
    if out is None:
        typer.echo(text, nl=False)
        return
    from attnwh.warehouse.head_files import duo_config, is_duo_config

    check_outside_warehouse(out, warehouse, "--out")
    written = [(out, text)]
    config = out.parent / "config.json"
    if fmt == "duo-tsv":
        if config.is_file() and is_duo_config(_read_text(config)):
            typer.echo(f"left {config} as it is (DuoAttention reads its sink_size and recent_size)", err=True)
        elif config.exists():
            raise UsageError(
                f"{config} is not a DuoAttention config.json (whole-number sink_size and recent_size), and DuoAttention reads the one beside the TSV: move it, or --out into another folder"
            )
        else:
            written.append((config, duo_config(f"attnwh heads export {run_id} --score {score} --query {query}")))
    for path, content in written:
        try:
            path.write_text(content, encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from exc
        typer.echo(f"wrote {path}")


def _read_text(path: Path) -> str:
    from attnwh.core.errors import UsageError

    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from exc


@handles_errors
def import_(
    file: Annotated[Path, typer.Argument(metavar="FILE", help="A Retrieval_Head / SparseMM JSON or a DuoAttention TSV.")],
    name: Annotated[str, typer.Option(help="A name for the ranking (letters, digits, - and _).")],
    fmt: HeadsFormatOption = "retrieval-json",
    model: Annotated[str | None, typer.Option(help="The model the scores are for (default: toy-llava); its shape is checked.")] = None,
    warehouse: WarehouseOption = None,
) -> None:
    """Store a head-ranking file as a ranking run that `attnwh mask --ranking-run` masks by.

    Example: attnwh heads import full_attention_heads.tsv --format duo-tsv --model llava-hf/llava-1.5-7b-hf --name duo
    """
    from attnwh.extract.ranking_import import ImportOptions, import_heads

    result = import_heads(warehouse, ImportOptions(file, fmt, model, name, command=["attnwh", *sys.argv[1:]]))
    layers, heads, kv_heads = result.shape
    state = "stored" if result.new_run else "already stored"
    if result.clipped:
        typer.echo(f"clipped {result.clipped} value(s) outside [0, 1] to it, as DuoAttention's loader does")
    typer.echo(f"ranking run {result.run_id} ({state}): {result.n_heads} heads of a {layers} × {heads} model ({kv_heads} key-value heads)")
    typer.echo(f"mask by it: attnwh mask --ranking-run {result.run_id} ...")
