"""The embedded default: the model and benchmark used when none is named.

``toy-llava`` is the output of ``attnwh toy train`` with its default settings, shipped with attnwh
(about 2 MB), so that the first ``attnwh extract`` runs at once instead of training for minutes.
It loads through ``from_pretrained`` like any hub model.
"""

from __future__ import annotations

from pathlib import Path

from attnwh.errors import ModelError

DEFAULT_MODEL = "toy-llava"
DEFAULT_BENCHMARK = "toy-shapes"
CHECKPOINT = Path(__file__).parent / "checkpoint" / DEFAULT_MODEL


def default_model_folder() -> Path:
    """The shipped trained toy LLaVA."""
    if not (CHECKPOINT / "config.json").is_file():
        raise ModelError(f"the embedded toy model is missing from {CHECKPOINT}; reinstall attnwh, or run `attnwh toy train --out DIR` and pass --model DIR")
    return CHECKPOINT


def model_location(model: str | None) -> str:
    """What ``--model`` names: the embedded toy for None or ``toy-llava``, else the id or folder as given."""
    return str(default_model_folder()) if model in (None, DEFAULT_MODEL) else model
