"""The embedded default: the model and benchmark used when none is named."""

from __future__ import annotations

import os
from pathlib import Path

from attnwh.extract.toy.builder import TinyLlavaSpec, save_tiny_llava

DEFAULT_MODEL = "toy-llava-random"
DEFAULT_BENCHMARK = "toy-shapes"
DEFAULT_MODEL_VERSION = "1"
ENV_HOME = "ATTNWH_HOME"


def attnwh_home() -> Path:
    """Where attnwh keeps built models: ``$ATTNWH_HOME``, else ``$XDG_CACHE_HOME/attnwh``, else ``~/.cache/attnwh``."""
    if os.environ.get(ENV_HOME):
        return Path(os.environ[ENV_HOME])
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "attnwh"


def default_model_folder() -> Path:
    """The embedded random-weight toy LLaVA, built on first use (deterministic from its seed)."""
    folder = attnwh_home() / "models" / f"{DEFAULT_MODEL}-v{DEFAULT_MODEL_VERSION}"
    if not (folder / "config.json").is_file():
        save_tiny_llava(folder, TinyLlavaSpec(n_layers=4, n_heads=8, n_kv_heads=4, hidden_size=64, seed=0))
    return folder
