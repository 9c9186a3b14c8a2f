"""Head-ranking files other tools read and write, as text: Retrieval_Head / SparseMM JSON and DuoAttention's
TSV. Writers turn a run's per-head scores into a file's text; parsers turn a file's text into a score per
query head of a model of a given shape. No model and no query here: ``queries.rankings.export_heads`` feeds
the writers from a mart, ``extract.ranking_import`` stores what the parsers read as a ranking run.

Formats:

- ``retrieval-json``: the JSON of Retrieval_Head (Wu et al., 2024) and SparseMM (ICCV 2025), one key
  ``"layer-head"`` per query head with the head's score in each sample: ``{"0-0": [0.1, 0.3], ...}``.
  Exported: the chosen head score per sample (samples without it left out); a negative value (an
  attribution run's) is written as 0, as SparseMM gives each head its score's share of the sum (a
  negative score would be a negative cache budget), as ``attnwh prune --allocation score`` counts it.
  Imported: the mean of each head's list, as numpy's ``mean`` (the tools' own) computes it; a head
  named twice (``"0-0"`` and ``"00-0"`` too) is refused, as ``json`` would keep only the later.
- ``duo-tsv``: DuoAttention's ``full_attention_heads.tsv``, which kvpress's ``DuoAttentionPress``
  reads: one line per layer, one tab-separated score per key-value head; DuoAttention loads it with
  numpy's ``loadtxt`` and clips it to [0, 1] (its own files hold small negatives: the released Mistral-7B file five, down to -1.2e-4),
  and reads ``config.json`` (``sink_size``, ``recent_size``) from the same folder. Exported: each
  key-value head's score is the mean over its query heads (a KV head's cache is shared by its group)
  of their mean scores, min-max scaled over the model to [0, 1] (the order is what matters) and written
  in full (``%.18e``, as DuoAttention's own ``np.savetxt`` writes it: rounding would merge heads into ties),
  with a ``config.json`` beside it (``duo_config``). Imported: read line by line with numpy's ``loadtxt``
  (what it skips and refuses is skipped and refused), clipped to [0, 1] as DuoAttention does (how many
  values were clipped is reported), every query head takes its key-value head's score.

Every export names every head of the model, keys layer by layer and head by head (SparseMM reshapes the
JSON's key order into layers × heads), and a head without a usable score is refused rather than written
as an empty list (the other tools' mean of it is NaN).
"""

from __future__ import annotations

import io
import json
import math
import re
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from attnwh.core.errors import UsageError

FORMATS = ("retrieval-json", "duo-tsv")


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise UsageError(f"--format takes {' or '.join(FORMATS)}; got {fmt!r}")
    return fmt


DUO_CONFIG = {"sink_size": 128, "recent_size": 256}  # DuoAttention's own training settings (its released config.json files)


def write_heads(rows: list[dict[str, Any]], fmt: str, warn: Callable[[list[str]], None] | None = None) -> str:
    """The text of a ``retrieval-json`` or ``duo-tsv`` file from ``head_sample_scores`` rows (one per query head:
    ``layer``, ``head``, ``scores`` per sample, ``mean_score``, and the model's ``n_layers``, ``n_heads``, ``n_kv_heads``);
    ``warn`` is told how many negative values a ``retrieval-json`` holds as 0."""
    check_format(fmt)
    rows = sorted(rows, key=lambda row: (row["layer"], row["head"]))
    n_layers, n_heads, n_kv_heads = rows[0]["n_layers"], rows[0]["n_heads"], rows[0]["n_kv_heads"] or rows[0]["n_heads"]
    present = {(row["layer"], row["head"]) for row in rows if row["scores"] and row["mean_score"] is not None}
    missing = [f"{layer}-{head}" for layer in range(n_layers) for head in range(n_heads) if (layer, head) not in present]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise UsageError(f"{len(missing)} of {n_layers * n_heads} heads have no score to export ({shown}): the other tools would average them to NaN")
    if fmt == "retrieval-json":
        scores = {f"{row['layer']}-{row['head']}": [float(value) for value in row["scores"]] for row in rows}
        negative = sum(value < 0 for values in scores.values() for value in values)
        if negative and warn is not None:
            warn([f"wrote {negative} negative score(s) as 0: SparseMM gives each head its score's share of the sum (a negative one would be a negative cache budget)"])
        return json.dumps({key: [max(value, 0.0) for value in values] for key, values in scores.items()}) + "\n"
    group = n_heads // n_kv_heads
    means: dict[tuple[int, int], list[float]] = {}
    for row in rows:
        means.setdefault((row["layer"], row["head"] // group), []).append(row["mean_score"])
    kv = {key: float(np.mean(values)) for key, values in means.items()}
    low, high = min(kv.values()), max(kv.values())
    scale = (high - low) or 1.0
    lines = ["\t".join(f"{(kv[(layer, h)] - low) / scale:.18e}" for h in range(n_kv_heads)) for layer in range(n_layers)]
    return "\n".join(lines) + "\n"


def duo_config(source: str) -> str:
    """The ``config.json`` DuoAttention reads beside a ``full_attention_heads.tsv`` (its attention-sink and
    recent-window sizes, its own defaults), noting where the scores came from."""
    return json.dumps({**DUO_CONFIG, "attnwh_source": source}, indent=1) + "\n"


def is_duo_config(text: str) -> bool:
    """Whether a ``config.json`` holds what DuoAttention's ``load_attn_pattern`` reads from it: whole-number
    ``sink_size`` and ``recent_size``."""
    try:
        content = json.loads(text)
    except (ValueError, RecursionError):
        return False
    return isinstance(content, dict) and all(type(content.get(key)) is int and content[key] >= 0 for key in DUO_CONFIG)


def parse_heads(text: str, fmt: str, where: str, shape: tuple[int, int, int], label: str) -> tuple[dict[tuple[int, int], float], int]:
    """A file's text -> (the score of every query head of a model of ``shape`` (layers, query heads, KV heads),
    how many of the file's values were clipped as the tool that wrote it clips them)."""
    if check_format(fmt) == "retrieval-json":
        return parse_retrieval_json(text, where, shape, label), 0
    return parse_duo_tsv(text, where, shape, label)


def _shape_error(where: str, found: str, shape: tuple[int, int, int], label: str) -> UsageError:
    layers, heads, kv_heads = shape
    return UsageError(f"{where} holds {found}, but {label} has {layers} layers × {heads} heads ({kv_heads} key-value heads)")


class _JsonObject(list):
    """A JSON object's (key, value) pairs in the file's order, repeated keys kept (a dict keeps only the last)."""


_HEAD_KEY = re.compile(r"([0-9]{1,9})-([0-9]{1,9})")  # ASCII digits (str.isdigit also takes "³" and "٣"), few enough for int()


def parse_retrieval_json(text: str, where: str, shape: tuple[int, int, int], label: str) -> dict[tuple[int, int], float]:
    """``{"layer-head": [scores]}`` -> the mean score of every query head (numpy's, as the tools compute it); every
    head of the model must be there, once."""
    try:
        content = json.loads(text, object_pairs_hook=_JsonObject)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{where}: not JSON ({exc.msg} at line {exc.lineno})") from exc
    except RecursionError as exc:
        raise UsageError(f"{where}: not JSON that can be read (nested too deeply)") from exc
    if not isinstance(content, _JsonObject):
        raise UsageError(f'{where}: expected an object of "layer-head": [scores, ...]')
    scores: dict[tuple[int, int], float] = {}
    keys: dict[tuple[int, int], str] = {}
    for key, values in content:
        match = _HEAD_KEY.fullmatch(key)
        if match is None:
            raise UsageError(f'{where}: key {key[:40]!r} is not "layer-head"')
        head = (int(match[1]), int(match[2]))
        if head in keys:
            raise UsageError(f"{where}: head {head[0]}-{head[1]} is given twice (keys {keys[head]!r} and {key!r}): json keeps only the later")
        keys[head] = key
        scores[head] = _mean_score(values, f"{where}: head {key}")
    layers, heads, _ = shape
    expected = {(layer, head) for layer in range(layers) for head in range(heads)}
    if set(scores) != expected:
        found = f"{len(scores)} {'head' if len(scores) == 1 else 'heads'}"
        if scores:
            found += f" (layers 0..{max(layer for layer, _ in scores)}, heads 0..{max(head for _, head in scores)})"
        raise _shape_error(where, found, shape, label)
    return scores


def _mean_score(values: Any, where: str) -> float:
    """The mean of a head's list of scores as numpy's ``mean`` computes it (Retrieval_Head's and SparseMM's; a plain
    ``sum / len`` can differ in the last bit and reorder ties); a list that is not finite numbers, or whose mean is
    not finite, is refused."""
    if not (type(values) is list and values and all(_is_finite_number(value) for value in values)):
        raise UsageError(f"{where} needs a non-empty list of finite numbers")
    with np.errstate(over="ignore", invalid="ignore"):
        mean = float(np.mean(values))
    if not math.isfinite(mean):
        raise UsageError(f"{where}: the mean of its scores is not a finite number (their sum overflows)")
    return mean


def _is_finite_number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer beyond a float's range
        return False


def parse_duo_tsv(text: str, where: str, shape: tuple[int, int, int], label: str) -> tuple[dict[tuple[int, int], float], int]:
    """One line per layer of key-value head scores -> (the score of every query head (its KV head's), how many
    values lay outside [0, 1] and were clipped to it, as DuoAttention's loader clips them). Each line is read with
    numpy's ``loadtxt`` (DuoAttention's reader), one at a time to name a bad one: comments and empty lines skipped."""
    rows, clipped = [], 0
    for number, line in enumerate(io.StringIO(text, newline=None), start=1):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # loadtxt's "no data" on a comment or an empty line
                values = np.loadtxt([line], dtype=float, delimiter="\t", ndmin=2)
        except ValueError as exc:
            shown = line.rstrip("\n")[:40]
            raise UsageError(f"{where}:{number}: not tab-separated numbers as numpy's loadtxt reads them ({shown!r})") from exc
        if values.size == 0:
            continue
        if not np.isfinite(values).all():
            raise UsageError(f"{where}:{number}: scores must be finite numbers")
        clipped += int(((values < 0) | (values > 1)).sum())
        rows.append(np.clip(values[0], 0.0, 1.0).tolist())
    layers, heads, kv_heads = shape
    widths = {len(row) for row in rows}
    if len(rows) != layers or widths != {kv_heads}:
        found = f"{len(rows)} layers × {'/'.join(map(str, sorted(widths))) or 0} key-value heads"
        raise _shape_error(where, found, shape, label)
    group = heads // kv_heads
    return {(layer, head): rows[layer][head // group] for layer in range(layers) for head in range(heads)}, clipped
