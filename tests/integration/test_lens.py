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


def _capped_config(folder, cap: float):
    import json

    path = folder / "config.json"
    config = json.loads(path.read_text())
    config["text_config"]["final_logit_softcapping"] = cap
    path.write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize(
    "name",
    [
        "gemma3_naming_a_cap_it_does_not_apply",  # Gemma3ForConditionalGeneration leaves its logits as lm_head gives them
        "paligemma2_applying_its_cap",  # PaliGemma (Gemma 2) caps them
    ],
)
def test_the_lens_gives_the_models_own_probabilities_whatever_its_config_names(name, tmp_path):
    """The lens's last layer against the model's own softmax at the same position (its own forward, separately),
    for ``prompt`` and ``gen1`` and for every generated step (``gen``): a config's final-logit cap is applied only
    where the model applies it (it was applied wherever the config named it: Gemma 3's probabilities were off)."""
    from tests.builders.tiny_gemma3 import save_tiny_gemma3
    from tests.builders.tiny_paligemma import save_tiny_paligemma

    if name.startswith("gemma3"):
        folder = _capped_config(save_tiny_gemma3(tmp_path / "model", seed=3, randomise_norms=True), 0.5)
    else:
        folder = save_tiny_paligemma(tmp_path / "model", seed=12, randomise_norms=True, text_model="gemma2")
    options = ExtractOptions(model=str(folder), limit=2, batch_size=1, device="cpu", queries=("prompt", "gen1", "gen"), max_new_tokens=3, command=["test"])
    run_extract(tmp_path / "wh", options)
    with open_session(tmp_path / "wh") as session:
        samples = session.query("select sample_idx, prompt from samples order by sample_idx").to_pylist()
        lens = session.query("select * from logit_lens order by query, sample_idx, layer").to_pylist()
        steps = session.query("select * from gen_lens order by sample_idx, step, layer").to_pylist()
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32).eval()
    assert model.config.get_text_config().final_logit_softcapping  # the config names a cap either way
    processor = AutoProcessor.from_pretrained(folder, backend="pil")
    benchmark = get_benchmark("toy-shapes").load(None, "test")
    for row in samples:
        index = row["sample_idx"]
        encoded = dict(processor(images=[benchmark[index].load_image()], text=[row["prompt"]], return_tensors="pt"))
        encoded.pop("labels", None)  # PaliGemma's processor adds them: no loss here
        with torch.no_grad():
            probs = torch.softmax(model(**encoded).logits[0, -1].float(), -1)
        prompt = [r for r in lens if r["sample_idx"] == index and r["query"] == "prompt"][-1]
        assert prompt["target_prob"] == pytest.approx(float(probs[prompt["target_token"]]), abs=1e-5)
        assert prompt["top_prob"] == pytest.approx(float(probs.max()), abs=1e-5)
        first_step = [r for r in steps if r["sample_idx"] == index and r["step"] == 0][-1]
        assert first_step["token_rank"] == 1  # every step's lens runs during generation, matched at its first step
        assert first_step["token_prob"] == pytest.approx(float(probs[prompt["target_token"]]), abs=1e-5)
        encoded["input_ids"] = torch.cat([encoded["input_ids"], torch.tensor([[prompt["target_token"]]])], dim=1)
        encoded["attention_mask"] = torch.ones_like(encoded["input_ids"])
        if "token_type_ids" in encoded:
            generated_type = 1 if name.startswith("paligemma2") else 0  # PaliGemma: 1 = the causal suffix (the prefix attends both ways)
            encoded["token_type_ids"] = torch.cat([encoded["token_type_ids"], torch.full((1, 1), generated_type, dtype=encoded["token_type_ids"].dtype)], dim=1)
        with torch.no_grad():
            probs = torch.softmax(model(**encoded).logits[0, -1].float(), -1)
        gen1 = [r for r in lens if r["sample_idx"] == index and r["query"] == "gen1"][-1]
        assert gen1["target_prob"] == pytest.approx(float(probs[gen1["target_token"]]), abs=1e-5)
        second_step = [r for r in steps if r["sample_idx"] == index and r["step"] == 1]
        assert not second_step or second_step[-1]["token_prob"] == pytest.approx(float(probs[gen1["target_token"]]), abs=1e-5)
