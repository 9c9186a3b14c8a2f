-- one row per run, query and layer: image attention averaged over heads and samples, on normalised depth
-- (from the per-part rollups in head_summary)
with per_layer as (
    select
        run_id,
        query,
        layer,
        cast(sum(n) as bigint) as n,
        sum(sum_image) as sum_image,
        sum(sumsq_image) as sumsq_image,
        max(max_image) as max_image_sum,
        cast(sum(n_concentration) as bigint) as n_concentration,
        sum(sum_concentration) as sum_concentration,
        sum(sum_concentration_x_sum) as sum_concentration_x_sum
    from stg_head_summary
    group by run_id, query, layer
)
select
    p.run_id,
    r.model,
    r.benchmark,
    p.query,
    p.layer,
    l.n_layers,
    l.depth,
    l.stage,
    p.n,
    p.sum_image / p.n as mean_image_sum,
    case when p.n > 1 then sqrt(greatest(0, (p.sumsq_image - p.sum_image * p.sum_image / p.n) / (p.n - 1))) end as sd_image_sum,
    p.max_image_sum,
    case when p.n_concentration > 0 then p.sum_concentration / p.n_concentration end as mean_concentration,
    case when p.n_concentration > 0 then p.sum_concentration_x_sum / p.n_concentration end as mean_concentration_x_sum
from per_layer as p
join stg_runs as r using (run_id)
join stg_layers as l using (run_id, layer)
