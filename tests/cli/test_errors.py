"""Unexpected errors (bugs) in every command: one line and exit code 70; the traceback only on request."""

from __future__ import annotations

import pytest

from attnwh.face.cli import INTERNAL_ERROR_EXIT, main

# per command: a function it calls (patched to fail) and the arguments that reach it
COMMANDS = {
    "extract": ("attnwh.extract.run.run_extract", ["extract"]),
    "mask": ("attnwh.face.workflows.mask_sweep", ["mask"]),
    "attribute": ("attnwh.extract.attribution.run_attribute", ["attribute"]),
    "models": ("attnwh.core.output.render", ["models"]),
    "benchmarks": ("attnwh.extract.benchmarks.registry.all_benchmarks", ["benchmarks"]),
    "sql": ("attnwh.queries.library.open_session", ["sql", "select 1"]),
    "query": ("attnwh.queries.library.open_session", ["query", "head_attention"]),
    "runs": ("attnwh.queries.library.open_session", ["runs"]),
    "verify": ("attnwh.warehouse.layout.open_warehouse", ["verify"]),
    "report": ("attnwh.reports.build.build_report", ["report", "--out", "report-out"]),
    "toy train": ("attnwh.extract.toy.train.train_toy", ["toy", "train", "--out", "toy-out"]),
}


def fail(*args, **kwargs):
    raise RuntimeError("boom on purpose\nsecond line")


def run_main(capsys, args: list[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_:
        main(args)
    captured = capsys.readouterr()
    return exit_.value.code, captured.out, captured.err


@pytest.mark.parametrize("command", list(COMMANDS))
def test_an_unexpected_error_is_one_line_with_a_distinct_code(command, monkeypatch, capsys, tmp_path):
    target, args = COMMANDS[command]
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ATTNWH_DEBUG", raising=False)
    monkeypatch.setattr(target, fail)
    code, out, err = run_main(capsys, args)
    assert code == INTERNAL_ERROR_EXIT == 70
    assert err.splitlines() == ["attnwh: internal error: RuntimeError: boom on purpose (--debug or ATTNWH_DEBUG=1 shows the traceback)"]
    assert "Traceback" not in out + err

    code, _, err = run_main(capsys, ["--debug", *args])
    assert code == INTERNAL_ERROR_EXIT
    assert err.startswith("Traceback (most recent call last):") and "RuntimeError: boom on purpose" in err
    assert err.splitlines()[-1] == "attnwh: internal error: RuntimeError: boom on purpose"

    monkeypatch.setenv("ATTNWH_DEBUG", "1")
    code, _, err = run_main(capsys, args)
    assert code == INTERNAL_ERROR_EXIT and "Traceback" in err


@pytest.mark.parametrize("url", ["http://example.com/x", "gs://b/p", "ftp://host/wh"])
def test_stores_without_conditional_puts_are_refused_before_anything_is_created(url, monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    scheme = url.split("://")[0]
    for args in (["extract", "--warehouse", url], ["runs", "--warehouse", url], ["verify", "--warehouse", url]):
        code, out, err = run_main(capsys, args)
        assert code == 1 and len(err.splitlines()) == 1
        assert err.startswith(f"attnwh: error: warehouse {url}: {scheme}:// is not supported: attnwh commits parts by a conditional put")
    monkeypatch.setenv("ATTNWH_WAREHOUSE", url)
    code, _, err = run_main(capsys, ["runs"])
    assert code == 1 and "is not supported" in err
    assert list(tmp_path.iterdir()) == []  # no folder named 'gs:' or 'http:'


def test_parser_errors_and_help_use_no_private_modules(capsys):
    code, _, err = run_main(capsys, ["extract", "--no-such-option"])
    assert code == 2 and err.splitlines() == ["attnwh: error: No such option: --no-such-option"]
    code, out, _ = run_main(capsys, [])
    assert code == 0 and "Commands" in out
    code, out, _ = run_main(capsys, ["toy"])
    assert code == 0 and "train" in out
