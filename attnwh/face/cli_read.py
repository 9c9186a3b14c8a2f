"""The commands that read a warehouse: ``attnwh sql``, ``query``, ``runs``, ``verify`` and ``report``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from attnwh.core.errors import SqlError, UsageError, WarehouseError
from attnwh.face.console import FormatOption, WarehouseOption, check_format, check_outside_warehouse, fail, handles_errors, output_path, read_session, warn


@handles_errors
def sql(
    statement: Annotated[str | None, typer.Argument(help="One SELECT (or EXPLAIN) statement.")] = None,
    file: Annotated[Path | None, typer.Option("--file", "-f", help="Read the statement from this file.")] = None,
    fmt: FormatOption = "table",
    warehouse: WarehouseOption = None,
) -> None:
    """Run one read-only SQL statement over the warehouse (views: runs, samples, head_metrics, marts; "show tables" lists them all).

    Only SELECT and EXPLAIN run; files outside the warehouse cannot be read.

    Example: attnwh sql "select layer, avg(image_sum) from head_metrics where query = 'gen1' group by layer order by layer"
    """
    from attnwh.core.output import render_stream

    check_format(fmt)
    if (statement is None) == (file is None):
        raise UsageError("give either a SQL statement or --file, not both or neither")
    if file is not None:
        try:
            statement = file.read_text()
        except OSError as exc:
            raise UsageError(f"cannot read {file}: {exc.strerror or exc}") from exc
    with read_session(warehouse) as session:
        try:
            schema, batches = session.user_batches(statement)
        except SqlError as exc:
            raise _with_query_hint(exc) from exc
        for piece in render_stream(schema, batches, fmt):
            typer.echo(piece, nl=False)


def _with_query_hint(exc: SqlError) -> SqlError:
    """A missing table that is a named query with parameters (no view: its SQL needs them bound) says how to run it."""
    from attnwh.queries.library import marts
    from attnwh.warehouse.catalog import MISSING_TABLE

    missing = MISSING_TABLE.search(str(exc))
    if missing is None or missing.group(1) not in marts():
        return exc
    name = missing.group(1)
    return SqlError(f"{name} is a named query with parameters, not a view: run it with `attnwh query {name}` (--param NAME=VALUE; `attnwh query --list` shows them)")


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

    from attnwh.core.output import render
    from attnwh.queries.library import check_runs_named, get_mart, marts, run_mart

    check_format(fmt)
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
        key = key.strip()
        if not separator or not key:
            raise UsageError(f"--param takes KEY=VALUE, got {item!r}")
        if given.get(key, value) != value:
            raise UsageError(f"--param {key} given twice ({given[key]!r} and {value!r}); give it once")
        given[key] = value
    with read_session(warehouse) as session:
        check_runs_named(session, name, given)
        table = run_mart(session, name, given)
    typer.echo(render(table, fmt))
    if table.num_rows == 0 and (hint := get_mart(name).when_empty):
        from collections import defaultdict

        warn([hint.format_map(defaultdict(lambda: "RUN", given))])


@handles_errors
def runs(fmt: FormatOption = "table", warehouse: WarehouseOption = None) -> None:
    """List the runs in the warehouse with their progress.

    Example: attnwh runs --format json
    """
    from attnwh.core.output import render

    check_format(fmt)
    from attnwh.queries.library import run_mart

    with read_session(warehouse) as session:
        table = run_mart(session, "run_list")
    typer.echo(render(table, fmt))


@handles_errors
def verify(run_id: Annotated[str | None, typer.Argument(help="Check only this run.")] = None, warehouse: WarehouseOption = None) -> None:
    """Check every committed file against its commit record (size and sha256); list anything unreferenced.

    Exits 1 if any problem is found.

    Example: attnwh verify
    """
    from attnwh.warehouse import parts

    runs_to_check = _run_folders(warehouse, run_id)
    failures = 0
    for run_paths in runs_to_check:
        problems = parts.verify(run_paths)
        name = run_paths.root.name.removeprefix("run=")
        if not problems:  # the commit log was read (else verify says why): count its parts
            try:
                typer.echo(f"{name}: ok ({len(parts.committed_part_ids(run_paths))} committed part(s))")
                continue
            except WarehouseError as exc:  # made unreadable since: a problem of this run, and the next run is checked
                problems = [str(exc)]
        failures += len(problems)
        for problem in problems:
            typer.echo(f"{name}: {problem}")
    if failures:
        fail(f"{failures} problem(s) found", 1)


@handles_errors
def report(
    out: Annotated[Path, typer.Option(parser=output_path, metavar="PATH", help="Folder to write the pages (index.html, ...) into.")] = Path("attnwh-report"),
    warehouse: WarehouseOption = None,
    query: Annotated[str, typer.Option(help="Which captured query the head charts show: gen1 or prompt.")] = "gen1",
    fmt: Annotated[str, typer.Option("--format", help="html, or png / svg / pdf to also write every chart as a file under charts/.")] = "html",
    top: Annotated[int, typer.Option(help="Heads in the top-heads table.")] = 20,
    figure: Annotated[int | None, typer.Option(help="Write only the charts of this figure of the study (1, 9-15) as files (--format svg unless png or pdf).")] = None,
    pictures: Annotated[int, typer.Option(help="Samples per extraction run drawn on the Samples page with where its top heads look (0: none; at most 50).")] = 4,
) -> None:
    """Render the warehouse as self-contained HTML pages (work offline): heads, layers, logit lens, masking, pruning, samples.

    Example: attnwh report --out attnwh-report && open attnwh-report/index.html
    """
    from attnwh.reports.build import build_report

    if query not in ("gen1", "prompt"):
        raise UsageError(f"unknown query {query!r}; choose gen1 or prompt")
    if top < 1:
        raise UsageError(f"--top must be at least 1, got {top}")
    if not 0 <= pictures <= 50:
        raise UsageError(f"--pictures must be between 0 and 50, got {pictures}")
    check_outside_warehouse(out, warehouse, "--out")
    if figure is not None:
        from attnwh.reports.build import write_figure

        for path in write_figure(warehouse, out, figure, "svg" if fmt == "html" else fmt, query=query, warn=warn):
            typer.echo(f"wrote {path}")
        return
    formats = ("html",) if fmt == "html" else ("html", fmt)
    from attnwh.face.pictures import report_sections

    target = build_report(warehouse, out, query=query, formats=formats, top=top, warn=warn, pictures=report_sections(pictures, query=query))
    typer.echo(f"report written to {target}")


@handles_errors
def status(run_id: Annotated[str | None, typer.Argument(help="Only this run.")] = None, fmt: FormatOption = "table", warehouse: WarehouseOption = None) -> None:
    """Where each run stands: parts committed / planned, who committed them, rate and ETA, attempts in flight.

    Useful while ranks or cluster workers write into the warehouse. --format json gives every part's writer
    as fields: host, pid, rank, world_size, worker (a Dask worker's address).

    Example: attnwh status --format json
    """
    import json

    import pyarrow as pa

    from attnwh.core.output import render
    from attnwh.warehouse.status import run_status

    check_format(fmt)
    statuses = [run_status(run) for run in _run_folders(warehouse, run_id)]
    if fmt == "json":
        typer.echo(json.dumps(statuses, indent=1))
        return
    rows = [
        {
            "run_id": s["run_id"],
            "kind": s.get("kind"),
            "benchmark": s.get("benchmark"),
            "committed": f"{s['parts_committed']}/{s['parts_planned']}" if "parts_committed" in s else None,
            "samples_per_s": s.get("samples_per_second"),  # three significant digits as every table's numbers (0.0004 conditions/s of a 7B sweep is no 0)
            "conditions_per_s": s.get("conditions_per_second"),
            "eta_s": round(s["eta_seconds"]) if s.get("eta_seconds") is not None else None,
            "writers": ", ".join(f"{writer} ({count})" for writer, count in s.get("writers", {}).items()),
            "in_flight": ", ".join(
                f"part {a['part_id']} on {a['host']}:{a['pid']}" + (f" (lease {a['lease_age_seconds']} s)" if a["lease_age_seconds"] is not None else "")
                for a in s.get("in_flight", [])
            ),
            "batches_kept": s.get("batches_kept"),
            "problem": s.get("problem"),
        }
        for s in statuses
    ]
    typer.echo(render(pa.Table.from_pylist(rows), fmt))


def _run_folders(warehouse: str | None, run_id: str | None):
    """Every run folder of the warehouse, or the one ``run_id`` names (a missing one is one line)."""
    from attnwh.warehouse.layout import open_warehouse

    store = open_warehouse(warehouse)
    if run_id is None:
        return store.run_folders()
    found = store.find_run(run_id)
    if found is None:
        raise UsageError(f"no run {run_id!r} in {store.root}")
    return [found]
