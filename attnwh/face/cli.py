"""The ``attnwh`` command line: a thin layer over the library.

Library code raises ``AttnwhError`` subclasses; every command turns them into one line on stderr and
a non-zero exit code. Option mistakes caught by the parser also give one line. Anything else is a
bug: one line ``attnwh: internal error: ...`` and exit code 70, the traceback only with ``--debug``
or ``ATTNWH_DEBUG=1``. Only typer's public API is used (``typer.Exit``, ``typer.Abort``,
``typer.TyperException``), never its vendored click.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import traceback

import typer

from attnwh.face import cli_attribute, cli_heads, cli_list, cli_read, cli_run, cli_show
from attnwh.face.console import one_line

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


def _version(value: bool) -> None:
    if value:
        from attnwh import __version__

        typer.echo(f"attnwh {__version__}")
        raise typer.Exit(0)


@app.callback()
def _options(version: bool = typer.Option(False, "--version", help="Print attnwh's version and exit.", is_eager=True, callback=_version)) -> None:
    """A data warehouse of attention statistics for vision-language models."""


toy_app = typer.Typer(help="The embedded toy: a tiny LLaVA trained on synthetic shapes.", no_args_is_help=True)
app.add_typer(toy_app, name="toy")
heads_app = typer.Typer(help="Head rankings in the files of Retrieval_Head, SparseMM, DuoAttention and kvpress.", no_args_is_help=True)
app.add_typer(heads_app, name="heads")
heads_app.command("export")(cli_heads.export)
heads_app.command("import")(cli_heads.import_)
for command in (cli_run.extract, cli_run.mask, cli_run.prune, cli_run.recompute, cli_list.models, cli_list.benchmarks):
    app.command()(command)
toy_app.command("train")(cli_run.toy_train)
toy_app.command("zoo")(cli_run.toy_zoo)
for command in (cli_read.sql, cli_read.query, cli_read.runs, cli_read.status, cli_read.verify, cli_read.report):
    app.command()(command)
app.command()(cli_show.show)
app.command()(cli_attribute.attribute)


def _interrupt_once(signum, frame) -> None:
    """The first Ctrl-C interrupts (committed parts are kept, the command resumes); later ones are ignored while the
    process unwinds: a second one inside that cleanup (a library's native code) aborted the process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    """Console entry point: parser errors become one line, like library errors; a bug one line too."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    args = [arg for arg in args if arg != "--debug"]
    if not debug:  # the hub's retries of a model id it cannot reach (offline: 5 retries, 11 lines) end in one line of ours
        os.environ.setdefault("HF_HUB_VERBOSITY", "error")  # read when huggingface_hub is first imported, after this
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _interrupt_once)
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
