"""Arrow schemas of the warehouse tables and their versions.

Every Parquet file carries ``run_id`` as a column and its table name and schema version in its
metadata; commit records repeat the version so readers can check it without opening files.
"""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 2
META_TABLE = b"attnwh.table"
META_VERSION = b"attnwh.schema_version"
META_DEFINITIONS = b"attnwh.definitions"  # rollup files: the definitions' version they were built from (also a column)

# an answer's object words, counted as AMBER's scoring script counts them (null: the benchmark has no object
# annotations). CHAIR = Σ hallucinated / Σ object_mentions, Cover = Σ truth_mentioned / Σ truth_objects, Hal = the
# share of answers with a hallucinated object, Cog = Σ hallu_mentioned / Σ hallu_objects (queries: stg_object_scores)
OBJECT_COUNTS: tuple[tuple[str, pa.DataType], ...] = (
    ("object_mentions", pa.int32()),  # object words of the benchmark's vocabulary in the answer (every occurrence)
    ("hallucinated", pa.int32()),  # of those, naming an object not in the image
    ("truth_objects", pa.int32()),  # objects annotated as in the image
    ("truth_mentioned", pa.int32()),  # of those, named by the answer
    ("hallu_objects", pa.int32()),  # objects annotated as plausible but absent (AMBER's hallu list)
    ("hallu_mentioned", pa.int32()),  # of those, named by the answer
)

SAMPLES = pa.schema(
    [
        ("run_id", pa.string()),
        ("sample_idx", pa.int64()),
        ("sample_key", pa.string()),
        ("status", pa.string()),  # 'ok' | 'error'
        ("error", pa.string()),
        ("prompt", pa.string()),
        ("question", pa.string()),
        ("hint", pa.string()),
        ("choices", pa.list_(pa.string())),
        ("gold", pa.string()),
        ("category", pa.string()),
        ("group_key", pa.string()),  # samples scored together (MMBench circular: the question's index)
        ("output_text", pa.string()),
        ("parser", pa.string()),
        ("parser_version", pa.string()),
        ("parsed", pa.string()),  # an option letter, 'yes' / 'no', or 'invalid'
        ("correct", pa.bool_()),
        ("option_logprobs", pa.list_(pa.float32())),  # log-probability of each option letter at the answer position
        ("n_tokens", pa.int32()),  # prompt tokens without padding
        ("n_image", pa.int32()),
        ("image_start", pa.int32()),  # first image position, counted from the first real token
        ("image_end", pa.int32()),  # one past the last image position
        ("image_sha256", pa.string()),
        ("n_region", pa.int32()),  # image positions inside the question's boxes; null without boxes
        *OBJECT_COUNTS,
    ]
)

HEAD_METRICS = pa.schema(
    [
        ("run_id", pa.string()),
        ("sample_idx", pa.int64()),
        ("query", pa.string()),  # 'prompt' | 'gen1'
        ("layer", pa.int16()),
        ("head", pa.int16()),
        ("n_image", pa.int32()),  # the sample's image tokens, repeated here so that concentration needs no join
        ("image_sum", pa.float32()),
        ("image_entropy", pa.float32()),
        ("image_max", pa.float32()),
        ("image_argmax", pa.int32()),
        ("bos_sum", pa.float32()),
        ("system_sum", pa.float32()),
        ("prompt_sum", pa.float32()),
        ("generated_sum", pa.float32()),
        ("region_sum", pa.float32()),  # null without boxes
        ("region_entropy", pa.float32()),
        ("region_hit", pa.float32()),  # 1 when the most-attended image token lies in the boxes, else 0; null without boxes
    ]
)

HEAD_METRICS_SORT = [("query", "ascending"), ("layer", "ascending"), ("head", "ascending"), ("sample_idx", "ascending")]

LOGIT_LENS = pa.schema(
    [
        ("run_id", pa.string()),
        ("sample_idx", pa.int64()),
        ("query", pa.string()),  # 'prompt' | 'gen1'
        ("layer", pa.int16()),  # 0 = embeddings, ℓ = output of decoder layer ℓ - 1; n_layers = the model's own logits
        ("target_token", pa.int32()),  # the model's final top-1 token at this position
        ("target_text", pa.string()),
        ("target_rank", pa.int32()),  # 1 = top
        ("target_prob", pa.float32()),
        ("top_token", pa.int32()),  # this layer's own top-1 token
        ("top_text", pa.string()),
        ("top_prob", pa.float32()),
    ]
)

LOGIT_LENS_SORT = [("query", "ascending"), ("layer", "ascending"), ("sample_idx", "ascending")]

# Every generated position (``--queries gen``): step t is the row of forward pass t, the one that produced generated
# token t (0-based; step 0 is the ``prompt`` row, step 1 the ``gen1`` row). Sorted by sample, step, layer, head:
# the integer columns run in long repeating stretches that Parquet's dictionary and run-length encodings store
# in a few bytes per row.
GEN_METRICS = pa.schema(
    [
        ("run_id", pa.string()),
        ("sample_idx", pa.int64()),
        ("step", pa.int16()),
        *((name, HEAD_METRICS.field(name).type) for name in HEAD_METRICS.names if name not in ("run_id", "sample_idx", "query")),
    ]
)

GEN_METRICS_SORT = [("sample_idx", "ascending"), ("step", "ascending"), ("layer", "ascending"), ("head", "ascending")]

# one row per generated token: what each step produced, the word it belongs to and what that word names
GEN_TOKENS = pa.schema(
    [
        ("run_id", pa.string()),
        ("sample_idx", pa.int64()),
        ("step", pa.int16()),
        ("token_id", pa.int32()),
        ("token_text", pa.string()),  # the tokenizer's own spelling of the token
        ("eos", pa.bool_()),  # the token that ended the answer
        ("word_index", pa.int16()),  # the word of the answer the token belongs to (0-based); null: no word (space, punctuation)
        ("word", pa.string()),  # that word as written (a multi-word object: the whole phrase)
        ("word_start", pa.bool_()),  # the word's first token: the step at which the model chose the word
        ("object", pa.string()),  # the object the word names (the benchmark's vocabulary); null: none
        ("object_status", pa.string()),  # 'grounded' | 'hallucinated' | 'safe' (named, never counted as a hallucination); null
    ]
)

# the logit lens of every generated token: its rank and probability at every layer of the step that produced it
GEN_LENS = pa.schema(
    [
        ("run_id", pa.string()),
        ("sample_idx", pa.int64()),
        ("step", pa.int16()),
        ("layer", pa.int16()),  # 0 = embeddings, ℓ = output of decoder layer ℓ - 1; n_layers = the model's own logits
        ("token_rank", pa.int32()),  # 1 = top: the token this step generated, ranked by this layer's lens
        ("token_prob", pa.float32()),
    ]
)

GEN_LENS_SORT = [("sample_idx", "ascending"), ("step", "ascending"), ("layer", "ascending")]

# per part, step bucket (``step_bucket`` in definitions.sql), kind of token, layer and summarised value: the rollup of
# ``gen_metrics`` that attention-by-step marts read (``summarise_gen_metrics`` in rollups.sql; all the layer's heads)
GEN_SCORES = pa.schema(
    [
        ("run_id", pa.string()),
        ("step_bucket", pa.int16()),  # the first step of the bucket: 0, 1, 2, 4, 8, 16, ...
        ("token_kind", pa.string()),  # 'grounded' | 'hallucinated' (the first token of an object word) | 'other'
        ("layer", pa.int16()),
        ("score", pa.string()),
        ("n", pa.int64()),  # head × token values
        ("total", pa.float64()),
        ("total_sq", pa.float64()),
        ("max_value", pa.float64()),
        ("definitions", pa.string()),
    ]
)

# per part, step bucket, kind of object word, layer, head and summarised value: the rollup of ``gen_metrics`` at the first
# token of grounded and hallucinated object words that per-head marts read (``summarise_gen_heads`` in rollups.sql), a
# sample as the unit (its mean over its words of the kind in the bucket)
GEN_HEAD_SCORES = pa.schema(
    [
        ("run_id", pa.string()),
        ("step_bucket", pa.int16()),  # the first step of the bucket: 0, 1, 2, 4, 8, 16, ...
        ("token_kind", pa.string()),  # 'grounded' | 'hallucinated'
        ("layer", pa.int16()),
        ("head", pa.int16()),
        ("score", pa.string()),
        ("n", pa.int64()),  # samples with a word of the kind in the bucket
        ("n_tokens", pa.int64()),  # the words (their first tokens)
        ("total", pa.float64()),  # of the samples' means
        ("total_sq", pa.float64()),
        ("total_step", pa.float64()),  # of the samples' mean steps (of those words), their squares, and their products with the means
        ("total_step_sq", pa.float64()),
        ("total_step_value", pa.float64()),
        ("max_value", pa.float64()),
        ("definitions", pa.string()),
    ]
)

# Sweeps (``attnwh mask``, ``attnwh prune``, any intervention): one condition table and one result table for
# every kind. A condition's own settings are the intervention's (JSON, typed by the kind's staging view);
# condition 0 of a run is its baseline, and every condition is compared with it on the same samples.
SWEEP_CONDITIONS = pa.schema(
    [
        ("run_id", pa.string()),
        ("condition_id", pa.int32()),  # 0 = the baseline (no intervention)
        ("kind", pa.string()),  # 'mask' | 'prune' | ...: the intervention
        ("ranking_run_id", pa.string()),  # the run whose head scores chose the heads or budgets (null: none did)
        ("ranking_score", pa.string()),  # the head score of that ranking (head_score_names(), or 'imported')
        ("heads", pa.list_(pa.struct([("layer", pa.int16()), ("head", pa.int16())]))),  # the heads the condition acts on
        ("settings", pa.string()),  # JSON object: the intervention's settings (mask: strategy, stage, k, ...; prune: allocation, kv_share, ...)
    ]
)

# a sweep's answer to one sample under one condition: how it went, the text, the parsed answer and its scoring
SWEEP_ANSWER: tuple[tuple[str, pa.DataType], ...] = (
    ("status", pa.string()),  # 'ok' | 'error'
    ("error", pa.string()),
    ("gold", pa.string()),
    ("output_text", pa.string()),
    ("parser", pa.string()),
    ("parser_version", pa.string()),
    ("parsed", pa.string()),
    ("correct", pa.bool_()),
    ("option_logprobs", pa.list_(pa.float32())),
    *OBJECT_COUNTS,
)

# one row per condition and sample: the answer, and the KV cache the condition's heads hold
SWEEP_RESULTS = pa.schema(
    [
        ("run_id", pa.string()),
        ("condition_id", pa.int32()),
        ("sample_idx", pa.int64()),
        ("sample_key", pa.string()),
        *SWEEP_ANSWER,
        ("n_prompt_keys", pa.int32()),  # keys of the prompt (padding excluded)
        ("n_image_keys", pa.int32()),
        ("kv_keys", pa.int64()),  # keys the condition's cache holds, summed over layers and KV heads
        ("kv_keys_full", pa.int64()),  # the same for the full cache
        ("kv_bytes", pa.int64()),  # kv_keys × head_dim × 2 (key and value) × bytes per value
        ("kv_bytes_full", pa.int64()),
    ]
)

# Legacy: sweeps written before the sweep tables (read, never written; stg_sweep_* map them).
MASK_CONDITIONS = pa.schema(
    [
        ("run_id", pa.string()),
        ("condition_id", pa.int32()),  # 0 = the unmasked baseline
        ("strategy", pa.string()),  # 'none' | 'top' | 'random' | 'bottom'
        ("stage", pa.string()),  # 'early' | 'mid' | 'late' | 'all'
        ("k", pa.int32()),  # heads masked
        ("fraction", pa.float32()),  # k / all heads of the model
        ("seed", pa.int32()),  # random strategy only
        ("mode", pa.string()),  # 'zero' | 'mean' | 'paper'
        ("ranking_run_id", pa.string()),  # the extraction run that ranked the heads
        ("ranking_metric", pa.string()),
        ("heads", pa.list_(pa.struct([("layer", pa.int16()), ("head", pa.int16())]))),
    ]
)

MASK_RESULTS = pa.schema([("run_id", pa.string()), ("condition_id", pa.int32()), ("sample_idx", pa.int64()), ("sample_key", pa.string()), ("mode", pa.string()), *SWEEP_ANSWER])

# one row per pruning condition of a prune run (``attnwh prune``): condition 0 keeps every key (the reference)
PRUNE_CONDITIONS = pa.schema(
    [
        ("run_id", pa.string()),
        ("condition_id", pa.int32()),  # 0 = full (no pruning)
        ("allocation", pa.string()),  # 'full' | 'uniform' | 'score' | 'random'
        ("kv_share", pa.float32()),  # share of all image KV kept (the mean of kept_shares)
        ("keep", pa.string()),  # 'attention' | 'stride': which image keys a head keeps within its budget
        ("floor", pa.float32()),  # score and random: every KV head's floor, as a share of kv_share
        ("seed", pa.int32()),  # random only
        ("ranking_run_id", pa.string()),  # score: the run whose head scores set the budgets
        ("ranking_score", pa.string()),
        ("kept_shares", pa.list_(pa.float32())),  # per (layer, KV head), row-major: the share of image keys kept
    ]
)

# one row per pruning condition and sample (legacy): the shape the sweep results took over
PRUNE_RESULTS = SWEEP_RESULTS

PLAN = pa.schema([("sample_idx", pa.int64()), ("sample_key", pa.string()), ("part_id", pa.int32())])

# per part, query, layer, head and summarised value (``summarised_names()``: the head scores, then the segments'
# attention mass): the part's samples that have it, the sum and sum of squares of its values and the largest
# (``summarise_head_metrics`` in warehouse/sql/rollups.sql). Long: a new score adds rows, not columns.
HEAD_SCORES = pa.schema(
    [
        ("run_id", pa.string()),
        ("query", pa.string()),
        ("layer", pa.int16()),
        ("head", pa.int16()),
        ("score", pa.string()),  # a name of summarised_names()
        ("n", pa.int64()),  # sample rows with a value
        ("total", pa.float64()),
        ("total_sq", pa.float64()),
        ("max_value", pa.float64()),
        ("definitions", pa.string()),  # the version of the definitions it was built from
    ]
)

# Legacy: the wide rollup of parts written before HEAD_SCORES (a column of sums per score), read never
# (its definitions' version is not the current one: staging recomputes such runs from head_metrics).
HEAD_SUMMARY = pa.schema(
    [
        ("run_id", pa.string()),
        ("query", pa.string()),
        ("layer", pa.int16()),
        ("head", pa.int16()),
        ("n", pa.int64()),  # sample rows
        ("n_concentration", pa.int64()),  # rows with a concentration (n_image > 1)
        ("sum_image", pa.float64()),
        ("sumsq_image", pa.float64()),
        ("max_image", pa.float64()),
        ("sum_concentration", pa.float64()),
        ("sumsq_concentration", pa.float64()),
        ("sum_concentration_x_sum", pa.float64()),
        ("sumsq_concentration_x_sum", pa.float64()),  # null in parts written before it was added
        ("sum_bos", pa.float64()),
        ("sum_system", pa.float64()),
        ("sum_prompt", pa.float64()),
        ("sum_generated", pa.float64()),
        ("n_region_hit", pa.int64()),  # rows with region_hit (samples with boxes); null in parts written before it
        ("sum_region_hit", pa.float64()),
        ("sumsq_region_hit", pa.float64()),
        ("definitions", pa.string()),  # the version of the definitions it was built from (null: parts older than versions)
    ]
)

# per part, query, score and head: in how many of the part's samples the head held each of the first
# ``ranks_kept()`` places of that sample's heads (``rank_head_metrics`` in warehouse/sql/rollups.sql)
HEAD_RANKS = pa.schema(
    [
        ("run_id", pa.string()),
        ("query", pa.string()),
        ("score", pa.string()),  # a name of head_score_names()
        ("rank", pa.int16()),  # 1 = the sample's best head by this score (ties: lower layer, then lower head)
        ("layer", pa.int16()),
        ("head", pa.int16()),
        ("n", pa.int32()),  # samples of the part in which the head held this rank
        ("definitions", pa.string()),  # the version of the definitions it was built from
    ]
)

# the runs view: one row per run, from RUN.json and the commit log (``attnwh.warehouse.runs.runs_table``)
RUNS = pa.schema(
    [
        ("run_id", pa.string()),
        ("kind", pa.string()),
        ("model", pa.string()),
        ("benchmark", pa.string()),
        ("split", pa.string()),
        ("created", pa.string()),
        ("fingerprint", pa.string()),
        ("n_samples", pa.int64()),
        ("n_parts", pa.int64()),
        ("parts_committed", pa.int64()),
        ("complete", pa.bool_()),
        ("architecture", pa.string()),
        ("n_layers", pa.int32()),
        ("n_heads", pa.int32()),
        ("n_kv_heads", pa.int32()),
        ("n_decoder_layers", pa.int32()),  # the logit lens's layers (n_layers but in a hybrid model, whose other layers are not attention)
        ("dtype", pa.string()),
        ("prompt_format", pa.string()),
        ("prompt_style", pa.string()),
        ("device", pa.string()),
        ("spec", pa.string()),
        ("path", pa.string()),
        ("part_unit", pa.string()),  # what a part holds: 'sample' (extract, derived), 'condition' (mask, prune, attribution), null (ranking)
    ]
)

DERIVED_VALUE_COLUMNS = ("topk_mass", "image_sum_without_sinks", "region_sum", "region_entropy")  # one or two per statistic

# statistics recomputed from a run's raw rows by ``attnwh recompute`` (extract/recompute.py): one row per
# (sample, query, layer, head); each derived run fills the columns of its statistic, the rest are null
DERIVED_METRICS = pa.schema(
    [
        ("run_id", pa.string()),  # the derived run
        ("source_run_id", pa.string()),  # the extraction run whose rows it read (joins head_metrics.run_id)
        ("name", pa.string()),  # the view it is read through
        ("sample_idx", pa.int64()),
        ("query", pa.string()),
        ("layer", pa.int16()),
        ("head", pa.int16()),
        *((column, pa.float32()) for column in DERIVED_VALUE_COLUMNS),
    ]
)

# the image tokens found to be sinks, per sample and query (statistic image_sum_without_sinks)
DERIVED_SINKS = pa.schema(
    [
        ("run_id", pa.string()),
        ("source_run_id", pa.string()),
        ("name", pa.string()),
        ("sample_idx", pa.int64()),
        ("query", pa.string()),
        ("n_sinks", pa.int32()),
        ("sink_positions", pa.list_(pa.int32())),  # indices among the sample's image tokens, ascending
    ]
)

# a head ranking imported from a file (``attnwh heads import``): one row per query head of the model
IMPORTED_RANKINGS = pa.schema([("run_id", pa.string()), ("layer", pa.int16()), ("head", pa.int16()), ("score", pa.float64())])

# what head attribution predicts, per sweep condition and sample (written by sweeps asked for targets: attnwh attribute)
SWEEP_TARGETS = pa.schema(
    [
        ("run_id", pa.string()),
        ("condition_id", pa.int32()),
        ("sample_idx", pa.int64()),
        ("gold_logprob", pa.float64()),  # log-probability of the gold option at the answer position (any single token starting it)
        ("gold_margin", pa.float64()),  # that, less the best wrong option's (null with one option)
    ]
)

# a head attribution (attnwh attribute): one row per query head, its causal importance (the drop of the target
# when the head is ablated: positive = the head helps the gold answer) and the uncertainty of that estimate
HEAD_ATTRIBUTIONS = pa.schema(
    [
        ("run_id", pa.string()),
        ("layer", pa.int16()),
        ("head", pa.int16()),
        ("score", pa.float64()),
        ("std_error", pa.float64()),  # patterns: sqrt(var of per-sample fits / S + var over a bootstrap of the patterns); single, gradient: standard error over samples
        ("ci_low", pa.float64()),  # 95% interval: score ± t(0.975, df) standard errors (patterns: df by Welch-Satterthwaite; single, gradient: S - 1); null for one sample
        ("ci_high", pa.float64()),
    ]
)

# one row per attribution run: the method's settings and how well its fit predicts (patterns only)
ATTRIBUTION_FITS = pa.schema(
    [
        ("run_id", pa.string()),
        ("method", pa.string()),  # patterns | single | gradient
        ("ablation", pa.string()),  # zero | mean
        ("target", pa.string()),  # logprob | margin
        ("fit", pa.string()),  # ridge | lasso | ols (patterns), null otherwise
        ("alpha", pa.float64()),  # the regularisation strength used (chosen by cross-validation unless given)
        ("n_conditions", pa.int32()),  # patterns or single-head ablations (0: gradient)
        ("n_samples", pa.int32()),  # samples with a target
        ("r2_heldout", pa.float64()),  # R² of the fit on held-out patterns
        ("spearman_heldout", pa.float64()),  # rank correlation of predicted and observed change on held-out patterns
        ("r2_train", pa.float64()),
        # how std_error, ci_low and ci_high were drawn: 't over patterns and samples' (patterns: Student's t with the
        # bootstrap's standard error), 't over samples' (single, gradient); 'patterns and samples' in older patterns
        # fits (the bootstrap's percentiles, under-covering with few samples), null in fits written before it was
        # recorded, whose bootstrap resampled the patterns only: stg_head_attributions leaves both out
        ("interval", pa.string()),
    ]
)

TABLES: dict[str, pa.Schema] = {
    "samples": SAMPLES,
    "head_metrics": HEAD_METRICS,
    "head_scores": HEAD_SCORES,
    "head_summary": HEAD_SUMMARY,
    "head_ranks": HEAD_RANKS,
    "logit_lens": LOGIT_LENS,
    "gen_metrics": GEN_METRICS,
    "gen_tokens": GEN_TOKENS,
    "gen_lens": GEN_LENS,
    "gen_scores": GEN_SCORES,
    "gen_head_scores": GEN_HEAD_SCORES,
    "sweep_conditions": SWEEP_CONDITIONS,
    "sweep_results": SWEEP_RESULTS,
    "mask_conditions": MASK_CONDITIONS,
    "mask_results": MASK_RESULTS,
    "prune_conditions": PRUNE_CONDITIONS,
    "prune_results": PRUNE_RESULTS,
    "derived_metrics": DERIVED_METRICS,
    "derived_sinks": DERIVED_SINKS,
    "imported_rankings": IMPORTED_RANKINGS,
    "sweep_targets": SWEEP_TARGETS,
    "head_attributions": HEAD_ATTRIBUTIONS,
    "attribution_fits": ATTRIBUTION_FITS,
}


# Tables no longer written, read under another name so that the name can serve as a view in their former
# shape over old and new parts alike (queries/staging: mask_conditions.sql ... over stg_sweep_* and these).
LEGACY_VIEWS = {
    "mask_conditions": "legacy_mask_conditions",
    "mask_results": "legacy_mask_results",
    "prune_conditions": "legacy_prune_conditions",
    "prune_results": "legacy_prune_results",
}


def view_name(table: str) -> str:
    """The name a session reads a stored table's committed files under."""
    return LEGACY_VIEWS.get(table, table)


def unreadable_version(version: str | bytes | None) -> bool:
    """Whether a file's schema version (its footer metadata; None: written before versions) is one this attnwh cannot read."""
    if version is None:
        return False
    text = version.decode(errors="replace") if isinstance(version, bytes) else version
    return not text.isdigit() or int(text) > SCHEMA_VERSION


def with_metadata(table_name: str, schema: pa.Schema) -> pa.Schema:
    """The schema with attnwh's metadata (table, schema version), keeping what it carries (``META_DEFINITIONS``)."""
    return schema.with_metadata({**(schema.metadata or {}), META_TABLE: table_name.encode(), META_VERSION: str(SCHEMA_VERSION).encode()})
