"""Real-benchmark loaders through ``attnwh extract``: bad rows and images become error rows, the run goes on."""

from __future__ import annotations

import pytest

from attnwh.core.errors import BenchmarkError, UsageError
from attnwh.extract.benchmarks import get_benchmark
from attnwh.extract.benchmarks.data import resolve_data
from attnwh.extract.run import ExtractOptions, run_extract
from attnwh.queries.library import open_session
from tests.fixtures_benchmarks import pope_folder


def test_pope_with_broken_rows_and_images(tmp_path, tiny_mha):
    data = pope_folder(tmp_path / "pope")
    result = run_extract(tmp_path / "wh", ExtractOptions(model=str(tiny_mha), benchmark="pope", data=data, device="cpu", command=["test"]))
    with open_session(tmp_path / "wh") as session:
        rows = session.query("select sample_key, status, error, question, prompt, parser from samples order by sample_idx").to_pylist()
        spec = session.query("select spec from runs").to_pylist()[0]["spec"]
    by_key = {row["sample_key"]: row for row in rows}
    assert by_key["1"]["status"] == by_key["2"]["status"] == "ok"
    assert by_key["2"]["question"] == "Y a-t-il un éléphant dans l’image ?"
    assert by_key["1"]["prompt"].endswith("Is there a snowboard in the image?\nAnswer the question using a single word or phrase. ASSISTANT:")
    assert by_key["3"]["status"] == "error" and "not found" in by_key["3"]["error"]
    assert by_key["4"]["status"] == "error" and "decode" in by_key["4"]["error"]
    assert by_key["5"]["status"] == "error"  # label 'maybe'
    assert result.errors == sum(row["status"] == "error" for row in rows) and result.errors >= 3
    assert '"benchmark_version": "2"' in spec and '"split": "adversarial"' in spec


def test_a_file_in_the_wrong_format_fails_with_one_line(tmp_path):
    broken = tmp_path / "MMBench_DEV_EN.tsv"
    broken.write_text("this is not\ta benchmark\n1\t2\n")
    with pytest.raises(BenchmarkError) as error:
        get_benchmark("mmbench").load(broken, "dev")
    message = str(error.value)
    assert "\n" not in message and str(broken) in message


def test_a_hub_dataset_id_without_a_hub_fails_clearly(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import; never reach a hub here
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BenchmarkError, match="lmms-lab/POPE"):
        resolve_data(get_benchmark("pope"), "lmms-lab/POPE")
    with pytest.raises(BenchmarkError, match="does not exist"):
        resolve_data(get_benchmark("pope"), "./no/such/folder")


def test_prompt_style_is_a_fingerprinted_choice(tmp_path, tiny_mha):
    """POPE's styles word and read answers differently: llava-eval adds LLaVA-1.5's instruction and reads POPE's own rule,
    study gives the question as the file states it and reads the first word (att_pope.py)."""
    data = pope_folder(tmp_path / "pope")
    warehouse = tmp_path / "wh"
    runs = {}
    for style in ("llava-eval", "study", "study"):
        options = ExtractOptions(model=str(tiny_mha), benchmark="pope", data=data, limit=2, prompt_style=style, device="cpu", command=["test"])
        result = run_extract(warehouse, options)
        runs.setdefault(style, result.run_id)
        assert result.run_id == runs[style]  # the same style again resumes its run
    assert runs["llava-eval"] != runs["study"]
    with open_session(warehouse) as session:
        rows = session.query(
            "select r.prompt_style, s.sample_key, s.prompt, s.parser from samples s join runs r using (run_id) where s.status = 'ok' order by 1, s.sample_idx"
        ).to_pylist()
    first = {row["prompt_style"]: row["prompt"] for row in rows if row["sample_key"] == "1"}
    assert first["study"].endswith("USER: <image>\nIs there a snowboard in the image? ASSISTANT:")
    assert first["llava-eval"].endswith("Is there a snowboard in the image?\nAnswer the question using a single word or phrase. ASSISTANT:")
    assert {(row["prompt_style"], row["parser"]) for row in rows} == {("llava-eval", "pope"), ("study", "yes_no")}
    with pytest.raises(UsageError, match="unknown prompt style 'paper'; choose llava-eval, study"):
        run_extract(warehouse, ExtractOptions(model=str(tiny_mha), benchmark="pope", data=data, prompt_style="paper", device="cpu"))


def test_error_rows_are_said_and_a_run_of_nothing_but_errors_exits_non_zero(tmp_path, tiny_mha, capsys, monkeypatch):
    """POPE's files without their images: every sample an error row. The run is committed with them (nothing is lost),
    one warning line says how many, the first reason and that a resume reads none again, and the exit code is 1; with
    some images present the warning counts the error rows and the exit code is 0."""
    import shutil

    from attnwh.face.cli import main

    monkeypatch.chdir(tmp_path)
    data = pope_folder(tmp_path / "pope")
    images = data / "val2014"
    shutil.move(images, tmp_path / "images-elsewhere")
    args = ["extract", "--model", str(tiny_mha), "--benchmark", "pope", "--data", str(data), "--limit", "2", "--no-rows", "--device", "cpu", "--warehouse", str(tmp_path / "wh")]
    with pytest.raises(SystemExit) as exit_:
        main(args)
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if line.startswith("attnwh: warning:")]
    assert exit_.value.code == 1 and len(warnings) == 1, captured.err
    assert warnings[0].startswith("attnwh: warning: all 2 sample(s) written are error rows (first: ") and "image file not found" in warnings[0]
    assert "resuming it reads none again: check --data, then extract into a new run (--run NAME)" in warnings[0]
    assert "(complete): wrote 1 part(s), 2 sample(s), 2 error row(s)" in captured.out
    shutil.move(tmp_path / "images-elsewhere", images)
    with pytest.raises(SystemExit) as exit_:
        main([*args[:-1], str(tmp_path / "wh2"), "--limit", "3"])  # samples 1 and 2 good, 3 a missing image
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if line.startswith("attnwh: warning:")]
    assert exit_.value.code == 0 and len(warnings) == 1 and warnings[0].startswith("attnwh: warning: 1 of 3 sample(s) written are error rows (first: "), captured.err
