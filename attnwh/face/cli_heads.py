"""``attnwh heads export`` / ``attnwh heads import``: head rankings in the files other tools read and write."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from attnwh.face.console import SCORE_HELP, WarehouseOption, handles_errors, head_score, read_session

HeadsFormatOption = Annotated[str, typer.Option("--format", help="retrieval-json (Retrieval_Head, SparseMM) or duo-tsv (DuoAttention, kvpress).")]


@handles_errors
def export(
    run_id: Annotated[str, typer.Argument(metavar="RUN_ID", help="An extraction run.")],
    fmt: HeadsFormatOption = "retrieval-json",
    score: Annotated[str, typer.Option(parser=head_score, metavar="SCORE", help=f"Head score: {SCORE_HELP}.")] = "concentration_x_sum",
    query: Annotated[str, typer.Option(help="Captured query: gen1 or prompt.")] = "gen1",
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write here (default: standard output).")] = None,
    warehouse: WarehouseOption = None,
) -> None:
    """Write a run's head scores as a Retrieval_Head / SparseMM JSON or a DuoAttention TSV.

    Example: attnwh heads export RUN_ID --format duo-tsv --out full_attention_heads.tsv
    """
    from attnwh.core.errors import UsageError
    from attnwh.queries.rankings import export_heads

    with read_session(warehouse) as session:
        text = export_heads(session, run_id, fmt, score, query)
    if out is None:
        typer.echo(text, nl=False)
        return
    try:
        out.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot write {out}: {exc.strerror or exc}") from exc
    typer.echo(f"wrote {out}")


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
    typer.echo(f"ranking run {result.run_id} ({state}): {result.n_heads} heads of a {layers} × {heads} model ({kv_heads} key-value heads)")
    typer.echo(f"mask by it: attnwh mask --ranking-run {result.run_id} ...")
