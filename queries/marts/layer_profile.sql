-- one row per run, query and layer: image attention averaged over heads and samples, on normalised depth
with per_layer as (
    select
        run_id,
        query,
        layer,
        count(*) as n,
        avg(image_sum) as mean_image_sum,
        stddev_samp(image_sum) as sd_image_sum,
        max(image_sum) as max_image_sum,
        avg(concentration) as mean_concentration,
        avg(concentration_x_sum) as mean_concentration_x_sum
    from stg_head_metrics
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
    p.mean_image_sum,
    p.sd_image_sum,
    p.max_image_sum,
    p.mean_concentration,
    p.mean_concentration_x_sum
from per_layer as p
join runs as r using (run_id)
join stg_layers as l using (run_id, layer)
