-- one row per prune run, condition and sample, with the condition's settings
select
    p.run_id,
    r.model,
    r.benchmark,
    p.condition_id,
    c.allocation,
    c.kv_share,
    c.keep,
    c.floor,
    c.seed,
    c.ranking_run_id,
    c.ranking_score,
    p.sample_idx,
    p.sample_key,
    p.status,
    p.gold,
    p.output_text,
    p.parsed,
    p.correct,
    p.option_logprobs,
    p.n_prompt_keys,
    p.n_image_keys,
    p.kv_keys,
    p.kv_keys_full,
    p.kv_bytes,
    p.kv_bytes_full
from prune_results as p
join prune_conditions as c using (run_id, condition_id)
join stg_runs as r using (run_id)
