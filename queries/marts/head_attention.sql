-- one row per run, query, layer and head: image attention averaged over samples
with per_head as (
    select
        run_id,
        query,
        layer,
        head,
        count(*) as n_samples,
        avg(image_sum) as mean_image_sum,
        stddev_samp(image_sum) as sd_image_sum,
        avg(concentration) as mean_concentration,
        stddev_samp(concentration) as sd_concentration,
        avg(concentration_x_sum) as mean_concentration_x_sum
    from stg_head_metrics
    group by run_id, query, layer, head
)
select
    p.run_id,
    r.model,
    r.benchmark,
    p.query,
    p.layer,
    p.head,
    p.n_samples,
    p.mean_image_sum,
    p.sd_image_sum,
    p.mean_concentration,
    p.sd_concentration,
    p.mean_concentration_x_sum
from per_head as p
join runs as r using (run_id)
