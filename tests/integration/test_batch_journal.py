"""A sweep interrupted mid-group resumes from the batches it finished (extract.batch_journal).

With reuse a group's conditions are committed only after its last batch; the journal keeps each finished batch's
rows in the run, so that the same command again evaluates only the batches left, and gives what one uninterrupted
sweep gives (the reference: a fresh warehouse's sweep, run straight through)."""

from __future__ import annotations

import hashlib
import json

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attnwh.extract import sweep as sweep_module
from attnwh.extract.batch_journal import decode_batch_rows
from attnwh.extract.mask_run import MaskOptions
from attnwh.extract.run import ExtractOptions, run_extract
from attnwh.face.workflows import mask_sweep
from attnwh.queries.library import open_session
from attnwh.warehouse import parts
from attnwh.warehouse.layout import open_warehouse
from attnwh.warehouse.schema import SWEEP_RESULTS
from attnwh.warehouse.status import run_status
from tests.integration.test_sweep_memory import counted_encodes

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

    def counted(self, batch, group, settle=None):
        calls.append(len(batch.items))
        return original(self, batch, group, settle)

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


def planned_conditions(warehouse) -> int:
    import pyarrow.parquet as pq

    return pq.read_table(mask_run_paths(warehouse).plan).num_rows


def mask_run_paths(warehouse):
    return next(run for run in open_warehouse(warehouse).run_folders() if json.loads(run.manifest.read_text())["kind"] == "mask")


def test_an_interrupted_sweep_resumes_from_its_finished_batches(extracted, tmp_path, monkeypatch):
    warehouse = fresh(extracted, tmp_path)
    with pytest.raises(Interrupted):
        mask_sweep(warehouse, MaskOptions(**OPTIONS), on_progress=interrupt_after(2))
    run = mask_run_paths(warehouse)
    assert parts.committed_part_ids(run) == set()  # nothing committed: the group had a batch left
    kept = sorted(path.name for path in run.progress.rglob("samples-*.json"))
    assert [name.rsplit("-", 1)[0] for name in kept] == ["samples-0-3-4", "samples-4-7-4"]
    (manifest,) = run.progress.rglob("conditions.json")
    assert json.loads(manifest.read_text()) == list(range(planned_conditions(warehouse)))
    assert run_status(run)["batches_kept"] == 2 and run_status(run)["parts_committed"] == 0  # what attnwh status shows

    evaluated = count_batches(monkeypatch)
    resumed, _ = mask_sweep(warehouse, MaskOptions(**OPTIONS))
    assert evaluated == [BATCH]  # only the third batch
    assert resumed.conditions_written == resumed.conditions_total
    assert_same(results(warehouse), extracted[1])
    assert not run.progress.exists() and parts.verify(run) == [] and run_status(run)["batches_kept"] == 0


def test_a_group_folder_cleared_by_a_copy_of_the_task_is_made_again(extracted, tmp_path):
    """The same group run twice at once (a Dask task the scheduler gave to a second worker while the first, which it had
    lost touch with, went on): the copy that commits first clears the group's folder, while the other still records
    batches. Before the fix its next batch's write failed (FileNotFoundError on the temporary file): the sweep ended in
    an internal error. Here the folder goes after the group's first batch."""
    import shutil

    warehouse = fresh(extracted, tmp_path)
    cleared = []

    def clear_after_first_batch(done: float, total: int) -> None:
        if done and done != int(done) and not cleared:
            run = mask_run_paths(warehouse)
            (folder,) = [path for path in run.progress.iterdir() if path.is_dir()]
            shutil.rmtree(folder)
            cleared.append(folder)

    result, _ = mask_sweep(warehouse, MaskOptions(**OPTIONS), on_progress=clear_after_first_batch)
    assert cleared and result.conditions_written == result.conditions_total
    assert_same(results(warehouse), extracted[1])
    assert not mask_run_paths(warehouse).progress.exists()


def test_a_batch_of_a_group_committed_meanwhile_is_not_kept(extracted, tmp_path):
    """The other copy committed every condition of the group and cleared its folder: nothing is left to keep, so the
    batch is not written (no folder made again for tidy to find)."""
    from attnwh.extract.batch_journal import BatchJournal

    warehouse = fresh(extracted, tmp_path)
    mask_sweep(warehouse, MaskOptions(**OPTIONS))
    run = mask_run_paths(warehouse)
    ids = sorted(parts.committed_part_ids(run))
    rows = [[{"sample_idx": 0, "sample_key": "s0"}] for _ in ids]
    group = BatchJournal.open(run).group(ids)
    group.record(((0, "s0"),), rows)  # the folder made, the manifest and a batch written
    assert group.folder.is_dir()
    import shutil

    shutil.rmtree(run.progress)  # the copy that committed cleared it
    group.record(((1, "s1"),), [[{"sample_idx": 1, "sample_key": "s1"}] for _ in ids])
    assert not run.progress.exists()


def signed(body: bytes) -> bytes:
    """A batch file's content as a writer makes it: the body's sha256 on the first line."""
    return hashlib.sha256(body).hexdigest().encode() + b"\n" + body


def test_a_digit_changed_in_place_is_evaluated_again_not_committed(extracted, tmp_path, monkeypatch):
    """The audit of helper-36: one digit of a batch file's ``kv_keys`` changed (still valid JSON of the right types)
    was committed on resume and ``verify`` was clean. The file's digest now makes it a damaged file."""
    warehouse = fresh(extracted, tmp_path)
    with pytest.raises(Interrupted):
        mask_sweep(warehouse, MaskOptions(**OPTIONS), on_progress=interrupt_after(2))
    run = mask_run_paths(warehouse)
    first = sorted(run.progress.rglob("samples-*.json"))[0]
    content = first.read_bytes()
    at = content.index(b'"kv_keys": ') + len(b'"kv_keys": ')
    first.write_bytes(content[:at] + bytes([ord("1") if content[at] != ord("1") else ord("2")]) + content[at + 1 :])
    evaluated = count_batches(monkeypatch)
    mask_sweep(warehouse, MaskOptions(**OPTIONS))
    assert evaluated == [BATCH] * 2  # the changed batch and the one never finished
    assert_same(results(warehouse), extracted[1])


def test_a_damaged_journal_file_is_evaluated_again(extracted, tmp_path, monkeypatch):
    warehouse = fresh(extracted, tmp_path)
    with pytest.raises(Interrupted):
        mask_sweep(warehouse, MaskOptions(**OPTIONS), on_progress=interrupt_after(2))
    run = mask_run_paths(warehouse)
    first, second = sorted(run.progress.rglob("samples-*.json"))
    first.write_bytes(first.read_bytes()[:-20])  # cut short
    record = json.loads(second.read_bytes().partition(b"\n")[2])
    record["rows"][0][1]["sample_key"] = "another sample"  # rows of another sample: not this batch's (with a right digest)
    second.write_bytes(signed(json.dumps(record).encode()))

    evaluated = count_batches(monkeypatch)
    mask_sweep(warehouse, MaskOptions(**OPTIONS))
    assert evaluated == [BATCH] * 3
    assert_same(results(warehouse), extracted[1])
    assert not run.progress.exists()


def test_a_resume_with_no_reuse_leaves_no_journal_behind(extracted, tmp_path):
    warehouse = fresh(extracted, tmp_path)
    with pytest.raises(Interrupted):
        mask_sweep(warehouse, MaskOptions(**OPTIONS), on_progress=interrupt_after(1))
    run = mask_run_paths(warehouse)
    assert len(list(run.progress.rglob("samples-*.json"))) == 1
    mask_sweep(warehouse, MaskOptions(**OPTIONS, reuse=False))  # each condition committed on its own
    assert not run.progress.exists() and run_status(run)["batches_kept"] == 0
    assert_same(results(warehouse), extracted[1])


def test_stopped_between_commits_then_resumed_in_another_grouping_leaves_nothing(extracted, tmp_path):
    """A Ctrl-C after the group's first commit: the resumed sweep's group is the conditions left (another folder);
    once they are committed the first group's folder goes too, and a complete run's leftovers go on the next call."""
    warehouse = fresh(extracted, tmp_path)

    def after_first_commit(done: float, total: int) -> None:
        if done == 1:
            raise Interrupted

    with pytest.raises(Interrupted):
        mask_sweep(warehouse, MaskOptions(**OPTIONS), on_progress=after_first_commit)
    run = mask_run_paths(warehouse)
    assert parts.committed_part_ids(run) == {0} and len(list(run.progress.rglob("samples-*.json"))) == 3
    mask_sweep(warehouse, MaskOptions(**OPTIONS))
    assert not run.progress.exists()
    assert_same(results(warehouse), extracted[1])
    (run.progress / "group-left-behind").mkdir(parents=True)  # as a process that stopped after its last commit leaves it
    (run.progress / "group-left-behind" / "conditions.json").write_text("[0, 1]")
    again, _ = mask_sweep(warehouse, MaskOptions(**OPTIONS))
    assert again.conditions_written == 0 and not run.progress.exists()


def test_a_resume_with_another_batch_size_takes_no_batch_from_the_journal(extracted, tmp_path, monkeypatch):
    """Rows depend on their batch (its padding): a batch of other samples is evaluated, not pieced together."""
    warehouse = fresh(extracted, tmp_path)
    with pytest.raises(Interrupted):
        mask_sweep(warehouse, MaskOptions(**OPTIONS), on_progress=interrupt_after(2))
    evaluated = count_batches(monkeypatch)
    result, _ = mask_sweep(warehouse, MaskOptions(**{**OPTIONS, "batch_size": 3}))
    assert evaluated == [3, 3, 3, 3] and result.conditions_written == result.conditions_total


def assert_same(got: list[dict], expected: list[dict]) -> None:
    fields = ("condition_id", "sample_idx", "sample_key", "output_text", "parsed", "correct")
    assert [tuple(r[f] for f in fields) for r in got] == [tuple(r[f] for f in fields) for r in expected]
    assert any(r["option_logprobs"] for r in expected)
    for mine, theirs in zip(got, expected):
        assert (mine["option_logprobs"] or []) == pytest.approx(theirs["option_logprobs"] or [], abs=1e-5)


@pytest.fixture(scope="module")
def real_file(extracted, tmp_path_factory) -> bytes:
    """A batch file an interrupted sweep wrote."""
    warehouse = tmp_path_factory.mktemp("file") / "wh"
    import shutil

    shutil.copytree(extracted[0], warehouse)
    with pytest.raises(Interrupted):
        mask_sweep(warehouse, MaskOptions(**OPTIONS), on_progress=interrupt_after(1))
    (path,) = mask_run_paths(warehouse).progress.rglob("samples-*.json")
    return path.read_bytes()


def test_the_real_file_decodes_to_rows_that_commit(real_file):
    samples, rows = decode_batch_rows(real_file)
    assert [idx for idx, _ in samples] == [0, 1, 2, 3] and len(rows) > 2
    table = pa.Table.from_pylist([{"run_id": "r", "condition_id": c, **row} for c, condition_rows in rows.items() for row in condition_rows], schema=SWEEP_RESULTS)
    assert table.num_rows == 4 * len(rows) and table.column("parsed").null_count == 0


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture], deadline=None)
@given(data=st.data())
def test_any_damage_to_a_file_decodes_to_committable_rows_or_none(real_file, data):
    """Random bytes; the real file cut, a byte changed, a field of a row removed or given another value: each decodes
    to rows the sweep tables take, or to None; never raises."""
    record = json.loads(real_file.partition(b"\n")[2])
    kind = data.draw(st.sampled_from(["bytes", "cut", "flip", "drop", "retype"]))
    if kind == "bytes":
        content = data.draw(st.binary(max_size=300))
    elif kind == "cut":
        content = real_file[: data.draw(st.integers(0, len(real_file)))]
    elif kind == "flip":
        at = data.draw(st.integers(0, len(real_file) - 1))
        content = real_file[:at] + bytes([data.draw(st.integers(0, 255))]) + real_file[at + 1 :]
    else:
        condition = data.draw(st.integers(0, len(record["rows"]) - 1))
        row = record["rows"][condition][data.draw(st.integers(0, len(record["rows"][condition]) - 1))]
        field_name = data.draw(st.sampled_from(sorted(row)))
        if kind == "drop":
            del row[field_name]
        else:
            row[field_name] = data.draw(st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=3), st.lists(st.integers(), max_size=2)))
        content = signed(json.dumps(record).encode())  # as a writer of wrong rows would sign them: the rows' checks decide
    decoded = decode_batch_rows(content)
    if kind in ("cut", "flip") and content != real_file:  # any byte changed or cut: the digest refuses it
        assert decoded is None
    if decoded is not None:
        samples, rows = decoded
        for condition_id, condition_rows in rows.items():
            assert [(row["sample_idx"], row["sample_key"]) for row in condition_rows] == list(samples)
            pa.Table.from_pylist([{"run_id": "r", "condition_id": condition_id, **row} for row in condition_rows], schema=SWEEP_RESULTS)


def test_a_dask_task_run_again_takes_the_batches_its_first_try_finished(extracted, tmp_path, monkeypatch):
    """On a Dask worker (a thread of this process, so that its batches can be counted): the group's task fails after
    its first batch; the same sweep again sends the group again, whose task evaluates only the other batches."""
    from distributed import LocalCluster

    warehouse = fresh(extracted, tmp_path)
    original = sweep_module.SweepSamples.reused_generations
    evaluated: list[int] = []

    def failing_after_one(self, batch, group, settle=None):
        if evaluated:
            raise RuntimeError("the worker went away")
        evaluated.append(len(batch.items))
        return original(self, batch, group, settle)

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp", dashboard_address=":0") as cluster:
        options = MaskOptions(**OPTIONS, scheduler=cluster.scheduler_address)
        monkeypatch.setattr(sweep_module.SweepSamples, "reused_generations", failing_after_one)
        with pytest.raises(RuntimeError, match="the worker went away"):
            mask_sweep(warehouse, options)
        run = mask_run_paths(warehouse)
        assert parts.committed_part_ids(run) == set() and len(list(run.progress.rglob("samples-*.json"))) == 1
        monkeypatch.setattr(sweep_module.SweepSamples, "reused_generations", original)
        again = count_batches(monkeypatch)
        result, _ = mask_sweep(warehouse, options)
    assert again == [BATCH, BATCH]  # the second and third batches
    assert result.conditions_written == result.conditions_total
    assert_same(results(warehouse), extracted[1])
    assert not run.progress.exists()


def test_a_batch_taken_from_the_journal_is_not_encoded_again(extracted, tmp_path, monkeypatch):
    """Past the host budget a batch is encoded again when evaluated; one whose rows the journal holds is not evaluated,
    so its images are not read again either."""
    warehouse = fresh(extracted, tmp_path)
    monkeypatch.setattr(sweep_module, "host_budget", lambda: 0)
    with pytest.raises(Interrupted):
        mask_sweep(warehouse, MaskOptions(**OPTIONS), on_progress=interrupt_after(2))
    encoded = counted_encodes(monkeypatch)
    mask_sweep(warehouse, MaskOptions(**OPTIONS))
    assert encoded == [BATCH] * 4  # the three batches once to build the sweep's batches, then the third again to evaluate it
    assert_same(results(warehouse), extracted[1])
