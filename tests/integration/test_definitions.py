"""One definition per concept: the head scores and stages live in warehouse/sql/definitions.sql only.

Editing a formula there is one edit: rollups built from other definitions are bypassed, and every
mart (head_attention, visual_heads, head_ranking) and masking's ranking follow the new formula, as
a plain-Python computation over the raw head_metrics rows with that formula says.
"""

from __future__ import annotations

import math

import pyarrow as pa
import pytest

from attnwh.extract.masking import stage_layers
from attnwh.extract.run import ExtractOptions, run_extract
from attnwh.queries.library import open_session, run_mart
from attnwh.queries.rankings import head_order
from attnwh.warehouse import definitions, storage

OLD = "case when n_image > 1 and image_sum > 0 then 1 - image_entropy / ln(n_image) end"
NEW = "case when n_image > 1 and image_sum > 0 then sqrt(greatest(0, 1 - image_entropy / ln(n_image))) end"  # another form, other ranks


def new_concentration(entropy: float, n_image: int) -> float | None:
    return math.sqrt(max(0.0, 1 - entropy / math.log(n_image))) if n_image > 1 else None


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory):
    root = tmp_path_factory.mktemp("definitions") / "wh"
    result = run_extract(root, ExtractOptions(limit=24, rows=False, device="cpu", part_size=12, batch_size=12, command=["test"]))
    return root, result.run_id


@pytest.fixture
def edited(monkeypatch):
    original = definitions.definitions_sql()
    assert original.count(OLD) == 1  # the formula is written once
    monkeypatch.setattr(definitions, "definitions_sql", lambda: original.replace(OLD, NEW))
    assert definitions.definitions_version() != definitions.definitions_version(original)


def old_concentration(entropy: float, n_image: int) -> float | None:
    return 1 - entropy / math.log(n_image) if n_image > 1 else None


def by_python(root, run_id: str, concentration=new_concentration) -> dict:
    """Per head (gen1): mean concentration (the new formula unless given), mean concentration × sum, and the detection share for k = 3."""
    with open_session(root) as session:
        rows = session.query("select sample_idx, layer, head, n_image, image_sum, image_entropy from head_metrics where run_id = $r and query = 'gen1'", {"r": run_id}).to_pylist()
    per_head, per_sample = {}, {}
    for row in rows:
        value = concentration(row["image_entropy"], row["n_image"])
        product = None if value is None else value * row["image_sum"]
        per_head.setdefault((row["layer"], row["head"]), []).append((value, product))
        per_sample.setdefault(row["sample_idx"], []).append((row["layer"], row["head"], product))
    detected = dict.fromkeys(per_head, 0)
    for heads in per_sample.values():  # the heads that have the score, higher first, ties to the lower layer
        for layer, head, _ in sorted([h for h in heads if h[2] is not None], key=lambda h: (-h[2], h[0], h[1]))[:3]:
            detected[layer, head] += 1
    means = {}
    for key, values in per_head.items():
        present = [value for value in values if value[0] is not None]
        means[key] = (sum(c for c, _ in present) / len(present), sum(p for _, p in present) / len(present), detected[key] / len(present))
    return means


def test_rollups_of_the_current_definitions_are_read(warehouse):
    root, run_id = warehouse
    with open_session(root) as session:
        assert session.query("select run_id from rolled_up_runs").column(0).to_pylist() == [run_id]


def test_an_edited_formula_is_followed_by_every_mart_and_masking(warehouse, edited):
    root, run_id = warehouse
    expected = by_python(root, run_id)
    with open_session(root) as session:
        assert session.query("select count(*) as n from rolled_up_runs").to_pylist() == [{"n": 0}]  # built from other definitions: bypassed
        attention = run_mart(session, "head_attention").to_pylist()
        visual = run_mart(session, "visual_heads", {"k": "3"}).to_pylist()
        ranking = run_mart(session, "head_ranking", {"run_id": run_id, "score": "concentration"}).to_pylist()
    gen1 = {(r["layer"], r["head"]): r for r in attention if r["query"] == "gen1"}
    assert {key: row["mean_concentration"] for key, row in gen1.items()} == pytest.approx({key: value[0] for key, value in expected.items()})
    assert {key: row["mean_concentration_x_sum"] for key, row in gen1.items()} == pytest.approx({key: value[1] for key, value in expected.items()})
    assert {(r["layer"], r["head"]): r["mean_score"] for r in visual} == pytest.approx({key: value[1] for key, value in expected.items()})
    assert {(r["layer"], r["head"]): r["detection_score"] for r in visual} == {key: value[2] for key, value in expected.items()}
    order = sorted(expected, key=lambda key: (-expected[key][0], key))
    assert [(r["layer"], r["head"]) for r in ranking] == order
    with open_session(root) as session:
        assert head_order(session, run_id, "concentration", "gen1") == order  # what `attnwh mask --strategy top` masks first


def test_the_edit_changes_the_ranking(warehouse):
    """The edited formula is not a no-op on this warehouse: without it the order differs."""
    root, run_id = warehouse
    expected = by_python(root, run_id)
    order = sorted(expected, key=lambda key: (-expected[key][0], key))
    with open_session(root) as session:
        assert head_order(session, run_id, "concentration", "gen1") != order


def test_stages_come_from_the_stage_macro():
    assert [stage_layers(32, stage) for stage in ("early", "mid", "late")] == [range(0, 10), range(10, 20), range(20, 32)]
    assert definitions.layer_stages(4) == ["early", "mid", "mid", "late"]


def flat(expected: dict, doubled: str | None = None) -> dict:
    """by_python's means keyed by (layer, head, name); ``doubled``: that name's means times two."""
    return {(*key, name): value[index] * (2 if name == doubled else 1) for key, value in expected.items() for index, name in enumerate(("concentration", "concentration_x_sum"))}


def test_a_run_of_many_parts_is_added_up_once_then_read_from_the_local_cache(warehouse, monkeypatch, tmp_path):
    """A run's rollups are added up over its parts by the first session and kept in the local cache (by the
    parts' hashes and the definitions); later sessions read that, and every answer equals plain Python's."""
    root, run_id = warehouse
    cache = tmp_path / "cache"
    monkeypatch.setenv("ATTNWH_OBJECT_CACHE", str(cache))
    expected = by_python(root, run_id, old_concentration)

    def answers() -> tuple[dict, dict]:
        with open_session(root) as session:
            attention = run_mart(session, "head_attention").to_pylist()
            visual = run_mart(session, "visual_heads", {"k": "3"}).to_pylist()
        means = {(r["layer"], r["head"], name): r[f"mean_{name}"] for r in attention if r["query"] == "gen1" for name in ("concentration", "concentration_x_sum")}
        return means, {(r["layer"], r["head"]): (r["mean_score"], r["detection_score"]) for r in visual}

    for session in ("adds up the parts", "reads the cache"):
        means, visual = answers()
        assert means == pytest.approx(flat(expected)), session
        assert {key: value[0] for key, value in visual.items()} == pytest.approx({key: value[1] for key, value in expected.items()}), session
        assert {key: value[1] for key, value in visual.items()} == {key: value[2] for key, value in expected.items()}, session
        kept = sorted(path.name.split("-")[1] for path in cache.rglob("rollup-*"))
        assert kept == ["head_ranks", "head_scores"], session  # one compacted table per rollup table of the run (2 parts)

    # the later sessions really read the kept tables: one altered (a valid table) shows in the answers ...
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    (summary,) = [path for path in cache.rglob("rollup-head_scores-*")]
    table = pq.read_table(pa.BufferReader(storage.cached_content(cache, summary.name)))
    altered = pa.BufferOutputStream()
    doubled = pc.if_else(pc.equal(table["score"], "concentration"), pc.multiply(table["total"], 2.0), table["total"])
    pq.write_table(table.set_column(table.schema.get_field_index("total"), "total", doubled), altered)
    storage.keep_content(cache, summary.name, altered.getvalue().to_pybytes())
    means, _ = answers()
    assert means == pytest.approx(flat(expected, doubled="concentration"))
    # ... and a damaged one (a byte flipped, or not Parquet at all) is added up again from the parts
    kept = bytearray(summary.read_bytes())
    kept[len(kept) // 2] ^= 0x01
    summary.write_bytes(bytes(kept))
    means, _ = answers()
    assert means == pytest.approx(flat(expected))
    storage.keep_content(cache, summary.name, b"not parquet")
    means, _ = answers()
    assert means == pytest.approx(flat(expected))


def test_a_run_of_other_definitions_is_summed_from_its_rows_once_then_read_from_the_local_cache(warehouse, edited, monkeypatch, tmp_path):
    """After a definitions change a run's committed rollups are of the old formula: the first session sums its
    head_metrics rows with the new one and keeps that on this machine (by the rows' hashes and the definitions), later
    sessions read it instead of the rows; with the cache off every session recomputes from the rows. Every answer is
    plain Python's with the new formula."""
    root, run_id = warehouse
    cache = tmp_path / "cache"
    monkeypatch.setenv("ATTNWH_OBJECT_CACHE", str(cache))
    expected = by_python(root, run_id)

    def answers() -> tuple[dict, dict, int]:
        with open_session(root) as session:
            attention = run_mart(session, "head_attention").to_pylist()
            visual = run_mart(session, "visual_heads", {"k": "3"}).to_pylist()
            (recomputed,) = session.query("select count(*) from head_metrics_not_rolled_up").column(0).to_pylist()
        means = {(r["layer"], r["head"], name): r[f"mean_{name}"] for r in attention if r["query"] == "gen1" for name in ("concentration", "concentration_x_sum")}
        return means, {(r["layer"], r["head"]): (r["mean_score"], r["detection_score"]) for r in visual}, recomputed

    for session in ("sums the rows", "reads the cache"):
        means, visual, from_rows = answers()
        assert means == pytest.approx(flat(expected)), session
        assert {key: value[0] for key, value in visual.items()} == pytest.approx({key: value[1] for key, value in expected.items()}), session
        assert {key: value[1] for key, value in visual.items()} == {key: value[2] for key, value in expected.items()}, session
        assert from_rows == 0, session  # no row is left for staging to recompute from
        assert sorted(path.name.split("-")[1] for path in cache.rglob("recomputed-*")) == ["head_ranks", "head_scores"], session
        assert not list(cache.rglob("rollup-*")), session  # the old rollups are not added up

    # later sessions really read the kept table: one altered (a valid table) shows in the answers ...
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    (summary,) = cache.rglob("recomputed-head_scores-*")
    table = pq.read_table(pa.BufferReader(storage.cached_content(cache, summary.name)))
    altered = pa.BufferOutputStream()
    doubled = pc.if_else(pc.equal(table["score"], "concentration"), pc.multiply(table["total"], 2.0), table["total"])
    pq.write_table(table.set_column(table.schema.get_field_index("total"), "total", doubled), altered)
    storage.keep_content(cache, summary.name, altered.getvalue().to_pybytes())
    means, _, _ = answers()
    assert means == pytest.approx(flat(expected, doubled="concentration"))
    # ... under these definitions only: another version sums the rows again (and does not take the altered table)
    edited_sql = definitions.definitions_sql()
    monkeypatch.setattr(definitions, "definitions_sql", lambda: edited_sql + "\n-- another version, the same formulas\n")
    means, _, from_rows = answers()
    assert means == pytest.approx(flat(expected)) and from_rows == 0
    assert len(list(cache.rglob("recomputed-head_scores-*"))) == 2
    # ... and with the cache off, every session recomputes from the rows
    monkeypatch.setenv("ATTNWH_OBJECT_CACHE", "off")
    means, _, from_rows = answers()
    assert means == pytest.approx(flat(expected))
    with open_session(root) as session:
        assert from_rows == session.query("select count(*) from head_metrics").column(0)[0].as_py() > 0
