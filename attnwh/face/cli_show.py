"""``attnwh show``: where a head looks, drawn from a sample's stored attention rows over its image."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from attnwh.core.errors import UsageError
from attnwh.face.console import SCORE_HELP, WarehouseOption, check_outside_warehouse, handles_errors, head_score, output_path, read_session

SHOW_FORMATS = (".png", ".svg", ".html")


@handles_errors
def show(
    run_id: Annotated[str, typer.Argument(metavar="RUN_ID", help="An extraction run that kept its raw rows (not --no-rows).")],
    sample: Annotated[str, typer.Argument(metavar="SAMPLE", help="A sample's benchmark key, or its index in the run's plan.")],
    out: Annotated[Path, typer.Option("--out", "-o", parser=output_path, metavar="PATH", help="Write the picture here: FILE.png, FILE.svg or FILE.html (self-contained).")],
    layer: Annotated[int | None, typer.Option(help="Draw this layer: one head with --head, else the mean of its heads.")] = None,
    head: Annotated[int | None, typer.Option(help="With --layer: draw this head.")] = None,
    top: Annotated[int | None, typer.Option(help="Draw the run's top K heads by --score, one panel each (default without --layer: 4).")] = None,
    score: Annotated[str, typer.Option(parser=head_score, metavar="SCORE", help=f"Head score that ranks heads for --top and titles panels: {SCORE_HELP}.")] = "concentration_x_sum",
    query: Annotated[str, typer.Option(help="Captured query whose row is drawn: gen1 or prompt.")] = "gen1",
    data: Annotated[Path | None, typer.Option(help="The benchmark's files, where they moved since the run (default: the run's).")] = None,
    model: Annotated[str | None, typer.Option(help="The run's model, where it moved since the run (default: the run's).")] = None,
    warehouse: WarehouseOption = None,
) -> None:
    """Draw where heads look: a sample's image with the attention of one head, a layer's mean, or the run's top heads
    as heat maps (bilinear, magma, with a colour bar), the benchmark's regions, the question, the answer and whether
    it was right. Computed from the run's stored rows and the family's layout of image tokens; the model is not run.

    Example: attnwh show RUN_ID 3 --top 4 --score concentration_x_sum --out heads.png

    Example: attnwh show RUN_ID 3 --layer 2 --head 1 --query prompt --out head.svg
    """
    from attnwh.face.pictures import HeadChoice, check_query
    from attnwh.face.pictures import show as draw

    suffix = out.suffix.lower()
    if suffix not in SHOW_FORMATS:
        raise UsageError(f"--out must end in {', '.join(SHOW_FORMATS)}, got {out.name!r}")
    check_query(query)
    check_outside_warehouse(out, warehouse, "--out")
    with read_session(warehouse) as session:
        figure = draw(session, run_id, sample, HeadChoice(layer=layer, head=head, top=top, score=score), query, data, model)
    try:
        figure.save(out)
    except OSError as exc:
        raise UsageError(f"cannot write {out}: {exc.strerror or exc}") from exc
    typer.echo(f"wrote {out}")
