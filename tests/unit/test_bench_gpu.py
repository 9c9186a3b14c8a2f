"""The GPU bench's FLOP count: its parameter counts equal the model it builds (the part of an MFU
figure that a wrong shape would silently skew). Timings are not tested."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_gpu.py"


def _bench(monkeypatch):
    spec = importlib.util.spec_from_file_location("attnwh_bench_gpu", BENCH)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_flop_count_parameters_equal_the_built_model(tmp_path, monkeypatch):
    from transformers import LlavaForConditionalGeneration

    bench = _bench(monkeypatch)
    shape = bench.SCALES["tiny"]
    folder = bench.build(shape, tmp_path / "model", torch.device("cpu"), torch.float32)
    model = LlavaForConditionalGeneration.from_pretrained(folder)
    text = model.model.language_model
    assert bench.text_linear_params(shape) == sum(p.numel() for name, p in text.layers.named_parameters() if name.endswith("proj.weight"))
    layer = model.model.vision_tower.encoder.layers[0]
    assert bench.vision_layer_params(shape) == sum(p.numel() for name, p in layer.named_parameters() if name.endswith("weight") and "norm" not in name)
    projector = model.model.multi_modal_projector
    assert bench.projector_params(shape) == sum(p.numel() for name, p in projector.named_parameters() if name.endswith("weight"))
    assert model.config.vision_feature_layer == -2 and len(model.model.vision_tower.encoder.layers) == shape.vision_layers
    assert model.lm_head.weight.numel() == shape.text_hidden * shape.vocab
    # LLaVA-1.5-7B's published size: 7.06 B parameters (text 6.74 B with embeddings and lm_head, CLIP-L 0.30 B, projector 0.02 B)
    big = bench.SCALES["7b"]
    text_total = bench.text_linear_params(big) + 2 * big.vocab * big.text_hidden
    assert abs(text_total / 1e9 - 6.74) < 0.01
