"""``attnwh heads export / import``: the files other tools read, against the rows they come from, and
rankings imported from them driving ``attnwh mask``.

References read ``head_metrics`` straight from the parts' Parquet files (pyarrow, not attnwh's
readers) and compute means and key-value-head scores in plain Python.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attnwh.core.errors import UsageError
from attnwh.extract.mask_run import MaskOptions
from attnwh.extract.ranking_import import ImportOptions, import_heads
from attnwh.extract.run import ExtractOptions, run_extract
from attnwh.face.workflows import mask_sweep
from attnwh.queries.library import data_test_failures, get_mart, open_session, run_mart
from attnwh.warehouse.head_files import parse_duo_tsv, parse_retrieval_json
from tests.reliability.harness import run_cli


@pytest.fixture(scope="module")
def gqa_run(tmp_path_factory, tiny_gqa):
    """The tiny GQA LLaVA (3 layers, 4 query heads sharing 2 KV heads) on 6 toy samples."""
    warehouse = tmp_path_factory.mktemp("heads") / "wh"
    run_id = run_extract(warehouse, ExtractOptions(model=str(tiny_gqa), limit=6, part_size=3, device="cpu", command=["test"])).run_id
    return warehouse, run_id


def image_sums(warehouse: Path, run_id: str, query: str = "gen1") -> dict[tuple[int, int], list[float]]:
    """Per head, image_sum in each sample in sample order, from the parts' files."""
    rows = []
    for path in sorted(warehouse.glob(f"runs/*/*/run={run_id}/parts/*/head_metrics.parquet")):
        rows += pq.read_table(path, columns=["sample_idx", "query", "layer", "head", "image_sum"]).to_pylist()
    heads: dict[tuple[int, int], list[tuple[int, float]]] = {}
    for row in rows:
        if row["query"] == query:
            heads.setdefault((row["layer"], row["head"]), []).append((row["sample_idx"], row["image_sum"]))
    return {head: [value for _, value in sorted(values)] for head, values in heads.items()}


def test_retrieval_json_holds_every_heads_per_sample_scores(gqa_run, capsys):
    warehouse, run_id = gqa_run
    code, out, err = run_cli(capsys, "heads", "export", run_id, "--score", "image_sum", "--warehouse", str(warehouse))
    assert code == 0, err
    exported = json.loads(out)
    expected = image_sums(warehouse, run_id)
    assert set(exported) == {f"{layer}-{head}" for layer in range(3) for head in range(4)}
    for (layer, head), values in expected.items():
        assert exported[f"{layer}-{head}"] == pytest.approx(values, abs=1e-6) and len(values) == 6


def test_duo_tsv_scores_key_value_heads_by_their_groups(gqa_run, tmp_path, capsys):
    warehouse, run_id = gqa_run
    out = tmp_path / "full_attention_heads.tsv"
    code, _, err = run_cli(capsys, "heads", "export", run_id, "--format", "duo-tsv", "--score", "image_sum", "--out", str(out), "--warehouse", str(warehouse))
    assert code == 0, err
    lines = out.read_text().splitlines()
    assert len(lines) == 3 and all(len(line.split("\t")) == 2 for line in lines)  # layers × KV heads
    got = [[float(cell) for cell in line.split("\t")] for line in lines]
    means = {head: sum(values) / len(values) for head, values in image_sums(warehouse, run_id).items()}
    kv = {(layer, group): (means[(layer, 2 * group)] + means[(layer, 2 * group + 1)]) / 2 for layer in range(3) for group in range(2)}
    low, high = min(kv.values()), max(kv.values())
    for (layer, group), value in kv.items():
        assert got[layer][group] == pytest.approx((value - low) / (high - low), abs=1e-9)  # written in full, not rounded
    assert min(min(row) for row in got) == 0 and max(max(row) for row in got) == 1


def test_an_exported_ranking_imports_to_the_same_order_and_masks_its_top_head(gqa_run, tiny_gqa, tmp_path, capsys):
    warehouse, run_id = gqa_run
    exported = tmp_path / "retrieval.json"
    assert run_cli(capsys, "heads", "export", run_id, "--score", "image_sum", "--out", str(exported), "--warehouse", str(warehouse))[0] == 0
    result = import_heads(warehouse, ImportOptions(exported, "retrieval-json", str(tiny_gqa), "pope-image-sum", command=["test"]))
    assert (result.n_heads, result.shape, result.new_run) == (12, (3, 4, 2), True)
    again = import_heads(warehouse, ImportOptions(exported, "retrieval-json", str(tiny_gqa), "pope-image-sum", command=["test"]))
    assert (again.run_id, again.new_run) == (result.run_id, False)  # fingerprinted by the file: the same run
    with open_session(warehouse) as session:
        imported = run_mart(session, "imported_ranking", {"run_id": result.run_id})
        ranked = run_mart(session, "head_ranking", {"run_id": run_id, "score": "image_sum"}).to_pylist()
        assert data_test_failures(get_mart("imported_ranking"), imported) == []
    assert [(row["layer"], row["head"]) for row in imported.to_pylist()] == [(row["layer"], row["head"]) for row in ranked]
    # masking by the imported ranking switches off its best head first
    mask, _ = mask_sweep(
        warehouse, MaskOptions(model=str(tiny_gqa), limit=3, k=("0", "1"), strategies=("top",), seeds=1, device="cpu", ranking_run=result.run_id, command=["test"])
    )
    with open_session(warehouse) as session:
        conditions = session.query("select k, heads, ranking_metric, ranking_run_id from mask_conditions where run_id = $r order by k", {"r": mask.run_id}).to_pylist()
    best = imported.to_pylist()[0]
    assert conditions[1]["heads"] == [{"layer": best["layer"], "head": best["head"]}]
    assert (conditions[1]["ranking_metric"], conditions[1]["ranking_run_id"]) == ("imported", result.run_id)


def test_a_duo_tsv_gives_each_query_head_its_kv_heads_score(tmp_path, tiny_gqa):
    tsv = tmp_path / "duo.tsv"
    tsv.write_text("0.1\t0.9\n0.5\t0.3\n1\t0\n")
    result = import_heads(tmp_path / "wh", ImportOptions(tsv, "duo-tsv", str(tiny_gqa), "duo", command=["test"]))
    with open_session(tmp_path / "wh") as session:
        rows = run_mart(session, "imported_ranking", {"run_id": result.run_id}).to_pylist()
    scores = {(row["layer"], row["head"]): row["score"] for row in rows}
    assert scores == {(0, 0): 0.1, (0, 1): 0.1, (0, 2): 0.9, (0, 3): 0.9, (1, 0): 0.5, (1, 1): 0.5, (1, 2): 0.3, (1, 3): 0.3, (2, 0): 1.0, (2, 1): 1.0, (2, 2): 0.0, (2, 3): 0.0}
    assert [(row["layer"], row["head"]) for row in rows][:3] == [(2, 0), (2, 1), (0, 2)]  # ties to the lower layer, then head


def every_head_json(**replace: str) -> str:
    """A JSON of every head of the 3 × 4 model, one value each, written pair by pair: ``replace`` maps a key ("2_3"
    for "2-3") to the "key": value text written in its place (a dict cannot hold a key twice)."""
    pairs = {f"{layer}_{head}": f'"{layer}-{head}": [{layer + head / 10}]' for layer in range(3) for head in range(4)}
    return "{" + ", ".join({**pairs, **replace}.values()) + "}"


@pytest.mark.parametrize(
    "fmt, content, message",
    [
        pytest.param("retrieval-json", every_head_json(extra='"0-0": [9]'), "head 0-0 is given twice (keys '0-0' and '0-0'): json keeps only the later", id="key-twice"),
        pytest.param("retrieval-json", every_head_json(extra='"00-0": [9]'), "head 0-0 is given twice (keys '0-0' and '00-0')", id="key-aliased"),
        pytest.param("retrieval-json", every_head_json(**{"2_3": '"2-³": [0.5]'}), "key '2-³' is not \"layer-head\"", id="superscript-digit"),
        pytest.param("retrieval-json", every_head_json(**{"2_3": '"2-3": [' + "7" * 400 + "]"}), "head 2-3 needs a non-empty list of finite numbers", id="400-digits"),
        pytest.param("retrieval-json", every_head_json(**{"2_3": '"2-3": [1e308, 1e308]'}), "head 2-3: the mean of its scores is not a finite number", id="mean-overflows"),
        pytest.param("retrieval-json", "[" * 100_000, "not JSON that can be read (nested too deeply)", id="nested-deep"),
        ("duo-tsv", "0.1\t0.9\n0.5\t0.3\n1\t0_5\n", ":3: not tab-separated numbers as numpy's loadtxt reads them ('1\\t0_5')"),
        ("duo-tsv", "0.1\t0.9\n0.5\t0.3\n", "holds 2 layers × 2 key-value heads, but"),
        ("duo-tsv", "0.1\t0.9\t0.2\n0.5\t0.3\t0.1\n1\t0\t0\n", "holds 3 layers × 3 key-value heads, but"),
        ("duo-tsv", "0.1\tnan\n0.5\t0.3\n1\t0\n", ":1: scores must be finite numbers"),
        ("duo-tsv", "a\tb\n", ":1: not tab-separated numbers"),
        ("retrieval-json", json.dumps({"0-0": [0.1]}), "holds 1 head (layers 0..0, heads 0..0), but"),
        ("retrieval-json", "[1, 2]", 'expected an object of "layer-head"'),
        ("retrieval-json", json.dumps({"zero": [0.1]}), "key 'zero' is not \"layer-head\""),
        ("retrieval-json", "{", "not JSON"),
    ],
)
def test_files_that_do_not_fit_give_one_line_naming_both_shapes(tmp_path, tiny_gqa, capsys, fmt, content, message):
    path = tmp_path / "ranking.txt"
    path.write_text(content)
    code, _, err = run_cli(capsys, "heads", "import", str(path), "--format", fmt, "--model", str(tiny_gqa), "--name", "x", "--warehouse", str(tmp_path / "wh"))
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith(f"attnwh: error: {path}") and message in err, err
    if "but" in message:
        assert "has 3 layers × 4 heads (2 key-value heads)" in err


def test_an_imported_ranking_exports_one_value_per_head_and_negative_scores_as_0(tmp_path, tiny_gqa, capsys):
    """An imported ranking (kind ranking) exports like an attribution run, one value per head; a negative score (the
    file's mean here, an attribution run's causal importance elsewhere) is written as 0 in a retrieval-json, with a
    warning line: SparseMM gives each head ``head_score / sum`` of the cache."""
    lists = {(layer, head): [0.3 * layer - 0.1 * head - 0.2, 0.1 * head + 0.05 * layer] for layer in range(3) for head in range(4)}
    source = tmp_path / "source.json"
    source.write_text(json.dumps({f"{layer}-{head}": values for (layer, head), values in lists.items()}))
    means = {head: float(np.mean(values)) for head, values in lists.items()}  # Retrieval_Head's reading of each list
    negative = sum(mean < 0 for mean in means.values())
    assert 0 < negative < 12
    warehouse = tmp_path / "wh"
    code, out, err = run_cli(capsys, "heads", "import", str(source), "--model", str(tiny_gqa), "--name", "signed", "--warehouse", str(warehouse))
    assert code == 0, err
    run_id = out.split("ranking run ")[1].split()[0]
    code, out, err = run_cli(capsys, "heads", "export", run_id, "--warehouse", str(warehouse))
    assert code == 0 and err.splitlines() == [
        f"attnwh: warning: wrote {negative} negative score(s) as 0: SparseMM gives each head its score's share of the sum (a negative one would be a negative cache budget)"
    ], err
    assert json.loads(out) == {f"{layer}-{head}": [max(mean, 0.0)] for (layer, head), mean in means.items()}
    folder = tmp_path / "duo"
    folder.mkdir()
    code, out, err = run_cli(capsys, "heads", "export", run_id, "--format", "duo-tsv", "--out", str(folder / "full_attention_heads.tsv"), "--warehouse", str(warehouse))
    assert code == 0 and err == "", err
    full = np.loadtxt(folder / "full_attention_heads.tsv", dtype=float, delimiter="\t")  # DuoAttention's reader
    kv = np.array([[np.mean([means[(layer, 2 * group)], means[(layer, 2 * group + 1)]]) for group in range(2)] for layer in range(3)])
    assert np.allclose(full, (kv - kv.min()) / (kv.max() - kv.min()), rtol=0, atol=1e-12)


def test_a_config_json_beside_a_duo_tsv_is_kept_only_when_it_is_duoattentions(gqa_run, tmp_path, capsys):
    """DuoAttention's loader reads sink_size and recent_size from the config.json beside the TSV: one of its own is
    left as it is; any other (a model's config.json) is refused in one line, with nothing written."""
    warehouse, run_id = gqa_run
    theirs = json.dumps({"model_name": "Mistral-7B-Instruct-v0.2", "sink_size": 64, "recent_size": 512})
    unrelated = json.dumps({"architectures": ["LlavaForConditionalGeneration"], "model_type": "llava"})
    for name, config in (("duo", theirs), ("model", unrelated), ("not-json", "{")):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "config.json").write_text(config)
        out = folder / "full_attention_heads.tsv"
        code, _, err = run_cli(capsys, "heads", "export", run_id, "--format", "duo-tsv", "--score", "image_sum", "--out", str(out), "--warehouse", str(warehouse))
        assert (folder / "config.json").read_text() == config
        if name == "duo":
            assert code == 0 and out.is_file() and err == f"left {folder / 'config.json'} as it is (DuoAttention reads its sink_size and recent_size)\n", err
        else:
            assert code == 2 and not out.exists() and len(err.splitlines()) == 1, err
            assert err.startswith(f"attnwh: error: {folder / 'config.json'} is not a DuoAttention config.json (whole-number sink_size and recent_size)"), err


def test_a_ranking_of_another_shape_cannot_drive_a_mask_sweep(gqa_run, tmp_path, capsys):
    from attnwh.extract.toy.builder import TinyLlavaSpec, save_tiny_llava

    warehouse, run_id = gqa_run
    other = save_tiny_llava(tmp_path / "two-layers", TinyLlavaSpec(n_layers=2, n_heads=4, n_kv_heads=4, seed=3))
    code, _, err = run_cli(
        capsys,
        "mask",
        "--model",
        str(other),
        "--limit",
        "2",
        "--k",
        "0,1",
        "--strategy",
        "top",
        "--seeds",
        "1",
        "--ranking-run",
        run_id,
        "--device",
        "cpu",
        "--warehouse",
        str(warehouse),
    )
    assert code == 2 and err.strip().endswith(f"ranking run {run_id} ranks 3 layers × 4 heads, but {other} has 2 layers × 4 heads"), err


@settings(max_examples=200, deadline=None)
@given(text=st.one_of(st.text(max_size=60), st.lists(st.lists(st.floats(), max_size=3), max_size=4).map(lambda rows: "\n".join("\t".join(map(str, row)) for row in rows))))
def test_generated_files_parse_or_give_one_line(text):
    for parse in (parse_duo_tsv, parse_retrieval_json):
        try:
            scores = parse(text, "ranking.txt", (3, 4, 2), "tiny")
            scores = scores[0] if isinstance(scores, tuple) else scores  # duo-tsv: (scores, values clipped)
        except UsageError as exc:
            assert "\n" not in str(exc) and "ranking.txt" in str(exc)
        else:
            assert set(scores) == {(layer, head) for layer in range(3) for head in range(4)}


def test_a_duo_tsv_is_clipped_as_duoattention_clips_it_and_says_how_much(tmp_path, tiny_gqa, capsys):
    tsv = tmp_path / "full_attention_heads.tsv"
    tsv.write_text("-0.0014\t0.9\n0.5\t1.5\n1\t0\n")
    code, out, _ = run_cli(capsys, "heads", "import", str(tsv), "--format", "duo-tsv", "--model", str(tiny_gqa), "--name", "clipped", "--warehouse", str(tmp_path / "wh"))
    assert code == 0 and "clipped 2 value(s) outside [0, 1]" in out
    with open_session(tmp_path / "wh") as session:
        rows = run_mart(session, "imported_ranking", {"run_id": out.split("ranking run ")[1].split()[0]}).to_pylist()
    scores = {(row["layer"], row["head"]): row["score"] for row in rows}
    assert scores[(0, 0)] == 0.0 and scores[(1, 2)] == 1.0 and scores[(0, 2)] == 0.9


def test_exports_are_read_by_each_tools_own_loader(gqa_run, tmp_path, capsys):
    """The few lines each tool reads its file with, reimplemented: DuoAttention (numpy loadtxt, clip, config.json
    beside it), SparseMM (each list's mean, in key order, reshaped to layers × heads), Retrieval_Head (each list's mean)."""
    warehouse, run_id = gqa_run
    sums = image_sums(warehouse, run_id)
    expected = np.array([[np.mean(sums[(layer, head)]) for head in range(4)] for layer in range(3)])
    folder = tmp_path / "duo"
    folder.mkdir()
    code, out, _ = run_cli(
        capsys, "heads", "export", run_id, "--format", "duo-tsv", "--score", "image_sum", "--out", str(folder / "full_attention_heads.tsv"), "--warehouse", str(warehouse)
    )
    assert code == 0 and "config.json" in out
    full = np.clip(np.loadtxt(folder / "full_attention_heads.tsv", dtype=float, delimiter="\t"), 0, 1)  # DuoAttention's load_attn_pattern
    config = json.loads((folder / "config.json").read_text())
    assert full.shape == (3, 2) and isinstance(config["sink_size"], int) and isinstance(config["recent_size"], int)
    kv = expected.reshape(3, 2, 2).mean(axis=2)
    assert np.argsort(full, axis=None).tolist() == np.argsort(kv, axis=None).tolist()
    code, out, _ = run_cli(capsys, "heads", "export", run_id, "--format", "retrieval-json", "--score", "image_sum", "--warehouse", str(warehouse))
    content = json.loads(out)
    sparsemm = np.array([np.mean(values) for values in content.values()]).reshape(3, 4)  # key order, as SparseMM reshapes it
    assert np.allclose(sparsemm, expected, atol=1e-6)
    assert {key: float(np.mean(values)) for key, values in content.items()} == pytest.approx({f"{layer}-{head}": expected[layer, head] for layer in range(3) for head in range(4)})


def test_an_export_with_a_head_without_scores_is_refused_in_one_line():
    from attnwh.warehouse.head_files import write_heads

    rows = [{"layer": layer, "head": head, "scores": [0.5], "mean_score": 0.5, "n_layers": 2, "n_heads": 2, "n_kv_heads": 2} for layer in range(2) for head in range(2)]
    rows[3] = {**rows[3], "scores": [], "mean_score": None}
    for fmt in ("retrieval-json", "duo-tsv"):
        with pytest.raises(UsageError, match=r"^1 of 4 heads have no score to export \(1-1\): the other tools would average them to NaN$"):
            write_heads(rows, fmt)
    assert list(json.loads(write_heads(list(reversed(rows[:3])) + [{**rows[0], "layer": 1, "head": 1}], "retrieval-json"))) == ["0-0", "0-1", "1-0", "1-1"]


def test_ranking_agreement_refuses_models_of_different_shapes(tmp_path, tiny_mha, tiny_gqa):
    """Heads are matched by (layer, head): a 3 × 4 model against a 2 × 4 one would correlate heads that are not the
    same heads, so the mart refuses in one line; two models of one shape (MHA and GQA, 3 × 4 each) are compared."""
    from attnwh.core.errors import SqlError
    from attnwh.extract.toy.builder import TinyLlavaSpec, save_tiny_llava

    shallow = save_tiny_llava(tmp_path / "shallow", TinyLlavaSpec(n_layers=2, n_heads=4, n_kv_heads=4, seed=3))
    warehouse = tmp_path / "wh"
    runs = {
        name: run_extract(warehouse, ExtractOptions(model=str(model), benchmark="toy-shapes", limit=2, rows=False, device="cpu", command=["test"])).run_id
        for name, model in (("mha", tiny_mha), ("gqa", tiny_gqa), ("shallow", shallow))
    }
    with open_session(warehouse) as session:
        same = run_mart(session, "ranking_agreement", {"run_a": runs["mha"], "run_b": runs["gqa"]}).to_pylist()
        with pytest.raises(
            SqlError, match=f"run_a {runs['mha']} has 3 layers × 4 heads and run_b {runs['shallow']} has 2 × 4: ranking_agreement compares heads of models of one shape"
        ):
            run_mart(session, "ranking_agreement", {"run_a": runs["mha"], "run_b": runs["shallow"]})
    assert same and same[0]["n_heads"] == 12
