"""A sweep interrupted mid-group resumes from the batches it finished (extract.batch_journal).

With reuse a group's conditions are committed only after its last batch; the journal keeps each finished batch's
rows in the run, so that the same command again evaluates only the batches left, and gives what one uninterrupted
sweep gives (the reference: a fresh warehouse's sweep, run straight through)."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attnwh.extract import sweep as sweep_module
from attnwh.extract.batch_journal import BatchJournal, decode_batch_rows, encode_batch_rows
from attnwh.extract.mask_run import MaskOptions
from attnwh.extract.run import ExtractOptions, run_extract
from attnwh.face.workflows import mask_sweep
from attnwh.queries.library import open_session
from attnwh.warehouse import parts
from attnwh.warehouse.layout import open_warehouse
from attnwh.warehouse.status import run_status

LIMIT, BATCH = 12, 4  # 3 batches
OPTIONS = dict(limit=LIMIT, k=("0", "2"), seeds=1, strategies=("top", "random"), stages=("all", "late"), device="cpu", batch_size=BATCH, command=["test"])


class Interrupted(KeyboardInterrupt):
    """What a Ctrl-C raises, here after the group's second batch."""


def interrupt_after(batches: int):
    seen = []

    def on_progress(done: float, total: int) -> None:
        if done and done != int(done):  # a batch of the group (whole numbers: conditions committed)
            seen.append(done)
            if len(seen) == batches:
                raise Interrupted

    return on_progress


def results(warehouse) -> list[dict]:
    with open_session(warehouse) as session:
        return session.query(
            "select condition_id, sample_idx, sample_key, output_text, parsed, correct, option_logprobs from mask_results order by condition_id, sample_idx"
        ).to_pylist()


def count_batches(monkeypatch) -> list[int]:
    """How many batches the sweep evaluates (each evaluated batch of a group goes through ``reused_generations``)."""
    calls: list[int] = []
    original = sweep_module.SweepSamples.reused_generations

    def counted(self, batch, group):
        calls.append(len(batch.items))
        return original(self, batch, group)

    monkeypatch.setattr(sweep_module.SweepSamples, "reused_generations", counted)
    return calls


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    """An extraction run to rank heads from, copied into each test's warehouse; and the straight sweep's results."""
    root = tmp_path_factory.mktemp("journal")
    run_extract(root / "straight", ExtractOptions(limit=LIMIT, rows=False, device="cpu", part_size=LIMIT, batch_size=BATCH, command=["test"]))
    import shutil

    source = root / "source"
    shutil.copytree(root / "straight", source)
    straight, _ = mask_sweep(root / "straight", MaskOptions(**OPTIONS))
    assert straight.conditions_written == straight.conditions_total > 2
    return source, results(root / "straight")


def fresh(extracted, tmp_path):
    import shutil

    shutil.copytree(extracted[0], tmp_path / "wh")
    return tmp_path / "wh"


def mask_run_paths(warehouse):
    return next(run for run in open_warehouse(warehouse).run_folders() if json.loads(run.manifest.read_text())["kind"] == "mask")


def test_an_interrupted_sweep_resumes_from_its_finished_batches(extracted, tmp_path, monkeypatch):
    warehouse = fresh(extracted, tmp_path)
    with pytest.raises(Interrupted):
        mask_sweep(warehouse, MaskOptions(**OPTIONS), on_progress=interrupt_after(2))
    run = mask_run_paths(warehouse)
    assert parts.committed_part_ids(run) == set()  # nothing committed: the group had a batch left
    kept = sorted(path.name for path in run.progress.rglob("*.json"))
    assert kept == ["samples-0-3-4.json", "samples-4-7-4.json"]
    assert run_status(run)["batches_kept"] == 2 and run_status(run)["parts_committed"] == 0  # what attnwh status shows

    evaluated = count_batches(monkeypatch)
    resumed, _ = mask_sweep(warehouse, MaskOptions(**OPTIONS))
    assert evaluated == [BATCH]  # only the third batch
    assert resumed.conditions_written == resumed.conditions_total
    assert_same(results(warehouse), extracted[1])
    assert not run.progress.exists() and parts.verify(run) == [] and run_status(run)["batches_kept"] == 0


def test_a_damaged_journal_file_is_evaluated_again(extracted, tmp_path, monkeypatch):
    warehouse = fresh(extracted, tmp_path)
    with pytest.raises(Interrupted):
        mask_sweep(warehouse, MaskOptions(**OPTIONS), on_progress=interrupt_after(2))
    run = mask_run_paths(warehouse)
    first, second = sorted(run.progress.rglob("*.json"))
    first.write_bytes(first.read_bytes()[:-20])  # cut short
    record = json.loads(second.read_text())
    record["rows"][0][1]["sample_key"] = "another sample"  # rows of another sample: not this batch's
    second.write_text(json.dumps(record))

    evaluated = count_batches(monkeypatch)
    mask_sweep(warehouse, MaskOptions(**OPTIONS))
    assert evaluated == [BATCH] * 3
    assert_same(results(warehouse), extracted[1])
    assert not run.progress.exists()


def test_a_journal_of_committed_conditions_is_removed_and_reuse_off_keeps_none(extracted, tmp_path):
    warehouse = fresh(extracted, tmp_path)
    with pytest.raises(Interrupted):
        mask_sweep(warehouse, MaskOptions(**OPTIONS), on_progress=interrupt_after(1))
    run = mask_run_paths(warehouse)
    (stale,) = [path.parent for path in run.progress.rglob("*.json")]
    mask_sweep(warehouse, MaskOptions(**OPTIONS, reuse=False))  # each condition committed on its own, no journal
    assert stale.exists()  # the plain path neither reads nor writes the journal
    BatchJournal.open(run)  # every condition it names is committed now
    assert not stale.exists()
    assert_same(results(warehouse), extracted[1])


def assert_same(got: list[dict], expected: list[dict]) -> None:
    fields = ("condition_id", "sample_idx", "sample_key", "output_text", "parsed", "correct")
    assert [tuple(r[f] for f in fields) for r in got] == [tuple(r[f] for f in fields) for r in expected]
    assert any(r["option_logprobs"] for r in expected)
    for mine, theirs in zip(got, expected):
        assert (mine["option_logprobs"] or []) == pytest.approx(theirs["option_logprobs"] or [], abs=1e-5)


rows_strategy = st.lists(
    st.fixed_dictionaries({"sample_idx": st.integers(0, 50), "sample_key": st.text(max_size=5)}, optional={"answer": st.text(max_size=5), "lp": st.floats(allow_nan=True)}),
    max_size=4,
)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    st.one_of(
        st.binary(max_size=200),
        st.builds(lambda ids, rows: encode_batch_rows(ids, rows), st.lists(st.integers(0, 9), max_size=4, unique=True), st.lists(rows_strategy, max_size=4)),
    )
)
def test_any_file_decodes_to_whole_rows_or_none(content):
    """Random bytes, cut or altered batch files: each decodes to rows with a sample index and key, or to None; never raises."""
    for candidate in (content, content[: len(content) // 2], content.replace(b'"format": 1', b'"format": 2')):
        decoded = decode_batch_rows(candidate)
        if decoded is not None:
            assert all(isinstance(row["sample_idx"], int) and isinstance(row["sample_key"], str) for rows in decoded.values() for row in rows)


def test_a_dask_task_run_again_takes_the_batches_its_first_try_finished(extracted, tmp_path, monkeypatch):
    """On a Dask worker (a thread of this process, so that its batches can be counted): the group's task fails after
    its first batch; the same sweep again sends the group again, whose task evaluates only the other batches."""
    from distributed import LocalCluster

    warehouse = fresh(extracted, tmp_path)
    original = sweep_module.SweepSamples.reused_generations
    evaluated: list[int] = []

    def failing_after_one(self, batch, group):
        if evaluated:
            raise RuntimeError("the worker went away")
        evaluated.append(len(batch.items))
        return original(self, batch, group)

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp", dashboard_address=":0") as cluster:
        options = MaskOptions(**OPTIONS, scheduler=cluster.scheduler_address)
        monkeypatch.setattr(sweep_module.SweepSamples, "reused_generations", failing_after_one)
        with pytest.raises(RuntimeError, match="the worker went away"):
            mask_sweep(warehouse, options)
        run = mask_run_paths(warehouse)
        assert parts.committed_part_ids(run) == set() and len(list(run.progress.rglob("*.json"))) == 1
        monkeypatch.setattr(sweep_module.SweepSamples, "reused_generations", original)
        again = count_batches(monkeypatch)
        result, _ = mask_sweep(warehouse, options)
    assert again == [BATCH, BATCH]  # the second and third batches
    assert result.conditions_written == result.conditions_total
    assert_same(results(warehouse), extracted[1])
    assert not run.progress.exists()
