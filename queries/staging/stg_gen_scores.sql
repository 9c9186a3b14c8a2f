-- one row per run, step bucket, token kind, layer, head and summarised value of the every-step capture (``gen``):
-- the per-part gen_scores rollups added up, for runs whose rollups were all built from the current definitions;
-- the other runs get the same sums from their gen_metrics and gen_tokens rows by the rollup's own macro.
with stale as (
    select run_id
    from gen_scores
    group by run_id
    having bool_or(definitions is distinct from definitions_version())
)
select
    run_id, step_bucket, token_kind, layer, head, score,
    cast(sum(n) as bigint) as n, sum(total) as total, sum(total_sq) as total_sq, max(max_value) as max_value
from gen_scores
where run_id not in (select run_id from stale)
group by run_id, step_bucket, token_kind, layer, head, score
union all
select *
from summarise_gen_metrics('gen_metrics', 'gen_tokens')
where run_id in (select run_id from stale)
