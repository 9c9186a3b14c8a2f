"""Generated bad input (Hypothesis): option values, benchmark files, images and SQL.

Every case ends in a result or in one of attnwh's own errors (one line, non-zero exit), never in a
traceback, and no committed byte of the warehouse changes. ``EXAMPLES`` sets how many cases each
test generates (2,000+ in all per run; more with ``ATTNWH_HYPOTHESIS_SCALE``); the counts are
checked, not assumed, by the last test of this module.
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from attnwh.core.errors import AttnwhError, BenchmarkError, ModelError, SqlError, SqlRefused
from attnwh.extract.benchmarks import get_benchmark
from attnwh.extract.benchmarks.images import ImageLoadError, open_image_bytes
from attnwh.extract.benchmarks.templates import PROMPT_STYLES, render_question
from attnwh.face.cli import INTERNAL_ERROR_EXIT
from attnwh.queries.library import open_session
from tests import fixtures_benchmarks as fx
from tests.reliability.harness import digests, run_cli

SCALE = int(os.environ.get("ATTNWH_HYPOTHESIS_SCALE", "1"))
EXAMPLES = {"options": 450 * SCALE, "report": 15 * SCALE, "benchmark files": 450 * SCALE, "images": 450 * SCALE, "sql reads": 400 * SCALE, "sql writes": 400 * SCALE}
REAL = Path(os.environ.get("ATTNWH_REAL_FILES") or Path(__file__).resolve().parents[2].parent / "shared" / "real") / "benchmarks"
RAN: Counter = Counter()  # cases actually generated per test


def cases(name: str):
    return settings(max_examples=EXAMPLES[name], deadline=None, database=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def warehouse(pristine, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("generated") / "wh"
    shutil.copytree(pristine, root)
    return root


def assert_unchanged(before: dict[str, str], root: Path) -> None:
    after = digests(root)
    assert [name for name, digest in before.items() if after.get(name) != digest and "_staging" not in name] == []


# ---------------------------------------------------------------- option values for every command

ODD_TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=24)
NUMBERS = st.one_of(st.integers(-(10**15), 10**15), st.sampled_from(["0", "-1", "1e9", "nan", "inf", "0x10", "1.5", "", " 3"]))
VALUE = st.one_of(
    NUMBERS.map(str),
    ODD_TEXT,
    st.sampled_from(
        [
            "toy-llava",
            "pope",
            "amber-generative",
            "toy-shapes-caption",
            "gen1",
            "prompt,gen1",
            "gen",
            "prompt,gen1,gen",
            "gen,gen",
            "10000",
            "auto",
            "cpu",
            "cuda",
            "zero",
            "top,random",
            "all",
            "study",
            "json",
            "csv",
        ]
    ),
)

OPTIONS = {
    "extract": [
        "--limit",
        "--batch-size",
        "--part-size",
        "--max-new-tokens",
        "--max-parts",
        "--queries",
        "--dtype",
        "--device",
        "--prompt-format",
        "--prompt-style",
        "--benchmark",
        "--split",
        "--model",
        "--data",
        "--run",
    ],
    "mask": [
        "--k",
        "--strategy",
        "--stage",
        "--seeds",
        "--mode",
        "--ranking",
        "--ranking-run",
        "--batch-size",
        "--max-new-tokens",
        "--limit",
        "--split",
        "--prompt-style",
        "--dtype",
        "--device",
        "--run",
    ],
    "sql": ["--format", "--file"],
    "query": ["--format", "--param", "--list"],
    "runs": ["--format"],
    "models": ["--format"],
    "benchmarks": ["--format"],
    "verify": [],
    "toy train": ["--steps", "--seed", "--out"],
}
FLAGS = {"--list", "--rows", "--no-rows"}


@st.composite
def command_lines(draw, commands: list[str]) -> list[str]:
    command = draw(st.sampled_from(commands))
    args = command.split()
    if command == "sql":
        args.append(draw(st.one_of(ODD_TEXT, st.sampled_from(["select 1", "select * from runs", "select count(*) from samples"]))))
    if command in ("query", "verify") and draw(st.booleans()):
        args.append(draw(st.one_of(ODD_TEXT, st.sampled_from(["head_attention", "visual_heads", "masking_accuracy"]))))
    for option in draw(st.lists(st.sampled_from(OPTIONS[command] or ["--help"]), max_size=3)):
        if option in FLAGS or option == "--help":
            args.append(option)
        else:
            value = draw(VALUE)
            args += [option, value if option != "--param" else f"{draw(ODD_TEXT)}={value}"]
    return args


@pytest.fixture
def no_heavy_work(monkeypatch, tmp_path):
    """Options are checked before any weight is read: loading a model (or training one) stops the case."""

    def stop(*args, **kwargs):
        raise ModelError("stopped before loading weights (generated-options test)")

    monkeypatch.setattr("attnwh.extract.run.load_model", stop)
    monkeypatch.setattr("attnwh.extract.sweep.load_model", stop)
    monkeypatch.setattr("attnwh.extract.toy.train.train_toy", stop)
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import; never reach a hub here
    monkeypatch.chdir(tmp_path)


def check_outcome(code: int, out: str, err: str, args: list[str]) -> None:
    assert "Traceback" not in out + err, args
    assert code != INTERNAL_ERROR_EXIT, (args, err)
    if code != 0:
        lines = [line for line in err.splitlines() if not line.startswith("attnwh: warning:")]
        assert len(lines) == 1 and lines[0].startswith("attnwh: error: "), (args, err)


def test_generated_option_values_get_a_result_or_one_line(warehouse, capsys, no_heavy_work):
    before = digests(warehouse)

    @cases("options")
    @given(command_lines(list(OPTIONS)))
    def check(args):
        RAN["options"] += 1
        code, out, err = run_cli(capsys, *args, "--warehouse", str(warehouse))
        check_outcome(code, out, err, args)

    check()
    assert_unchanged(before, warehouse)


def test_generated_report_options(warehouse, capsys, no_heavy_work, tmp_path):
    before = digests(warehouse)

    @cases("report")
    @given(st.lists(st.sampled_from(["--query", "--format", "--top"]), max_size=2), st.lists(VALUE, min_size=2, max_size=2))
    def check(options, values):
        RAN["report"] += 1
        args = ["report", "--out", str(tmp_path / "report")]
        for option, value in zip(options, values):
            args += [option, value]
        code, out, err = run_cli(capsys, *args, "--warehouse", str(warehouse))
        check_outcome(code, out, err, args)

    check()
    assert_unchanged(before, warehouse)


# ---------------------------------------------------------------- benchmark files


def _sources(root: Path) -> list[tuple[str, Path, str | None]]:
    """(benchmark, question file, split): the authors' files when present, and the fixtures."""
    found = [
        ("pope", fx.pope_folder(root / "pope") / "coco_pope_adversarial.json", "adversarial"),
        ("pope-gqa", fx.pope_seem_folder(root / "seem") / "gqa_pope_seem_adversarial.json", "adversarial"),
        ("qbench", fx.qbench_folder(root / "qbench") / "llvisionqa_dev.json", "dev"),
        ("seed-bench", fx.seed_folder(root / "seed") / "SEED-Bench.json", None),
        ("mmbench", fx.write_tsv(root / "mmbench" / "MMBench_DEV_EN.tsv", fx.MMBENCH_HEADER, fx.mmbench_rows()), "dev"),
    ]
    for name, relative, split in (
        ("pope", "pope/coco_pope_adversarial.json", "adversarial"),
        ("pope-aokvqa", "pope-seem/aokvqa_pope_seem_adversarial.json", "adversarial"),
        ("qbench", "qbench/llvisionqa_dev.json", "dev"),
        ("seed-bench", "seed-bench/SEED-Bench.json", None),
        ("mmbench", "mmbench/MMBench_DEV_EN_transcribed.tsv", "dev"),
    ):
        if (REAL / relative).is_file():
            found.append((name, REAL / relative, split))
    return found


def _mutate_records(text: str, draw) -> str:
    """Structured damage to a JSON file's records: fields removed, of the wrong type, huge, empty or odd."""
    stripped = text.lstrip()
    try:
        document = json.loads(text) if stripped.startswith(("[", "{")) and not stripped.startswith('{"question_id') else None
    except ValueError:
        document = None
    lines_mode = document is None
    records = [json.loads(line) for line in text.splitlines() if line.strip()] if lines_mode else document
    items = records["questions"] if isinstance(records, dict) else records
    if not items:
        return text
    for _ in range(draw(st.integers(1, 4))):
        index = draw(st.integers(0, len(items) - 1))
        item = items[index]
        if not isinstance(item, dict) or not item:
            continue
        key = draw(st.sampled_from(sorted(item)))
        action = draw(st.sampled_from(["remove", "wrong type", "huge", "empty", "odd unicode", "not an object"]))
        if action == "remove":
            del item[key]
        elif action == "wrong type":
            item[key] = draw(st.sampled_from([None, 0, -1, 2.5, True, [], {}, [1, "a"], {"x": 1}]))
        elif action == "huge":
            item[key] = "x" * 200_000
        elif action == "empty":
            item[key] = ""
        elif action == "odd unicode":
            item[key] = draw(st.sampled_from(["\u202e\u0000", "\ud7ff\U0010ffff", "\u2028\u2029", "é" * 3, "\ufeff", "<\u0085>"]))
        else:
            items[index] = draw(st.sampled_from([None, 1, "text", []]))
    if lines_mode:
        return "\n".join(json.dumps(item, ensure_ascii=draw(st.booleans())) for item in items)
    return json.dumps(records, indent=draw(st.sampled_from([None, 4])))


@st.composite
def damaged_text(draw, original: bytes) -> bytes:
    kind = draw(st.sampled_from(["truncate", "random bytes", "flip bytes", "records", "line endings", "insert"]))
    if kind == "truncate":
        return original[: draw(st.integers(0, len(original)))]
    if kind == "random bytes":
        return draw(st.binary(max_size=2048))
    if kind == "flip bytes":
        data = bytearray(original)
        for _ in range(draw(st.integers(1, 8))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        return bytes(data)
    if kind == "line endings":
        ending = draw(st.sampled_from([b"\r\n", b"\r", b"\n\n", b"\x85"]))
        lines = original.split(b"\n")
        return b"".join(line + (ending if draw(st.booleans()) else b"\n") for line in lines)
    if kind == "insert":
        position = draw(st.integers(0, len(original)))
        return original[:position] + draw(st.sampled_from([b"\t", b'"', b"\x00", b"\xff\xfe", b"}", b"]", b"\n\n"])) + original[position:]
    text = original.decode("utf-8", errors="replace")
    if not text.lstrip().startswith(("[", "{")):
        return original
    return _mutate_records(text, draw).encode("utf-8", errors="surrogatepass")


def test_generated_benchmark_files_load_or_fail_with_one_line(tmp_path):
    sources = _sources(tmp_path / "sources")
    originals = {path: path.read_bytes() for _, path, _ in sources}

    @cases("benchmark files")
    @given(st.data())
    def check(data):
        RAN["benchmark files"] += 1
        name, path, split = data.draw(st.sampled_from(sources))
        folder = tmp_path / "case"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        target = folder / path.name
        target.write_bytes(data.draw(damaged_text(originals[path])))
        benchmark = get_benchmark(name)
        try:
            samples = benchmark.load(target, split)
        except BenchmarkError as exc:
            assert "\n" not in str(exc) and str(target) in str(exc)
            return
        for sample in samples:
            assert isinstance(sample.key, str)
            if sample.error is None:
                for style in PROMPT_STYLES:
                    assert isinstance(render_question(benchmark.template_for(style), sample), str)

    check()


# ---------------------------------------------------------------- images

FORMATS = ["PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "ICO", "PPM", "TGA", "PCX", "SGI", "IM", "DDS", "QOI"]


def _encoded(fmt: str, mode: str, size: tuple[int, int], seed: int) -> bytes:
    pixels = Image.frombytes("RGB", size, random.Random(seed).randbytes(size[0] * size[1] * 3)).convert(mode)
    buffer = io.BytesIO()
    try:
        pixels.save(buffer, format=fmt)
    except (OSError, ValueError, KeyError):
        pixels.convert("RGB").save(buffer, format=fmt)
    return buffer.getvalue()


@st.composite
def damaged_images(draw) -> bytes:
    fmt = draw(st.sampled_from(FORMATS))
    data = _encoded(fmt, draw(st.sampled_from(["RGB", "L", "P", "RGBA"])), (draw(st.integers(1, 40)), draw(st.integers(1, 40))), draw(st.integers(0, 99)))
    kind = draw(st.sampled_from(["whole", "truncate", "flip", "header then random", "random"]))
    if kind == "truncate":
        return data[: draw(st.integers(0, len(data)))]
    if kind == "flip":
        buffer = bytearray(data)
        for _ in range(draw(st.integers(1, 6))):
            buffer[draw(st.integers(0, len(buffer) - 1))] = draw(st.integers(0, 255))
        return bytes(buffer)
    if kind == "header then random":
        return data[: draw(st.integers(1, 32))] + draw(st.binary(max_size=512))
    if kind == "random":
        return draw(st.binary(max_size=512))
    return data


def test_generated_images_decode_or_become_error_rows():
    decoded = Counter()

    @cases("images")
    @given(damaged_images())
    def check(data):
        RAN["images"] += 1
        try:
            image = open_image_bytes(data, "case")
        except ImageLoadError as exc:
            assert str(exc).startswith("case: ") and "\n" not in str(exc)
            decoded["error row"] += 1
            return
        assert image.mode == "RGB" and image.width * image.height > 0
        decoded["ok"] += 1

    check()
    assert decoded["ok"] and decoded["error row"]  # both outcomes were reached


# ---------------------------------------------------------------- SQL


@pytest.fixture(scope="module")
def views(warehouse) -> dict[str, list[str]]:
    with open_session(warehouse) as session:
        session.define_everything()  # views are otherwise defined when a statement first names them
        names = session.query("select view_name from duckdb_views() where not internal and schema_name = 'main' order by 1").column(0).to_pylist()
        return {name: session.query(f'select column_name from (describe "{name}")').column(0).to_pylist() for name in names}


@st.composite
def read_statements(draw, views: dict[str, list[str]]) -> str:
    view = draw(st.sampled_from(sorted(views)))
    columns = views[view]
    column = draw(st.sampled_from(columns))
    quoted = f'"{column}"'
    kind = draw(st.sampled_from(["describe", "summarize", "select", "pivot", "pivot static", "unpivot", "explain", "aggregate"]))
    if kind == "describe":
        return f"DESCRIBE {view}"
    if kind == "summarize":
        return f"SUMMARIZE {view}"
    if kind == "select":
        limit = draw(st.integers(0, 50))
        return f"SELECT {quoted} FROM {view} WHERE {quoted} IS NOT NULL LIMIT {limit}"
    if kind == "pivot":
        # (a value that is always there: a PIVOT of an empty relation has no columns, which DuckDB refuses)
        return f"PIVOT (SELECT coalesce({quoted}::VARCHAR, 'null') AS k, count(*) AS n FROM {view} GROUP BY 1 UNION ALL SELECT 'none', 0 LIMIT 20) ON k USING sum(n)"
    if kind == "pivot static":
        return f"SELECT * FROM (SELECT {quoted}::VARCHAR AS k FROM {view} LIMIT 10) PIVOT (count(*) FOR k IN ('0', '1', 'gen1'))"
    if kind == "unpivot":
        other = draw(st.sampled_from(columns))
        return f'UNPIVOT (SELECT {quoted}::VARCHAR AS a, "{other}"::VARCHAR AS b FROM {view} LIMIT 10) ON a, b INTO NAME column_name VALUE value'
    if kind == "explain":
        return f"EXPLAIN SELECT count(*) FROM {view}"
    return f"SELECT count(*), count(DISTINCT {quoted}) FROM {view}"


def test_generated_reads_run(warehouse, views):
    before = digests(warehouse)
    with open_session(warehouse) as session:

        @cases("sql reads")
        @given(read_statements(views))
        def check(statement):
            RAN["sql reads"] += 1
            session.user_query(statement)

        check()
    assert_unchanged(before, warehouse)


@st.composite
def write_statements(draw, root: Path) -> str:
    outside = draw(st.sampled_from(["/etc/passwd", "/proc/self/environ", str(root.parent / "outside.csv"), "../outside.csv", "http://127.0.0.1:9/x"]))
    inside = str(root / draw(st.sampled_from(["dump.parquet", "WAREHOUSE.json", "runs/x.csv", "new.db"])))
    view = draw(st.sampled_from(["samples", "head_metrics", "runs", "head_attention"]))
    statement = draw(
        st.sampled_from(
            [
                f"COPY {view} TO '{inside}'",
                f"COPY (SELECT * FROM {view}) TO '{inside}' (FORMAT parquet)",
                f"ATTACH '{inside}' AS other",
                f"CREATE TABLE t AS SELECT * FROM {view}",
                f"CREATE OR REPLACE VIEW {view} AS SELECT 1",
                f"INSERT INTO {view} SELECT * FROM {view}",
                f"DELETE FROM {view}",
                f"UPDATE {view} SET run_id = 'x'",
                f"DROP VIEW {view}",
                "SET threads = 1",
                "SET enable_external_access = true",
                "RESET allowed_directories",
                "PRAGMA enable_profiling",
                "INSTALL httpfs",
                "LOAD httpfs",
                "CALL duckdb_secrets()",
                "DETACH memory",
                "CHECKPOINT",
                "EXPORT DATABASE 'x'",
                f"SELECT * FROM read_csv('{outside}')",
                f"SELECT * FROM read_text('{outside}')",
                f"SELECT * FROM read_blob('{outside}')",
                f"SELECT * FROM glob('{outside}')",
                f"SELECT * FROM read_parquet('{outside}')",
                "SELECT getenv('HOME')",
                f"SELECT 1; COPY {view} TO '{inside}'",
                f"SELECT 1 /* ; */; DROP VIEW {view}",
                f"EXPLAIN ANALYZE COPY {view} TO '{inside}'",
                f"WITH x AS (SELECT 1) INSERT INTO {view} SELECT * FROM x",
                f"PIVOT {view} ON run_id USING count(*); SET threads = 1",
            ]
        )
    )
    spacing = draw(st.sampled_from(["", " ", "\n", "-- comment\n", "/* c */ "]))
    return spacing + (statement.lower() if draw(st.booleans()) else statement)


def test_generated_writes_settings_attaches_and_outside_reads_are_refused(warehouse, tmp_path):
    (warehouse.parent / "outside.csv").write_text("secret\n42\n")
    before = digests(warehouse)
    with open_session(warehouse) as session:

        @cases("sql writes")
        @given(write_statements(warehouse))
        def check(statement):
            RAN["sql writes"] += 1
            with pytest.raises((SqlRefused, SqlError)) as refused:
                session.user_query(statement)
            assert "\n" not in str(refused.value)
            assert isinstance(refused.value, AttnwhError)

        check()
        assert session.query("select count(*) as n from samples").to_pylist()[0]["n"] >= 8  # the views are intact
    assert_unchanged(before, warehouse)
    assert not (warehouse / "dump.parquet").exists() and not (warehouse / "new.db").exists()


def test_enough_cases_were_generated():
    """Runs last in this module: the cases counted above, not the settings, make the reported figure."""
    if len(RAN) < len(EXAMPLES):
        pytest.skip("run the whole module to count its cases")
    total = sum(RAN.values())
    print(f"generated cases: {dict(RAN)}; total {total}")
    assert total >= 2000 * SCALE
