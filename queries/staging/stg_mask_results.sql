-- one row per mask run, condition and sample, with the condition's settings
select
    s.run_id,
    s.model,
    s.benchmark,
    s.condition_id,
    c.* exclude (run_id, model, benchmark, condition_id, ranking_run_id, ranking_score, heads),
    s.* exclude (run_id, model, benchmark, kind, condition_id, n_prompt_keys, n_image_keys, kv_keys, kv_keys_full, kv_bytes, kv_bytes_full)
from stg_sweep_results as s
join stg_mask_conditions as c using (run_id, condition_id)
