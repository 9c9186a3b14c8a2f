-- one row per pruning condition: sweep_accuracy (accuracy with a 95% Wilson interval, the paired comparison with
-- the full cache on the same samples, the KV cache the pruned heads would hold against the full one) with the
-- pruning settings as columns
select
    p.run_id,
    p.model,
    p.benchmark,
    p.condition_id,
    p.allocation,
    p.kv_share,
    p.keep,
    p.phase,
    p.floor,
    p.seed,
    p.ranking_run_id,
    p.ranking_score,
    a.* exclude (run_id, model, benchmark, kind, condition_id, baseline, settings, ranking_run_id, ranking_score)
from stg_prune_conditions as p
join sweep_accuracy as a using (run_id, condition_id)
order by p.run_id, p.condition_id
