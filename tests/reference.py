"""Independent references for the tests: transformers' own attention implementations on the same weights."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForImageTextToText, GenerationConfig


def reference_generate(folder: Path, encoded: dict[str, torch.Tensor], n_new: int, *, attn_implementation: str = "eager", **outputs):
    """Greedy ``generate`` of exactly ``n_new`` tokens (EOS does not stop it) with a stock attention implementation.

    The checkpoint's generation_config is replaced by a clean one: ``generate`` fills unset settings
    from it, and an ``eos_token_id`` of None given in a config object would be filled back in.
    """
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32, attn_implementation=attn_implementation).eval()
    pad = model.generation_config.pad_token_id
    model.generation_config = GenerationConfig(pad_token_id=pad if pad is not None else 0)
    with torch.inference_mode():
        return model.generate(**encoded, max_new_tokens=n_new, do_sample=False, eos_token_id=None, return_dict_in_generate=True, **outputs)
