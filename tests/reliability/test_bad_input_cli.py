"""Bad input on the command line (README, "Bad input"): each refused in one line and a non-zero exit before any
expensive work, leaving nothing behind (the audit of helper-37: each of these ended in exit 70, some only after the work)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attnwh.face.cli import main

SETTINGS = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def run_main(capsys, args: list[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_:
        main(args)
    return exit_.value.code, capsys.readouterr().err


def refused(capsys, args: list[str], *fragments: str) -> str:
    """The command's one line on stderr: exit 2 (a usage error), each fragment in it, no internal error."""
    code, err = run_main(capsys, args)
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("attnwh: error: "), err
    assert all(fragment in err for fragment in fragments), err
    return err


@pytest.fixture
def no_training(monkeypatch):
    """``toy train`` must refuse before training: training here fails the test at once (it would take minutes)."""

    def train(*args, **kwargs):
        raise AssertionError("trained before refusing")

    monkeypatch.setattr("attnwh.extract.toy.train.train_toy", train)


def test_toy_train_out_that_cannot_be_a_folder_is_refused_before_training(tmp_path, capsys, monkeypatch, no_training):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a-file").write_text("x")
    refused(capsys, ["toy", "train", "--out", "a-file"], "--out a-file is a file")
    refused(capsys, ["toy", "train", "--out", "a-file/sub/model"], "a-file is a file, so no folder can be made under it")
    refused(capsys, ["toy", "train", "--out", "/proc/attnwh-no/model"], "--out /proc/attnwh-no/model: cannot write there")
    refused(capsys, ["toy", "train", "--out", "a" * 300], "cannot write there (File name too long)")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a-file"]


@SETTINGS
@given(seed=st.one_of(st.integers(max_value=-1), st.integers(min_value=2**63)))
def test_toy_train_seed_outside_64_bits_is_refused(tmp_path_factory, capsys, no_training, seed):
    out = tmp_path_factory.mktemp("toy") / "model"
    refused(capsys, ["toy", "train", "--out", str(out), "--seed", str(seed)], "--seed takes 0 to 9223372036854775807", str(seed))
    assert not out.exists()


@pytest.fixture
def no_matrix(monkeypatch):
    """``models --all`` must refuse before checking any architecture."""

    def run_matrix(*args, **kwargs):
        raise AssertionError("checked architectures before refusing")

    monkeypatch.setattr("attnwh.extract.conformance.run_matrix", run_matrix)


@SETTINGS
@given(extra=st.integers(min_value=1, max_value=2**80))
def test_models_all_workers_beyond_the_cores_are_refused(capsys, no_matrix, extra):
    from attnwh.extract.executors import usable_cores

    workers = max(2, usable_cores()) + extra
    refused(capsys, ["models", "--all", "--refresh", "--only", "llava", "--workers", str(workers)], f"--workers takes 1 to {max(2, usable_cores())}", str(workers))


@pytest.mark.parametrize("under", [False, True])
def test_attnwh_home_that_is_a_file_is_named(tmp_path, capsys, monkeypatch, no_matrix, no_training, under):
    home_file = tmp_path / "home-file"
    home_file.write_text("x")
    home = home_file / "attnwh" if under else home_file
    monkeypatch.setenv("ATTNWH_HOME", str(home))
    for args in (["models", "--all", "--refresh", "--only", "llava"], ["toy", "train"]):
        refused(capsys, args, f"ATTNWH_HOME: {home} is not a folder")
    assert home_file.read_text() == "x"


@pytest.fixture
def no_extraction(monkeypatch):
    """``toy zoo`` must refuse its sweeps' options before its first extraction."""

    def run_extract(*args, **kwargs):
        raise AssertionError("extracted before refusing")

    monkeypatch.setattr("attnwh.extract.run.run_extract", run_extract)


@SETTINGS
@given(
    option=st.one_of(
        st.tuples(st.just("--k"), st.from_regex(r"[a-z]{1,4}|0\.1,[a-z]{1,3}|,|3[3-9]|[4-9][0-9]", fullmatch=True)),
        st.tuples(st.just("--seeds"), st.one_of(st.integers(max_value=0), st.integers(min_value=1001)).map(str)),
    )
)
def test_toy_zoo_sweep_options_are_refused_before_extracting(tmp_path_factory, capsys, no_extraction, option):
    warehouse = tmp_path_factory.mktemp("zoo") / "wh"
    refused(capsys, ["toy", "zoo", "--warehouse", str(warehouse), *option], option[0])
    assert not warehouse.exists()


@pytest.mark.parametrize(
    "args", [["report"], ["report", "--figure", "9"], ["heads", "export", "some-run"], ["show", "some-run", "0"], ["toy", "train"]], ids=lambda args: " ".join(args)
)
@pytest.mark.parametrize("empty", ["", " "])
def test_an_empty_out_is_refused(tmp_path, capsys, monkeypatch, no_training, args, empty):
    """``report --out ''`` wrote the report's pages into the current folder (``Path('')`` is ``.``)."""
    monkeypatch.chdir(tmp_path)
    refused(capsys, [*args, "--out", empty], "Invalid value for '--out'", "is empty")
    assert list(tmp_path.iterdir()) == []


def test_models_all_only_takes_a_comma_list_as_the_other_list_options(tmp_path, capsys, monkeypatch):
    """`--only llava,qwen3_vl` was one unknown model type named 'llava,qwen3_vl'; it now names two, as repeating it does."""
    from attnwh.extract import conformance
    from tests.reliability.harness import run_cli

    checked = []

    def run_matrix(names, workers, on_verdict=None):  # as the real one: each verdict handed on as it comes, then the list
        checked.append(list(names))
        verdicts = [conformance.Verdict(name, name, conformance.CAPTURED, "checked here") for name in names]
        for verdict in verdicts:
            on_verdict(verdict)
        return verdicts

    monkeypatch.setattr("attnwh.extract.conformance.run_matrix", run_matrix)
    monkeypatch.setenv("ATTNWH_HOME", str(tmp_path / "home"))
    for args in (["--only", "llava,qwen3_vl"], ["--only", "llava", "--only", " qwen3_vl"]):
        code, out, err = run_cli(capsys, "models", "--all", "--refresh", *args, "--format", "csv")
        assert code == 0 and checked[-1] == ["llava", "qwen3_vl"] and out.count("checked here") == 2, out


@pytest.mark.parametrize("only", [",", " ", ", ,"])
def test_models_all_only_naming_nothing_is_refused_not_read_as_every_architecture(capsys, no_matrix, only):
    refused(capsys, ["models", "--all", "--refresh", "--only", only], "--only names no model type")
