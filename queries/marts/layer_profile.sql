-- one row per run, query and layer: image attention averaged over heads and samples, on normalised depth
-- (from the per-part rollups, added up per layer in stg_layer_summary)
select
    run_id, model, benchmark, query, layer, n_layers, depth, stage, n,
    sum_image / n as mean_image_sum,
    case when n > 1 then sqrt(greatest(0, (sumsq_image - sum_image * sum_image / n) / (n - 1))) end as sd_image_sum,
    max_image as max_image_sum,
    case when n_concentration > 0 then sum_concentration / n_concentration end as mean_concentration,
    case when n_concentration_x_sum > 0 then sum_concentration_x_sum / n_concentration_x_sum end as mean_concentration_x_sum
from stg_layer_summary
order by run_id, query, layer
