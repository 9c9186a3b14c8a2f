"""The head-ranking files DuoAttention, SparseMM and Retrieval_Head wrote (``../shared/real/heads``), imported as
those tools read them: every value checked against the file's raw records, read here independently (numpy's
loadtxt and a clip for DuoAttention's TSV, each list's numpy mean for the JSON files), and an imported JSON's
ranking against the tool's own (numpy means, Python's stable sort)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from attnwh.extract.ranking_import import ImportOptions, import_heads
from attnwh.queries.library import open_session, run_mart
from attnwh.warehouse.head_files import is_duo_config, parse_heads
from tests.conformance.test_real_files import LLAVA, REAL

HEADS = REAL / "heads"
pytestmark = pytest.mark.skipif(not HEADS.is_dir(), reason=f"the tools' head files are not here ({HEADS}); set ATTNWH_REAL_FILES")

# (file, layers, query heads, key-value heads): the models the files were written for
DUO = [("Mistral-7B-Instruct-v0.2", 32, 32, 8), ("Meta-Llama-3.1-8B-Instruct", 32, 32, 8)]


@pytest.mark.parametrize("model, layers, heads, kv_heads", DUO)
def test_duoattention_files_import_clipped_as_duoattention_clips_them(model, layers, heads, kv_heads):
    path = HEADS / "duo-attention" / model / "full_attention_heads.tsv"
    raw = np.loadtxt(path, dtype=float, delimiter="\t")  # DuoAttention's load_attn_pattern
    assert raw.shape == (layers, kv_heads)
    assert is_duo_config((HEADS / "duo-attention" / model / "config.json").read_text())  # kept by `heads export` when beside --out
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
        assert scores[(layer, head)] == float(np.mean(values))  # exactly: a last-bit difference reorders ties
    if folder == "sparsemm":  # SparseMM reshapes the key order into layers × heads: the file runs layer by layer
        assert list(raw) == [f"{layer}-{head}" for layer in range(layers) for head in range(heads)]


@pytest.mark.parametrize("folder, name", [("retrieval_head", "Mistral-7B-v0.2-hf.json"), ("sparsemm", "llava-v1.6.json")])
def test_an_imported_json_ranks_heads_as_the_tool_ranks_them(folder, name, tmp_path):
    """Retrieval_Head ranks heads by ``sorted(((key, np.mean(scores)) ...), key=score, reverse=True)``: a stable sort,
    ties in the file's key order (layer by layer, as ``imported_ranking`` breaks them). The Mistral file holds heads
    whose means tie under numpy but not under ``sum / len`` (from rank 283)."""
    path = HEADS / folder / name
    raw = json.loads(path.read_text())
    assert list(raw) == sorted(raw, key=lambda key: tuple(int(part) for part in key.split("-")))  # ties: key order = (layer, head)
    ranked = sorted(((key, np.mean(values)) for key, values in raw.items()), key=lambda item: item[1], reverse=True)
    tool_order = [tuple(int(part) for part in key.split("-")) for key, _ in ranked]
    model = tmp_path / "llava-1.5-7b"  # 32 layers × 32 heads, as both files
    model.mkdir()
    shutil.copy(LLAVA / "config.json", model / "config.json")
    result = import_heads(tmp_path / "wh", ImportOptions(path, "retrieval-json", str(model), "tool", command=["test"]))
    with open_session(tmp_path / "wh") as session:
        rows = run_mart(session, "imported_ranking", {"run_id": result.run_id}).to_pylist()
    assert [(row["layer"], row["head"]) for row in rows] == tool_order
