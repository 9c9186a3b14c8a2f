"""The run loop: resume after an interruption, fingerprints, error rows, stored rows."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from attnwh.core.errors import FingerprintMismatch
from attnwh.extract import run as run_module
from attnwh.extract.run import ExtractOptions, run_extract
from attnwh.queries.library import open_session
from attnwh.warehouse import arrays, parts
from attnwh.warehouse.layout import open_warehouse


def options(model: Path, **overrides) -> ExtractOptions:
    settings = dict(model=str(model), limit=10, part_size=3, batch_size=2, device="cpu", command=["test"])
    settings.update(overrides)
    return ExtractOptions(**settings)


def tables(warehouse: Path) -> dict[str, pa.Table]:
    with open_session(warehouse) as session:
        return {
            "samples": session.query("select * from samples order by sample_idx"),
            "head_metrics": session.query("select * from head_metrics order by sample_idx, query, layer, head"),
        }


def test_interrupted_run_resumes_to_the_same_result(tmp_path, tiny_gqa):
    straight = run_extract(tmp_path / "straight", options(tiny_gqa))
    assert (straight.parts_written, straight.samples_written) == (4, 10)

    first = run_extract(tmp_path / "resumed", options(tiny_gqa, max_parts=2))
    assert first.parts_written == 2
    second = run_extract(tmp_path / "resumed", options(tiny_gqa))
    assert (second.parts_skipped, second.parts_written, second.run_id) == (2, 2, first.run_id)
    assert second.run_id == straight.run_id

    expected, got = tables(tmp_path / "straight"), tables(tmp_path / "resumed")
    assert got["samples"].column("sample_idx").to_pylist() == list(range(10))
    assert got["samples"].equals(expected["samples"])
    assert got["head_metrics"].equals(expected["head_metrics"])
    layers, heads = 3, 4
    assert got["head_metrics"].num_rows == 10 * 2 * layers * heads

    run_paths = open_warehouse(tmp_path / "resumed").run_folders()[0]
    rows, sample_idx, queries = arrays.open_rows(run_paths)
    straight_rows, _, _ = arrays.open_rows(open_warehouse(tmp_path / "straight").run_folders()[0])
    assert sorted(sample_idx.tolist()) == list(range(10)) and queries == ["prompt", "gen1"]
    np.testing.assert_array_equal(rows.compute(scheduler="threads"), straight_rows.compute(scheduler="threads"))
    assert parts.verify(run_paths) == []


def test_complete_run_loads_no_model(tmp_path, tiny_mha, monkeypatch):
    run_extract(tmp_path / "wh", options(tiny_mha, limit=4))

    def refuse(*args, **kwargs):
        raise AssertionError("a complete run must not load the model")

    monkeypatch.setattr(run_module, "load_model", refuse)
    again = run_extract(tmp_path / "wh", options(tiny_mha, limit=4))
    assert (again.parts_written, again.parts_skipped) == (0, 2)


def test_other_settings_make_another_run_and_named_mismatch_is_refused(tmp_path, tiny_mha):
    first = run_extract(tmp_path / "wh", options(tiny_mha, limit=4))
    other = run_extract(tmp_path / "wh", options(tiny_mha, limit=4, queries=("gen1",)))
    assert other.run_id != first.run_id and other.new_run
    with pytest.raises(FingerprintMismatch) as caught:
        run_extract(tmp_path / "wh", options(tiny_mha, limit=4, rows=False, run_id=first.run_id))
    assert "rows" in caught.value.differing
    assert "queries" not in caught.value.differing


def test_rows_are_the_captured_rows_without_padding(tmp_path, tiny_mha):
    run_extract(tmp_path / "wh", options(tiny_mha, limit=3, part_size=3, batch_size=3))
    with open_session(tmp_path / "wh") as session:
        samples = session.query("select sample_idx, n_tokens, n_image, image_start, image_end from samples order by sample_idx").to_pylist()
        metrics = session.query("select sample_idx, query, layer, head, image_sum, bos_sum from head_metrics order by sample_idx, query, layer, head").to_pylist()
    run_paths = open_warehouse(tmp_path / "wh").run_folders()[0]
    rows, sample_idx, queries = arrays.open_rows(run_paths)
    rows = rows.compute(scheduler="threads").astype(np.float32)
    lengths = {s["sample_idx"]: s["n_tokens"] for s in samples}
    for position, idx in enumerate(sample_idx):
        prompt_row = rows[position, queries.index("prompt")]
        gen1_row = rows[position, queries.index("gen1")]
        n = lengths[idx]
        assert not np.isnan(prompt_row[..., :n]).any() and np.isnan(prompt_row[..., n:]).all()
        assert not np.isnan(gen1_row[..., : n + 1]).any() and np.isnan(gen1_row[..., n + 1 :]).all()
        np.testing.assert_allclose(prompt_row[..., :n].sum(-1), 1.0, atol=5e-3)  # float16 storage
        # the first real token is the bos segment: the stored row starts there
        for metric in (m for m in metrics if m["sample_idx"] == idx and m["query"] == "prompt"):
            assert prompt_row[metric["layer"], metric["head"], 0] == pytest.approx(metric["bos_sum"], abs=1e-3)
            span = next(s for s in samples if s["sample_idx"] == idx)
            image = prompt_row[metric["layer"], metric["head"], span["image_start"] : span["image_end"]]
            assert image.sum() == pytest.approx(metric["image_sum"], abs=5e-3)


def test_broken_image_becomes_an_error_row(tmp_path, tiny_mha, monkeypatch):
    from attnwh.extract.benchmarks import registry

    original = registry.get_benchmark("toy-shapes")

    def load_with_broken_image(data, split):
        samples = original.load(data, split)

        def broken():
            raise OSError("image file is truncated")

        samples[1] = dataclasses.replace(samples[1], load_image=broken)
        return samples

    monkeypatch.setitem(registry.BENCHMARKS, "toy-shapes", dataclasses.replace(original, load=load_with_broken_image))
    result = run_extract(tmp_path / "wh", options(tiny_mha, limit=4))
    assert result.errors == 1 and result.samples_written == 4
    with open_session(tmp_path / "wh") as session:
        statuses = session.query("select sample_idx, status, error from samples order by sample_idx").to_pylist()
        counted = session.query("select count(distinct sample_idx) as n from head_metrics").column("n").to_pylist()
    assert [row["status"] for row in statuses] == ["ok", "error", "ok", "ok"]
    assert "truncated" in statuses[1]["error"]
    assert counted == [3]


def test_option_log_probabilities_equal_a_plain_forward(tmp_path, tiny_mha):
    """Stored option log-probs = log_softmax of a plain SDPA forward's last-position logits, per letter token."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from attnwh.extract.benchmarks import get_benchmark

    run_extract(tmp_path / "wh", options(tiny_mha, benchmark="toy-shapes-choice", limit=3, batch_size=3))
    samples = tables(tmp_path / "wh")["samples"].to_pylist()
    model = AutoModelForImageTextToText.from_pretrained(tiny_mha, dtype=torch.float32, attn_implementation="sdpa").eval()
    processor = AutoProcessor.from_pretrained(tiny_mha, backend="pil")
    letters = [processor.tokenizer.convert_tokens_to_ids(letter) for letter in "ABCD"]
    benchmark = get_benchmark("toy-shapes-choice").load(None, "test")
    for row, sample in zip(samples, benchmark):
        assert row["sample_key"] == sample.key and row["parser"] == "letter" and row["parser_version"] == "4"
        encoded = processor(images=[sample.load_image()], text=[row["prompt"]], return_tensors="pt")
        with torch.inference_mode():
            logits = model(**encoded).logits[0, -1]
        expected = torch.log_softmax(logits, dim=-1)[letters]
        assert row["option_logprobs"] == pytest.approx(expected.tolist(), abs=1e-4)
