"""Head-ranking files other tools read and write, as text: Retrieval_Head / SparseMM JSON and DuoAttention's
TSV. Writers turn a run's per-head scores into a file's text; parsers turn a file's text into a score per
query head of a model of a given shape. No model and no query here: ``queries.rankings.export_heads`` feeds
the writers from a mart, ``extract.ranking_import`` stores what the parsers read as a ranking run.

Formats:

- ``retrieval-json``: the JSON of Retrieval_Head (Wu et al., 2024) and SparseMM (ICCV 2025), one key
  ``"layer-head"`` per query head with the head's score in each sample: ``{"0-0": [0.1, 0.3], ...}``.
  Exported: the chosen head score per sample (samples without it left out). Imported: the mean of
  each head's list.
- ``duo-tsv``: DuoAttention's ``full_attention_heads.tsv``, which kvpress's ``DuoAttentionPress``
  reads: one line per layer, one tab-separated score per key-value head; DuoAttention loads it with
  numpy's ``loadtxt`` and clips it to [0, 1] (its own files hold small negatives: the released Mistral-7B file five, down to -1.2e-4),
  and reads ``config.json`` (``sink_size``, ``recent_size``) from the same folder. Exported: each
  key-value head's score is the mean over its query heads (a KV head's cache is shared by its group)
  of their mean scores, min-max scaled over the model to [0, 1] (the order is what matters), with a
  ``config.json`` beside it (``duo_config``). Imported: clipped to [0, 1] as DuoAttention does (how
  many values were clipped is reported), every query head takes its key-value head's score.

Every export names every head of the model, keys layer by layer and head by head (SparseMM reshapes the
JSON's key order into layers × heads), and a head without a usable score is refused rather than written
as an empty list (the other tools' mean of it is NaN).
"""

from __future__ import annotations

import json
import math
from typing import Any

from attnwh.core.errors import UsageError

FORMATS = ("retrieval-json", "duo-tsv")


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise UsageError(f"--format takes {' or '.join(FORMATS)}; got {fmt!r}")
    return fmt


DUO_CONFIG = {"sink_size": 128, "recent_size": 256}  # DuoAttention's own training settings (its released config.json files)


def write_heads(rows: list[dict[str, Any]], fmt: str) -> str:
    """The text of a ``retrieval-json`` or ``duo-tsv`` file from ``head_sample_scores`` rows (one per query head:
    ``layer``, ``head``, ``scores`` per sample, ``mean_score``, and the model's ``n_layers``, ``n_heads``, ``n_kv_heads``)."""
    check_format(fmt)
    rows = sorted(rows, key=lambda row: (row["layer"], row["head"]))
    n_layers, n_heads, n_kv_heads = rows[0]["n_layers"], rows[0]["n_heads"], rows[0]["n_kv_heads"] or rows[0]["n_heads"]
    present = {(row["layer"], row["head"]) for row in rows if row["scores"] and row["mean_score"] is not None}
    missing = [f"{layer}-{head}" for layer in range(n_layers) for head in range(n_heads) if (layer, head) not in present]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise UsageError(f"{len(missing)} of {n_layers * n_heads} heads have no score to export ({shown}): the other tools would average them to NaN")
    if fmt == "retrieval-json":
        return json.dumps({f"{row['layer']}-{row['head']}": [float(value) for value in row["scores"]] for row in rows}) + "\n"
    group = n_heads // n_kv_heads
    means: dict[tuple[int, int], list[float]] = {}
    for row in rows:
        means.setdefault((row["layer"], row["head"] // group), []).append(row["mean_score"])
    kv = {key: sum(values) / len(values) for key, values in means.items()}
    low, high = min(kv.values()), max(kv.values())
    scale = (high - low) or 1.0
    lines = ["\t".join(f"{(kv[(layer, h)] - low) / scale:.6f}" for h in range(n_kv_heads)) for layer in range(n_layers)]
    return "\n".join(lines) + "\n"


def duo_config(source: str) -> str:
    """The ``config.json`` DuoAttention reads beside a ``full_attention_heads.tsv`` (its attention-sink and
    recent-window sizes, its own defaults), noting where the scores came from."""
    return json.dumps({**DUO_CONFIG, "attnwh_source": source}, indent=1) + "\n"


def parse_heads(text: str, fmt: str, where: str, shape: tuple[int, int, int], label: str) -> tuple[dict[tuple[int, int], float], int]:
    """A file's text -> (the score of every query head of a model of ``shape`` (layers, query heads, KV heads),
    how many of the file's values were clipped as the tool that wrote it clips them)."""
    if check_format(fmt) == "retrieval-json":
        return parse_retrieval_json(text, where, shape, label), 0
    return parse_duo_tsv(text, where, shape, label)


def _shape_error(where: str, found: str, shape: tuple[int, int, int], label: str) -> UsageError:
    layers, heads, kv_heads = shape
    return UsageError(f"{where} holds {found}, but {label} has {layers} layers × {heads} heads ({kv_heads} key-value heads)")


def parse_retrieval_json(text: str, where: str, shape: tuple[int, int, int], label: str) -> dict[tuple[int, int], float]:
    """``{"layer-head": [scores]}`` -> the mean score of every query head; every head of the model must be there."""
    try:
        content = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{where}: not JSON ({exc.msg} at line {exc.lineno})") from exc
    if not isinstance(content, dict):
        raise UsageError(f'{where}: expected an object of "layer-head": [scores, ...]')
    scores: dict[tuple[int, int], float] = {}
    for key, values in content.items():
        layer, _, head = key.partition("-")
        if not (layer.isdigit() and head.isdigit()):
            raise UsageError(f'{where}: key {key[:40]!r} is not "layer-head"')
        if not isinstance(values, list) or not values or not all(isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) for value in values):
            raise UsageError(f"{where}: head {key} needs a non-empty list of finite numbers")
        scores[(int(layer), int(head))] = sum(values) / len(values)
    layers, heads, _ = shape
    expected = {(layer, head) for layer in range(layers) for head in range(heads)}
    if set(scores) != expected:
        found = f"{len(scores)} {'head' if len(scores) == 1 else 'heads'}"
        if scores:
            found += f" (layers 0..{max(layer for layer, _ in scores)}, heads 0..{max(head for _, head in scores)})"
        raise _shape_error(where, found, shape, label)
    return scores


def parse_duo_tsv(text: str, where: str, shape: tuple[int, int, int], label: str) -> tuple[dict[tuple[int, int], float], int]:
    """One line per layer of key-value head scores -> (the score of every query head (its KV head's), how many
    values lay outside [0, 1] and were clipped to it, as DuoAttention's loader clips them)."""
    rows, clipped = [], 0
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            values = [float(cell) for cell in line.strip().split("\t")]
        except ValueError as exc:
            raise UsageError(f"{where}:{number}: not tab-separated numbers") from exc
        if not all(math.isfinite(value) for value in values):
            raise UsageError(f"{where}:{number}: scores must be finite numbers")
        clipped += sum(not 0 <= value <= 1 for value in values)
        rows.append([min(max(value, 0.0), 1.0) for value in values])
    layers, heads, kv_heads = shape
    widths = {len(row) for row in rows}
    if len(rows) != layers or widths != {kv_heads}:
        found = f"{len(rows)} layers × {'/'.join(map(str, sorted(widths))) or 0} key-value heads"
        raise _shape_error(where, found, shape, label)
    group = heads // kv_heads
    return {(layer, head): rows[layer][head // group] for layer in range(layers) for head in range(heads)}, clipped
