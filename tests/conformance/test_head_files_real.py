"""The head-ranking files DuoAttention, SparseMM and Retrieval_Head wrote (``../shared/real/heads``), imported as
those tools read them: every value checked against the file's raw records, read here independently (numpy's
loadtxt and a clip for DuoAttention's TSV, each list's mean for the JSON files)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from attnwh.warehouse.head_files import parse_heads
from tests.conformance.test_real_files import REAL

HEADS = REAL / "heads"
pytestmark = pytest.mark.skipif(not HEADS.is_dir(), reason=f"the tools' head files are not here ({HEADS}); set ATTNWH_REAL_FILES")

# (file, layers, query heads, key-value heads): the models the files were written for
DUO = [("Mistral-7B-Instruct-v0.2", 32, 32, 8), ("Meta-Llama-3.1-8B-Instruct", 32, 32, 8)]


@pytest.mark.parametrize("model, layers, heads, kv_heads", DUO)
def test_duoattention_files_import_clipped_as_duoattention_clips_them(model, layers, heads, kv_heads):
    path = HEADS / "duo-attention" / model / "full_attention_heads.tsv"
    raw = np.loadtxt(path, dtype=float, delimiter="\t")  # DuoAttention's load_attn_pattern
    assert raw.shape == (layers, kv_heads)
    assert (HEADS / "duo-attention" / model / "config.json").is_file()
    scores, clipped = parse_heads(path.read_text(), "duo-tsv", str(path), (layers, heads, kv_heads), model)
    assert clipped == int(((raw < 0) | (raw > 1)).sum())
    expected = np.clip(raw, 0, 1)
    group = heads // kv_heads
    assert all(scores[(layer, head)] == pytest.approx(expected[layer, head // group], abs=0) for layer in range(layers) for head in range(heads))


def test_the_mistral_file_holds_negatives_that_are_clipped():
    path = HEADS / "duo-attention" / "Mistral-7B-Instruct-v0.2" / "full_attention_heads.tsv"
    raw = np.loadtxt(path, dtype=float, delimiter="\t")
    _, clipped = parse_heads(path.read_text(), "duo-tsv", str(path), (32, 32, 8), "Mistral")
    assert raw.min() < 0 and clipped > 0


@pytest.mark.parametrize("folder, name, layers, heads", [("sparsemm", "llava-v1.6.json", 32, 32), ("retrieval_head", "Mistral-7B-v0.2-hf.json", 32, 32)])
def test_retrieval_json_files_import_as_each_lists_mean(folder, name, layers, heads):
    path = HEADS / folder / name
    raw = json.loads(path.read_text())
    scores, clipped = parse_heads(path.read_text(), "retrieval-json", str(path), (layers, heads, heads), name)
    assert clipped == 0 and len(scores) == layers * heads == len(raw)
    for key, values in raw.items():
        layer, head = map(int, key.split("-"))
        assert scores[(layer, head)] == pytest.approx(float(np.mean(values)))
    if folder == "sparsemm":  # SparseMM reshapes the key order into layers × heads: the file runs layer by layer
        assert list(raw) == [f"{layer}-{head}" for layer in range(layers) for head in range(heads)]
