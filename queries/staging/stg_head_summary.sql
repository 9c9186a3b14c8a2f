-- one row per run, query, layer and head: the per-part rollups of head_metrics added up over parts
-- (exact sums; means are sum / n; sample standard deviations from the sums of squares)
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
    sum(sum_generated) as sum_generated
from head_summary
group by run_id, query, layer, head
