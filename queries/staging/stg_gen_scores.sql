-- one row per run, step bucket, token kind, layer and summarised value of the every-step capture (``gen``): the
-- per-part gen_scores rollups added up (sums over the layer's heads and the bucket's tokens), for runs whose rollups
-- were all built from the current definitions; the other runs get the same sums from their gen_metrics and
-- gen_tokens rows by the rollup's own macro.
select
    run_id, step_bucket, token_kind, layer, score,
    cast(sum(n) as bigint) as n, sum(total) as total, sum(total_sq) as total_sq, max(max_value) as max_value
from gen_scores
where run_id not in (select distinct run_id from stg_gen_metrics_not_rolled_up)
group by run_id, step_bucket, token_kind, layer, score
union all
select *
from summarise_gen_metrics('stg_gen_metrics_not_rolled_up', 'gen_tokens')
