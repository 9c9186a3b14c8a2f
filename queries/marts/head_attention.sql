-- one row per run, query, layer and head: image attention averaged over samples
-- (from the per-part rollups in head_summary: a few rows per head instead of one per sample)
select
    h.run_id,
    r.model,
    r.benchmark,
    h.query,
    h.layer,
    h.head,
    h.n as n_samples,
    h.sum_image / h.n as mean_image_sum,
    case when h.n > 1 then sqrt(greatest(0, (h.sumsq_image - h.sum_image * h.sum_image / h.n) / (h.n - 1))) end as sd_image_sum,
    case when h.n_concentration > 0 then h.sum_concentration / h.n_concentration end as mean_concentration,
    case when h.n_concentration > 1 then sqrt(greatest(0,
        (h.sumsq_concentration - h.sum_concentration * h.sum_concentration / h.n_concentration) / (h.n_concentration - 1))) end as sd_concentration,
    case when h.n_concentration_x_sum > 0 then h.sum_concentration_x_sum / h.n_concentration_x_sum end as mean_concentration_x_sum
from stg_head_summary as h
join stg_runs as r using (run_id)
order by h.run_id, h.query, h.layer, h.head
