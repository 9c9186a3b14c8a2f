-- one row per prune run, condition and sample, with the condition's settings
select
    s.run_id,
    s.model,
    s.benchmark,
    s.condition_id,
    c.* exclude (run_id, model, benchmark, condition_id, kept_shares),
    s.* exclude (run_id, model, benchmark, kind, condition_id)
from stg_sweep_results as s
join stg_prune_conditions as c using (run_id, condition_id)
