"""Logit lens against a direct computation: ``lm_head(norm(h))`` on transformers' own hidden states.

The tiny models have randomised norm weights, so a norm applied twice (or not at all) changes the
numbers. transformers hands over the last hidden state already normed (DESIGN §6); the reference
below decodes it without the norm, every other layer with it.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from attnwh.extract.benchmarks import get_benchmark
from attnwh.extract.run import ExtractOptions, run_extract
from attnwh.queries.library import open_session


def reference_lens(model, encoded, layer_count: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(target token [batch], per layer the rank of the target by sorting, 1 = top) at the last position."""
    norm, lm_head = model.model.language_model.norm, model.lm_head
    with torch.no_grad():
        out = model(**encoded, output_hidden_states=True)
        hidden = out.hidden_states
        assert len(hidden) == layer_count + 1
        logits = [lm_head(norm(hidden[layer][:, -1])) for layer in range(layer_count)] + [lm_head(hidden[layer_count][:, -1])]
    assert torch.allclose(logits[-1], out.logits[:, -1], atol=1e-5)
    target = logits[-1].argmax(-1)
    ranks = []
    for layer_logits in logits:
        order = layer_logits.argsort(dim=-1, descending=True)
        ranks.append((order == target[:, None]).float().argmax(-1) + 1)
    probs = [torch.softmax(layer_logits, -1).gather(-1, target[:, None]).squeeze(-1) for layer_logits in logits]
    return target, ranks, probs


@pytest.mark.parametrize("fixture", ["tiny_mha", "tiny_gqa"])
def test_logit_lens_equals_direct_computation(fixture, request, tmp_path):
    folder = request.getfixturevalue(fixture)
    run_extract(tmp_path / "wh", ExtractOptions(model=str(folder), limit=3, batch_size=3, device="cpu", command=["test"]))
    with open_session(tmp_path / "wh") as session:
        samples = session.query("select sample_idx, prompt from samples order by sample_idx").to_pylist()
        lens = session.query("select * from logit_lens order by query, sample_idx, layer").to_pylist()
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()
    processor = AutoProcessor.from_pretrained(folder, backend="pil")
    n_layers = model.config.text_config.num_hidden_layers
    assert len(lens) == 3 * 2 * (n_layers + 1)
    benchmark = get_benchmark("toy-shapes").load(None, "test")
    for row in samples:
        index = row["sample_idx"]
        encoded = dict(processor(images=[benchmark[index].load_image()], text=[row["prompt"]], return_tensors="pt"))
        stored = {query: [r for r in lens if r["sample_idx"] == index and r["query"] == query] for query in ("prompt", "gen1")}
        target, ranks, probs = reference_lens(model, encoded, n_layers)
        assert [r["target_token"] for r in stored["prompt"]] == [int(target[0])] * (n_layers + 1)
        assert [r["target_rank"] for r in stored["prompt"]] == [int(rank[0]) for rank in ranks]
        assert [r["target_prob"] for r in stored["prompt"]] == pytest.approx([float(p[0]) for p in probs], abs=1e-5)
        assert stored["prompt"][-1]["target_rank"] == 1 and stored["prompt"][-1]["top_token"] == int(target[0])
        # gen1: the prompt followed by the first generated token
        encoded["input_ids"] = torch.cat([encoded["input_ids"], target[:, None]], dim=1)
        encoded["attention_mask"] = torch.cat([encoded["attention_mask"], torch.ones_like(target)[:, None]], dim=1)
        target, ranks, probs = reference_lens(model, encoded, n_layers)
        assert [r["target_rank"] for r in stored["gen1"]] == [int(rank[0]) for rank in ranks]
        assert [r["target_prob"] for r in stored["gen1"]] == pytest.approx([float(p[0]) for p in probs], abs=1e-5)
        assert stored["gen1"][-1]["target_rank"] == 1
    assert any(r["target_rank"] > 1 for r in lens), "random weights: some early layer should disagree with the last"
