-- one row per sweep run, condition and sample: the answer and the KV cache the condition leaves (null for
-- masking sweeps written before the sweep tables), with the condition's kind. Sweeps written before the sweep
-- tables (mask_results, prune_results) read as the same rows.
with results as (
    select
        run_id, condition_id, sample_idx, sample_key, status, error, gold, output_text, parser, parser_version, parsed, correct,
        option_logprobs, n_prompt_keys, n_image_keys, kv_keys, kv_keys_full, kv_bytes, kv_bytes_full,
        object_mentions, hallucinated, truth_objects, truth_mentioned, hallu_objects, hallu_mentioned
    from sweep_results
    union all
    select
        run_id, condition_id, sample_idx, sample_key, status, error, gold, output_text, parser, parser_version, parsed, correct,
        option_logprobs, null, null, null, null, null, null, null, null, null, null, null, null
    from legacy_mask_results
    union all
    select
        run_id, condition_id, sample_idx, sample_key, status, error, gold, output_text, parser, parser_version, parsed, correct,
        option_logprobs, n_prompt_keys, n_image_keys, kv_keys, kv_keys_full, kv_bytes, kv_bytes_full,
        null, null, null, null, null, null
    from legacy_prune_results
)
select
    s.run_id,
    c.model,
    c.benchmark,
    c.kind,
    s.* exclude (run_id)
from results as s
join stg_sweep_conditions as c using (run_id, condition_id)
