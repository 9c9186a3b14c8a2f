"""The command line: exact outputs, one-line errors, and documentation of every command."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from attnwh.face.cli import app
from attnwh.queries.library import open_session

README = Path(__file__).resolve().parents[2] / "README.md"
runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory) -> Path:
    """The embedded default (toy model, toy benchmark), extracted through the CLI."""
    path = tmp_path_factory.mktemp("cli") / "wh"
    result = invoke("extract", "--warehouse", str(path), "--limit", "20", "--batch-size", "4", "--part-size", "10")
    assert result.exit_code == 0, result.output
    assert re.search(r"run [0-9a-f]{12} \(complete\): wrote 2 part\(s\), 20 sample\(s\), 0 error row\(s\); 0 of 2 part\(s\) were already committed", result.output)
    return path


def test_extract_again_does_nothing(warehouse):
    result = invoke("extract", "--warehouse", str(warehouse), "--limit", "20", "--batch-size", "4", "--part-size", "10")
    assert result.exit_code == 0
    assert "wrote 0 part(s), 0 sample(s), 0 error row(s); 2 of 2 part(s) were already committed" in result.output


def test_sql_formats(warehouse):
    statement = "select status, count(*) as n from samples group by status"
    assert invoke("sql", statement, "--warehouse", str(warehouse), "--format", "csv").output == "status,n\nok,20\n"
    assert json.loads(invoke("sql", statement, "--warehouse", str(warehouse), "--format", "json").output) == [{"status": "ok", "n": 20}]
    assert invoke("sql", statement, "--warehouse", str(warehouse)).output == "status  n\n------  --\nok      20\n(1 row)\n"


def test_json_output_is_standard_json_with_nulls_for_nan_and_infinity(warehouse):
    """JSON has no NaN or Infinity (Python's json writes them, JavaScript's JSON.parse refuses them): they are null."""

    def strict(text: str):
        return json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} is not JSON"))

    statement = "select 'nan'::double as a, 'inf'::double as b, '-inf'::double as c, [1.5, 'nan'::double] as d, 2.5::double as e"
    assert strict(invoke("sql", statement, "--warehouse", str(warehouse), "--format", "json").output) == [{"a": None, "b": None, "c": None, "d": [1.5, None], "e": 2.5}]


def test_sql_from_file_and_marts_are_views(warehouse, tmp_path):
    query = tmp_path / "q.sql"
    query.write_text("select count(*) as heads from head_attention where query = 'gen1'")
    result = invoke("sql", "-f", str(query), "--warehouse", str(warehouse), "--format", "csv")
    assert result.output == "heads\n32\n"  # toy: 4 layers × 8 heads


def test_sql_refusal_is_one_line(warehouse):
    result = invoke("sql", "COPY samples TO 'x.csv'", "--warehouse", str(warehouse))
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "attnwh: error: only SELECT (with PIVOT / UNPIVOT, DESCRIBE, SUMMARIZE) and EXPLAIN statements run on the warehouse; this is COPY"
    ]
    # a read outside the warehouse is refused SQL too (exit 2, as the README says), not a statement that failed (exit 1)
    result = invoke("sql", "select * from read_csv('/etc/passwd')", "--warehouse", str(warehouse))
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        'attnwh: error: only files inside the warehouse can be read: Permission Error: Cannot access file "/etc/passwd" - file system operations are disabled by configuration'
    ]


def test_runs_and_verify(warehouse):
    runs = json.loads(invoke("runs", "--warehouse", str(warehouse), "--format", "json").output)
    assert [(r["model"], r["benchmark"], r["n_samples"], r["complete"]) for r in runs] == [("toy-llava-small", "toy-shapes", 20, True)]
    result = invoke("verify", "--warehouse", str(warehouse))
    assert result.exit_code == 0
    assert result.output == f"{runs[0]['run_id']}: ok (2 committed part(s))\n"


def test_verify_reports_damage(warehouse, tmp_path):
    import shutil

    damaged = tmp_path / "damaged"
    shutil.copytree(warehouse, damaged)
    target = next(damaged.rglob("samples.parquet"))
    target.write_bytes(target.read_bytes()[:-3])
    result = invoke("verify", "--warehouse", str(damaged))
    assert result.exit_code == 1
    assert "samples.parquet has" in result.output and "1 problem(s) found" in result.output


def test_report(warehouse, tmp_path):
    result = invoke("report", "--warehouse", str(warehouse), "--out", str(tmp_path / "r"))
    assert result.exit_code == 0
    assert result.output == f"report written to {tmp_path / 'r' / 'index.html'}\n"


@pytest.mark.parametrize(
    "args, message",
    [
        (["extract", "--benchmark", "toy-shape"], "unknown benchmark 'toy-shape'; did you mean 'toy-shapes'?"),
        (["extract", "--benchmark", "nosuch"], "unknown benchmark 'nosuch'; available: amber-"),  # no far-fetched "did you mean 'qbench'?"
        (["extract", "--batch-size", "0"], "--batch-size must be at least 1, got 0"),
        (["extract", "--queries", "prompt,gen9"], "unknown capture queries ['gen9']"),
        (["extract", "--queries", "gen,gen"], "capture queries repeat: gen, gen"),
        (["extract", "--max-new-tokens", "0"], "--max-new-tokens must be between 1 and 4096"),
        (["extract", "--queries", "gen", "--max-new-tokens", "10000"], "--max-new-tokens must be between 1 and 4096 (a whole LLaVA-1.5 context), got 10000"),
        (["mask", "--max-new-tokens", "10000"], "--max-new-tokens must be between 1 and 4096"),
        (["prune", "--max-new-tokens", "0"], "--max-new-tokens must be between 1 and 4096"),
        (["extract", "--model", "./no-such-model"], "model folder ./no-such-model does not exist"),
        (["extract", "--model", "toy-lava"], "unknown model 'toy-lava'; did you mean 'toy-llava'?"),
        (["extract", "--queries", ""], "--queries needs at least one of prompt"),
        (["extract", "--data", "/etc/passwd"], "benchmark toy-shapes is built in and reads no files: --data does not apply"),
        (["extract", "--run", ".."], "run id '..' may not start with '.'"),
        (["report", "--out", "/etc/passwd"], "cannot write the report into /etc/passwd: it is a file; --out takes a folder"),
        (["extract", "--dtype", "float8"], "unknown dtype 'float8'"),
        (["sql", "select 1", "--format", "xml"], "unknown format 'xml'"),
        (["sql"], "give either a SQL statement or --file"),
        (["verify", "nope"], "no run 'nope'"),
        (["mask", "--seeds", "100000000000"], "--seeds takes at most 1000, got 100000000000"),
        (["mask", "--k", ""], "--k takes at least one count or fraction of heads"),
        (["prune", "--stack", "0"], "--stack must be at least 1, got 0"),
        (["mask", "--stack", "4", "--no-reuse"], "--stack 4 needs reuse: --no-reuse runs one condition per pass"),
        (["extract", "--model", "m" * 300], f"cannot read --model {'m' * 80}...: File name too long"),  # was an internal error
        (["extract", "--benchmark", "pope", "--data", "d" * 300], f"cannot read --data {'d' * 80}...: File name too long"),
        (["mask", "--ranking-run", "nosuchrun"], "no run 'nosuchrun' in the warehouse to rank heads by"),
        (["heads", "export", "nosuchrun"], "no run 'nosuchrun' in the warehouse to export heads from"),
        (["query", "head_ranking", "--param", "run_id=nosuchrun"], "--param run_id=nosuchrun: no run 'nosuchrun' in the warehouse"),
        (["query", "visual_heads", "--param", "k=99999999999999999999"], "parameter k of visual_heads is out of range: 99999999999999999999"),
        (["query", "visual_heads", "-p", "k=5", "-p", "k=6"], "--param k given twice ('5' and '6'); give it once"),
    ],
)
def test_user_errors_are_one_line(warehouse, args, message):
    result = invoke(*args, "--warehouse", str(warehouse))
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("attnwh: error: ") and message in lines[0], result.output


def test_mask_warns_of_each_control_it_leaves_out(warehouse, tmp_path):
    """The toy's early stage is its first layer (8 heads): random k = 6 there could draw only the 2 heads outside the top
    6, so it is left out, with a warning line; the sweep runs the rest."""
    copy = tmp_path / "wh"
    shutil.copytree(warehouse, copy)
    result = invoke("mask", "--limit", "2", "--stage", "early", "--k", "0,2,6", "--seeds", "1", "--warehouse", str(copy))
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("attnwh: warning:")]
    assert warnings == ["attnwh: warning: random k = 6 in stage early is left out: the stage has 2 heads outside its top 6, so no draw would be random"]
    with open_session(copy) as session:
        made = session.query("select strategy, k from mask_conditions where strategy <> 'none' order by k, strategy").to_pylist()
    assert [(row["strategy"], row["k"]) for row in made] == [("random", 2), ("top", 2), ("top", 6)]


def test_mask_warns_when_its_ranking_run_is_incomplete(tmp_path):
    """A run named by --ranking-run with parts still to commit ranks by the samples it has: said on one line."""
    warehouse = str(tmp_path / "wh")
    first = invoke("extract", "--warehouse", warehouse, "--limit", "8", "--part-size", "4", "--max-parts", "1", "--no-rows")
    run_id = re.search(r"run ([0-9a-f]{12}) \(incomplete", first.output).group(1)
    result = invoke("mask", "--limit", "2", "--k", "1", "--strategy", "top", "--ranking-run", run_id, "--warehouse", warehouse)
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("attnwh: warning:")]
    assert warnings == [f"attnwh: warning: ranking run {run_id} is incomplete (1 of 2 parts committed): its head scores are those of its committed samples"]


def test_missing_warehouse_and_parser_errors_through_the_console_entry(tmp_path):
    missing = subprocess.run([sys.executable, "-m", "attnwh.face.cli", "runs", "--warehouse", str(tmp_path / "none")], capture_output=True, text=True)
    assert missing.returncode == 1 and missing.stdout == ""
    assert missing.stderr.strip().splitlines() == [f"attnwh: error: no attnwh warehouse at {tmp_path / 'none'} (run `attnwh extract` first, or pass --warehouse)"]
    bogus = subprocess.run([sys.executable, "-m", "attnwh.face.cli", "extract", "--bogus"], capture_output=True, text=True)
    assert bogus.returncode == 2
    assert len(bogus.stderr.strip().splitlines()) == 1 and "No such option: --bogus" in bogus.stderr


def test_every_command_has_an_example_and_is_in_the_readme():
    readme = README.read_text()
    names = [command.name or command.callback.__name__ for command in app.registered_commands]
    assert {"extract", "sql", "runs", "verify", "report"} <= set(names)
    for name in names:
        help_text = invoke(name, "--help").output
        assert "Example: attnwh" in help_text, name
        assert f"attnwh {name}" in readme, f"README does not document `attnwh {name}`"
    assert "Example: attnwh toy train" in invoke("toy", "train", "--help").output
    assert "attnwh toy train" in readme


def test_query_list_and_parameters(warehouse):
    listed = json.loads(invoke("query", "--list", "--format", "json").output)
    names = {row["query"] for row in listed}
    assert {
        "head_attention",
        "visual_heads",
        "layer_profile",
        "segment_shares",
        "lens_convergence",
        "lens_settling",
        "masking_accuracy",
        "masking_curves",
        "run_overview",
        "head_ranking",
    } <= names
    rows = json.loads(invoke("query", "visual_heads", "--param", "k=2", "--param", "score=image_sum", "--warehouse", str(warehouse), "--format", "json").output)
    assert len(rows) == 32 and sorted(row["rank"] for row in rows) == list(range(1, 33))
    assert sum(row["detection_score"] for row in rows) == pytest.approx(2.0)  # each sample detects exactly k heads
    bad = invoke("query", "visual_heads", "--param", "k=two", "--warehouse", str(warehouse))
    assert bad.exit_code == 2 and bad.output.strip().splitlines() == ["attnwh: error: parameter k of visual_heads must be int, got 'two'"]
    unknown = invoke("query", "visual_head", "--warehouse", str(warehouse))
    assert unknown.exit_code == 2 and "did you mean 'visual_heads'?" in unknown.output


def test_marts_are_views_in_sql(warehouse):
    result = invoke("sql", "select count(*) as n from run_overview", "--warehouse", str(warehouse), "--format", "csv")
    assert result.output == "n\n1\n"


def test_version_is_the_packages(capsys):
    import tomllib
    from pathlib import Path

    from tests.reliability.harness import run_cli

    expected = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())["project"]["version"]
    code, out, err = run_cli(capsys, "--version")
    assert (code, out.strip(), err) == (0, f"attnwh {expected}", "")


def test_outputs_inside_the_warehouse_are_refused(warehouse, tmp_path):
    """A file written into the warehouse replaces or adds to what its commits recorded (a heads export over a
    committed part's table left the run out of every read): refused in one line, nothing written."""
    import hashlib

    def digests() -> dict[str, str]:
        return {str(path): hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(warehouse.rglob("*")) if path.is_file()}

    run_id = json.loads(invoke("runs", "--warehouse", str(warehouse), "--format", "json").output)[0]["run_id"]
    part_table = next(warehouse.rglob("samples.parquet"))
    before = digests()
    for args, out in ((["heads", "export", run_id, "--out"], part_table), (["report", "--out"], part_table.parent), (["show", run_id, "0", "--out"], warehouse / "picture.png")):
        result = invoke(*args, str(out), "--warehouse", str(warehouse))
        lines = result.output.strip().splitlines()
        assert result.exit_code != 0 and lines == [
            f"attnwh: error: --out {out} is inside the warehouse {warehouse}: attnwh writes there only through its commits; choose a path outside it"
        ], result.output
    assert digests() == before
    assert invoke("heads", "export", run_id, "--out", str(tmp_path / "heads.json"), "--warehouse", str(warehouse)).exit_code == 0  # outside: written


def test_a_named_query_given_a_run_of_another_kind_says_so(warehouse, tmp_path):
    """A query whose run parameter reads one kind of run (a mask sweep's table, an extraction's head scores) answered
    a run of another kind with no rows and no word, as if the run had none; now one line names the run's kind and
    the kinds the query reads. Every mart parameter that names a run declares its kinds."""
    from attnwh.queries.library import RUN_PARAMETERS, marts

    declared = {(mart.name, key): spec["kinds"] for mart in marts().values() for key, spec in mart.parameters.items() if key in RUN_PARAMETERS}
    assert declared and all(declared.values()), declared
    copy = tmp_path / "wh"
    shutil.copytree(warehouse, copy)
    swept = invoke("mask", "--limit", "2", "--k", "1", "--strategy", "top", "--stage", "late", "--seeds", "1", "--warehouse", str(copy))
    assert swept.exit_code == 0, swept.output
    with open_session(copy) as session:
        runs = {row["kind"]: row["run_id"] for row in session.query("select kind, run_id from runs").to_pylist()}
    assert set(runs) == {"extract", "mask"}
    for (name, key), kinds in declared.items():
        for kind, run_id in runs.items():
            result = invoke("query", name, "--param", f"{key}={run_id}", "--format", "json", "--warehouse", str(copy))
            if kind in kinds:
                if name in ("mask_sweep", "head_ranking"):  # a query of its own kind answers with its rows
                    assert result.exit_code == 0 and json.loads(result.output), result.output
            else:
                lines = result.output.strip().splitlines()
                article = "an" if kind[0] in "aeiou" else "a"
                expected = f"attnwh: error: --param {key}={run_id}: run {run_id!r} is {article} {kind} run; query {name} reads {' or '.join(kinds)} runs"
                assert result.exit_code != 0 and lines == [expected], (name, key, result.output)


def test_a_named_query_given_a_damaged_run_says_it_is_left_out(warehouse, tmp_path):
    """A run left out of every view for damage was answered "no run ... in the warehouse", as if it never existed."""
    copy = tmp_path / "wh"
    shutil.copytree(warehouse, copy)
    with open_session(copy) as session:
        run_id = session.query("select run_id from runs where kind = 'extract'").column(0)[0].as_py()
    (manifest,) = copy.rglob(f"run={run_id}/RUN.json")
    manifest.write_text("{not json")
    result = invoke("query", "head_ranking", "--param", f"run_id={run_id}", "--warehouse", str(copy))
    assert result.exit_code == 2
    error = [line for line in result.output.splitlines() if line.startswith("attnwh: error:")]
    assert len(error) == 1 and error[0].startswith(f"attnwh: error: --param run_id={run_id}: run '{run_id}' is damaged and left out of every view ("), result.output
    assert error[0].endswith("; see `attnwh verify`")


def test_an_empty_sweep_table_says_where_the_rows_are(tmp_path):
    """A mask sweep over descriptions has no accuracy: `attnwh query mask_sweep` answered (0 rows) and no word; it now
    points at sweep_hallucination, which holds the run's conditions."""
    warehouse = tmp_path / "wh"
    common = ["--benchmark", "toy-shapes-caption", "--limit", "2", "--warehouse", str(warehouse)]
    assert invoke("extract", *common, "--no-rows").exit_code == 0
    swept = invoke("mask", *common, "--k", "0,1", "--strategy", "top", "--seeds", "1")
    assert swept.exit_code == 0, swept.output
    with open_session(warehouse) as session:
        run_id = session.query("select run_id from runs where kind = 'mask'").column(0)[0].as_py()
    empty = invoke("query", "mask_sweep", "-p", f"run_id={run_id}", "--format", "json", "--warehouse", str(warehouse))
    assert empty.exit_code == 0
    assert f"its conditions' CHAIR, Cover and Hal are in attnwh query sweep_hallucination -p run_id={run_id}" in empty.output
    rows = json.loads(invoke("query", "sweep_hallucination", "-p", f"run_id={run_id}", "--format", "json", "--warehouse", str(warehouse)).output)
    assert len(rows) == 2  # the baseline and k = 1
