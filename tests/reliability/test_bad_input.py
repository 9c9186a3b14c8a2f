"""The bad-input corpus (README, "Bad input"): each case with its expected outcome.

Per-sample problems become error rows and the run goes on; everything else fails with one clear
line (a named error; the CLI prints it as one line and exits non-zero); nothing committed before is
lost or altered.
"""

from __future__ import annotations

import dataclasses
import errno
import io
import json
import random
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from attnwh.core.errors import AttnwhError, BenchmarkError, ModelError, UsageError, WarehouseError
from attnwh.extract.benchmarks import get_benchmark, registry
from attnwh.extract.benchmarks.images import bytes_loader
from attnwh.extract.run import ExtractOptions, run_extract
from attnwh.queries.library import open_session
from attnwh.warehouse import parts
from attnwh.warehouse.layout import open_warehouse


def _huge_png() -> bytes:
    """A 1-bit PNG of 8,200 × 8,000 pixels (65.6 M, over attnwh's 64 M limit) that compresses to a few KB."""
    buffer = io.BytesIO()
    Image.new("1", (8_200, 8_000)).save(buffer, format="PNG")
    return buffer.getvalue()


def _image_bytes(mode: str, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (40, 30), 128 if mode in ("L", "P") else None).save(buffer, format=fmt)
    return buffer.getvalue()


def _jpeg_truncated() -> bytes:
    return _image_bytes("RGB", "JPEG")[:200]


# (case, image bytes, question, expected status)
PER_SAMPLE = [
    ("ok RGB JPEG", _image_bytes("RGB", "JPEG"), None, "ok"),
    ("grayscale", _image_bytes("L", "PNG"), None, "ok"),
    ("CMYK JPEG", _image_bytes("CMYK", "JPEG"), None, "ok"),
    ("RGBA PNG", _image_bytes("RGBA", "PNG"), None, "ok"),
    ("palette PNG", _image_bytes("P", "PNG"), None, "ok"),
    ("zero-byte image", b"", None, "error"),
    ("truncated JPEG", _jpeg_truncated(), None, "error"),
    ("undecodable bytes", b"this is not an image at all", None, "error"),
    ("huge image (decompression bomb)", _huge_png(), None, "error"),
    ("empty question", _image_bytes("RGB", "PNG"), "", "ok"),
    ("non-ASCII question", _image_bytes("RGB", "PNG"), "Y a-t-il un cercle rouge ? 円はありますか", "ok"),
]


@pytest.fixture
def corpus_benchmark(monkeypatch):
    original = get_benchmark("toy-shapes")

    def load(data, split):
        samples = original.load(data, split)[: len(PER_SAMPLE)]
        return [
            dataclasses.replace(sample, key=case, load_image=bytes_loader(data_bytes, case), question=sample.question if question is None else question)
            for sample, (case, data_bytes, question, _) in zip(samples, PER_SAMPLE, strict=True)
        ]

    monkeypatch.setitem(registry.BENCHMARKS, "toy-shapes", dataclasses.replace(original, load=load))


def test_per_sample_problems_become_error_rows(tmp_path, tiny_mha, corpus_benchmark):
    result = run_extract(tmp_path / "wh", ExtractOptions(model=str(tiny_mha), batch_size=4, part_size=6, device="cpu", command=["test"]))
    with open_session(tmp_path / "wh") as session:
        rows = {row["sample_key"]: row for row in session.query("select sample_key, status, error from samples").to_pylist()}
    assert {case: rows[case]["status"] for case, *_ in PER_SAMPLE} == {case: status for case, _, _, status in PER_SAMPLE}
    assert "empty" in rows["zero-byte image"]["error"]
    assert "more than" in rows["huge image (decompression bomb)"]["error"]
    assert result.errors == sum(status == "error" for *_, status in PER_SAMPLE)


def test_malformed_rows_and_files(tmp_path):
    folder = tmp_path / "pope"
    folder.mkdir()
    (folder / "coco_pope_adversarial.json").write_text(
        '{"question_id": 1, "image": "a.jpg", "text": "Is there a cat?", "label": "yes"}\n{"question_id": 2, "image": "a.jpg", "label": "no"}\n'  # no question text: an error row
    )
    samples = get_benchmark("pope").load(folder, "adversarial")
    assert [sample.error is None for sample in samples] == [True, False]
    (folder / "coco_pope_adversarial.json").write_text("[this is not json lines\n")
    with pytest.raises(BenchmarkError, match="coco_pope_adversarial.json"):
        get_benchmark("pope").load(folder, "adversarial")
    (folder / "coco_pope_adversarial.json").write_bytes(b'{"question_id": 1, "image": "a.jpg", "text": "caf\xe9?", "label": "yes"}\n')
    with pytest.raises(BenchmarkError, match="coco_pope_adversarial.json"):
        get_benchmark("pope").load(folder, "adversarial")


POPE_LINE = {"question_id": 1, "image": "a.jpg", "text": "Is there a cat?", "label": "yes"}
QBENCH_ENTRY = {"img_path": "a.jpg", "question": "Is it sharp?", "candidates": ["Yes", "No"], "correct_ans": "Yes"}


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    benchmark=st.sampled_from(["pope", "qbench"]),
    field=st.sampled_from(["text", "image", "question_id", "extra"]),
    bad=st.one_of(
        st.integers(0xD800, 0xDFFF).map(lambda code: f'"a \\u{code:04x} b"'),  # a lone surrogate escape, as the file spells it
        st.integers(2_000, 60_000).map(lambda depth: "[" * depth + "]" * depth),  # nesting past Python's recursion limit
    ),
)
def test_a_question_file_with_a_lone_surrogate_or_deep_nesting_is_one_benchmark_error(tmp_path_factory, benchmark, field, bad):
    """The audit of helper-36: a lone surrogate escape (valid JSON, no character: no Parquet string column can hold it)
    ended the whole run with an internal error at its first write, and every resume the same way; a deeply nested
    value with Python's ``RecursionError``. Now the file is refused in one line naming it and the line."""
    folder = tmp_path_factory.mktemp(benchmark)
    if benchmark == "pope":
        keys = {"text": "text", "image": "image", "question_id": "question_id", "extra": "extra"}
        line = json.dumps({**POPE_LINE, keys[field]: "PLACEHOLDER"}).replace('"PLACEHOLDER"', bad)
        (folder / "coco_pope_random.json").write_text(json.dumps(POPE_LINE) + "\n" + line + "\n")
        split, name = "random", "coco_pope_random.json"
    else:
        keys = {"text": "question", "image": "img_path", "question_id": "correct_ans", "extra": "extra"}
        entry = json.dumps({**QBENCH_ENTRY, keys[field]: "PLACEHOLDER"}).replace('"PLACEHOLDER"', bad)
        (folder / "llvisionqa_dev.json").write_text("[" + json.dumps(QBENCH_ENTRY) + ",\n" + entry + "]")
        split, name = "dev", "llvisionqa_dev.json"
    with pytest.raises(BenchmarkError, match=name) as refused:
        get_benchmark(benchmark).load(folder, split)
    assert "surrogate" in str(refused.value) or "nested too deeply" in str(refused.value)


def test_unknown_benchmark_and_model(tmp_path):
    with pytest.raises(BenchmarkError, match="did you mean 'pope'"):
        run_extract(tmp_path / "wh", ExtractOptions(benchmark="popee", command=["test"]))
    with pytest.raises(ModelError, match="does not exist"):
        run_extract(tmp_path / "wh", ExtractOptions(model="./no/such/model", command=["test"]))


@pytest.mark.parametrize("model", ["", " "])
def test_an_empty_model_name_is_one_model_error(tmp_path, monkeypatch, model):
    """``--model ''`` read the current folder as a model folder: "cannot load a model config from : Unrecognized model
    in /the/current/folder"."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelError, match="the model name is empty"):
        run_extract(tmp_path / "wh", ExtractOptions(model=model, command=["test"]))


def test_model_folder_without_a_processor(tmp_path, tiny_mha):
    bare = tmp_path / "bare-model"
    bare.mkdir()
    for name in ("config.json", "model.safetensors", "generation_config.json"):
        (bare / name).write_bytes((Path(tiny_mha) / name).read_bytes())
    with pytest.raises(ModelError, match="processor"):
        run_extract(tmp_path / "wh", ExtractOptions(model=str(bare), limit=2, device="cpu", command=["test"]))


def _weights_damaged(folder: Path, how: int) -> None:
    weights = folder / "model.safetensors"
    content = weights.read_bytes()
    weights.write_bytes([content[: len(content) // 2], b"", random.Random(how).randbytes(4096), content[:8] + bytes(64)][how])


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(damage=st.sampled_from(["weights", "config", "template"]), how=st.integers(0, 3))
def test_a_damaged_model_folder_is_one_model_error(tmp_path_factory, tiny_mha, damage, how):
    """Weights truncated, emptied, garbage or with a broken header; a config the weights do not fit; a chat template
    that does not parse: ``ModelError`` naming the model (one line on the command line), not safetensors', torch's
    or jinja2's own exception (exit 70: the audit of helper-36)."""
    import shutil

    folder = tmp_path_factory.mktemp("damaged-model") / "model"
    shutil.copytree(tiny_mha, folder)
    if damage == "weights":
        _weights_damaged(folder, how)
    elif damage == "config":
        config = json.loads((folder / "config.json").read_text())
        config["text_config"]["vocab_size"] = 3 + how  # no longer the embedding's rows (3 or 4: the image token 4 beyond it)
        (folder / "config.json").write_text(json.dumps(config))
    else:
        (folder / "chat_template.jinja").write_text("{% for message in messages %}{{ message" + "}" * how)
    with pytest.raises(ModelError, match="template|weights|processor|beyond the vocabulary"):
        run_extract(tmp_path_factory.mktemp("wh") / "wh", ExtractOptions(model=str(folder), limit=2, device="cpu", command=["test"]))


def test_warehouse_paths(tmp_path):
    afile = tmp_path / "a-file"
    afile.write_text("x")
    with pytest.raises(WarehouseError):
        open_warehouse(afile, create=True)
    with pytest.raises(AttnwhError):
        open_warehouse(Path("/proc/attnwh-cannot-write-here"), create=True)  # unwritable even for root
    newer = tmp_path / "newer"
    newer.mkdir()
    (newer / "WAREHOUSE.json").write_text('{"format": "attnwh", "layout_version": 999}')
    with pytest.raises(WarehouseError, match="newer"):
        open_warehouse(newer)


def test_a_full_disk_fails_clearly_and_loses_nothing(tmp_path, tiny_mha, monkeypatch):
    warehouse = tmp_path / "wh"
    options = ExtractOptions(model=str(tiny_mha), limit=6, part_size=2, batch_size=2, device="cpu", command=["test"])
    run_extract(warehouse, dataclasses.replace(options, max_parts=1))
    before = {path: path.read_bytes() for path in warehouse.rglob("*.parquet")}

    real_write = pq.write_table

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pq, "write_table", full_disk)
    with pytest.raises(WarehouseError, match="No space left on device"):
        run_extract(warehouse, options)
    monkeypatch.setattr(pq, "write_table", real_write)
    assert {path: path.read_bytes() for path in warehouse.rglob("*.parquet") if path in before} == before
    (run,) = open_warehouse(warehouse).run_folders()
    assert parts.verify(run) == [] and parts.committed_part_ids(run) == {0}
    result = run_extract(warehouse, options)  # the disk has room again: the run resumes
    assert result.parts_written == 2 and parts.verify(run) == []


def test_bad_options_are_usage_errors(tmp_path):
    for bad in (dict(batch_size=0), dict(limit=-1), dict(queries=("first",)), dict(dtype="float8"), dict(device="tpu")):
        with pytest.raises(UsageError):
            run_extract(tmp_path / "wh", ExtractOptions(command=["test"], **bad))


def _model_with_config(tmp_path_factory, tiny_mha, change) -> Path:
    """A copy of the tiny model whose config.json ``change`` edited (weights and processor untouched)."""
    import shutil

    folder = tmp_path_factory.mktemp("config-model") / "model"
    shutil.copytree(tiny_mha, folder)
    config = json.loads((folder / "config.json").read_text())
    change(config)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(["image_token_index", "image_token_id"]), beyond=st.integers(0, 2**40))
def test_an_image_token_id_beyond_the_vocabulary_is_one_model_error(tmp_path_factory, tiny_mha, key, beyond):
    """The audit of helper-37: ``image_token_index: 99999`` with 39 tokens in the vocabulary passed every check and ended
    the run at its first batch with transformers' ValueError (exit 70). Now the config is refused when it is read, in
    one line naming the field and the vocabulary's size, before any warehouse is created."""
    vocab_size = json.loads((Path(tiny_mha) / "config.json").read_text())["text_config"]["vocab_size"]
    folder = _model_with_config(tmp_path_factory, tiny_mha, lambda config: config.update({key: vocab_size + beyond}))
    warehouse = tmp_path_factory.mktemp("wh") / "wh"
    with pytest.raises(ModelError, match=f"{key}.* {vocab_size + beyond} is beyond the vocabulary \\(vocab_size {vocab_size}, {vocab_size} tokens in the tokenizer\\)"):
        run_extract(warehouse, ExtractOptions(model=str(folder), limit=2, device="cpu", command=["test"]))
    assert not warehouse.exists()


def test_an_image_token_id_past_vocab_size_that_the_tokenizer_writes_is_accepted(tiny_mha):
    """PaliGemma and Gemma 3 mark images with a token past their text model's ``vocab_size`` (they replace it before the
    embedding lookup): such an id is refused only where the tokenizer cannot write it either."""
    import dataclasses

    from attnwh.extract import models

    source = models.resolve_source(str(tiny_mha))
    config, spec = models.load_config(source)
    tokens = models._tokenizer_size(source)
    config.image_token_index = tokens - 1  # past a vocab_size of tokens - 4, written by the tokenizer
    models._check_token_ids(source, config, dataclasses.replace(spec, vocab_size=tokens - 4))
    config.image_token_index = tokens
    with pytest.raises(ModelError, match=f"image_token_index {tokens} is beyond the vocabulary \\(vocab_size {tokens - 4}, {tokens} tokens in the tokenizer\\)"):
        models._check_token_ids(source, config, dataclasses.replace(spec, vocab_size=tokens - 4))


def test_a_zero_count_in_the_config_is_named(tmp_path_factory, tiny_mha):
    """``num_attention_heads: 0`` made transformers' own config check divide by zero: the line said only ``integer
    modulo by zero``. Now it names the field."""
    folder = _model_with_config(tmp_path_factory, tiny_mha, lambda config: config["text_config"].update({"num_attention_heads": 0}))
    with pytest.raises(ModelError, match="text_config.num_attention_heads is 0; it must be a positive integer"):
        run_extract(tmp_path_factory.mktemp("wh") / "wh", ExtractOptions(model=str(folder), limit=2, device="cpu", command=["test"]))
