-- one row per sweep run (mask, prune, ...) and condition: the intervention's kind, its settings (JSON, typed
-- per kind by stg_mask_conditions and stg_prune_conditions) and the ranking that chose it. Sweeps written
-- before the sweep tables (mask_conditions, prune_conditions) read as the same rows.
with conditions as (
    select run_id, condition_id, kind, ranking_run_id, ranking_score, heads, settings
    from sweep_conditions
    union all
    select
        run_id, condition_id, 'mask', ranking_run_id, ranking_metric, heads,
        json_object('strategy', strategy, 'stage', stage, 'k', k, 'fraction', fraction, 'seed', seed, 'mode', mode)::varchar
    from legacy_mask_conditions
    union all
    select
        run_id, condition_id, 'prune', ranking_run_id, ranking_score, [],
        json_object('allocation', allocation, 'kv_share', kv_share, 'keep', keep, 'floor', floor, 'seed', seed, 'kept_shares', kept_shares)::varchar
    from legacy_prune_conditions
)
select
    c.run_id,
    r.model,
    r.benchmark,
    c.kind,
    c.condition_id,
    c.condition_id = 0 as baseline,
    c.ranking_run_id,
    c.ranking_score,
    c.heads,
    c.settings
from conditions as c
join stg_runs as r using (run_id)
