"""What a sweep holds while it runs: its batches encoded on the host without their pictures, the device holding
only the batch at hand, and batches past the host budget encoded again when visited, with the same results.

Reference: the same sweep with every batch held (the default budget on these few samples), and the processor's
own encoding of the same samples."""

from __future__ import annotations

import pytest
import torch

from attnwh.core.errors import UsageError
from attnwh.extract import sweep as sweep_module
from attnwh.extract.batches import Failed
from attnwh.extract.masking import HeadMask
from attnwh.extract.models import load_model
from attnwh.extract.setup import prepare_run
from attnwh.extract.sweep import SweepOptions, SweepSamples
from attnwh.extract.toy.default import default_model_folder

LIMIT, BATCH = 7, 3  # batches of 3, 3 and 1


@pytest.fixture(scope="module")
def toy():
    setup = prepare_run(SweepOptions(model=str(default_model_folder()), benchmark="toy-shapes", limit=LIMIT, dtype="float32", device="cpu"))
    return load_model(setup.source, dtype=torch.float32, device=torch.device("cpu")), setup


GROUP = [[], [HeadMask(((0, 0), (1, 1)), "zero")], [HeadMask(((1, 2),), "zero")]]


def counted_encodes(monkeypatch) -> list[int]:
    calls: list[int] = []
    original = sweep_module.encode_batches

    def counting(loaded, items, *args, **kwargs):
        calls.append(len(items))
        return original(loaded, items, *args, **kwargs)

    monkeypatch.setattr(sweep_module, "encode_batches", counting)
    return calls


def test_batches_are_held_on_the_host_without_pictures_and_equal_the_processors_encoding(toy, monkeypatch):
    loaded, setup = toy
    samples = SweepSamples(loaded, setup, BATCH)
    assert samples.n_batches == 3
    held = [entry.batch for entry in samples._held]
    assert all(item.image is None for batch in held for item in batch.items)  # the pictures are not kept
    assert all(tensor.device.type == "cpu" for batch in held for tensor in batch.encoded.values())
    for batch in samples.each_batch():  # the processor's output for the same samples and prompts, made here
        images = [setup.samples[item.sample_idx].load_image().convert("RGB") for item in batch.items]
        expected = loaded.processor(images=images, text=batch.prompts, return_tensors="pt", padding=True)
        for key, value in batch.encoded.items():
            assert torch.equal(value, expected[key].to(value.dtype)), key


@pytest.mark.parametrize("reuse", [True, False])
def test_past_the_host_budget_batches_are_encoded_again_with_the_same_results(toy, monkeypatch, reuse):
    loaded, setup = toy
    held = SweepSamples(loaded, setup, BATCH)
    expected = held.evaluate_group(GROUP) if reuse else [held.evaluate(interventions) for interventions in GROUP]
    one_batch = sum(t.numel() * t.element_size() for t in held._held[0].batch.encoded.values())
    monkeypatch.setattr(sweep_module, "host_budget", lambda: one_batch)  # room for the first batch only
    calls = counted_encodes(monkeypatch)
    budgeted = SweepSamples(loaded, setup, BATCH)
    assert calls == [3, 3, 1] and [entry.batch is not None for entry in budgeted._held] == [True, False, False]
    got = budgeted.evaluate_group(GROUP) if reuse else [budgeted.evaluate(interventions) for interventions in GROUP]
    # evaluated: with reuse each batch once, one by one each condition visits every batch; the held one is never encoded again
    assert calls[3:] == ([3, 1] if reuse else [3, 1] * len(GROUP))
    assert got == expected


def test_a_batch_that_no_longer_encodes_is_one_clear_error(toy, monkeypatch):
    loaded, setup = toy
    monkeypatch.setattr(sweep_module, "host_budget", lambda: 0)
    samples = SweepSamples(loaded, setup, BATCH)
    original = sweep_module.load_samples

    def broken(chosen, indices):
        return [], [Failed(index, sample, "image: cannot identify image file") for index, sample in zip(indices, chosen)]

    monkeypatch.setattr(sweep_module, "load_samples", broken)
    with pytest.raises(UsageError, match=r"^the images of samples test-00000, test-00001, test-00002 could not be read and encoded again"):
        samples.evaluate()
    monkeypatch.setattr(sweep_module, "load_samples", original)
    assert len(samples.evaluate()) == LIMIT


def test_the_host_budget_is_shared_by_the_processes_of_a_machine(monkeypatch):
    for name in ("LOCAL_WORLD_SIZE", "SLURM_NTASKS_PER_NODE", "SLURM_STEP_TASKS_PER_NODE"):
        monkeypatch.delenv(name, raising=False)
    alone = sweep_module.host_budget()
    assert 0 < alone <= sweep_module._machine_memory() // 4 + 1
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun: 4 ranks on this machine
    assert sweep_module.host_budget() == pytest.approx(alone / 4, abs=1)
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "2(x3),1")  # SLURM's form: 2 tasks on each of 3 nodes, 1 on another
    assert sweep_module.host_budget() == pytest.approx(alone / 2, abs=1)
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "garbage")
    assert sweep_module.host_budget() == alone


def test_on_a_dask_worker_the_budget_is_a_share_of_its_memory_limit():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, memory_limit="1GiB", dashboard_address=":0") as cluster, Client(cluster) as client:
        assert client.submit(sweep_module.host_budget, pure=False).result() == (1 << 30) // 4


def test_a_tree_listing_leaves_out_what_another_process_removes_meanwhile(tmp_path, monkeypatch):
    """attnwh status lists _progress/ while sweeps write and remove their files: a folder gone between its parent's
    listing and its own is left out, not an error."""
    import os

    from attnwh.warehouse import storage

    for name in ("group-a", "group-b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "samples-0-1-2-x.json").write_text("{}")
    real_scandir = os.scandir

    def racing(path):
        if str(path).endswith("group-b"):
            for file in (tmp_path / "group-b").iterdir():
                file.unlink()
            (tmp_path / "group-b").rmdir()  # removed by another process just now
        return real_scandir(path)

    monkeypatch.setattr(storage.os, "scandir", racing)
    assert storage.names_under_tree(tmp_path) == ["group-a/samples-0-1-2-x.json"]
    assert storage.names_under_tree(tmp_path / "missing") == []


def test_the_baseline_images_prefill_is_computed_once_per_batch_however_often_it_is_visited(toy, monkeypatch):
    """An image-swap ablation's baseline keys and values are kept per batch: each visit of a batch (one per condition
    with --no-reuse) moves a new copy to the device, and must still find them."""
    from attnwh.extract import generation
    from attnwh.extract.image_swap import BaselineKV

    loaded, setup = toy
    samples = SweepSamples(loaded, setup, BATCH)
    prefills: list[int] = []
    original = generation.prefill_with

    def counting(loaded_, inputs, interventions=()):
        prefills.append(inputs["input_ids"].shape[0])
        return original(loaded_, inputs, interventions)

    monkeypatch.setattr(generation, "prefill_with", counting)
    source = BaselineKV(loaded, "blank-image")
    first = [source.of(batch.encoded) for batch in samples.each_batch()]
    second = [source.of(batch.encoded) for batch in samples.each_batch()]
    assert prefills == [3, 3, 1]  # once per batch, not once per visit
    assert all(a is b for a, b in zip(first, second))
    other = next(samples.each_batch()).encoded
    other = {**other, "input_ids": other["input_ids"].flip(0)}  # other prompts: other keys and values
    source.of(other)
    assert prefills == [3, 3, 1, 3]


@pytest.mark.parametrize("reuse_off", [False, True])
def test_a_batch_holds_one_conditions_logits_at_a_time(toy, monkeypatch, reuse_off):
    """Attribution's thousands of patterns each give [batch, vocab] logits: each condition's rows are made as soon as
    its generation is final and the generation is let go, so that the batch never holds every condition's logits.
    Counted with weak references: when a condition is handed on, how many earlier conditions' logits are alive."""
    import gc
    import weakref

    loaded, setup = toy
    samples = SweepSamples(loaded, setup, BATCH)
    group = [[]] + [[HeadMask(((layer, head),), "zero")] for layer in range(loaded.info["n_layers"]) for head in range(2)]
    expected = [samples.evaluate(interventions) for interventions in group]  # the plain path, condition by condition
    samples = SweepSamples(loaded, setup, BATCH)
    samples.evaluate_group(group[:2])  # the first batch's check done
    if reuse_off:  # as after a failed check: every condition the plain way
        samples.reuse_off = "turned off by the test"
    alive_at_settle: list[int] = []
    refs: list[weakref.ref] = []
    original = SweepSamples._rows

    def watched(self, batch, generation, interventions):
        gc.collect()
        alive_at_settle.append(sum(ref() is not None for ref in refs))
        refs.append(weakref.ref(generation.first_logits))
        return original(self, batch, generation, interventions)

    monkeypatch.setattr(SweepSamples, "_rows", watched)
    got = samples.evaluate_group(group)
    assert_rows_equal(got, expected)  # the plain path's rows: answers identical, log-probabilities within 1e-5
    assert len(alive_at_settle) == len(group) * samples.n_batches
    assert max(alive_at_settle) <= (0 if reuse_off else 1)  # with reuse the baseline's, held while the conditions that start after layer 0 replay its prefix


def assert_rows_equal(got: list[list[dict]], expected: list[list[dict]], tolerance: float = 1e-5) -> None:
    """Rows equal field by field, the option log-probabilities within ``tolerance`` (a reused sweep computes the last
    layer's final position alone: the same sums in another order)."""

    def without_logprobs(rows: list[dict]) -> list[dict]:
        return [{key: value for key, value in row.items() if key != "option_logprobs"} for row in rows]

    for got_rows, expected_rows in zip(got, expected, strict=True):
        assert without_logprobs(got_rows) == without_logprobs(expected_rows)
        for mine, theirs in zip(got_rows, expected_rows):
            assert (mine["option_logprobs"] is None) == (theirs["option_logprobs"] is None)
            assert (mine["option_logprobs"] or []) == pytest.approx(theirs["option_logprobs"] or [], abs=tolerance)
