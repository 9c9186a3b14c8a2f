"""Image-KV pruning in the ``cache`` phase (issue 31): the prefill attends over every key and each KV head keeps
its budget of image keys only from the first decode step on, chosen as SnapKV chooses them.

References, none of them attnwh's: transformers' own SDPA generation (the first token), and a stock eager LLaVA
whose prefill runs on every key, whose DynamicCache then has each KV head's dropped image keys zeroed and masked
out of every later step by hand (a per-layer, per-head additive mask handed to its decoder layers), with the
kept keys chosen here from the prefill's ``output_attentions`` (SnapKV's window, sum and pooling written as loops).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoModelForImageTextToText

from attnwh.extract import prune_run
from attnwh.extract.capture import CaptureSpec
from attnwh.extract.forward import forward_call
from attnwh.extract.generation import batch_view, generate_with_capture
from attnwh.extract.packed_cache import PackedLayer, bucket_runs
from attnwh.extract.pruning import KVPrune, LayerPrune, allocate
from attnwh.extract.sweep import SweepSamples
from attnwh.queries.library import open_session
from attnwh.reports.charts import PRUNING_UNCHANGED, ROWS, pruning_curves
from tests.integration.test_masking import _encoded, _loaded
from tests.reference import reference_generate
from tests.reliability.harness import run_cli

WINDOW, KERNEL = 32, 5  # SnapKV's defaults (snapkv/monkeypatch/snapkv_utils.py, init_snapkv), written again here
# kept shares of the tiny GQA model's (layer, KV head) whose budgets of 16 image keys are whole: 4, 8 / 2, 0 / 16, 6
SHARES = np.array([[0.25, 0.5], [0.125, 0.0], [1.0, 0.375]])
BUDGETS = [[4, 8], [2, 0], [16, 6]]


def _log_probs(logits: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits.float(), dim=-1)


# -- 1. the first token is the full cache's --------------------------------------------------------------


def test_one_token_answers_under_the_cache_phase_equal_the_full_caches_and_the_prefill_phase_differs(tiny_gqa):
    loaded = _loaded(tiny_gqa)
    encoded = _encoded(loaded, 3)  # a padded batch
    full = reference_generate(tiny_gqa, encoded, 1, attn_implementation="sdpa", output_logits=True)  # transformers' own SDPA, no attnwh
    prompt = encoded["input_ids"].shape[1]
    kept = allocate("uniform", 0.25, np.zeros((3, 2)))
    cache, _, _ = generate_with_capture(loaded, encoded, None, 1, interventions=[KVPrune(kept, "attention", "cache")])
    prefill, _, _ = generate_with_capture(loaded, encoded, None, 1, interventions=[KVPrune(kept, "attention", "prefill")])
    assert cache.answers == full.sequences[:, prompt:].tolist()
    assert torch.equal(cache.first_logits, full.logits[0])  # bit-identical: the prefill is the plain model's
    gap = (_log_probs(prefill.first_logits) - _log_probs(full.logits[0])).abs().max().item()
    assert gap > 1e-2, f"the same budgets must change the first token's log-probabilities under --phase prefill ({gap})"


# -- 2. against a cache pruned by hand ------------------------------------------------------------------


def _snapkv_kept(attention: torch.Tensor, image: list[int], length: int, budget: int, heads: list[int]) -> list[int]:
    """The image positions SnapKV keeps for one KV head of one sample, from the prefill's attention probabilities
    ``[head, query, key]``: the last min(WINDOW, length) rows summed (and over the KV head's query heads), average
    pooling of KERNEL with zero padding, the ``budget`` image keys of the highest pooled vote (ties: first position)."""
    n_keys = attention.shape[-1]
    rows = range(attention.shape[1] - min(WINDOW, length), attention.shape[1])
    votes = [sum(float(attention[head, row, key]) for head in heads for row in rows) for key in range(n_keys)]
    pooled = [sum(votes[j] for j in range(key - KERNEL // 2, key + KERNEL // 2 + 1) if 0 <= j < n_keys) / KERNEL for key in range(n_keys)]
    return sorted(sorted(image, key=lambda key: (-pooled[key], key))[:budget])


def _stride_kept(image: list[int], budget: int) -> list[int]:
    return [image[(2 * k + 1) * len(image) // (2 * budget)] for k in range(budget)]


@torch.inference_mode()
def _reference_decode(folder, encoded, keep: str, steps: int, image_token_id: int) -> tuple[torch.Tensor, list[list[int]]]:
    """Logits ``[step, batch, vocab]`` and greedy tokens of a stock eager LLaVA: the prefill on every key, then per
    layer and KV head the dropped image keys zeroed in the DynamicCache and masked out of each decode step."""
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()
    attention_mask = encoded["attention_mask"]
    positions = (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)  # as generate places a left-padded batch
    out = model(**encoded, position_ids=positions, use_cache=True, output_attentions=True)
    cache, text = out.cache, model.model.language_model
    batch, prompt = encoded["input_ids"].shape
    n_heads, n_kv = out.attentions[0].shape[1], cache.layers[0].keys.shape[1]
    groups = n_heads // n_kv
    dropped = torch.zeros(len(out.attentions), batch, n_heads, prompt, dtype=torch.bool)  # [layer, batch, head, key]
    for layer, attention in enumerate(out.attentions):
        for row in range(batch):
            image = [p for p in range(prompt) if int(encoded["input_ids"][row, p]) == image_token_id]
            length = int(attention_mask[row].sum())
            for kv_head in range(n_kv):
                heads = list(range(kv_head * groups, (kv_head + 1) * groups))
                budget = BUDGETS[layer][kv_head]
                kept = _snapkv_kept(attention[row], image, length, budget, heads) if keep == "attention" else _stride_kept(image, budget)
                for position in set(image) - set(kept):
                    dropped[layer, row, heads, position] = True
                    cache.layers[layer].keys[row, kv_head, position] = 0.0  # gone from the cache ...
                    cache.layers[layer].values[row, kv_head, position] = 0.0
    logits, tokens = [out.logits[:, -1].float()], [out.logits[:, -1].argmax(-1)]
    real = attention_mask.bool()
    for _ in range(steps - 1):
        positions = positions[:, -1:] + 1
        real = torch.cat([real, torch.ones(batch, 1, dtype=torch.bool)], dim=1)
        hidden = text.embed_tokens(tokens[-1][:, None])
        rotary = text.rotary_emb(hidden, position_ids=positions)
        for layer, module in enumerate(text.layers):
            removed = torch.nn.functional.pad(dropped[layer], (0, real.shape[1] - prompt))  # generated keys: kept
            allowed = real[:, None, None, :] & ~removed[:, :, None, :]  # [batch, head, 1, key]
            mask = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)  # ... and masked out
            hidden = module(hidden, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True, position_embeddings=rotary)
        step_logits = model.lm_head(text.norm(hidden))[:, -1].float()
        logits.append(step_logits)
        tokens.append(step_logits.argmax(-1))
    return torch.stack(logits), torch.stack(tokens, dim=1).tolist()


def _attnwh_decode(loaded, encoded, interventions, steps: int, with_cache: bool = False):
    """Every step's logits ``[step, batch, vocab]`` and the tokens of attnwh's generation under ``interventions``
    (and the cache it left, ``with_cache``)."""
    parts = loaded.parts
    bound = [intervention.bind(batch_view(loaded, encoded)) for intervention in interventions]
    with torch.inference_mode(), forward_call(parts.text_model, parts.attention_modules, parts.decoder_layers, bound):
        output = loaded.model.generate(
            **encoded,
            max_new_tokens=steps,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=loaded.processor.tokenizer.pad_token_id,
            output_logits=True,
            return_dict_in_generate=True,
        )
    result = torch.stack([step.float() for step in output.logits]), output.sequences[:, encoded["input_ids"].shape[1] :].tolist()
    return (*result, output.cache) if with_cache else result


@pytest.mark.parametrize("keep", ["attention", "stride"])
def test_cache_phase_equals_a_full_prefill_then_keys_dropped_from_the_cache_by_hand(tiny_gqa, keep):
    loaded = _loaded(tiny_gqa)
    encoded = _encoded(loaded, 3)  # padded: 35, 44 and 35 prompt tokens, 16 of them image
    steps = 4
    assert KVPrune(SHARES, keep).counts(16).tolist() == BUDGETS
    reference, reference_tokens = _reference_decode(tiny_gqa, encoded, keep, steps, loaded.config.image_token_id)
    pruned, tokens = _attnwh_decode(loaded, encoded, [KVPrune(SHARES, keep, "cache")], steps)
    full, _ = _attnwh_decode(loaded, encoded, [], steps)
    assert tokens == reference_tokens
    gap = (pruned - reference).abs().max(dim=-1).values  # [step, batch]
    assert gap.max().item() <= 1e-5, gap
    assert torch.equal(pruned[0], full[0])  # the first token: the full cache's
    assert (pruned[1:] - full[1:]).abs().max().item() > 1e-3, "the dropped keys must matter in the decode steps"


def test_the_packed_cache_holds_only_the_kept_keys_and_decodes_as_the_gathered_path(tiny_gqa):
    """After the prefill each pruned layer's cache holds each KV head's kept keys only (text keys and its budget of
    image keys; no padding), packed: its storages' bytes are those keys' bytes plus a 4-byte index per key; every
    decode step's logits equal those of the gathered path, which keeps every key and gathers the kept ones."""
    loaded = _loaded(tiny_gqa)
    encoded = _encoded(loaded, 3)  # padded: 35, 44 and 35 prompt tokens, 16 of them image
    steps = 5
    packed, tokens, cache = _attnwh_decode(loaded, encoded, [KVPrune(SHARES, "attention", "cache")], steps, with_cache=True)
    gathered, gathered_tokens, whole = _attnwh_decode(loaded, encoded, [KVPrune(SHARES, "attention", "cache", packed=False)], steps, with_cache=True)
    assert tokens == gathered_tokens
    assert (packed - gathered).abs().max().item() <= 1e-6  # every step
    real = encoded["attention_mask"].sum(dim=1).tolist()  # [44, 35, 44]-style real prompt tokens per row
    prompt = encoded["input_ids"].shape[1]
    for layer, per_kv in enumerate(BUDGETS):
        entry, full = cache.layers[layer], whole.layers[layer]
        assert type(full).__name__ == "DynamicLayer" and full.keys.shape[2] == prompt + steps - 1
        assert isinstance(entry, PackedLayer), layer  # every layer drops some key (layer 2's KV head 1 keeps 6 of 16)
        head_dim = full.keys.shape[-1]
        expected = [n - 16 + budget for n in real for budget in per_kv]  # per (row, KV head): real text keys + its budget
        assert entry.counts.tolist() == expected
        assert sum(expected) <= entry.slots() <= 1.01 * sum(expected)  # padding within 1% of the kept keys
        tail = 2 * 3 * 2 * (steps - 1) * head_dim * 4  # keys and values of 3 rows × 2 KV heads × the generated steps
        assert sum(expected) * 2 * head_dim * 4 + tail <= entry.nbytes() <= 1.02 * (sum(expected) * 2 * head_dim * 4) + tail
        assert entry.nbytes() < full.keys.untyped_storage().nbytes() + full.values.untyped_storage().nbytes()
        held = sum(b.keys.numel() * 4 + b.values.numel() * 4 + (0 if b.valid is None else b.valid.numel()) for b in entry.buckets)
        assert entry.nbytes() == held + 3 * 2 * 8 * 2 + tail  # + the counts and the segment index, 8 bytes each per (row, KV head), the index once
        for segment, count in enumerate(expected):  # each packed key is one of the full cache's keys of its (row, KV head)
            row, kv_head = divmod(segment, 2)
            keys = entry.kept_keys(segment)
            assert keys.shape[0] == count
            matches = (keys[:, None, :] == full.keys[row, kv_head, None, :prompt, :]).all(dim=-1)  # [packed, position]
            assert matches.any(dim=1).all()
            positions = matches.float().argmax(dim=1)
            assert torch.equal(positions, positions.sort().values)  # in position order
            assert torch.allclose(entry.keys[row, kv_head], full.keys[row, kv_head, prompt:], atol=1e-5)  # the generated tail (float rounding apart)


@given(st.lists(st.integers(0, 300), min_size=1, max_size=80))
@settings(max_examples=60, deadline=None)
def test_buckets_cut_the_widths_with_at_most_one_percent_of_padding(widths):
    """The buckets cover every segment once, in order; padding within 1% of the kept keys where 64 buckets
    allow it, and never more than cutting at the 64 largest gaps would leave (a hand partition)."""
    widths = sorted(widths, reverse=True)
    runs = bucket_runs(widths, 0.01)
    assert runs[0][0] == 0 and runs[-1][1] == len(widths) and all(a[1] == b[0] for a, b in zip(runs, runs[1:]))
    padding = sum(widths[first] * (last - first) - sum(widths[first:last]) for first, last in runs)
    distinct = len(set(widths))
    if distinct <= 64:
        assert padding <= 0.01 * sum(widths) + 1e-9
    else:
        assert len(runs) == 64


def test_snapkvs_window_chooses_other_keys_than_the_last_row(tiny_gqa):
    """The reference above can tell SnapKV's choice from the prefill phase's last-row choice on these samples."""
    loaded = _loaded(tiny_gqa)
    encoded = _encoded(loaded, 3)
    model = AutoModelForImageTextToText.from_pretrained(tiny_gqa, dtype=torch.float32, attn_implementation="eager").eval()
    with torch.inference_mode():
        attentions = model(**encoded, output_attentions=True).attentions
    image = [p for p in range(encoded["input_ids"].shape[1]) if int(encoded["input_ids"][1, p]) == loaded.config.image_token_id]
    differ = 0
    for layer, attention in enumerate(attentions):
        for kv_head, heads in enumerate(([0, 1], [2, 3])):
            budget = BUDGETS[layer][kv_head]
            last_row = sorted(sorted(image, key=lambda key: -float(attention[1, heads, -1, key].sum()))[:budget])
            differ += _snapkv_kept(attention[1], image, 44, budget, heads) != last_row
    assert differ >= 1


# -- the window and the pooling, against loops ------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**16), st.integers(1, 3), st.integers(3, 40))
def test_the_cache_phases_kept_keys_equal_snapkv_written_as_loops(seed, batch, n_keys):
    """Left-padded rows, prompts shorter and longer than the window: each row's window is its last min(32, length) positions."""
    generator = torch.Generator().manual_seed(seed)
    n_heads, n_kv, head_dim = 4, 2, 8
    query = torch.randn(batch, n_heads, n_keys, head_dim, generator=generator)
    key = torch.randn(batch, n_kv, n_keys, head_dim, generator=generator)
    lengths = torch.randint(1, n_keys + 1, (batch,), generator=generator)
    real = torch.arange(n_keys)[None, :] >= n_keys - lengths[:, None]  # [batch, key]: left padding first
    image = (torch.rand(batch, n_keys, generator=generator) < 0.6) & real
    budgets = torch.stack([torch.randint(0, int(n) + 1, (n_kv,), generator=generator) for n in image.sum(dim=1)])
    mask = torch.ones(n_keys, n_keys, dtype=torch.bool).tril()[None, None] & real[:, None, None, :]  # [batch, 1, query, key]
    kept = LayerPrune(budgets, image, "attention", 2, "cache", lengths)._choose(query, key, mask, head_dim**-0.5)
    scores = torch.matmul(query, key.repeat_interleave(2, dim=1).transpose(-1, -2)) * head_dim**-0.5
    for b in range(batch):
        length = int(lengths[b])
        probabilities = torch.softmax(scores[b].masked_fill(~mask[b], float("-inf")), dim=-1)  # [head, query, key]; padding rows: NaN, never read
        positions = torch.nonzero(image[b]).flatten().tolist()
        for h in range(n_kv):
            expected = _snapkv_kept(probabilities, positions, length, int(budgets[b, h]), [2 * h, 2 * h + 1])
            assert torch.nonzero(kept[b, h] & image[b]).flatten().tolist() == expected
            assert bool(kept[b, h][~image[b]].all())


# -- what the capture sees ------------------------------------------------------------------------------


def test_the_capture_sees_the_full_prefill_and_the_pruned_decode(tiny_gqa):
    loaded = _loaded(tiny_gqa)
    encoded = _encoded(loaded, 3)
    spec = CaptureSpec(("prompt", "gen1"), rows=True, lens=False)
    _, plain, _ = generate_with_capture(loaded, encoded, spec, 2)
    _, cache, _ = generate_with_capture(loaded, encoded, spec, 2, interventions=[KVPrune(SHARES, "attention", "cache")])
    _, prefill, _ = generate_with_capture(loaded, encoded, spec, 2, interventions=[KVPrune(SHARES, "attention", "prefill")])
    plain_rows, cache_rows, prefill_rows = plain.stacked_rows(), cache.stacked_rows(), prefill.stacked_rows()
    assert torch.equal(cache_rows["prompt"], plain_rows["prompt"])  # the prefill's last row, as the plain model attended
    image = encoded["input_ids"] == loaded.config.image_token_id  # [batch, prompt]
    for rows, query in ((cache_rows, "gen1"), (prefill_rows, "prompt"), (prefill_rows, "gen1")):
        for layer, per_kv in enumerate(BUDGETS):
            for head in range(4):
                attended = (rows[query][layer, :, head, : image.shape[1]] > 0) & image  # [batch, prompt]
                assert attended.sum(dim=1).tolist() == [per_kv[head // 2]] * 3, (query, layer, head)
                assert torch.allclose(rows[query][layer, :, head].sum(-1), torch.ones(3), atol=1e-5)


# -- the sweep: settings, staging, fingerprint, reuse ----------------------------------------------------


def _prune(capsys, warehouse, model, ranking, *extra):
    args = ("prune", "--model", str(model), "--benchmark", "toy-shapes-choice", "--limit", "6", "--batch-size", "3", "--kv-share", "1,0.25", "--allocation", "score,uniform")
    code, out, err = run_cli(capsys, *args, "--ranking-run", ranking, "--max-new-tokens", "1", "--warehouse", str(warehouse), "--device", "cpu", *extra)
    assert code == 0, err
    assert "evaluated each condition on its own" not in err  # reuse (where asked) was not turned off by its check
    return out


def _imported_ranking(tmp_path, capsys, warehouse, model) -> str:
    """A DuoAttention TSV of the tiny GQA model's 3 × 2 KV heads imported as a ranking run; its id."""
    tsv = tmp_path / "duo.tsv"
    tsv.write_text("0.1\t0.9\n0.5\t0.3\n1\t0\n")
    code, _, err = run_cli(capsys, "heads", "import", str(tsv), "--format", "duo-tsv", "--model", str(model), "--name", "duo", "--warehouse", str(warehouse))
    assert code == 0, err
    with open_session(warehouse) as session:
        return session.query("select run_id from runs where kind = 'ranking'").to_pylist()[0]["run_id"]


def _stored_without_phase(as_sweep):
    """``PruneCondition.as_sweep`` storing the settings as attnwh wrote them before phases existed."""

    def stored(condition):
        written = as_sweep(condition)
        return prune_run.SweepCondition(written.condition_id, {key: value for key, value in written.settings.items() if key != "phase"}, ranked=written.ranked)

    return stored


def test_phases_are_stored_typed_fingerprinted_and_one_token_answers_equal_the_full_cache(tmp_path, tiny_gqa, capsys, monkeypatch):
    warehouse = tmp_path / "wh"
    ranking = _imported_ranking(tmp_path, capsys, warehouse, tiny_gqa)
    out = _prune(capsys, warehouse, tiny_gqa, ranking, "--phase", "cache,prefill", "--stack", "2", "--run", "reused")
    assert "wrote 5 condition(s)" in out and " phase " in out.splitlines()[0]  # full + 2 phases x (score, uniform); the table names the phase
    _prune(capsys, warehouse, tiny_gqa, ranking, "--phase", "cache,prefill", "--no-reuse", "--run", "plain")
    # a part written before phases existed: settings without one
    with monkeypatch.context() as patch:
        patch.setattr(prune_run.PruneCondition, "as_sweep", _stored_without_phase(prune_run.PruneCondition.as_sweep))
        _prune(capsys, warehouse, tiny_gqa, ranking, "--phase", "prefill", "--kv-share", "0.25", "--allocation", "uniform", "--run", "legacy")
    with open_session(warehouse) as session:
        phases = session.query("select run_id, condition_id, phase, allocation, keep from stg_prune_conditions order by run_id, condition_id").to_pylist()
        raw = session.query("select run_id, condition_id, settings from sweep_conditions where run_id = 'reused' order by condition_id").to_pylist()
        results = session.query(
            "select r.run_id, c.phase, c.allocation, r.sample_idx, r.parsed, r.output_text, r.option_logprobs "
            "from prune_results as r join stg_prune_conditions as c using (run_id, condition_id) order by r.run_id, r.condition_id, r.sample_idx"
        ).to_pylist()
        mart = session.query("select run_id, phase, allocation, changed from pruning_accuracy order by run_id, condition_id").to_pylist()
        report_rows = session.query("select * from report_pruning").to_pylist()
        report = {row["phase"] for row in report_rows}
        specs = {row["run_id"]: json.loads(row["spec"]) for row in session.query("select run_id, spec from runs where kind = 'prune'").to_pylist()}
    by_run = {run: [(row["phase"], row["allocation"]) for row in phases if row["run_id"] == run] for run in ("reused", "plain", "legacy")}
    order = [("cache", "full"), ("cache", "score"), ("cache", "uniform"), ("prefill", "score"), ("prefill", "uniform")]
    assert by_run["reused"] == by_run["plain"] == order
    assert by_run["legacy"] == [("prefill", "full"), ("prefill", "uniform")]  # no phase in the settings: prefill
    assert [json.loads(row["settings"]).get("phase") for row in raw] == ["cache", "cache", "cache", "prefill", "prefill"]
    assert [entry[-1] for entry in specs["reused"]["conditions"]][:3] == ["cache"] * 3
    assert specs["reused"]["observation_window"] == {"window": 32, "kernel": 5, "pooling": "avgpool"}
    assert [len(entry) for entry in specs["legacy"]["conditions"]] == [6, 6] and "observation_window" not in specs["legacy"]  # prefill: the fingerprint of before
    assert report == {"cache", "prefill"} and {row["phase"] for row in mart} == {"cache", "prefill"}

    def rows_of(run, phase, allocation):
        return [row for row in results if (row["run_id"], row["phase"], row["allocation"]) == (run, phase, allocation)]

    def logprob_gap(rows, others):
        return max(abs(a - b) for row, other in zip(rows, others, strict=True) for a, b in zip(row["option_logprobs"], other["option_logprobs"], strict=True))

    for run in ("reused", "plain"):
        full = rows_of(run, "cache", "full")
        for allocation in ("score", "uniform"):
            cache = rows_of(run, "cache", allocation)
            assert [row["output_text"] for row in cache] == [row["output_text"] for row in full]
            assert logprob_gap(cache, full) <= 1e-6
        assert max(logprob_gap(rows_of(run, "prefill", allocation), full) for allocation in ("score", "uniform")) > 1e-3
    assert all(row["changed"] == 0 for row in mart if row["phase"] == "cache" and row["run_id"] != "legacy")
    # the report's panels: a cache-phase panel of one-token answers changed none and says so; a panel says so only
    # where no condition of its run and phase changed an answer (pruning_accuracy's own counts)
    titles = {row["panel"] for row in pruning_curves(report_rows)["datasets"][ROWS.name]}
    shown = {(row["run_id"], row["phase"]) for row in report_rows}
    for phase in ("cache", "prefill"):
        none_changed = all(row["changed"] == 0 for row in mart if (row["run_id"], row["phase"]) in shown and row["phase"] == phase)
        assert all(title.endswith(PRUNING_UNCHANGED) == none_changed for title in titles if f" · {phase} · " in title)
    assert any(f" · cache · keep attention · {PRUNING_UNCHANGED}" in title for title in titles)
    for phase, allocation in order:  # --reuse (stacked) and --no-reuse answer alike
        reused, plain = rows_of("reused", phase, allocation), rows_of("plain", phase, allocation)
        assert [row["output_text"] for row in reused] == [row["output_text"] for row in plain]
        assert logprob_gap(reused, plain) <= 1e-5


def test_a_sweep_whose_reuse_check_fails_says_so_in_one_line(tmp_path, tiny_gqa, capsys, monkeypatch):
    """When the first batch's check turns reuse off, the sweep says why on one warning line and still answers."""
    warehouse = tmp_path / "wh"
    ranking = _imported_ranking(tmp_path, capsys, warehouse, tiny_gqa)
    monkeypatch.setattr(SweepSamples, "_check_inputs", lambda self, batch, inputs, times: "a planted difference")
    args = ("prune", "--model", str(tiny_gqa), "--benchmark", "toy-shapes-choice", "--limit", "3", "--batch-size", "3", "--kv-share", "1,0.25", "--allocation", "uniform")
    code, out, err = run_cli(capsys, *args, "--ranking-run", ranking, "--max-new-tokens", "1", "--warehouse", str(warehouse), "--device", "cpu")
    assert code == 0, err
    warned = [line for line in err.splitlines() if line.startswith("attnwh: warning:")]
    assert warned == ["attnwh: warning: a planted difference: evaluated each condition on its own (results are those of the plain path)"]
    assert "wrote 2 condition(s)" in out
