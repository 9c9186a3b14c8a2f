"""The embedded default: the model and benchmark used when none is named.

``toy-llava`` is the output of ``attnwh toy train`` with its default settings, shipped with attnwh
(about 2 MB), so that the first ``attnwh extract`` runs at once instead of training for minutes.
It loads through ``from_pretrained`` like any hub model.
"""

from __future__ import annotations

from difflib import get_close_matches
from pathlib import Path

from attnwh.core.errors import ModelError

DEFAULT_MODEL = "toy-llava"
DEFAULT_BENCHMARK = "toy-shapes"
CHECKPOINTS = Path(__file__).parent / "checkpoint"
CHECKPOINT = CHECKPOINTS / DEFAULT_MODEL
# the toy zoo (``attnwh toy train --size``): name -> shipped folder; toy-llava is the small one
TOY_MODELS = {DEFAULT_MODEL: CHECKPOINT, "toy-llava-small": CHECKPOINT, "toy-llava-medium": CHECKPOINTS / "toy-llava-medium", "toy-llava-large": CHECKPOINTS / "toy-llava-large"}
ZOO = ("toy-llava-small", "toy-llava-medium", "toy-llava-large")


def model_label(model: str | None) -> str:
    """The model name a run records for ``--model``: a shipped toy by its zoo name (``toy-llava``, the default, is
    ``toy-llava-small``: one model, one name in ``runs``, its ranking runs and the report), else the id or folder as given."""
    if model is None or model == DEFAULT_MODEL:
        return ZOO[0]
    return model


def default_model_folder(name: str = DEFAULT_MODEL) -> Path:
    """A shipped trained toy LLaVA (the small one unless ``name`` says another)."""
    folder = TOY_MODELS[name]
    if not (folder / "config.json").is_file():
        raise ModelError(f"the embedded toy model {name} is missing from {folder}; reinstall attnwh, or run `attnwh toy train --out DIR` and pass --model DIR")
    return folder


def model_location(model: str | None) -> str:
    """What ``--model`` names: a shipped toy for None or a toy's name, else the id or folder as given. A name that is
    neither a folder nor an owner/name hub id but nearly a toy's (``toy-lava``) is refused with the toy's name, rather
    than looked up on the hub (offline, tens of seconds of retries)."""
    if model is None:
        return str(default_model_folder())
    if model in TOY_MODELS:
        return str(default_model_folder(model))
    try:
        exists = Path(model).expanduser().exists()
    except OSError as exc:  # a name too long for the file system, a folder that cannot be read
        raise ModelError(f"cannot read --model {model[:80]}{'...' if len(model) > 80 else ''}: {exc.strerror or exc}") from exc
    close = get_close_matches(model, TOY_MODELS, n=1, cutoff=0.8) if "/" not in model and not exists else []
    if close:
        raise ModelError(f"unknown model {model!r}; did you mean {close[0]!r}? (`attnwh models` lists the shipped toys)")
    return model
