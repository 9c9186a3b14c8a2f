-- one row per run, query and layer: the head summary added up over the layer's heads
select
    run_id,
    query,
    layer,
    cast(sum(n) as bigint) as n,
    cast(sum(n_concentration) as bigint) as n_concentration,
    sum(sum_image) as sum_image,
    sum(sumsq_image) as sumsq_image,
    max(max_image) as max_image,
    sum(sum_concentration) as sum_concentration,
    sum(sum_concentration_x_sum) as sum_concentration_x_sum,
    sum(sum_bos) as sum_bos,
    sum(sum_system) as sum_system,
    sum(sum_prompt) as sum_prompt,
    sum(sum_generated) as sum_generated
from stg_head_summary
group by run_id, query, layer
