-- one row per run, query and layer: image attention averaged over heads and samples, on normalised depth
select
    run_id,
    model,
    benchmark,
    query,
    layer,
    any_value(n_layers) as n_layers,
    any_value(depth) as depth,
    any_value(stage) as stage,
    count(*) as n,
    avg(image_sum) as mean_image_sum,
    stddev_samp(image_sum) as sd_image_sum,
    max(image_sum) as max_image_sum,
    avg(concentration) as mean_concentration,
    avg(concentration_x_sum) as mean_concentration_x_sum
from stg_head_metrics
group by run_id, model, benchmark, query, layer
