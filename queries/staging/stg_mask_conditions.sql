-- one row per mask run and condition: what was masked, and how the heads were ranked
select
    c.run_id,
    r.model,
    r.benchmark,
    c.condition_id,
    c.strategy,
    c.stage,
    c.k,
    c.fraction,
    c.seed,
    c.mode,
    c.ranking_run_id,
    c.ranking_metric as ranking_score,  -- stored as ranking_metric
    c.heads
from mask_conditions as c
join stg_runs as r using (run_id)
