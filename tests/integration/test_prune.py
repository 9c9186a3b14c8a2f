"""Image-KV pruning (``attnwh prune``): the attention function against independent references (plain
SDPA, an eager attention written here, a softmax by hand), the allocations against hand computations,
and the sweep end to end on the toy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AttentionInterface, AutoModelForImageTextToText
from transformers.masking_utils import AttentionMaskInterface, eager_mask

from attnwh.core.errors import UsageError
from attnwh.extract.generation import generate_with_capture
from attnwh.extract.prune_run import build_prune_conditions, kv_head_scores, parse_shares
from attnwh.extract.pruning import KVPrune, LayerPrune, allocate, budgets
from attnwh.queries.library import open_session
from tests.integration.test_masking import _encoded, _loaded
from tests.reference import reference_generate
from tests.reliability.harness import run_cli

SCORES = np.array([[1.0, 0.0, 3.0], [0.5, 0.5, 5.0]])  # [layer, kv_head]


# -- allocations, by hand ----------------------------------------------------------------------------


def test_uniform_score_and_random_allocations_equal_hand_computations():
    assert np.array_equal(allocate("uniform", 0.25, SCORES), np.full((2, 3), 0.25))
    assert np.array_equal(allocate("full", 0.25, SCORES), np.ones((2, 3)))
    # score, floor 0.1: each head 0.1 * 0.25 = 0.025; the rest, 0.225 * 6 heads = 1.35, in proportion to the scores (sum 10)
    hand = [[0.025 + 1.35 * 1 / 10, 0.025, 0.025 + 1.35 * 3 / 10], [0.025 + 1.35 * 0.5 / 10, 0.025 + 1.35 * 0.5 / 10, 0.025 + 1.35 * 5 / 10]]
    assert np.allclose(allocate("score", 0.25, SCORES, floor=0.1), hand)
    # capped (share 0.5, no floor): 3.0 in proportion to the scores gives the head of score 5 1.5, capped at 1; its excess 0.5
    # goes to the open heads in proportion (the head of 3 then exceeds 1 and is capped; its excess goes to the rest)
    capped = allocate("score", 0.5, SCORES, floor=0.0)
    assert capped.max() <= 1.0 and np.isclose(capped.mean(), 0.5)
    first = np.array([0.3, 0.0, 0.9, 0.15, 0.15, 1.0])  # 3.0 x score / 10, the last capped (1.5 -> 1)
    excess, open_weights = 0.5, np.array([1.0, 0.0, 3.0, 0.5, 0.5, 0.0])
    second = first + excess * open_weights / open_weights.sum()  # 0.9 + 0.5 * 3 / 5 = 1.2 -> capped again
    third_excess = second[2] - 1.0
    second[2] = 1.0
    weights = np.array([1.0, 0.0, 0.0, 0.5, 0.5, 0.0])
    hand = second + third_excess * weights / weights.sum()
    assert np.allclose(capped.ravel(), hand)
    # random: the score allocation of uniform draws from the seed
    drawn = np.random.default_rng(4).random((2, 3))
    assert np.allclose(allocate("random", 0.25, SCORES, floor=0.1, seed=4), 0.025 + 1.35 * drawn / drawn.sum())
    assert not np.allclose(allocate("random", 0.25, SCORES, seed=4), allocate("random", 0.25, SCORES, seed=5))


def test_random_allocation_draws_per_query_head_and_sums_per_kv_head_as_sparsemm():
    """SparseMM's random baseline (``SparseMM.__init__``: one ``random.random()`` per layer × attention head, then
    ``.view(L, H / g, g).sum(-1)``): a KV head of 4 query heads scores a sum of 4 draws, whose spread is half a
    single draw's; one draw per KV head made the random budgets of GQA models ~2.5× as uneven as the field's."""
    drawn = np.random.default_rng(4).random((2, 12))  # 2 layers × 12 query heads, 3 KV heads of 4
    per_kv = np.array([[row[0:4].sum(), row[4:8].sum(), row[8:12].sum()] for row in drawn])
    assert np.allclose(allocate("random", 0.25, SCORES, floor=0.1, seed=4, group=4), 0.025 + 1.35 * per_kv / per_kv.sum())
    wide = allocate("random", 0.1, np.zeros((28, 4)), floor=0.1, seed=0, group=7)  # Qwen2.5-VL-7B's shape: 28 query heads, 4 KV heads
    assert wide.std() / wide.mean() < 0.3  # one draw per KV head: 0.50-0.54 (helper-39's review)


def test_tied_budgets_spread_evenly_over_the_layers():
    """Every head of ``uniform`` has the same remainder: the leftover keys go evenly spaced, so no layer keeps fewer
    image keys than another by more than one key in all (the first heads first gave the toy's 4 × 8 heads at 5%
    of 16 image keys one key in each of the first three layers' heads and the last layer's six heads none)."""
    counts = budgets(np.full((4, 8), 0.05), 16)
    assert counts.sum() == 26 and counts.max() - counts.min() <= 1
    per_layer = counts.sum(axis=1)
    assert per_layer.max() - per_layer.min() <= 1, per_layer


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 40), st.integers(1, 40), st.integers(1, 700), st.floats(0, 1))
def test_uniform_budgets_differ_by_at_most_one_key_between_layers(n_layers, n_kv, n_image, share):
    counts = budgets(np.full((n_layers, n_kv), share), n_image)
    assert counts.max() - counts.min() <= 1
    assert abs(int(counts.sum()) - share * n_image * n_layers * n_kv) <= 0.5 + 1e-6
    per_layer = counts.sum(axis=1)
    assert per_layer.max() - per_layer.min() <= 1, per_layer


def test_budgets_round_to_the_requested_share_by_largest_remainders():
    kept = np.array([[0.3, 0.0, 0.9], [0.15, 0.15, 0.5]])  # mean 1/3
    counts = budgets(kept, 10)  # exact: 3, 0, 9, 1.5, 1.5, 5 -> total 20; one of the halves rounds up... to 20 in all
    assert counts.sum() == 20 and counts[0].tolist() == [3, 0, 9] and counts[1, 2] == 5 and sorted(counts[1, :2].tolist()) == [1, 2]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=1, max_size=40), st.integers(0, 700))
def test_budgets_add_up_to_the_share_within_rounding(shares, n_image):
    kept = np.array(shares)
    counts = budgets(kept, n_image)
    exact = kept * n_image
    assert counts.min() >= 0 and counts.max() <= n_image
    assert abs(int(counts.sum()) - exact.sum()) <= 0.5 + 1e-6
    assert np.all(np.abs(counts - exact) < 1 + 1e-6)


def test_gqa_scores_sum_over_each_kv_heads_query_heads():
    scores = {(0, 0): 1.0, (0, 1): 2.0, (0, 2): 4.0, (0, 3): 8.0, (1, 0): 0.5, (1, 1): 0.25, (1, 2): 0.0, (1, 3): 1.0}
    assert kv_head_scores(scores, 2, 4, 2).tolist() == [[3.0, 12.0], [0.75, 1.0]]
    assert kv_head_scores(scores, 2, 4, 4).tolist() == [[1.0, 2.0, 4.0, 8.0], [0.5, 0.25, 0.0, 1.0]]
    # negative scores (attribution) count as 0 per query head, before the sum: as exported for SparseMM, whose GQA
    # view sums the exported (clipped) query heads; summed first, 5 and -3 gave 2, as much as 1 and 1
    assert kv_head_scores({(0, 0): 5.0, (0, 1): -3.0, (0, 2): 1.0, (0, 3): 1.0}, 1, 4, 2).tolist() == [[5.0, 2.0]]


def test_conditions_keep_full_once_and_skip_share_one():
    conditions = build_prune_conditions(parse_shares(("1", "0.5", "25%")), ("score", "uniform", "random"), ("attention",), 2, 0.1, SCORES)
    assert [(c.allocation, c.kv_share, c.seed) for c in conditions] == [
        ("full", 1.0, None),
        ("score", 0.5, None),
        ("uniform", 0.5, None),
        ("random", 0.5, 0),
        ("random", 0.5, 1),
        ("score", 0.25, None),
        ("uniform", 0.25, None),
        ("random", 0.25, 0),
        ("random", 0.25, 1),
    ]
    with pytest.raises(UsageError, match="outside"):
        parse_shares(("1.5",))


# -- the attention function --------------------------------------------------------------------------


def _layer_inputs(seed: int = 0, batch: int = 2, n_heads: int = 4, n_kv: int = 2, n_keys: int = 12, head_dim: int = 8):
    generator = torch.Generator().manual_seed(seed)
    query = torch.randn(batch, n_heads, n_keys, head_dim, generator=generator)
    key = torch.randn(batch, n_kv, n_keys, head_dim, generator=generator)
    value = torch.randn(batch, n_kv, n_keys, head_dim, generator=generator)
    image = torch.zeros(batch, n_keys, dtype=torch.bool)
    image[:, 3:9] = True  # 6 image keys
    return query, key, value, image


@pytest.mark.parametrize("keep", ["attention", "stride"])
def test_removed_keys_get_exactly_zero_attention_and_kept_ones_sum_to_one(keep):
    query, key, _, image = _layer_inputs()
    layer = LayerPrune(torch.tensor([[2, 0], [6, 1]]), image, keep, n_kv_groups=2, phase="prefill")
    mask = layer.observed_mask(query, key, None, 8**-0.5)  # additive [batch, head, query, key], as SDPA is given it
    scores = torch.matmul(query, key.repeat_interleave(2, dim=1).transpose(-1, -2)) * 8**-0.5
    weights = torch.softmax(scores + mask, dim=-1)  # by hand, from the mask
    causal = torch.ones(12, 12, dtype=torch.bool).tril()
    assert torch.all(weights[:, :, ~causal] == 0)  # and causal
    assert torch.allclose(weights.sum(-1), torch.ones_like(weights.sum(-1)))
    last = weights[:, :, -1, :]
    for b, budgets_of_sample in enumerate([[2, 0], [6, 1]]):
        for head in range(4):
            kept_image = (last[b, head, 3:9] > 0).sum().item()
            assert kept_image == budgets_of_sample[head // 2]
            assert torch.all(last[b, head, :3] > 0) and torch.all(last[b, head, 9:] > 0)  # text keys always kept
    if keep == "attention":  # the kept key of a budget of 1 is the one the KV head's query heads attend most, summed
        plain = torch.softmax(scores.masked_fill(~torch.ones(12, 12, dtype=torch.bool).tril(), float("-inf")), dim=-1)[1, 2:4, -1, 3:9].sum(0)
        assert (last[1, 2, 3:9] > 0).nonzero().item() == plain.argmax().item()
    else:  # stride: budget 2 of 6 image keys -> offsets 1 and 4 (centres of two equal spans)
        assert (last[0, 0, 3:9] > 0).nonzero().flatten().tolist() == [1, 4]


def test_a_kv_head_with_budget_zero_equals_an_eager_reference_that_masks_its_image_keys(tiny_gqa):
    """--phase prefill: the removed keys leave the heads' softmax in the prefill too (the cache phase: test_prune_cache.py)."""
    loaded = _loaded(tiny_gqa)
    encoded = _encoded(loaded, 3)  # a padded batch of three
    n_layers, n_kv = 3, 2
    kept = np.ones((n_layers, n_kv))
    pruned = {(0, 1), (2, 0)}  # (layer, KV head) with budget 0
    for layer, kv_head in pruned:
        kept[layer, kv_head] = 0.0
    generation, _, _ = generate_with_capture(loaded, encoded, None, 4, interventions=[KVPrune(kept, "attention", "prefill")])

    image_ids = loaded.config.image_token_id
    image = encoded["input_ids"] == image_ids  # [batch, prompt]: the image keys, from the token ids

    def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        groups = query.shape[1] // key.shape[1]
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
        scores = torch.matmul(query, key.transpose(2, 3)) * scaling
        scores = (
            scores.masked_fill(~attention_mask[:, :, :, : key.shape[-2]], float("-inf"))
            if attention_mask.dtype == torch.bool
            else scores + attention_mask[:, :, :, : key.shape[-2]]
        )
        for layer, kv_head in pruned:
            if module.layer_idx == layer:
                heads = list(range(kv_head * groups, (kv_head + 1) * groups))
                positions = torch.nn.functional.pad(image, (0, key.shape[-2] - image.shape[1]))  # generated keys: not image
                scores[:, heads] = scores[:, heads].masked_fill(positions[:, None, None, :], float("-inf"))
        weights = torch.softmax(scores.float(), dim=-1).to(query.dtype)
        return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights

    AttentionInterface.register("test_prune_reference", attention)
    AttentionMaskInterface.register("test_prune_reference", eager_mask)
    reference = AutoModelForImageTextToText.from_pretrained(
        tiny_gqa, dtype=torch.float32, attn_implementation={"text_config": "test_prune_reference", "vision_config": "sdpa"}
    ).eval()
    with torch.inference_mode():
        output = reference.generate(
            **encoded, max_new_tokens=4, do_sample=False, output_logits=True, return_dict_in_generate=True, pad_token_id=loaded.processor.tokenizer.pad_token_id
        )
    assert torch.allclose(generation.first_logits, output.logits[0], atol=1e-5)
    prompt = encoded["input_ids"].shape[1]
    assert [answer[:2] for answer in generation.answers] == [row[:2] for row in output.sequences[:, prompt:].tolist()]  # decode steps pruned too
    plain, _, _ = generate_with_capture(loaded, encoded, None, 1)
    assert not torch.allclose(plain.first_logits, output.logits[0], atol=1e-4), "the pruned keys must matter"


@pytest.mark.parametrize("phase", ["cache", "prefill"])
def test_keeping_every_key_leaves_logits_bit_identical_to_plain_sdpa(tiny_model, phase):
    loaded = _loaded(tiny_model)
    encoded = _encoded(loaded, 3)
    info = loaded.info
    kept = allocate("uniform", 1.0, np.zeros((info["n_layers"], info["n_kv_heads"])))
    generation, _, _ = generate_with_capture(loaded, encoded, None, 3, interventions=[KVPrune(kept, "attention", phase)])
    plain = reference_generate(tiny_model, encoded, 3, attn_implementation="sdpa", output_logits=True)
    assert torch.equal(generation.first_logits, plain.logits[0])


# -- the sweep ----------------------------------------------------------------------------------------


def test_prune_sweep_on_the_toy_commits_conditions_and_equal_hand_counts(tmp_path, capsys):
    warehouse = str(tmp_path / "wh")
    assert run_cli(capsys, "extract", "--limit", "12", "--warehouse", warehouse, "--device", "cpu")[0] == 0
    args = (
        "prune",
        "--limit",
        "12",
        "--kv-share",
        "1,0.5,0.1",
        "--allocation",
        "score,uniform,random",
        "--seeds",
        "2",
        "--keep",
        "attention,stride",
        "--warehouse",
        warehouse,
        "--device",
        "cpu",
    )
    code, out, err = run_cli(capsys, *args)
    assert code == 0, err
    assert "wrote 17 condition(s)" in out  # full + 2 keeps x 2 shares x (score, uniform, 2 random)
    code, out, _ = run_cli(capsys, *args)
    assert code == 0 and "wrote 0 condition(s); 17 of 17 were already committed" in out
    with open_session(warehouse) as session:
        info = session.query("select n_layers, n_kv_heads from runs where kind = 'extract'").to_pylist()[0]
        extraction = {row["sample_idx"]: row["parsed"] for row in session.query("select sample_idx, parsed from samples").to_pylist()}
        results = session.query("select * from prune_results order by condition_id, sample_idx").to_pylist()
        conditions = {row["condition_id"]: row for row in session.query("select * from prune_conditions").to_pylist()}
        mart = {row["condition_id"]: row for row in session.query("select * from pruning_accuracy").to_pylist()}
    full = [row for row in results if row["condition_id"] == 0]
    assert {row["sample_idx"]: row["parsed"] for row in full} == extraction  # the full cache answers as the extraction did
    head_dim = 0
    for row in results:
        layers_heads = info["n_layers"] * info["n_kv_heads"]
        assert row["kv_keys_full"] == row["n_prompt_keys"] * layers_heads
        counts = budgets(np.array(conditions[row["condition_id"]]["kept_shares"]).reshape(info["n_layers"], info["n_kv_heads"]), row["n_image_keys"])
        assert row["kv_keys"] == (row["n_prompt_keys"] - row["n_image_keys"]) * layers_heads + counts.sum()
        assert row["kv_bytes"] * row["kv_keys_full"] == row["kv_bytes_full"] * row["kv_keys"]
        head_dim = row["kv_bytes_full"] // (row["kv_keys_full"] * 2 * 4)  # float32: 4 bytes a value
    assert head_dim * 2 * 4 * full[0]["kv_keys_full"] == full[0]["kv_bytes_full"] and head_dim >= 1
    by_sample_full = {row["sample_idx"]: row for row in full}
    for condition_id, row in mart.items():
        rows = [r for r in results if r["condition_id"] == condition_id and r["correct"] is not None]
        n_correct = sum(r["correct"] for r in rows)
        assert (row["n"], row["n_correct"]) == (len(rows), n_correct)
        assert row["accuracy"] == pytest.approx(n_correct / len(rows))
        assert row["changed"] == pytest.approx(sum(r["parsed"] != by_sample_full[r["sample_idx"]]["parsed"] for r in rows) / len(rows))
        assert row["correct_to_wrong"] == sum(by_sample_full[r["sample_idx"]]["correct"] and not r["correct"] for r in rows)
        assert row["kv_saving"] == pytest.approx(1 - sum(r["kv_bytes"] for r in rows) / sum(r["kv_bytes_full"] for r in rows))
    assert mart[0]["changed"] == 0 and mart[0]["kv_saving"] == 0 and mart[0]["mcnemar_p"] == 1


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (("--kv-share", "1.5"), "outside (0, 1]"),
        (("--allocation", "greedy"), "--allocation takes"),
        (("--keep", "first"), "--keep takes"),
        (("--floor", "2"), "--floor must"),
        (("--phase", "decode"), "--phase takes cache, prefill; got decode"),
    ],
)
def test_bad_prune_options_are_one_line(option, message, tmp_path, capsys):
    code, _, err = run_cli(capsys, "prune", *option, "--warehouse", str(tmp_path / "wh"))
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**16), st.sampled_from(["attention", "stride"]), st.integers(1, 3), st.integers(2, 14))
def test_the_kept_keys_equal_a_loop_over_heads_written_here(seed, keep, batch, n_keys):
    generator = torch.Generator().manual_seed(seed)
    query, key, _, _ = _layer_inputs(seed, batch=batch, n_keys=n_keys)
    image = torch.rand(batch, n_keys, generator=generator) < 0.6
    n_image = image.sum(dim=1)
    budgets_ = torch.stack([torch.randint(0, int(n) + 1, (2,), generator=generator) for n in n_image])
    kept = LayerPrune(budgets_, image, keep, n_kv_groups=2, phase="prefill")._choose(query, key, None, 8**-0.5)
    causal = torch.ones(n_keys, n_keys, dtype=torch.bool).tril()
    scores = torch.matmul(query[:, :, -1:], key.repeat_interleave(2, dim=1).transpose(-1, -2)) * 8**-0.5
    last = torch.softmax(scores.masked_fill(~causal[-1:], float("-inf")), dim=-1)[:, :, 0]  # [batch, head, key]
    for b in range(batch):
        positions = torch.nonzero(image[b]).flatten().tolist()
        for h in range(2):
            budget = int(budgets_[b, h])
            if keep == "attention":
                weights = last[b, 2 * h : 2 * h + 2].sum(0)
                expected = sorted(sorted(positions, key=lambda p: -float(weights[p]))[:budget])
            else:
                expected = [positions[(2 * k + 1) * len(positions) // (2 * budget)] for k in range(budget)] if budget else []
            assert torch.nonzero(kept[b, h] & image[b]).flatten().tolist() == expected
            assert bool(kept[b, h][~image[b]].all())


def test_score_budgets_follow_an_imported_duo_attention_file(tmp_path, tiny_gqa, capsys):
    warehouse = tmp_path / "wh"
    tsv = tmp_path / "duo.tsv"
    tsv.write_text("0.1\t0.9\n0.5\t0.3\n1\t0\n")  # [layer x KV head] of the tiny GQA model (3 layers, 2 KV heads)
    code, out, err = run_cli(capsys, "heads", "import", str(tsv), "--format", "duo-tsv", "--model", str(tiny_gqa), "--name", "duo", "--warehouse", str(warehouse))
    assert code == 0, err
    with open_session(warehouse) as session:
        ranking = session.query("select run_id from runs where kind = 'ranking'").to_pylist()[0]["run_id"]
    code, out, err = run_cli(
        capsys,
        "prune",
        "--model",
        str(tiny_gqa),
        "--limit",
        "3",
        "--kv-share",
        "1,0.25",
        "--allocation",
        "score,random",
        "--seeds",
        "1",
        "--ranking-run",
        ranking,
        "--warehouse",
        str(warehouse),
        "--device",
        "cpu",
    )
    assert code == 0, err
    with open_session(warehouse) as session:
        (row,) = session.query("select kept_shares, ranking_score, ranking_run_id from prune_conditions where allocation = 'score'").to_pylist()
    w = np.array([0.1, 0.9, 0.5, 0.3, 1.0, 0.0])  # each KV head's two query heads hold its score: their sum is 2 w, the same proportions
    assert np.allclose(row["kept_shares"], 0.1 * 0.25 + 0.9 * 0.25 * 6 * w / w.sum(), atol=1e-6)
    assert (row["ranking_score"], row["ranking_run_id"]) == ("imported", ranking)
    with open_session(warehouse) as session:
        (drawn_row,) = session.query("select kept_shares from prune_conditions where allocation = 'random'").to_pylist()
    drawn = np.random.default_rng(0).random((3, 4)).reshape(3, 2, 2).sum(axis=2).ravel()  # seed 0, a draw per query head, summed per KV head
    assert np.allclose(drawn_row["kept_shares"], 0.1 * 0.25 + 0.9 * 0.25 * 6 * drawn / drawn.sum(), atol=1e-6)
