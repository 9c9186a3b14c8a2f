"""Sweeps that reuse what conditions share (extract.reuse) give today's results, family by family.

Reference: each condition run on its own through today's path (the processor's pixels through
``generate``, every layer run, one condition per call), on the same batches of the same tiny
random-weight model. Reused: the images encoded once per batch, the baseline's prefix of layers recorded
once, each condition started at its first intervened layer, conditions stacked per pass. Answers must be
identical and first-token log-probabilities within 1e-5 (fp32); and the work must really be skipped.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from attnwh.extract import reuse
from attnwh.extract.discovery import position_wise_modules
from attnwh.extract.masking import HeadMask
from attnwh.extract.models import load_model
from attnwh.extract.pruning import KVPrune, allocate
from attnwh.extract.setup import prepare_run
from attnwh.extract.sweep import SweepOptions, SweepSamples
from tests.integration.test_families import FAMILIES

TOLERANCE = 1e-5


def _sweep_of(family, folder):
    folder = family.build(folder / family.name)
    setup = prepare_run(SweepOptions(model=str(folder), benchmark="toy-shapes", limit=5, dtype="float32", device="cpu"))
    loaded = load_model(setup.source, dtype=torch.float32, device=torch.device("cpu"))
    return family, loaded, setup


# the sweeps here mask and prune; PaliGemma 2's capped attention is refused for pruning (test_families.py)
SWEPT = [family for family in FAMILIES if family.name != "paligemma2"]


@pytest.fixture(scope="module", params=SWEPT, ids=lambda family: family.name)
def family_sweep(request, tmp_path_factory):
    return _sweep_of(request.param, tmp_path_factory.mktemp("reuse"))


@pytest.fixture(scope="module")
def llava_sweep(tmp_path_factory):
    return _sweep_of(FAMILIES[0], tmp_path_factory.mktemp("reuse-llava"))


def _group(info) -> list[list]:
    """The baseline, masks starting early, mid-way and at the last layer, and prunings (every layer, dropping keys in
    the prefill too; only the last layers, after the prefill (the default cache phase): a start after layer 0 whose
    attention keys are gathered in the decode steps)."""
    n_layers, n_heads, n_kv = info["n_layers"], info["n_heads"], info["n_kv_heads"]
    last, mid = n_layers - 1, n_layers // 2
    late_only = np.ones((n_layers, n_kv))
    late_only[mid:] = 0.25
    return [
        [],
        [HeadMask(((0, 0), (last, n_heads - 1)), "zero")],
        [HeadMask(((mid, 1), (last, 0)), "zero")],
        [HeadMask(((last, 0), (last, 1)), "zero")],
        [HeadMask(((mid, 0),), "paper")],
        [KVPrune(allocate("uniform", 0.25, np.zeros((n_layers, n_kv))), "attention", "prefill")],
        [KVPrune(late_only, "stride")],
        [HeadMask(((last, 1),), "zero"), KVPrune(late_only, "attention")],
        [KVPrune(allocate("uniform", 0.25, np.zeros((n_layers, n_kv))), "attention")],  # attnwh prune's default: the whole prefill replayed
    ]


@pytest.mark.parametrize("stack", [1, 3])
def test_reused_sweep_equals_each_condition_on_its_own(family_sweep, stack):
    family, loaded, setup = family_sweep
    group = _group(loaded.info)
    plain = SweepSamples(loaded, setup, 3, stop_when_decided=True)
    reused = SweepSamples(loaded, setup, 3, stack, stop_when_decided=True)
    assert plain.n_batches == 2
    for batch in plain.each_batch():
        generations = reused.reused_generations(batch, group)
        for index, interventions in enumerate(group):
            expected = plain.plain_generation(batch, interventions)
            assert generations[index].answers == expected.answers, (family.name, index)
            gap = (torch.log_softmax(generations[index].first_logits, -1) - torch.log_softmax(expected.first_logits, -1)).abs().max().item()
            assert gap <= TOLERANCE, (family.name, index, gap)
    assert reused.reuse_off is None
    # the rows a sweep stores: the same parsed answers as full-length answers give
    full = SweepSamples(loaded, setup, 3)
    for interventions, rows in zip(group, reused.evaluate_group(group)):
        assert [row["parsed"] for row in rows] == [row["parsed"] for row in full.evaluate(interventions)]


def test_reuse_skips_the_image_encoder_and_the_prefix(family_sweep, monkeypatch):
    """Per batch the images are encoded once for all conditions, a condition that starts at the last layer
    runs only that layer in its prefill (the attention modules before it are not called), and one that prunes
    every layer's cache after the prefill (the cache phase) runs no layer in it: its prefill is the baseline's."""
    family, loaded, setup = family_sweep
    n_layers, n_kv = loaded.info["n_layers"], loaded.info["n_kv_heads"]
    last = n_layers - 1
    pruned = KVPrune(allocate("uniform", 0.25, np.zeros((n_layers, n_kv))), "attention")
    group = [[], [HeadMask(((last, 0),), "zero")], [HeadMask(((last, 1),), "zero")], [pruned]]
    samples = SweepSamples(loaded, setup, 5)
    samples.reuse_checked = True  # the check's plain passes would encode again
    batch = next(samples.each_batch())
    base = loaded.model.base_model
    encoded_images = []
    original = base.get_image_features

    @functools.wraps(original)
    def counted(*args, **kwargs):
        encoded_images.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(base, "get_image_features", counted)
    prefill_calls = [0] * n_layers
    prompt_length = batch.encoded["input_ids"].shape[1]
    hooks = [
        module.register_forward_pre_hook(
            lambda module, args, kwargs, layer=layer: prefill_calls.__setitem__(
                layer, prefill_calls[layer] + ((args[0] if args else kwargs["hidden_states"]).shape[1] == prompt_length)
            ),
            with_kwargs=True,
        )
        for layer, module in enumerate(loaded.parts.attention_modules)
    ]
    try:
        samples.reused_generations(batch, group)
    finally:
        for hook in hooks:
            hook.remove()
    assert len(encoded_images) == 1
    assert prefill_calls == [1] * last + [3]  # the baseline's prefill everywhere, the two conditions' at the last layer only


def assert_plain_rows(loaded, setup, group, rows) -> None:
    """``rows`` (a sweep's, reuse turned off by its check) are the plain path's, log-probabilities to the last bit."""
    plain = SweepSamples(loaded, setup, 3, stop_when_decided=True)
    for interventions, condition_rows in zip(group, rows):
        expected = plain.evaluate(interventions)
        assert [row["output_text"] for row in condition_rows] == [row["output_text"] for row in expected]
        for got, want in zip(condition_rows, expected):
            assert got["option_logprobs"] == want["option_logprobs"]


def test_a_replay_that_differs_turns_reuse_off_and_keeps_the_plain_results(llava_sweep, monkeypatch):
    """The first batch compares reuse with the plain path: a replay that hands on a wrong boundary state is
    caught, reuse is turned off, and the rows are the plain path's."""
    family, loaded, setup = llava_sweep
    n_layers = loaded.info["n_layers"]
    group = [[], [HeadMask(((n_layers - 1, 0),), "zero")]]
    original = reuse.PrefixReplay.layer

    def wrong(self, index, forward, args, kwargs):
        output = original(self, index, forward, args, kwargs)
        return output * 1.5 if self.passes == 1 and index == self.start - 1 else output

    monkeypatch.setattr(reuse.PrefixReplay, "layer", wrong)
    samples = SweepSamples(loaded, setup, 3, stop_when_decided=True)
    rows = samples.evaluate_group(group)
    assert samples.reuse_off is not None and "started at layer" in samples.reuse_off
    assert_plain_rows(loaded, setup, group, rows)


def test_plan_stacks_groups_by_first_layer_and_never_costs_more_than_slack():
    starts = [0, 30, 2, 31, 20, 21, 0]
    stacks = reuse.plan_stacks(starts, 32, most=3)
    assert sorted(index for stack in stacks for index in stack) == list(range(len(starts)))
    for stack in stacks:
        assert len(stack) <= 3
        together = len(stack) * (32 - starts[stack[0]])
        assert together <= 1.1 * sum(32 - starts[index] for index in stack)
        assert starts[stack[0]] == min(starts[index] for index in stack)
    assert reuse.plan_stacks(starts, 32, most=1) == [[0], [6], [2], [4], [5], [1], [3]]


def test_tile_repeats_batches_condition_major():
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    rows = torch.arange(6).reshape(2, 3)
    assert reuse.tile(rows, 2).tolist() == [[0, 1, 2], [3, 4, 5], [0, 1, 2], [3, 4, 5]]
    features = BaseModelOutputWithPooling(last_hidden_state=torch.zeros(2, 4, 1), pooler_output=(torch.ones(3, 1), torch.zeros(5, 1)))
    tiled = reuse.tile({"mm_encoder_outputs": {"image": features}, "input_ids": rows}, 3)
    pooled = tiled["mm_encoder_outputs"]["image"].pooler_output
    assert [part.shape[0] for part in pooled] == [3, 5, 3, 5, 3, 5]
    assert tiled["mm_encoder_outputs"]["image"].last_hidden_state.shape == (6, 4, 1)


@pytest.fixture(scope="module")
def qwen_sweep(tmp_path_factory):
    family = next(family for family in FAMILIES if family.name == "qwen2_5_vl")
    return _sweep_of(family, tmp_path_factory.mktemp("reuse-qwen"))


def test_images_encoded_once_but_placed_wrongly_turn_reuse_off(qwen_sweep, monkeypatch):
    """Qwen2.5-VL places image tokens by their grid (M-RoPE): encoder outputs handed on without the grid give the
    text model other position ids. The check compares what the text model is handed and turns reuse off."""
    from attnwh.extract import sweep

    family, loaded, setup = qwen_sweep
    original = sweep.encode_media

    def without_grid(model, encoded):
        inputs = original(model, encoded)
        inputs.pop("image_grid_thw")
        return inputs

    monkeypatch.setattr(sweep, "encode_media", without_grid)
    group = [[], [HeadMask(((loaded.info["n_layers"] - 1, 0),), "zero")]]
    samples = SweepSamples(loaded, setup, 3, stop_when_decided=True)
    rows = samples.evaluate_group(group)
    assert samples.reuse_off is not None and "text model is handed a different position_ids" in samples.reuse_off
    plain = SweepSamples(loaded, setup, 3, stop_when_decided=True)
    for interventions, condition_rows in zip(group, rows):
        assert [row["option_logprobs"] for row in condition_rows] == [row["option_logprobs"] for row in plain.evaluate(interventions)]


def test_threads_sharing_the_samples_wait_for_the_check(llava_sweep, monkeypatch):
    """A Dask worker's threads share one SweepSamples: a thread that arrives while the first batch's check runs
    waits for its verdict, so with a replay that differs no thread's results come from unchecked reuse."""
    import threading
    import time

    family, loaded, setup = llava_sweep
    group = [[], [HeadMask(((loaded.info["n_layers"] - 1, 0),), "zero")]]
    original_layer, original_check = reuse.PrefixReplay.layer, SweepSamples._check_inputs

    def wrong(self, index, forward, args, kwargs):
        output = original_layer(self, index, forward, args, kwargs)
        return output * 1.5 if self.passes == 1 and index == self.start - 1 else output

    def slow_check(self, *args):
        time.sleep(0.5)  # the other thread arrives meanwhile
        return original_check(self, *args)

    monkeypatch.setattr(reuse.PrefixReplay, "layer", wrong)
    monkeypatch.setattr(SweepSamples, "_check_inputs", slow_check)
    samples = SweepSamples(loaded, setup, 3, stop_when_decided=True)
    results: list = [None, None]

    def evaluate(slot: int) -> None:
        results[slot] = samples.evaluate_group(group)

    threads = [threading.Thread(target=evaluate, args=(slot,)) for slot in range(2)]
    for thread in threads:
        thread.start()
        time.sleep(0.1)
    for thread in threads:
        thread.join()
    assert samples.reuse_off is not None
    plain = SweepSamples(loaded, setup, 3, stop_when_decided=True)
    expected = [[row["option_logprobs"] for row in plain.evaluate(interventions)] for interventions in group]
    for rows in results:
        assert [[row["option_logprobs"] for row in condition] for condition in rows] == expected


def test_a_replayed_prefill_chooses_the_keys_its_own_prefill_chooses(family_sweep):
    """Cache-phase pruning with its prefill replayed from the baseline's recording keeps, in every layer, exactly the
    keys it keeps when its own prefill runs (score budgets, SnapKV's window; left padding in the batch), and its
    decode steps then produce the same tokens (up to 8, not stopped once decided)."""
    from attnwh.extract.forward import forward_call
    from attnwh.extract.generation import StopRows, batch_view, generate

    family, loaded, setup = family_sweep
    info, parts = loaded.info, loaded.parts
    depth = loaded.spec.n_decoder_layers
    prune = KVPrune(allocate("score", 0.25, np.random.default_rng(0).random((info["n_layers"], info["n_kv_heads"]))), "attention")
    batch = next(SweepSamples(loaded, setup, 3).each_batch())
    view = batch_view(loaded, batch.encoded)

    def stop():
        return StopRows(batch.encoded["input_ids"].shape[1], (), 1, loaded.processor.tokenizer, None)

    own = prune.bind(view)
    with forward_call(parts.text_model, parts.attention_modules, parts.decoder_layers, [own]):
        plain = generate(loaded, batch.encoded, 8, stop())
    inputs = reuse.encode_media(loaded.model, batch.encoded)
    recording = reuse.PrefixRecording(frozenset({depth - 1}), depth, True)
    with forward_call(parts.text_model, parts.attention_modules, parts.decoder_layers, prefix=recording):
        generate(loaded, inputs, 1, stop())
    replayed_edits = prune.bind(view)
    with forward_call(parts.text_model, parts.attention_modules, parts.decoder_layers, [replayed_edits], prefix=reuse.PrefixReplay(recording, depth, 1)):
        replayed = generate(loaded, inputs, 8, stop())
    assert own and sorted(own) == sorted(replayed_edits)
    for layer in own:
        assert torch.equal(own[layer].kept, replayed_edits[layer].kept), (family.name, layer)
        assert not bool(own[layer].kept.all()), "some key must go"
    assert replayed.steps == plain.steps  # (the decode steps over the pruned caches, where the tiny model does not end at once)
    assert torch.allclose(replayed.first_logits, plain.first_logits, atol=1e-5)


def test_conditions_that_compute_the_same_are_computed_once(llava_sweep, monkeypatch):
    """A condition equal field by field to an earlier one (a new object), and one whose interventions touch no
    layer (a pruning condition that keeps every key), are not computed again: the prefill runs the baseline and
    the two distinct masks only, and each condition's answers equal its own plain run."""
    family, loaded, setup = llava_sweep
    n_layers, n_kv = loaded.info["n_layers"], loaded.info["n_kv_heads"]
    last = n_layers - 1
    group = [
        [],
        [HeadMask(((last, 0),), "zero")],
        [HeadMask(((last, 1),), "zero")],
        [HeadMask(((last, 0),), "zero")],  # equal to condition 1
        [KVPrune(np.ones((n_layers, n_kv)), "attention")],  # keeps every key: the baseline
        [HeadMask(((last, 0),), "paper")],  # the same heads, another mode: computed
    ]
    assert reuse.same_conditions(group, [[i.bind(_view(loaded, setup)) for i in c] for c in group]) == [0, 1, 2, 1, 0, 5]
    samples = SweepSamples(loaded, setup, 5, stop_when_decided=True)
    samples.reuse_checked = True
    batch = next(samples.each_batch())
    prompt_length = batch.encoded["input_ids"].shape[1]
    calls = [0]
    hook = loaded.parts.attention_modules[last].register_forward_pre_hook(
        lambda module, args, kwargs: calls.__setitem__(0, calls[0] + ((args[0] if args else kwargs["hidden_states"]).shape[1] == prompt_length)), with_kwargs=True
    )
    try:
        generations = samples.reused_generations(batch, group)
    finally:
        hook.remove()
    assert calls[0] == 4  # the baseline and conditions 1, 2 and 5
    for index, interventions in enumerate(group):
        expected = samples.plain_generation(batch, interventions)
        assert generations[index].answers == expected.answers, index
        assert torch.allclose(generations[index].first_logits, expected.first_logits, atol=TOLERANCE), index
    # a group without the baseline (a Dask task's or a rank's after the first): the condition that touches no layer stands in for it
    group = [[KVPrune(np.ones((n_layers, n_kv)), "attention")], [HeadMask(((last, 1),), "zero")]]
    generations = samples.reused_generations(batch, group)
    for index, interventions in enumerate(group):
        expected = samples.plain_generation(batch, interventions)
        assert generations[index].answers == expected.answers, index
        assert torch.allclose(generations[index].first_logits, expected.first_logits, atol=TOLERANCE), index


def _view(loaded, setup):
    from attnwh.extract.generation import batch_view

    return batch_view(loaded, next(SweepSamples(loaded, setup, 5).each_batch()).encoded)


def test_intervention_keys_are_equal_exactly_when_the_fields_are():
    from attnwh.extract.image_swap import ImageSwap

    assert reuse.intervention_key(HeadMask(((1, 2),), "zero")) == reuse.intervention_key(HeadMask(((1, 2),), "zero"))
    assert reuse.intervention_key(HeadMask(((1, 2),), "zero")) != reuse.intervention_key(HeadMask(((1, 3),), "zero"))
    means = {(1, 2): torch.tensor([0.5, 1.0])}
    assert reuse.intervention_key(HeadMask(((1, 2),), "mean", means)) == reuse.intervention_key(HeadMask(((1, 2),), "mean", {(1, 2): torch.tensor([0.5, 1.0])}))
    assert reuse.intervention_key(HeadMask(((1, 2),), "mean", means)) != reuse.intervention_key(HeadMask(((1, 2),), "mean", {(1, 2): torch.tensor([0.5, 1.5])}))
    kept = np.full((2, 2), 0.5)
    assert reuse.intervention_key(KVPrune(kept, "attention")) == reuse.intervention_key(KVPrune(kept.copy(), "attention"))
    assert reuse.intervention_key(KVPrune(kept, "attention")) != reuse.intervention_key(KVPrune(kept, "stride"))
    other = kept.copy()
    other[1, 1] = 0.25
    assert reuse.intervention_key(KVPrune(kept, "attention")) != reuse.intervention_key(KVPrune(other, "attention"))
    first, second = object(), object()  # a shared state (a baseline image's keys) is equal only to itself
    assert reuse.intervention_key(ImageSwap(((0, 1),), first)) == reuse.intervention_key(ImageSwap(((0, 1),), first))
    assert reuse.intervention_key(ImageSwap(((0, 1),), first)) != reuse.intervention_key(ImageSwap(((0, 1),), second))


def test_decode_steps_read_the_recorded_prefix_without_copying_it(llava_sweep, monkeypatch):
    """The baseline decodes through its own cache layers (attnwh's ``ReservedLayer``), the recording holding those layers rather
    than a copy of their prompt; each replayed condition's decode steps append to a tail of their own and read
    the prompt's keys the baseline left (one copy in memory for the whole batch), not copies made at their first
    step. Stacks run deepest first and the recording drops what no stack left to run reads: the stack that starts
    at layer 1 finds only layer 0's entry and boundary."""
    from attnwh.extract.packed_cache import ReservedLayer, SharedPrefixLayer

    family, loaded, setup = llava_sweep
    n_layers = loaded.info["n_layers"]
    assert n_layers > 2
    group = [[], [HeadMask(((1, 0),), "zero")], [HeadMask(((n_layers - 1, 0),), "zero")]]
    baseline_layers, sealed, read, held = [], set(), [], []
    original_layer, original_entry, original_replay, original_update = reuse.PrefixRecording.layer, reuse.PrefixRecording.entry, reuse.PrefixReplay.layer, SharedPrefixLayer.update

    def layer(self, index, forward, args, kwargs):
        output = original_layer(self, index, forward, args, kwargs)
        if self.passes == 1 and index in self.entries:
            baseline_layers.append(self.entries[index].layer is reuse._cache_of(kwargs).layers[index] and type(self.entries[index].layer) is ReservedLayer)
        return output

    def entry(self, index):
        shared = original_entry(self, index)
        sealed.add(shared.shared()[0].data_ptr())
        return shared

    def replay(self, index, forward, args, kwargs):
        if self.passes == 1 and index == 0:
            held.append((self.start, sorted(self.recording.entries), sorted(self.recording.outputs)))
        return original_replay(self, index, forward, args, kwargs)

    def update(self, key_states, value_states, *args, **kwargs):
        read.append(self.shared()[0].data_ptr())
        return original_update(self, key_states, value_states, *args, **kwargs)

    monkeypatch.setattr(reuse.PrefixRecording, "layer", layer)
    monkeypatch.setattr(reuse.PrefixRecording, "entry", entry)
    monkeypatch.setattr(reuse.PrefixReplay, "layer", replay)
    monkeypatch.setattr(SharedPrefixLayer, "update", update)
    monkeypatch.setattr(loaded, "eos_token_ids", ())  # every answer to the limit: decode steps in every call
    samples = SweepSamples(loaded, setup, 3)
    samples.reuse_checked, samples.max_new_tokens = True, 4
    generations = samples.reused_generations(next(samples.each_batch()), group)
    assert baseline_layers == [True] * (n_layers - 1)  # the baseline's own layers, recorded as they are
    assert len(sealed) == n_layers - 1 and set(read) <= sealed
    assert len(read) == 3 * ((n_layers - 1) + 1)  # 3 decode steps × the shared layers of each stack
    assert held == [(n_layers - 1, list(range(n_layers - 1)), [0, n_layers - 2]), (1, [0], [0])]
    for index, interventions in enumerate(group):
        assert generations[index].steps == samples.plain_generation(next(samples.each_batch()), interventions).steps


def test_long_answers_copy_the_recorded_prompt_once_instead_of_joining_it_at_every_step(llava_sweep, monkeypatch):
    """A generation that may append more than ``GROWTH`` tokens: each replayed condition's layers over the recorded
    prompt are ``ReservedLayer``s holding one copy of it (as the plain path's layers hold theirs), not
    ``SharedPrefixLayer``s joining it with their tail at every step; every token equals the plain path's."""
    from attnwh.extract.packed_cache import GROWTH

    family, loaded, setup = llava_sweep
    n_layers = loaded.info["n_layers"]
    group = [[], [HeadMask(((1, 0),), "zero")], [HeadMask(((n_layers - 1, 0),), "zero")]]
    kinds, original = [], reuse.PrefixReplay.layer

    def replay(self, index, forward, args, kwargs):
        output = original(self, index, forward, args, kwargs)
        if self.passes == 1 and index < self.start:
            kinds.append(type(reuse._cache_of(kwargs).layers[index]).__name__)
        return output

    monkeypatch.setattr(reuse.PrefixReplay, "layer", replay)
    monkeypatch.setattr(loaded, "eos_token_ids", ())  # every answer to the limit
    samples = SweepSamples(loaded, setup, 3)
    samples.reuse_checked, samples.max_new_tokens = True, GROWTH + 4
    batch = next(samples.each_batch())
    generations = samples.reused_generations(batch, group)
    assert len(kinds) == (n_layers - 1) + 1 and set(kinds) == {"ReservedLayer"}  # the two stacks' replayed layers
    for index, interventions in enumerate(group):
        expected = samples.plain_generation(batch, interventions)
        assert generations[index].steps == expected.steps and len(expected.steps[0]) == GROWTH + 4
        gap = (torch.log_softmax(generations[index].first_logits, -1) - torch.log_softmax(expected.first_logits, -1)).abs().max().item()
        assert gap <= TOLERANCE


def test_a_shared_prompt_layer_that_decodes_wrongly_turns_reuse_off(llava_sweep, monkeypatch):
    """The first batch's check replays the baseline from the deepest start, its shared layers decoding through
    ``SharedPrefixLayer``, against the baseline decoded through transformers' own cache: a shared layer that
    returns wrong values is caught, and the rows are the plain path's."""
    from attnwh.extract.packed_cache import SharedPrefixLayer

    family, loaded, setup = llava_sweep
    original = SharedPrefixLayer.update

    def wrong(self, key_states, value_states, *args, **kwargs):
        keys, values = original(self, key_states, value_states, *args, **kwargs)
        return keys, values * 3

    monkeypatch.setattr(SharedPrefixLayer, "update", wrong)
    monkeypatch.setattr(loaded, "eos_token_ids", ())
    group = [[], [HeadMask(((loaded.info["n_layers"] - 1, 0),), "zero")]]
    samples = SweepSamples(loaded, setup, 3)
    samples.max_new_tokens = 6
    rows = samples.evaluate_group(group)
    assert samples.reuse_off is not None and "started at layer" in samples.reuse_off
    plain = SweepSamples(loaded, setup, 3)
    plain.max_new_tokens = 6
    for interventions, condition_rows in zip(group, rows):
        assert [row["output_text"] for row in condition_rows] == [row["output_text"] for row in plain.evaluate(interventions)]


def test_the_last_layer_computes_the_final_position_alone_in_a_prefill(family_sweep):
    """In every prefill of a reused sweep (the baseline's recording, each condition's) the last decoder layer's
    feed-forward and attention output projection are handed the final position alone, while its attention reads
    every position (the keys and values the decode steps read); the plain path runs them on every position. The
    answers are the plain path's (``test_reused_sweep_equals_each_condition_on_its_own``)."""
    family, loaded, setup = family_sweep
    last_layer = loaded.parts.decoder_layers[-1]
    modules = position_wise_modules(last_layer)
    assert len(modules) == 2, family.name  # every tested family's last layer: a feed-forward and an o_proj
    n_layers = loaded.info["n_layers"]
    group = [[], [HeadMask(((n_layers - 1, 0),), "zero")], [HeadMask(((0, 1),), "zero")]]
    samples = SweepSamples(loaded, setup, 5)
    samples.reuse_checked = True  # no check: its replay computes the last layer whole
    batch = next(samples.each_batch())
    prompt_length = batch.encoded["input_ids"].shape[1]
    seen: dict[str, list[int]] = {"layer": [], "attention": [], "feed_forward": [], "o_proj": []}

    def rows(name):
        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            if seen["layer"] and seen["layer"][-1] == prompt_length:  # within the last layer's prefill call
                seen[name].append(hidden.shape[1])

        return hook

    hooks = [
        last_layer.register_forward_pre_hook(lambda module, args, kwargs: seen["layer"].append((args[0] if args else kwargs["hidden_states"]).shape[1]), with_kwargs=True),
        loaded.parts.attention_modules[-1].register_forward_pre_hook(rows("attention"), with_kwargs=True),
        *[module.register_forward_pre_hook(rows(name), with_kwargs=True) for module, name in zip(modules, ("feed_forward", "o_proj"))],
    ]
    try:
        samples.reused_generations(batch, group)
        assert seen["attention"] == [prompt_length] * 3  # the baseline's recording and both conditions
        assert seen["feed_forward"] == seen["o_proj"] == [1] * 3
        for name in seen:
            seen[name].clear()
        samples.plain_generation(batch, group[1])
        assert seen["feed_forward"] == seen["o_proj"] == [prompt_length]
    finally:
        for hook in hooks:
            hook.remove()


def test_a_last_layer_that_reads_the_wrong_position_turns_the_final_rows_off(llava_sweep, monkeypatch):
    """The first batch's check replays the last layer whole against the recording's final rows: a final-rows hook
    that hands the layer the wrong position is caught even when no condition starts after layer 0; the group runs
    again without the final rows, whose check passes, so reuse stays on, and the rows are the plain path's."""
    family, loaded, setup = llava_sweep

    def wrong(self, module, args, kwargs):
        hidden = args[0]
        return ((hidden[:, -2:-1], *args[1:]), kwargs) if hidden.shape[1] > 1 and reuse.ACTIVE_CALL.get().final_rows else None

    monkeypatch.setattr(reuse.FinalRows, "__call__", wrong)
    group = [[HeadMask(((0, 0),), "zero")], [HeadMask(((0, 1),), "paper")]]  # both start at layer 0: no prefix of theirs to replay
    samples = SweepSamples(loaded, setup, 3, stop_when_decided=True)
    assert samples.final_rows
    rows = samples.evaluate_group(group)
    assert samples.reuse_off is None and not samples.final_rows
    assert f"started at layer {loaded.spec.n_decoder_layers - 1}" in samples.final_rows_off
    assert_plain_rows(loaded, setup, group, rows)


def test_a_last_layer_that_fails_on_its_final_rows_runs_whole_with_reuse_on(llava_sweep, monkeypatch):
    """A model whose last layer cannot take its final position alone (a layer that reshapes the feed-forward's output
    to the residual's shape, as Llama 4's does, raises): the group runs again without the final rows, reuse stays on,
    and the rows are the plain path's; a later group keeps them off."""
    family, loaded, setup = llava_sweep

    def failing(self, module, args, kwargs):
        if args[0].shape[1] > 1 and reuse.ACTIVE_CALL.get().final_rows:
            raise RuntimeError("shape '[3, 40, 64]' is invalid for input of size 192")
        return None

    monkeypatch.setattr(reuse.FinalRows, "__call__", failing)
    n_layers = loaded.info["n_layers"]
    group = [[], [HeadMask(((n_layers - 1, 0),), "zero")], [HeadMask(((1, 1),), "zero")]]
    samples = SweepSamples(loaded, setup, 3, stop_when_decided=True)
    rows = samples.evaluate_group(group)
    assert samples.reuse_off is None and not samples.final_rows and "is invalid for input" in samples.final_rows_off
    assert_plain_rows(loaded, setup, group, rows)


@pytest.mark.parametrize("shared", [False, True])
def test_a_feed_forward_shared_with_earlier_layers_runs_whole(shared):
    """The final-rows hooks go on the last layer's own modules only: where its feed-forward is also an earlier layer's
    (a block shared between layers, as Zamba's), slicing it would cut that layer's positions too, so it runs whole.
    Either way the final position's logits equal the model's own (transformers' forward, no call active)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from attnwh.extract.forward import forward_call

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2)
    model = LlamaForCausalLM(config).eval()
    layers = model.model.layers
    if shared:
        layers[-1].mlp = layers[0].mlp
    reuse.install_replay(layers)
    ids = torch.randint(0, 50, (2, 9))
    with torch.inference_mode():
        expected = model(input_ids=ids).logits[:, -1]
        seen = []
        hook = layers[-1].mlp.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[1]))
        try:
            with forward_call(model.model, [layer.self_attn for layer in layers], layers, final_rows=True):
                got = model(input_ids=ids).logits[:, -1]
        finally:
            hook.remove()
    assert torch.allclose(got, expected, atol=1e-5)
    assert seen == ([9, 9] if shared else [1])  # shared: called by layers 0 and 2, each on every position
