"""Loading: the from_pretrained path, fail-fast on unsupported architectures and missing processors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from attnwh.core.errors import ModelError
from attnwh.extract.models import load_config, load_model, resolve_source


def test_unknown_architecture_fails_before_loading_weights(tmp_path):
    folder = tmp_path / "text-only"
    LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)).save_pretrained(folder)
    (folder / "model.safetensors").write_bytes(b"not weights")  # would fail loudly if it were read
    with pytest.raises(ModelError, match=r"LlamaForCausalLM is out of scope: its config marks no image positions by a token id"):
        load_config(resolve_source(str(folder)))


def test_model_folder_without_processor_is_a_clear_error(tmp_path, tiny_mha):
    folder = tmp_path / "no-processor"
    shutil.copytree(tiny_mha, folder)
    for name in ("processor_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (folder / name).unlink(missing_ok=True)
    with pytest.raises(ModelError, match="processor"):
        load_model(resolve_source(str(folder)), dtype=torch.float32, device=torch.device("cpu"))


def test_local_revision_changes_with_the_weights(tmp_path, tiny_mha):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_mha, copy)
    before = resolve_source(str(copy)).revision
    assert before == resolve_source(str(tiny_mha)).revision
    weights = bytearray((copy / "model.safetensors").read_bytes())
    weights[-1] ^= 0xFF  # same size, other content
    (copy / "model.safetensors").write_bytes(bytes(weights))
    assert resolve_source(str(copy)).revision != before


@pytest.mark.parametrize("name", ["generation_config.json", "tokenizer_config.json", "chat_template.jinja", "processor_config.json"])
def test_local_revision_changes_with_the_settings_a_run_reads(tmp_path, tiny_mha, name):
    """Where answers end (generation_config.json's EOS tokens), the prompt's tokens and the chat template change what a
    run computes, so a run made before an edit is not resumed after it (its revision is in the run's fingerprint)."""
    copy = tmp_path / "copy"
    shutil.copytree(tiny_mha, copy)
    before = resolve_source(str(copy)).revision
    (copy / "README.md").write_text("notes beside the model change nothing it computes\n")
    assert resolve_source(str(copy)).revision == before
    edited = copy / name
    if name == "generation_config.json":
        settings = json.loads(edited.read_text()) if edited.exists() else {}
        edited.write_text(json.dumps({**settings, "eos_token_id": [2, 40]}))
    else:
        assert edited.exists(), f"the tiny model has no {name}"
        edited.write_text(edited.read_text() + " ")
    assert resolve_source(str(copy)).revision != before


def test_loaded_model_reports_heads_from_the_config(tiny_gqa):
    loaded = load_model(resolve_source(str(tiny_gqa)), dtype=torch.float32, device=torch.device("cpu"))
    assert {k: loaded.info[k] for k in ("architecture", "n_layers", "n_heads", "n_kv_heads")} == {
        "architecture": "LlavaForConditionalGeneration",
        "n_layers": 3,
        "n_heads": 4,
        "n_kv_heads": 2,
    }
    assert loaded.processor.tokenizer.padding_side == "left"
