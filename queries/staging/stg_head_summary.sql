-- one row per run, query, layer and head: the per-part rollups of head_metrics added up over parts
-- (exact sums; means are sum / n; sample standard deviations from the sums of squares).
-- Runs whose rollups were built from the current definitions read them (a few rows per head); the
-- others (parts older than the definitions' versions, or another version) get the same sums
-- recomputed from their head_metrics rows by the same macro, with the current definitions.
with per_part as (
    select * exclude (definitions)
    from rolled_up_head_summary
    union all by name
    select * from summarise_head_metrics('head_metrics_not_rolled_up')
)
select
    run_id,
    query,
    layer,
    head,
    cast(sum(n) as bigint) as n,
    cast(sum(n_concentration) as bigint) as n_concentration,
    sum(sum_image) as sum_image,
    sum(sumsq_image) as sumsq_image,
    max(max_image) as max_image,
    sum(sum_concentration) as sum_concentration,
    sum(sumsq_concentration) as sumsq_concentration,
    sum(sum_concentration_x_sum) as sum_concentration_x_sum,
    sum(sumsq_concentration_x_sum) as sumsq_concentration_x_sum,
    sum(sum_bos) as sum_bos,
    sum(sum_system) as sum_system,
    sum(sum_prompt) as sum_prompt,
    sum(sum_generated) as sum_generated,
    cast(sum(n_region_hit) as bigint) as n_region_hit,
    sum(sum_region_hit) as sum_region_hit,
    sum(sumsq_region_hit) as sumsq_region_hit
from per_part
group by run_id, query, layer, head
