"""What reuse does where a model does not allow it, and how stacked encoder outputs are laid out.

References: each condition on its own the plain way (a model whose replay raises must give exactly those rows,
with reuse turned off and the reason said); hand-made encoder outputs whose per-image order is known."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.utils import ModelOutput

from attnwh.extract import tiny_models
from attnwh.extract.conformance import VARIANTS
from attnwh.extract.discovery import describe
from attnwh.extract.forward import CAPTURE_ATTENTION
from attnwh.extract.masking import HeadMask
from attnwh.extract.models import LoadedModel, ModelSource
from attnwh.extract.reuse import compare_inputs, tile
from attnwh.extract.sweep import SweepSamples


def test_a_replay_that_raises_after_the_first_batch_turns_reuse_off_with_the_plain_rows():
    """Gemma 4 with KV sharing: its later layers read keys the skipped layers share, so a replayed prefix raises. On a
    Dask worker, the first group checked may replay nothing; a later group's replay must then run the plain way, not
    crash the task."""
    model_type, settings = VARIANTS["gemma4+kv_sharing"]
    config = tiny_models.tiny_config(model_type, settings)
    spec = describe(config)
    model = tiny_models.build_tiny(model_type, attn_implementation=spec.attn_implementation(CAPTURE_ATTENTION), settings=settings).eval()
    inputs = tiny_models.tiny_inputs(model_type, model)
    loaded = LoadedModel(ModelSource(model_type, "tiny", "tiny"), spec, model, None, torch.device("cpu"), torch.float32)
    samples, batch = SweepSamples.of_inputs(loaded, inputs, 3)
    samples.reuse_checked = True  # as after a first group with nothing to replay
    group = [[], [HeadMask(((spec.n_layers - 1, 0),), "zero")]]
    generations = samples.reused_generations(batch, group)
    assert samples.reuse_off is not None and samples.reuse_off.startswith("a replayed prefix failed (KeyError")
    for generation, interventions in zip(generations, group):
        plain = samples.plain_generation(batch, interventions)
        assert generation.answers == plain.answers and torch.equal(generation.first_logits, plain.first_logits)


@dataclass
class _Features(ModelOutput):
    last_hidden_state: torch.Tensor | None = None
    pooler_output: list | None = None
    deepstack_features: list | None = None


def test_per_image_lists_are_repeated_as_lists_and_a_wrong_order_is_seen():
    """Qwen3-Omni's encoder output: per-image features (``pooler_output``) and, per deepstack layer, a list of per-image
    features. A stack of two must read images a, b, a, b; each image's features repeated in place (a, a, b, b: what
    ``tile`` did before) must be caught by the first batch's input comparison, in a list or a dict."""
    a, b = torch.full((3, 2), 1.0), torch.full((3, 2), 2.0)
    output = _Features(last_hidden_state=torch.cat([a, b]), pooler_output=[a, b], deepstack_features=[[a, b], [a * 10, b * 10]])
    stacked = tile(output, 2)
    assert [item[0, 0].item() for item in stacked.pooler_output] == [1, 2, 1, 2]
    assert [[item[0, 0].item() for item in layer] for layer in stacked.deepstack_features] == [[1, 2, 1, 2], [10, 20, 10, 20]]
    assert torch.equal(stacked.last_hidden_state[:, 0], torch.tensor([1.0] * 3 + [2.0] * 3 + [1.0] * 3 + [2.0] * 3))
    plain = torch.cat([a, b])
    right, wrong = torch.cat([a, b, a, b]), torch.cat([a, a, b, b])
    assert compare_inputs({"deepstack": [plain]}, {"deepstack": [right]}, 2) is None
    assert compare_inputs({"deepstack": [plain]}, {"deepstack": [wrong]}, 2) == "deepstack[0]"
    assert compare_inputs({"deepstack": {5: plain}}, {"deepstack": {5: wrong}}, 2) == "deepstack[5]"  # Granite 4 Vision's layout
    assert compare_inputs({"deepstack": {5: plain}}, {"deepstack": {6: right}}, 2) == "deepstack"
