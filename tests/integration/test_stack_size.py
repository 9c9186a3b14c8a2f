"""How many conditions a reused sweep stacks per pass (``--stack``, extract.reuse.StackSize).

References: the same sweep with one condition per pass (its answers and first-token log-probabilities), a
hand computation of what fits, and real allocation failures: the CPU allocator's own error under an address-space
limit (``RLIMIT_AS``) set on a child process, so that a stack of four conditions truly does not fit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import typer
from hypothesis import given, settings
from hypothesis import strategies as st

from attnwh.extract.masking import HeadMask
from attnwh.extract.models import load_model
from attnwh.extract.reuse import AUTO_STACK_MOST, StackSize, out_of_memory, stack_fitting
from attnwh.extract.setup import prepare_run
from attnwh.extract.sweep import SweepOptions, SweepSamples
from attnwh.extract.toy.builder import TinyLlavaSpec, save_tiny_llava
from attnwh.extract.toy.default import default_model_folder
from attnwh.face.cli import main
from attnwh.face.console import stack_size

GIB = 2**30


def test_what_fits_by_hand():
    # 80% of 10 GiB holds 8 passes of 1 GiB; one is kept for the baseline's recording
    assert stack_fitting(10 * GIB, GIB) == 7
    assert stack_fitting(10 * GIB, 3 * GIB) == 1  # 8 // 3 - 1 = 1
    assert stack_fitting(GIB, 4 * GIB) == 1  # never fewer than one
    assert stack_fitting(1000 * GIB, GIB) == AUTO_STACK_MOST == 16  # never more than the ceiling
    assert stack_fitting(GIB, 0) == AUTO_STACK_MOST  # nothing measured beyond what was held


def test_out_of_memory_is_the_allocators_error_and_nothing_else():
    with pytest.raises(RuntimeError) as refused:
        torch.empty(2**50, dtype=torch.uint8)  # a petabyte: the CPU allocator's own error
    assert out_of_memory(refused.value)
    assert out_of_memory(MemoryError())
    assert out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert out_of_memory(RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"))
    assert not out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x3 and 5x6)"))
    assert not out_of_memory(ValueError("can't allocate memory"))


def test_the_option_reads_auto_or_a_number(capsys, tmp_path, monkeypatch):
    assert stack_size("auto") is None and stack_size(None) is None
    assert stack_size("3") == 3
    monkeypatch.chdir(tmp_path)
    for command, value in (("mask", "x"), ("prune", "2.5"), ("attribute", ""), ("mask", "\u0664"), ("prune", "+4")):  # an Arabic-Indic 4: int() reads it
        with pytest.raises(SystemExit) as exit_:
            main([command, "--stack", value])
        err = capsys.readouterr().err
        assert exit_.value.code != 0 and err.splitlines() == [f"attnwh: error: Invalid value for '--stack': {value!r} is neither auto nor a number of conditions per pass"], err
    assert not (tmp_path / "attnwh-warehouse").exists() and not any(tmp_path.iterdir())  # nothing was created


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=12))
def test_any_text_is_auto_a_number_or_one_clear_refusal(text):
    try:
        value = stack_size(text)
    except typer.BadParameter as refused:
        assert "neither auto nor a number of conditions per pass" in str(refused) and "\n" not in str(refused).replace(repr(text), "")
        return
    assert value is None if text.strip() == "auto" else (value == int(text) and text.strip().isascii() and text.strip().isdigit())


def test_a_fixed_stack_is_its_number_and_auto_is_one_on_a_cpu():
    cpu = torch.device("cpu")
    assert StackSize(4, cpu).most() == 4 and StackSize(4, cpu).may_stack
    auto = StackSize(None, cpu)
    assert auto.most() == 1 and not auto.may_stack and not auto.measures
    assert StackSize(None, torch.device("cuda")).measures  # no call to the device until a pass is measured
    lowered = StackSize(5, cpu)
    assert lowered.did_not_fit(5) == 3 and lowered.most() == 3  # halves of 3 and 2
    assert lowered.did_not_fit(3) == 2 and lowered.most() == 2
    assert "a stack of 5 conditions per pass ran out of memory: stacks of at most 2" in lowered.lowered and lowered.failed == [5, 3]


@pytest.fixture(scope="module")
def toy():
    setup = prepare_run(SweepOptions(model=str(default_model_folder()), benchmark="toy-shapes", limit=6, dtype="float32", device="cpu"))
    return load_model(setup.source, dtype=torch.float32, device=torch.device("cpu")), setup


GROUP = [[], [HeadMask(((0, 0),), "zero")], [HeadMask(((0, 1),), "zero")], [HeadMask(((0, 2),), "zero")], [HeadMask(((1, 3),), "zero")]]


def test_auto_on_a_cpu_runs_a_condition_per_pass_with_the_same_rows(toy):
    loaded, setup = toy
    auto = SweepSamples(loaded, setup, 3, None, stop_when_decided=True)
    three = SweepSamples(loaded, setup, 3, 3, stop_when_decided=True)
    rows_auto, rows_three = auto.evaluate_group(GROUP), three.evaluate_group(GROUP)
    assert auto.stack.largest == 1 and three.stack.largest == 3
    assert [[row["parsed"] for row in rows] for rows in rows_auto] == [[row["parsed"] for row in rows] for rows in rows_three]


CHILD = textwrap.dedent(
    """
    import json, resource, sys, threading, time
    import torch
    from attnwh.extract.masking import HeadMask
    from attnwh.extract.models import load_model
    from attnwh.extract.setup import prepare_run
    from attnwh.extract.sweep import SweepOptions, SweepSamples

    torch.set_num_threads(1)
    setup = prepare_run(SweepOptions(model=sys.argv[1], benchmark="toy-shapes", limit=4, dtype="float32", device="cpu"))
    loaded = load_model(setup.source, dtype=torch.float32, device=torch.device("cpu"))
    group = [[], *[[HeadMask(((0, head),), "zero")] for head in range(8)]]  # eight masks of layer 0: two stacks of four

    def address_space():
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[0]) * resource.getpagesize()

    def answers(samples):
        rows = samples.evaluate_group(group)
        return [[(row["parsed"], row["option_logprobs"]) for row in condition] for condition in rows]

    alone = SweepSamples(loaded, setup, 4, 1, stop_when_decided=True)
    expected = answers(alone)  # and what one condition at a time takes beyond what is held, sampled
    before, peak, done = address_space(), [0], []
    def sample():
        while not done:
            peak[0] = max(peak[0], address_space())
            time.sleep(0.0002)
    sampler = threading.Thread(target=sample)
    sampler.start()
    answers(SweepSamples(loaded, setup, 4, 1, stop_when_decided=True))
    done.append(True)
    sampler.join()
    stacked = SweepSamples(loaded, setup, 4, 4, stop_when_decided=True)
    stacked.reuse_checked = True  # checked above; the check's plain passes are not what is measured here
    limit = address_space() + int(1.3 * (peak[0] - before))
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.RLIM_INFINITY))
    got = answers(stacked)
    stack = stacked.stack
    print(json.dumps({"expected": expected, "got": got, "lowered": stack.lowered, "ceiling": stack.ceiling, "largest": stack.largest, "failed": stack.failed}))
    """
)


def test_a_stack_that_runs_out_of_memory_runs_in_parts_with_the_same_answers(tmp_path):
    """A child process measures what one condition's pass takes, then limits its address space to 1.3 times that
    beyond what it holds: the first stack of four conditions cannot be allocated and is run in parts; the second, planned
    for the same batch, runs in parts without being tried whole (no size fails after a smaller one); every answer and
    option log-probability equals one condition at a time."""
    spec = TinyLlavaSpec(n_layers=2, n_heads=8, n_kv_heads=8, hidden_size=256, vision_layers=1, image_size=336, patch_size=14)  # 576 image tokens
    model = save_tiny_llava(tmp_path / "long", spec)
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}  # large blocks mapped and unmapped: the address space follows what is alive
    done = subprocess.run([sys.executable, "-c", CHILD, str(model)], capture_output=True, text=True, env=env, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["largest"] in (1, 2)  # the stacks that ran to their end: the parts (the four were tried: "failed")
    assert result["lowered"] and result["lowered"].startswith("a stack of 4 conditions per pass ran out of memory")
    assert result["ceiling"] in (1, 2)
    assert result["failed"][0] == 4 and result["failed"] == sorted(set(result["failed"]), reverse=True), result["failed"]
    assert result["got"] == result["expected"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_auto_on_a_gpu_measures_the_first_batch_then_stacks_with_the_same_answers():
    setup = prepare_run(SweepOptions(model=str(default_model_folder()), benchmark="toy-shapes", limit=6, dtype="float32", device="cuda"))
    loaded = load_model(setup.source, dtype=torch.float32, device=torch.device("cuda"))
    auto = SweepSamples(loaded, setup, 3, None, stop_when_decided=True)
    alone = SweepSamples(loaded, setup, 3, 1, stop_when_decided=True)
    rows_auto, rows_alone = auto.evaluate_group(GROUP), alone.evaluate_group(GROUP)
    assert auto.stack.per_condition > 0  # the first batch's passes were measured
    assert auto.stack.largest > 1  # and the second batch stacked (a toy's pass is a sliver of a card's memory)
    assert [[row["parsed"] for row in rows] for rows in rows_auto] == [[row["parsed"] for row in rows] for rows in rows_alone]
