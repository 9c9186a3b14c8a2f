-- one row per run, query, layer, head and summarised value (summarised_names(): the head scores, then the
-- segments' attention mass): the samples that have the value, and its sum, sum of squares and largest
-- value over them: the per-part rollups added up over parts. Runs whose rollups were built from the current
-- definitions read them (a few rows per head and score); the others (parts older than the definitions'
-- versions, or another version) get the same sums recomputed from their head_metrics rows by the same
-- macro, with the current definitions.
with per_part as (
    select * exclude (definitions)
    from rolled_up_head_scores
    union all by name
    select * from summarise_head_metrics('head_metrics_not_rolled_up')
)
select
    run_id,
    query,
    layer,
    head,
    score,
    cast(sum(n) as bigint) as n,
    sum(total) as total,
    sum(total_sq) as total_sq,
    max(max_value) as max_value
from per_part
group by run_id, query, layer, head, score
