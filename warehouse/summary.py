"""Per-part rollups written at commit time, so that head- and layer-level marts read thousands of
rows instead of millions.

``head_summary`` holds, per (run, query, layer, head) of one part, the count, sums, sums of squares
and maxima of the head statistics. Sums over parts give exact means; the sample standard deviation
comes from the sums of squares (in float64, values in [0, 1]). Measured: over 10M ``head_metrics``
rows, aggregating the raw rows took ~0.6 s on 2 cores, the summaries a few milliseconds.

``head_ranks`` holds, per (run, query, score, rank, layer, head) of one part, in how many samples the
head held that place among the sample's heads, for the first ``RANKS_KEPT`` places. The detection
score of the ``visual_heads`` mart (the share of samples in which a head is among the sample's top k)
is then a sum over a few hundred thousand rows instead of a per-sample top-k over every row
(1.8 s → see bench/RESULTS.md at 10M rows). Scores and the order are the staging view's exactly:
the same float64 operations, ``ln`` from the C library (as DuckDB's), missing scores last, ties by
lower layer, then lower head.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from attnwh.warehouse.schema import HEAD_RANKS, HEAD_SUMMARY

_KEYS = ["run_id", "query", "layer", "head"]
RANKS_KEPT = 64  # places per sample kept in head_ranks; visual_heads with a larger k reads head_metrics


def head_scores(metrics: pa.Table) -> dict[str, np.ndarray]:
    """The per-row head scores of ``stg_head_metrics`` in float64 (NaN where the view has NULL)."""
    image = metrics.column("image_sum").to_numpy(zero_copy_only=False).astype(np.float64)
    n_image = metrics.column("n_image").to_numpy(zero_copy_only=False)
    entropy = metrics.column("image_entropy").to_numpy(zero_copy_only=False).astype(np.float64)
    # ln of each distinct token count through the C library, as DuckDB computes it, so that the
    # order of near-equal scores is the view's (numpy's vectorised log may differ in the last bit)
    counts, inverse = np.unique(n_image, return_inverse=True)
    logs = np.array([math.log(count) if count > 1 else math.nan for count in counts.tolist()], dtype=np.float64)
    with np.errstate(invalid="ignore"):
        concentration = 1 - entropy / logs[inverse.reshape(-1)]
    return {"image_sum": image, "concentration": concentration, "concentration_x_sum": concentration * image}


def summarise_head_metrics(metrics: pa.Table) -> pa.Table:
    """``head_summary`` rows of one part's ``head_metrics`` (concentration = 1 − entropy / ln n_image)."""
    if metrics.num_rows == 0:
        return HEAD_SUMMARY.empty_table()
    scores = head_scores(metrics)
    image, concentration = scores["image_sum"], scores["concentration"]
    has = ~np.isnan(concentration)
    weighted = np.where(has, scores["concentration_x_sum"], 0.0)
    values = pa.table(
        {
            **{key: metrics.column(key) for key in _KEYS},
            "image": image,
            "image_sq": image * image,
            "conc": pa.array(np.where(has, concentration, 0.0)),
            "conc_sq": pa.array(np.where(has, concentration * concentration, 0.0)),
            "conc_x": pa.array(weighted),
            "conc_x_sq": pa.array(weighted * weighted),
            "has_conc": pa.array(has.astype(np.int64)),
            "bos": pc.cast(metrics.column("bos_sum"), pa.float64()),
            "system": pc.cast(metrics.column("system_sum"), pa.float64()),
            "prompt": pc.cast(metrics.column("prompt_sum"), pa.float64()),
            "generated": pc.cast(metrics.column("generated_sum"), pa.float64()),
        }
    )
    grouped = values.group_by(_KEYS, use_threads=False).aggregate(
        [
            ("image", "count"),
            ("has_conc", "sum"),
            ("image", "sum"),
            ("image_sq", "sum"),
            ("image", "max"),
            ("conc", "sum"),
            ("conc_sq", "sum"),
            ("conc_x", "sum"),
            ("conc_x_sq", "sum"),
            ("bos", "sum"),
            ("system", "sum"),
            ("prompt", "sum"),
            ("generated", "sum"),
        ]
    )
    renamed = {
        "image_count": "n",
        "has_conc_sum": "n_concentration",
        "image_sum": "sum_image",
        "image_sq_sum": "sumsq_image",
        "image_max": "max_image",
        "conc_sum": "sum_concentration",
        "conc_sq_sum": "sumsq_concentration",
        "conc_x_sum": "sum_concentration_x_sum",
        "conc_x_sq_sum": "sumsq_concentration_x_sum",
        "bos_sum": "sum_bos",
        "system_sum": "sum_system",
        "prompt_sum": "sum_prompt",
        "generated_sum": "sum_generated",
    }
    grouped = grouped.rename_columns([renamed.get(name, name) for name in grouped.column_names])
    return grouped.select(HEAD_SUMMARY.names).cast(HEAD_SUMMARY).sort_by([(key, "ascending") for key in _KEYS[1:]])


def rank_head_metrics(metrics: pa.Table, kept: int = RANKS_KEPT) -> pa.Table:
    """``head_ranks`` rows of one part's ``head_metrics``: for every score, how often each head held
    each of the first ``kept`` places among its sample's heads (per run, sample and query)."""
    if metrics.num_rows == 0:
        return HEAD_RANKS.empty_table()
    sample = metrics.column("sample_idx").to_numpy(zero_copy_only=False)
    layer = metrics.column("layer").to_numpy(zero_copy_only=False)
    head = metrics.column("head").to_numpy(zero_copy_only=False)
    run_code = pc.dictionary_encode(metrics.column("run_id")).combine_chunks().indices.to_numpy(zero_copy_only=False)
    query_code = pc.dictionary_encode(metrics.column("query")).combine_chunks().indices.to_numpy(zero_copy_only=False)
    # one group per (run, sample, query); groups in a fixed order, the rows of each in rank order
    _, group = np.unique(np.stack([run_code, sample, query_code]), axis=1, return_inverse=True)
    group = group.reshape(-1)
    tables = []
    for score, values in head_scores(metrics).items():
        key = np.where(np.isnan(values), -1e300, values)  # COALESCE(score, -1e300): missing scores last
        order = np.lexsort((head, layer, -key, group))
        ordered_group = group[order]
        starts = np.flatnonzero(np.r_[True, ordered_group[1:] != ordered_group[:-1]])
        place = np.arange(order.size) - np.repeat(starts, np.diff(np.r_[starts, order.size])) + 1
        kept_places = place <= kept
        keep = pa.array(order[kept_places])
        places = pa.table(
            {
                "run_id": metrics.column("run_id").take(keep),
                "query": metrics.column("query").take(keep),
                "rank": pa.array(place[kept_places].astype(np.int16)),
                "layer": metrics.column("layer").take(keep),
                "head": metrics.column("head").take(keep),
                "n": pa.array(np.ones(len(keep), dtype=np.int32)),
            }
        )
        grouped = places.group_by(["run_id", "query", "rank", "layer", "head"], use_threads=False).aggregate([("n", "sum")])
        grouped = grouped.rename_columns(["n" if name == "n_sum" else name for name in grouped.column_names])
        tables.append(grouped.append_column("score", pa.array([score] * grouped.num_rows, pa.string())))
    ranks = pa.concat_tables(tables).select(HEAD_RANKS.names).cast(HEAD_RANKS)
    return ranks.sort_by([(name, "ascending") for name in ("query", "score", "rank", "layer", "head")])
