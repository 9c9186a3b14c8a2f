-- one row per run, query and layer: image attention averaged over heads and samples, on normalised depth
-- (from the per-part rollups, added up per layer in stg_layer_summary)
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
    p.max_image as max_image_sum,
    case when p.n_concentration > 0 then p.sum_concentration / p.n_concentration end as mean_concentration,
    case when p.n_concentration > 0 then p.sum_concentration_x_sum / p.n_concentration end as mean_concentration_x_sum
from stg_layer_summary as p
join stg_runs as r using (run_id)
join stg_layers as l using (run_id, layer)
