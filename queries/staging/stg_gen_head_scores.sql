-- one row per run, step bucket, object-word kind (grounded, hallucinated), layer, head and summarised value at the first
-- token of object words, a sample as the unit: the per-part gen_head_scores rollups added up, or recomputed from the rows
-- as stg_gen_scores does.
select
    run_id, step_bucket, token_kind, layer, head, score,
    cast(sum(n) as bigint) as n, cast(sum(n_tokens) as bigint) as n_tokens, sum(total) as total, sum(total_sq) as total_sq, max(max_value) as max_value
from gen_head_scores
where run_id not in (select distinct run_id from stg_gen_metrics_not_rolled_up)
group by run_id, step_bucket, token_kind, layer, head, score
union all
select *
from summarise_gen_heads('stg_gen_metrics_not_rolled_up', 'gen_tokens')
